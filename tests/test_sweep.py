"""Lambda sweeps and calibration on small slices with width-8 models: rows, oracle, errors, plots,
training-only calibration, and the `sweep-lambda` / `eval --lam auto|noise|oracle` commands."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

import sdnet_cli.data.cifar as cifar
import sdnet_cli.data.datasets as datasets
import sdnet_cli.sweep.runs as sweep
from sdnet_cli.cli import app
from sdnet_cli.compare import Source, compare
from sdnet_cli.data.cells import Cell, CellSource
from sdnet_cli.errors import UsageError
from sdnet_cli.lam import (
    RULES,
    Calibration,
    FixedLambda,
    estimate_impulse_fraction,
    estimate_noise_sigma,
    fit_line_for_accuracy,
    fit_rule_for_accuracy,
    rule_accuracy,
)
from sdnet_cli.models import create_model, load_model, save_checkpoint
from sdnet_cli.models.csc import normalize_atoms
from sdnet_cli.runtime import Runtime
from sdnet_cli.sweep.report import save_sweep_plots
from sdnet_cli.sweep.runs import calibrate, cell_points, sweep_lambda

runner = CliRunner()
LAMS = [0.1, 0.5, 1.2]
CELLS = [Cell("clean", 0), Cell("gaussian_noise", 5)]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("sdnet18", width=8).eval()


@pytest.fixture(scope="module")
def source(data_dir: Path, cache_dir: Path) -> CellSource:
    cells = CellSource(data_dir, cache_dir=cache_dir, seed=1, n_examples=48, workers=1)
    cells.prepare(["gaussian_noise"])
    return cells


def plain_forward(model: torch.nn.Module, images: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Reference: (logits, stem error) from one plain forward, the error re-synthesised with F.conv_transpose2d."""
    stem, seen = model.stem_csc, {}
    handle = stem.register_forward_hook(lambda m, inp, out: seen.update(x=inp[0], z=out))
    x = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad(), model.test_lambda(lam):
        logits = model.network(model.normalize(x))
    handle.remove()
    recon = F.conv_transpose2d(seen["z"].double(), normalize_atoms(stem.weight.detach().double()), padding=1)
    return logits.numpy(), (seen["x"].double() - recon).pow(2).flatten(1).sum(1).numpy()


@pytest.mark.slow
def test_sweep_cells_flags_every_image_at_every_lambda(model: torch.nn.Module, source: CellSource) -> None:
    seen: list[int] = []
    (found,) = sweep.sweep_cells(model, CELLS[:1], source, Runtime.create("cpu"), LAMS, 20, seen.append)
    assert sum(seen) == 48 * len(LAMS)  # 48 images in batches of 20, at each lambda
    images, labels = source.load(CELLS[0])
    for j, lam in enumerate(LAMS):
        logits, _ = plain_forward(model, images, lam)
        np.testing.assert_array_equal(found.correct[j], logits.argmax(1) == labels)
    assert len(found.seconds) == len(LAMS) and min(found.seconds) > 0


