"""`sdnet eval` / `make-c` / `train` end to end on small slices, and the usage-error cases (exit code 2)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from sdnet_cli.cli import app
from sdnet_cli.models import create_model, load_model

runner = CliRunner()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def run(*args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, list(args))


@pytest.mark.slow
def test_eval_end_to_end(tiny_checkpoint: Path, data_dir: Path, cache_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "reports"
    result = run(
        "eval",
        "--model",
        "sdnet18",
        "--checkpoint",
        str(tiny_checkpoint),
        "--corruption",
        "gaussian_noise",
        "--severity",
        "2",
        "--severity",
        "5",
        "-n",
        "64",
        "--batch-size",
        "32",
        "--seed",
        "3",
        "--data-dir",
        str(data_dir),
        "--cache-dir",
        str(cache_dir),
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "eval-sdnet18.json").read_text())
    rows = report["rows"]
    assert [(r["corruption"], r["severity"]) for r in rows] == [
        ("clean", 0),
        ("gaussian_noise", 2),
        ("gaussian_noise", 5),
        ("mean", "all"),
    ]
    assert set(rows[0]) == {"model", "dataset", "corruption", "severity", "lam", "n", "correct", "accuracy", "seconds"}
    meta = report["meta"]
    assert meta["seed"] == 3 and meta["data_source"]["source"] == "generated" and meta["data_source"]["seed"] == 3
    assert len(meta["checkpoint_sha256"]) == 64 and meta["versions"]["torch"] == torch.__version__.split("+")[0]

    # independent recount: plain forwards on the cached release-layout file
    model, _ = load_model("sdnet18", checkpoint=tiny_checkpoint)
    cell = np.load(cache_dir / "cifar10-c-seed3" / "gaussian_noise.npy", mmap_mode="r")
    labels = np.load(cache_dir / "cifar10-c-seed3" / "labels.npy")
    block = len(labels) // 5
    images = np.array(cell[4 * block : 4 * block + 64])
    with torch.no_grad():
        logits = model(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)
    correct = int((logits.argmax(1).numpy() == labels[4 * block : 4 * block + 64]).sum())
    assert rows[2]["n"] == 64 and rows[2]["correct"] == correct
    assert rows[2]["accuracy"] == pytest.approx(100 * correct / 64)
    assert rows[3]["accuracy"] == pytest.approx((rows[1]["accuracy"] + rows[2]["accuracy"]) / 2)
    assert (out / "eval-sdnet18.csv").read_text().count("\n") == 5
    assert "| gaussian_noise" in (out / "eval-sdnet18.md").read_text()


@pytest.mark.slow
def test_eval_lam_is_recorded_and_changes_nothing_for_same_value(
    tiny_checkpoint: Path, data_dir: Path, tmp_path: Path
) -> None:
    common = [
        "eval",
        "--model",
        "sdnet18",
        "--checkpoint",
        str(tiny_checkpoint),
        "-n",
        "32",
        "--data-dir",
        str(data_dir),
    ]
    a = run(*common, "--lam", "0.1", "--out", str(tmp_path / "a"))
    b = run(*common, "--out", str(tmp_path / "b"))
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
    row_a = json.loads((tmp_path / "a" / "eval-sdnet18.json").read_text())["rows"][0]
    row_b = json.loads((tmp_path / "b" / "eval-sdnet18.json").read_text())["rows"][0]
    assert row_a["lam"] == 0.1 and row_a["correct"] == row_b["correct"]


@pytest.mark.slow
def test_eval_compile_counts_the_same_as_eager_and_says_so(
    tiny_checkpoint: Path, data_dir: Path, tmp_path: Path
) -> None:
    # 40 images in batches of 16: two compiled batches and an eager partial one
    common = [
        "eval",
        "--model",
        "sdnet18",
        "--checkpoint",
        str(tiny_checkpoint),
        "-n",
        "40",
        "--batch-size",
        "16",
        "--data-dir",
        str(data_dir),
    ]
    eager = run(*common, "--out", str(tmp_path / "eager"))
    compiled = run(*common, "--compile", "--out", str(tmp_path / "compiled"))
    assert eager.exit_code == 0 and compiled.exit_code == 0, eager.output + compiled.output
    one = json.loads((tmp_path / "eager" / "eval-sdnet18.json").read_text())
    two = json.loads((tmp_path / "compiled" / "eval-sdnet18.json").read_text())
    assert two["rows"][0]["correct"] == one["rows"][0]["correct"] and two["rows"][0]["n"] == 40
    assert two["meta"]["compiled"] is True and one["meta"]["compiled"] is False


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "vgg11"], "unknown model"),
        (["--corruption", "rain"], "unknown corruption"),
        (["--severity", "6"], "severity must be 1..5"),
        (["--lam", "-1"], "--lam must be a finite number"),
        (["--precision", "fp8"], "unknown --precision"),
    ],
)
def test_eval_usage_errors_exit_2_without_report(
    tiny_checkpoint: Path, data_dir: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    base = [
        "eval",
        "--checkpoint",
        str(tiny_checkpoint),
        "-n",
        "8",
        "--data-dir",
        str(data_dir),
        "--out",
        str(tmp_path),
    ]
    if "--model" not in args:
        base += ["--model", "sdnet18"]
    result = run(*base, *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert list(tmp_path.iterdir()) == []


def test_eval_missing_data_dir_exit_2(tiny_checkpoint: Path, tmp_path: Path) -> None:
    result = run(
        "eval",
        "--model",
        "sdnet18",
        "--checkpoint",
        str(tiny_checkpoint),
        "--data-dir",
        str(tmp_path / "nowhere"),
        "--out",
        str(tmp_path / "out"),
    )
    assert result.exit_code == 2
    assert "cifar-10-batches-py" in result.output
    assert not (tmp_path / "out").exists()


def test_eval_checkpoint_for_other_architecture_exit_2(tiny_checkpoint: Path, data_dir: Path, tmp_path: Path) -> None:
    result = run(
        "eval",
        "--model",
        "resnet18",
        "--checkpoint",
        str(tiny_checkpoint),
        "--data-dir",
        str(data_dir),
        "--out",
        str(tmp_path),
    )
    assert result.exit_code == 2
    assert "does not fit this architecture" in result.output and "missing keys" in result.output
    assert list(tmp_path.iterdir()) == []


def test_eval_lam_on_resnet_exit_2(data_dir: Path, tmp_path: Path) -> None:
    from sdnet_cli.models import save_checkpoint

    path = tmp_path / "r.safetensors"
    save_checkpoint(create_model("resnet18", width=8).network, path, {"architecture": "resnet18"})
    result = run("eval", "--model", "resnet18", "--checkpoint", str(path), "--lam", "0.5", "--data-dir", str(data_dir))
    assert result.exit_code == 2 and "no CSC layers" in result.output


@pytest.mark.slow
def test_eval_reads_official_release_layout(tiny_checkpoint: Path, data_dir: Path, tmp_path: Path) -> None:
    """An official-style folder (here: constant images) is used as given, and reported as official."""
    release = tmp_path / "CIFAR-10-C"
    release.mkdir()
    labels = np.tile(np.arange(10), 5 * 10)  # 5 severities x 100 images
    images = np.zeros((500, 32, 32, 3), dtype=np.uint8)
    images[300:400] = 255  # severity 4 block
    np.save(release / "labels.npy", labels)
    np.save(release / "fog.npy", images)
    result = run(
        "eval",
        "--model",
        "sdnet18",
        "--checkpoint",
        str(tiny_checkpoint),
        "-c",
        "fog",
        "-s",
        "4",
        "-n",
        "100",
        "--cifar-c-dir",
        str(release),
        "--data-dir",
        str(data_dir),
        "--out",
        str(tmp_path / "out"),
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "eval-sdnet18.json").read_text())
    assert report["meta"]["data_source"]["source"] == "official"
    model, _ = load_model("sdnet18", checkpoint=tiny_checkpoint)
    with torch.no_grad():
        predicted = int(model(torch.ones(1, 3, 32, 32)).argmax())
    assert report["rows"][1]["correct"] == int((labels[300:400] == predicted).sum())


@pytest.mark.slow
def test_make_c_writes_release_layout(data_dir: Path, tmp_path: Path) -> None:
    result = run(
        "make-c",
        "--out",
        str(tmp_path / "c"),
        "-c",
        "contrast",
        "--seed",
        "1",
        "--workers",
        "1",
        "--data-dir",
        str(data_dir),
    )
    assert result.exit_code == 0, result.output
    arr = np.load(tmp_path / "c" / "contrast.npy", mmap_mode="r")
    assert arr.shape == (50000, 32, 32, 3) and arr.dtype == np.uint8
    assert np.load(tmp_path / "c" / "labels.npy").shape == (50000,)
    assert json.loads((tmp_path / "c" / "metadata.json").read_text())["seed"] == 1


def test_help_documents_every_eval_option() -> None:
    result = run("eval", "--help")
    assert result.exit_code == 0
    for option in (
        "--model",
        "--checkpoint",
        "--corruption",
        "--severity",
        "--lam",
        "--n-examples",
        "--batch-size",
        "--device",
        "--precision",
        "--seed",
        "--out",
        "--cifar-c-dir",
        "--data-dir",
    ):
        assert option in result.output
