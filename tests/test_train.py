"""Training learns, resumes exactly, and shipped checkpoints match their manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sdnet_cli.data.cifar import load_cifar10
from sdnet_cli.models import create_model, load_model
from sdnet_cli.models.checkpoints import sha256_of
from sdnet_cli.models.weights import read_manifest, resolve_weights_dir
from sdnet_cli.runtime import Runtime, count_correct
from sdnet_cli.train import TrainConfig, augment, clean_accuracies, train

CPU = Runtime.create("cpu", "fp32")


@pytest.fixture(scope="module")
def train_data(data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    return load_cifar10(data_dir, "train", download=False)


def config(**kw) -> TrainConfig:  # type: ignore[no-untyped-def]
    base = dict(model="sdnet18", width=8, epochs=3, batch_size=64, lr=0.05, n_train=640, n_test=200, seed=0)
    return TrainConfig(**{**base, **kw})


def fresh(cfg: TrainConfig):  # type: ignore[no-untyped-def]
    torch.manual_seed(cfg.seed)
    return create_model(cfg.model, width=cfg.width, lam=cfg.lam)


@pytest.mark.slow
def test_training_improves_over_chance(train_data, cifar_test, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg = config(epochs=4, n_train=1280, n_test=500, lr=0.02)
    model = fresh(cfg)
    state = train(model, cfg, train_data, cifar_test, CPU, tmp_path / "r.pt")
    losses = [h.train_loss for h in state.history]
    assert losses[-1] < losses[0] < np.log(10) + 0.2
    held_out = count_correct(model, cifar_test[0][:500], cifar_test[1][:500], CPU)
    assert held_out.accuracy == pytest.approx(state.history[-1].test_accuracy)
    assert held_out.accuracy > 20.0  # chance is 10% +- 1.3 (one standard error on 500 images)


@pytest.mark.slow
def test_resume_retraces_the_uninterrupted_run(train_data, cifar_test, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg = config(epochs=2, n_train=256, n_test=64)
    straight = fresh(cfg)
    full = train(straight, cfg, train_data, cifar_test, CPU, tmp_path / "a.pt")

    class Stop(Exception):
        pass

    def crash_after_first_epoch(log) -> None:  # type: ignore[no-untyped-def]
        raise Stop

    interrupted = fresh(cfg)
    with pytest.raises(Stop):
        train(interrupted, cfg, train_data, cifar_test, CPU, tmp_path / "b.pt", on_epoch=crash_after_first_epoch)
    resumed_model = fresh(cfg)  # a new process would start from scratch weights, then load the resume file
    resumed = train(resumed_model, cfg, train_data, cifar_test, CPU, tmp_path / "b.pt", resume=True)
    assert [h.epoch for h in resumed.history] == [1, 2]
    assert resumed.history[1].train_loss == pytest.approx(full.history[1].train_loss, rel=1e-4)
    for (k, a), b in zip(straight.network.state_dict().items(), resumed_model.network.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.slow
def test_resume_refuses_changed_settings(train_data, cifar_test, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg = config(epochs=1, n_train=64, n_test=32)
    train(fresh(cfg), cfg, train_data, cifar_test, CPU, tmp_path / "r.pt")
    changed = config(epochs=1, n_train=64, n_test=32, lr=0.2)
    with pytest.raises(ValueError, match="lr"):
        train(fresh(changed), changed, train_data, cifar_test, CPU, tmp_path / "r.pt", resume=True)


def test_augment_is_a_shifted_crop_or_its_mirror() -> None:
    images = torch.arange(2 * 3 * 32 * 32, dtype=torch.int64).view(2, 3, 32, 32).remainder(251).to(torch.uint8) + 1
    out = augment(images, np.random.default_rng(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    for i in range(2):
        windows = [padded[i, :, dy : dy + 32, dx : dx + 32] for dy in range(9) for dx in range(9)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(-1)) for w in windows)


SHIPPED = read_manifest()

CORRECT_OF_FIRST_500 = {
    "resnet18-w16-cifar10": 429,
    "sdnet18-w16-cifar10": 429,
    "resnet18-w32-cifar10": 467,
    "sdnet18-w32-cifar10": 469,
}
"""Correct predictions on the first 500 CIFAR-10 test images (fp32), counted once when each checkpoint
shipped; +-2 images absorb what differs between CPUs."""


@pytest.mark.parametrize("entry", SHIPPED, ids=[e["name"] for e in SHIPPED])
@pytest.mark.slow
def test_shipped_checkpoint_classifies_the_counted_images(entry: dict, cifar_test) -> None:  # type: ignore[no-untyped-def]
    path = resolve_weights_dir() / entry["file"]
    assert sha256_of(path) == entry["sha256"]
    assert path.stat().st_size <= 25 * 2**20
    model, info = load_model(entry["name"], dataset=entry["dataset"])
    assert info.width == entry["width"]
    result = count_correct(CPU.prepare(model), cifar_test[0][:500], cifar_test[1][:500], CPU)
    assert abs(result.correct - CORRECT_OF_FIRST_500[entry["name"]]) <= 2, result.correct


def test_manifest_is_well_formed() -> None:
    required = {
        "name",
        "file",
        "architecture",
        "dataset",
        "width",
        "num_classes",
        "lam",
        "sha256",
        "clean_accuracy",
        "epochs",
        "command",
        "hardware",
        "default",
    }
    manifest = resolve_weights_dir() / "manifest.json"
    if not manifest.is_file():
        pytest.fail("weights/manifest.json is missing")
    entries = json.loads(manifest.read_text())["models"]
    for entry in entries:
        assert required <= set(entry), entry["name"]
    defaults = [(e["architecture"], e["dataset"]) for e in entries if e["default"]]
    assert len(defaults) == len(set(defaults))  # at most one default per architecture and dataset


def test_default_cifar10_pair_is_one_recipe_and_meets_the_accuracy_targets() -> None:
    """`--model sdnet18` / `--model resnet18` must resolve to a like-for-like pair (issue 3's targets)."""
    defaults = {e["architecture"]: e for e in SHIPPED if e["default"] and e["dataset"] == "cifar10"}
    sdnet, resnet = defaults["sdnet18"], defaults["resnet18"]
    for key in ("width", "epochs", "seed", "precision"):
        assert sdnet[key] == resnet[key], key
    assert load_model("sdnet18")[1].name == sdnet["name"] and load_model("resnet18")[1].name == resnet["name"]


@pytest.mark.slow
def test_train_command_half_stores_fp16_and_measures_the_stored_weights(data_dir: Path, tmp_path: Path) -> None:
    from safetensors import safe_open
    from typer.testing import CliRunner

    from sdnet_cli.cli import app

    out = tmp_path / "weights" / "s8.safetensors"
    result = CliRunner().invoke(
        app,
        [
            "train",
            "--model",
            "sdnet18",
            "--width",
            "8",
            "--epochs",
            "1",
            "--n-train",
            "256",
            "--n-test",
            "64",
            "--batch-size",
            "64",
            "--half",
            "--data-dir",
            str(data_dir),
            "--out",
            str(out),
            "--report-dir",
            str(tmp_path / "r"),
        ],
    )
    assert result.exit_code == 0, result.output
    with safe_open(str(out), framework="pt") as f:
        dtypes = {key: f.get_tensor(key).dtype for key in f.keys()}
    assert dtypes["layer0.0.dn.weight"] == torch.float16
    assert all(dtypes[k] == torch.float32 for k in dtypes if k.endswith(("running_mean", "running_var")))
    entry = read_manifest(out.parent)[0]
    assert entry["dtype"] == "float16" and entry["sha256"] == sha256_of(out)
    model, _ = load_model("sdnet18", out, weights_dir=out.parent)
    images, labels = load_cifar10(data_dir, "test", download=False)
    recount = count_correct(model, images, labels, CPU, batch_size=500)
    assert entry["clean_accuracy"] == round(recount.accuracy, 2)  # measured with the fp16 weights it stored


@pytest.mark.slow
def test_train_command_bf16_records_the_fp32_accuracy_users_see(data_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from sdnet_cli.cli import app

    out = tmp_path / "weights" / "r8.safetensors"
    result = CliRunner().invoke(
        app,
        [
            "train",
            "--model",
            "resnet18",
            "--width",
            "8",
            "--epochs",
            "1",
            "--n-train",
            "512",
            "--n-test",
            "64",
            "--batch-size",
            "64",
            "--precision",
            "bf16",
            "--data-dir",
            str(data_dir),
            "--out",
            str(out),
            "--report-dir",
            str(tmp_path / "r"),
        ],
    )
    assert result.exit_code == 0, result.output
    entry = read_manifest(out.parent)[0]
    assert entry["precision"] == "bf16"
    model, _ = load_model("resnet18", out, weights_dir=out.parent)
    images, labels = load_cifar10(data_dir, "test", download=False)
    assert entry["clean_accuracy"] == round(count_correct(model, images, labels, CPU, batch_size=500).accuracy, 2)
    bf16 = Runtime.create("cpu", "bf16")
    assert entry["clean_accuracy_bf16"] == round(count_correct(model, images, labels, bf16, batch_size=500).accuracy, 2)


def test_manifest_accuracy_is_measured_in_fp32_even_for_bf16_training(cifar_test) -> None:  # type: ignore[no-untyped-def]
    class RightOnlyInFp32(torch.nn.Module):
        """Predicts every test label in fp32 and a wrong class under bf16 autocast."""

        def __init__(self, labels: torch.Tensor) -> None:
            super().__init__()
            self.labels, self.seen = labels, 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.labels[self.seen : self.seen + len(x)]
            self.seen = (self.seen + len(x)) % len(self.labels)
            wrong = torch.is_autocast_enabled("cpu")
            return torch.nn.functional.one_hot((y + 1) % 10 if wrong else y, 10).float()

    images, labels = cifar_test[0][:1000], cifar_test[1][:1000]
    model = RightOnlyInFp32(torch.from_numpy(labels))
    assert clean_accuracies(model, (images, labels), CPU) == {"clean_accuracy": 100.0}  # type: ignore[arg-type]
    bf16 = clean_accuracies(model, (images, labels), Runtime.create("cpu", "bf16"))  # type: ignore[arg-type]
    assert bf16 == {"clean_accuracy": 100.0, "clean_accuracy_bf16": 0.0}


def test_cpu_description_from_a_hand_written_cpuinfo() -> None:
    from sdnet_cli.runtime import describe_cpu

    cpuinfo = (
        "processor\t: 0\nmodel name\t: AMD EPYC 9B14\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n\n"
        "processor\t: 1\nmodel name\t: AMD EPYC 9B14\n"
    )
    assert describe_cpu(cpuinfo, 2) == "AMD EPYC 9B14 CPU (AVX-512 BF16), 2 threads"
    assert describe_cpu("model name: Old Xeon\nflags: sse2 avx2\n", 1) == "Old Xeon CPU (AVX2), 1 thread"
    assert describe_cpu("flags: sse2\n", 4, fallback="x86_64") == "x86_64 CPU, 4 threads"


def test_emulated_bf16_is_said_from_the_cpu_flags(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from sdnet_cli import runtime as rt
    from sdnet_cli.api._session import job_progress

    avx2, native = "flags\t: fpu sse2 avx2\n", "flags\t: fpu avx2 avx512f avx512_bf16\n"
    checked = Runtime.create("cpu", "bf16-checked")
    note = rt.emulated_bf16_note(checked, avx2)
    assert note is not None and "bf16-checked" in note and "--precision fp32" in note
    assert rt.emulated_bf16_note(Runtime.create("cpu", "bf16"), "flags: amx_bf16 avx2\n") is None
    assert rt.emulated_bf16_note(checked, native) is None
    assert rt.emulated_bf16_note(Runtime.create("cpu", "fp32"), avx2) is None
    assert rt.emulated_bf16_note(checked, "") is None  # no /proc/cpuinfo: nothing is claimed

    class Notes:
        def __init__(self) -> None:
            self.said: list[str] = []

        def task(self, description: str, total: int):  # type: ignore[no-untyped-def]
            return lambda k: None

        def note(self, text: str) -> None:
            self.said.append(str(text))

    monkeypatch.setattr(rt, "read_cpuinfo", lambda: avx2)
    notes = Notes()
    job_progress(notes, checked)  # type: ignore[arg-type]
    assert len(notes.said) == 1 and "no native bf16" in notes.said[0]
    monkeypatch.setattr(rt, "read_cpuinfo", lambda: native)
    quiet = Notes()
    job_progress(quiet, checked)  # type: ignore[arg-type]
    assert quiet.said == []