@pytest.mark.slow
def test_sweep_rows_oracle_errors_and_plots(model: torch.nn.Module, source: CellSource, tmp_path: Path) -> None:
    deployed = FixedLambda(0.3)
    with model.using(deployed):
        rows = sweep_lambda(
            model, CELLS, source, Runtime.create("cpu"), LAMS, {"model": "m", "dataset": "cifar10"}, batch_size=20
        )
        assert model.lam_policy is deployed  # the sweep leaves the model as it found it
    assert [(r["corruption"], r["severity"], r["lam"]) for r in rows] == [
        (c.corruption, c.severity, lam) for c in CELLS for lam in LAMS
    ]
    assert set(rows[0]) == {
        "model",
        "dataset",
        "corruption",
        "severity",
        "lam",
        "n",
        "correct",
        "accuracy",
        "seconds",
        "mean_error",
        "oracle",
    }
    for i, cell in enumerate(CELLS):
        cell_rows = rows[i * len(LAMS) : (i + 1) * len(LAMS)]
        assert sum(r["oracle"] for r in cell_rows) == 1
        best = next(r for r in cell_rows if r["oracle"])
        assert best["correct"] == max(r["correct"] for r in cell_rows)
        errors = [r["mean_error"] for r in cell_rows]
        assert errors == sorted(errors) and errors[0] < errors[-1]  # a larger lambda reconstructs worse
        images, labels = source.load(cell)
        for row, lam in zip(cell_rows, LAMS):
            logits, reference_error = plain_forward(model, images, lam)
            assert row["n"] == 48 and row["correct"] == int((logits.argmax(1) == labels).sum())
            assert row["mean_error"] == pytest.approx(reference_error.mean(), rel=1e-4)

    points = cell_points(model, CELLS, source, Runtime.create("cpu"), rows, batch_size=20)
    images, _ = source.load(CELLS[1])
    _, error_at_training_lam = plain_forward(model, images, 0.1)
    assert points[1]["error"] == pytest.approx(error_at_training_lam.mean(), rel=1e-4)
    x = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float() / 255
    assert points[1]["noise"] == pytest.approx(float(estimate_noise_sigma(x).mean()), rel=1e-4)
    assert points[1]["noise"] > points[0]["noise"]  # gaussian noise at severity 5 is visible to the estimator
    assert points[1]["impulse"] == pytest.approx(float(estimate_impulse_fraction(x).mean()), rel=1e-6, abs=1e-12)
    paths = save_sweep_plots(rows, points, tmp_path, "sweep", "w8")
    assert [p.name for p in paths] == ["sweep-accuracy.png", "sweep-fit.png"]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


@pytest.mark.slow
def test_calibration_uses_only_training_images(
    model: torch.nn.Module, data_dir: Path, cifar_test: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    train_images, train_labels = cifar.load_cifar10(data_dir, "train", download=False)

    def no_test_split(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("calibration must not read any split itself")

    monkeypatch.setattr(cifar, "load_cifar10", no_test_split)
    seen: list[np.ndarray] = []
    handle = model.register_forward_pre_hook(
        lambda m, inp: seen.append((inp[0] * 255).round().byte().permute(0, 2, 3, 1).numpy())
    )
    try:
        calibration = calibrate(
            model,
            train_images,
            train_labels,
            Runtime.create("cpu"),
            LAMS,
            ["gaussian_noise", "contrast"],
            [2, 5],
            n=24,
            seed=7,
            batch_size=24,
            checkpoint_sha256="ab" * 32,
        )
    finally:
        handle.remove()
    # the clean group's inputs are training images, and none of the forwards saw a test image
    clean_inputs = np.concatenate(seen[: len(LAMS)])
    train_rows = {image.tobytes() for image in train_images}
    assert all(image.tobytes() in train_rows for image in clean_inputs)
    test_rows = {image.tobytes() for image in cifar_test[0]}
    assert not any(image.tobytes() in test_rows for batch in seen for image in batch)
    assert len(seen) == 5 * len(LAMS)  # clean + 2 corruptions x 2 severities, one batch each

    assert calibration.n == 24 and calibration.seed == 7 and calibration.grid == LAMS and calibration.split == "train"
    assert [(p["corruption"], p["severity"]) for p in calibration.points] == [
        ("clean", 0),
        ("gaussian_noise", 2),
        ("gaussian_noise", 5),
        ("contrast", 2),
        ("contrast", 5),
    ]
    curves = np.array([p["curve"] for p in calibration.points])
    assert curves.shape == (5, len(LAMS))
    assert [LAMS[j] for j in curves.argmax(axis=1)] == [p["best_lam"] for p in calibration.points]
    expected = fit_line_for_accuracy([p["error"] for p in calibration.points], curves, LAMS)
    assert (calibration.recon.a, calibration.recon.b) == pytest.approx(expected, rel=1e-8, abs=1e-12)
    (a, c), b = fit_rule_for_accuracy(np.array([[p["noise"], p["impulse"]] for p in calibration.points]), curves, LAMS)
    assert (calibration.noise.a, calibration.noise.c, calibration.noise.b) == pytest.approx(
        (a, c, b), rel=1e-8, abs=1e-12
    )
    assert (calibration.recon.lo, calibration.recon.hi) == (0.1, 1.2) == (calibration.noise.lo, calibration.noise.hi)
    scores = {name: rule_accuracy(rule, calibration.points, LAMS) for name, rule in calibration.rules.items()}
    assert scores[calibration.recommended] == max(scores.values())  # auto: the rule with the higher group mean


@pytest.mark.slow
def test_sweep_and_calibration_refuse_what_they_cannot_do(source: CellSource) -> None:
    runtime = Runtime.create("cpu")
    with pytest.raises(UsageError, match="no CSC layers") as raised:
        sweep_lambda(
            create_model("resnet18", width=4).eval(), CELLS, source, runtime, LAMS, {"model": "r", "dataset": "c"}
        )
    assert raised.value.parameter == "model"
    with pytest.raises(UsageError, match="lams"):
        sweep_lambda(
            create_model("sdnet18", width=4).eval(), CELLS, source, runtime, [], {"model": "s", "dataset": "c"}
        )


def run(*args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, list(args))


def test_sweep_lambda_on_resnet_exits_2(data_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "r.safetensors"
    save_checkpoint(create_model("resnet18", width=8).network, path, {"architecture": "resnet18"})
    result = run(
        "sweep-lambda",
        "--model",
        "resnet18",
        "--checkpoint",
        str(path),
        "--data-dir",
        str(data_dir),
        "--out",
        str(tmp_path / "out"),
    )
    assert result.exit_code == 2 and "no CSC layers" in result.output
    assert not (tmp_path / "out").exists()


def test_eval_lam_auto_without_calibration_exits_2(tiny_checkpoint: Path, data_dir: Path, tmp_path: Path) -> None:
    checkpoint = tmp_path / "alone.safetensors"
    shutil.copy(tiny_checkpoint, checkpoint)
    result = run(
        "eval",
        "--model",
        "sdnet18",
        "--checkpoint",
        str(checkpoint),
        "--lam",
        "auto",
        "-n",
        "8",
        "--data-dir",
        str(data_dir),
        "--out",
        str(tmp_path / "out"),
    )
    assert result.exit_code == 2, result.output
    assert "sweep-lambda" in result.output and "--fit" in result.output
    result = run(
        "eval",
        "--model",
        "sdnet18",
        "--checkpoint",
        str(checkpoint),
        "--lam",
        "oracle",
        "-n",
        "8",
        "--data-dir",
        str(data_dir),
        "--out",
        str(tmp_path / "out"),
    )
    assert result.exit_code == 2 and "--sweep" in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_sweep_fit_then_eval_auto_noise_oracle(
    tiny_checkpoint: Path, data_dir: Path, cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint = tmp_path / "w8.safetensors"
    shutil.copy(tiny_checkpoint, checkpoint)
    splits: list[str] = []
    loaded: dict[str, np.ndarray] = {}
    real_load = cifar.load_cifar10

    def recording(data_dir, split="test", download=True):  # type: ignore[no-untyped-def]
        splits.append(split)
        loaded[split] = real_load(data_dir, split, download)
        return loaded[split]

    def train_only(model, train_images, *args, **kwargs):  # type: ignore[no-untyped-def]
        assert train_images is loaded["train"][0], "the calibration was not given the training split"
        return real_calibrate(model, train_images, *args, **kwargs)

    real_calibrate = sweep.calibrate
    monkeypatch.setitem(datasets.DATASETS, "cifar10", dataclasses.replace(datasets.CIFAR10, reader=recording))
    monkeypatch.setattr(sweep, "calibrate", train_only)
    common = [
        "--model",
        "sdnet18",
        "--checkpoint",
        str(checkpoint),
        "-n",
        "40",
        "--seed",
        "1",
        "--data-dir",
        str(data_dir),
        "--cache-dir",
        str(cache_dir),
        "-c",
        "gaussian_noise",
        "-s",
        "1",
        "-s",
        "5",
    ]
    out = tmp_path / "reports"
    result = run(
        "sweep-lambda",
        *common,
        "--lams",
        "0.1,0.5,1.2",
        "--fit",
        "--fit-corruption",
        "gaussian_noise",
        "--fit-corruption",
        "contrast",
        "--fit-n",
        "32",
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.output
    assert "noise: lambda = clamp(" in result.output and "recon: lambda = clamp(" in result.output
    assert splits == ["train", "test"]  # the calibration's split, then the evaluated cells'
    report = json.loads((out / "sweep-lambda-sdnet18.json").read_text())
    assert len(report["rows"]) == 3 * 3 and sum(r["oracle"] for r in report["rows"]) == 3
    assert {p.name for p in out.iterdir()} >= {
        "sweep-lambda-sdnet18.csv",
        "sweep-lambda-sdnet18.md",
        "sweep-lambda-sdnet18-accuracy.png",
        "sweep-lambda-sdnet18-fit.png",
    }
    calibration_path = tmp_path / "w8.lambda.json"
    calibration = Calibration.load(calibration_path)
    assert report["meta"]["calibration"] == str(calibration_path)
    assert calibration.checkpoint_sha256 == report["meta"]["checkpoint_sha256"]
    assert calibration.corruptions == ["gaussian_noise", "contrast"] and calibration.n == 32
    assert len(calibration.points) == 1 + 2 * 2

    def eval_rows(*extra: str) -> dict:
        result = run("eval", *common, *extra, "--out", str(out), "--name", "e")
        assert result.exit_code == 0, result.output
        return json.loads((out / "e.json").read_text())

    auto = eval_rows("--lam", "auto")
    stored = json.loads(calibration_path.read_text())
    recommended = stored["recommended"]
    assert [r["lam"] for r in auto["rows"]] == [f"auto:{recommended}"] * 4 and auto["meta"]["oracle"] is False
    # independent recount of the clean cell: plain batched forward with the recommended rule from the JSON
    model, _ = load_model("sdnet18", checkpoint=checkpoint)
    rule = stored["rules"][recommended]
    images, labels = real_load(data_dir, "test")
    with torch.no_grad(), model.using(RULES[recommended](rule["a"], rule["b"], rule["lo"], rule["hi"])):
        logits = model(torch.from_numpy(images[:40]).permute(0, 3, 1, 2).float() / 255)
    assert auto["rows"][0]["correct"] == int((logits.argmax(1).numpy() == labels[:40]).sum())
    assert {"lam_mean", "lam_p10", "lam_p90"} <= set(auto["rows"][0])
    recon = eval_rows("--lam", "recon")
    assert [r["lam"] for r in recon["rows"]] == ["recon"] * 4

    noise = eval_rows("--lam", "noise")
    assert [r["lam"] for r in noise["rows"]] == ["noise"] * 4

    oracle = eval_rows("--lam", "oracle", "--sweep", str(out / "sweep-lambda-sdnet18.json"))
    best = [r for r in report["rows"] if r["oracle"]]
    assert [r["lam"] for r in oracle["rows"][:3]] == [f"oracle:{r['lam']:g}" for r in best]
    assert [r["correct"] for r in oracle["rows"][:3]] == [r["correct"] for r in best]  # same images, same lambda
    assert oracle["rows"][3]["lam"] == "oracle" and oracle["meta"]["oracle"] is True

    table, _ = compare(
        [
            Source(label, out / "e.json", report["meta"], report["rows"])
            for label, report in (("auto", auto), ("noise", noise), ("oracle", oracle))
        ]
    )
    assert table[0] == {
        "corruption": "clean",
        "severity": 0,
        "n": 40,
        "auto": auto["rows"][0]["accuracy"],
        "noise": noise["rows"][0]["accuracy"],
        "oracle": oracle["rows"][0]["accuracy"],
    }
