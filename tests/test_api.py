"""The Python API and the one batch loop: reports, a test-time-optimising model, no hidden state."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from sdnet_cli import api
from sdnet_cli.attacks import AttackConfig, run_attack
from sdnet_cli.errors import UsageError
from sdnet_cli.report import Report
from sdnet_cli.runtime import Runtime, predict_correct

CPU = Runtime.create("cpu")


class GradientStepModel(nn.Module):
    """Optimises its input inside the forward (test-time optimisation): one gradient step that pulls
    the image towards the template of class 0, then a nearest-template classifier. Gradients are
    switched on inside, as such defences do, which ``inference_mode`` forbids."""

    def __init__(self, templates: torch.Tensor) -> None:
        super().__init__()
        self.templates = templates  # [classes, C*H*W]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            z = x.flatten(1).detach().clone().requires_grad_(True) if not x.requires_grad else x.flatten(1)
            pull = ((z - self.templates[0]) ** 2).sum()
            (grad,) = torch.autograd.grad(pull, z, create_graph=x.requires_grad)
            z = z - 0.1 * grad  # 20% of the way to template 0
        return -torch.cdist(z, self.templates)


def test_eval_and_attack_judge_a_test_time_optimising_model(cifar_test_images) -> None:  # type: ignore[no-untyped-def]
    images, labels = cifar_test_images
    images, labels = images[:16], labels[:16]
    torch.manual_seed(0)
    templates = torch.rand(10, 3 * 32 * 32)
    model = GradientStepModel(templates)
    # reference: the same arithmetic written out in float64, without autograd
    x = torch.from_numpy(images).permute(0, 3, 1, 2).double().div(255).flatten(1)
    z = x - 0.1 * 2 * (x - templates[0].double())
    expected = torch.cdist(z, templates.double()).argmin(1).numpy() == labels
    assert np.array_equal(predict_correct(model, images, labels, CPU, batch_size=8), expected)
    config = AttackConfig.create(attack="pgd", eps=["0"], steps=1)
    results = run_attack(model, images, labels, config, runtime=CPU, batch_size=8)
    assert np.array_equal(results.clean, expected)


def test_report_frame_and_files(tmp_path: Path) -> None:
    rows = [
        {"corruption": "clean", "severity": 0, "accuracy": 50.0},
        {"corruption": "fog", "severity": 1, "accuracy": 25.0},
    ]
    drawn = []

    def extra(out_dir: Path, stem: str) -> list[Path]:
        path = out_dir / f"{stem}.txt"
        path.write_text("plot")
        drawn.append(path)
        return [path]

    report = Report(rows, {"command": "eval", "seed": 0}, name="r", title="t", extras=[extra])
    frame = report.to_frame()
    assert isinstance(frame, pd.DataFrame) and list(frame["accuracy"]) == [50.0, 25.0]
    paths = report.write(tmp_path, "named")
    assert sorted(p.name for p in paths) == ["named.csv", "named.json", "named.md", "named.txt"]
    assert json.loads((tmp_path / "named.json").read_text())["rows"] == rows
    with pytest.raises(UsageError) as caught:
        report.write(tmp_path, "../escaped")
    assert caught.value.parameter == "name" and not (tmp_path.parent / "escaped.json").exists()


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"data": {"n_examples": 0}}, "n_examples"),
        ({"run": {"batch_size": 0}}, "batch_size"),
        ({"data": {"seed": -1}}, "seed"),
        ({"data": {"seed": 2**32}}, "seed"),
        ({"data": {"dataset": "mnist"}}, None),
        ({"corruptions": ["rain"]}, "corruptions"),
        ({"lam": "oracle"}, "sweep"),
        ({"run": {"precision": "fp8"}}, "precision"),
        ({"run": {"device": "tpu"}}, "device"),
    ],
)
def test_evaluate_refuses_bad_input_before_any_work(kwargs: dict, parameter: str | None, tmp_path: Path) -> None:
    """A bad value is refused with its name, whether a record (``DataSpec``, ``RunSpec``) or the call holds it."""
    data, run = kwargs.pop("data", {}), kwargs.pop("run", {})
    with pytest.raises(UsageError) as caught:
        api.evaluate_corruptions(
            data=api.DataSpec(**{"data_dir": tmp_path / "nowhere", **data}), run=api.RunSpec(**run), **kwargs
        )
    assert caught.value.parameter == parameter
    if data.get("dataset") == "mnist":
        assert "unknown dataset 'mnist'" in str(caught.value)


@pytest.mark.parametrize(
    ("call", "parameter"),
    [
        (lambda: api.attack(data=api.DataSpec(cache_dir=Path("cache"))), "cache_dir"),
        (lambda: api.attack_vs_lambda(data=api.DataSpec(cifar_c_dir=Path("c"))), "cifar_c_dir"),
        (lambda: api.attack(run=api.RunSpec(compile=True)), "compile"),
        (lambda: api.check(data=api.DataSpec(seed=3)), "seed"),
        (lambda: api.check(run=api.RunSpec(batch_size=8)), "batch_size"),
        (lambda: api.generate_corruptions(out_dir=Path("c"), data=api.DataSpec(cache_dir=Path("x"))), "cache_dir"),
        (lambda: api.train(model="sdnet18", out=Path("w.safetensors"), data=api.DataSpec(n_examples=5)), "n_examples"),
        (lambda: api.train(model="sdnet18", out=Path("w.safetensors"), run=api.RunSpec(batch_size=5)), "batch_size"),
        (lambda: api.export_checkpoint(out=Path("m.pth"), model=api.ModelSpec("sdnet18", n_steps=3)), "n_steps"),
    ],
)
def test_a_field_a_job_cannot_use_is_refused_not_dropped(call: Any, parameter: str) -> None:
    """A record's field set to other than its default, where the job has no use for it, is a usage error
    naming it (before any work), never silently ignored."""
    with pytest.raises(UsageError, match="does not apply to") as caught:
        call()
    assert caught.value.parameter == parameter


def test_records_take_text_paths_and_check_values_when_made() -> None:
    data = api.DataSpec(data_dir="data", dataset="cifar100")  # type: ignore[arg-type]
    assert data.data_dir == Path("data") and api.ModelSpec("sdnet18", checkpoint="w.pt").checkpoint == Path("w.pt")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="unknown dataset 'mnist'"):
        api.DataSpec(dataset="mnist")
    with pytest.raises(UsageError) as caught:
        api.ModelSpec(nn.Linear(2, 2), weights_dir=Path("w"))
    assert caught.value.parameter == "weights_dir"


@pytest.mark.slow
def test_cli_help_and_version_import_no_torch() -> None:
    code = (
        "import sys\nfrom typer.testing import CliRunner\nfrom sdnet_cli.cli import app\n"
        "for args in (['--help'], ['eval', '--help'], ['attack', '--help'], ['--version']):\n"
        "    result = CliRunner().invoke(app, args)\n"
        "    assert result.exit_code == 0, result.output\n"
        "print(sorted(m for m in ('torch', 'numpy', 'pandas') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_version_matches_the_package_metadata() -> None:
    from importlib.metadata import version

    from typer.testing import CliRunner

    from sdnet_cli.cli import app

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"sdnet-cli {version('sdnet-cli')}"


def test_non_finite_logits_stop_the_run_naming_the_cell(cifar_test_images) -> None:  # type: ignore[no-untyped-def]
    from sdnet_cli.data.cells import Cell
    from sdnet_cli.evaluate import evaluate_cells
    from sdnet_cli.models import create_model
    from sdnet_cli.runtime import NonFiniteOutput

    images, labels = cifar_test_images

    class NaNFromSecondBatch(nn.Module):
        """Finite logits for the first 8 images, NaN afterwards: counted as wrong, argmax would hide it."""

        def __init__(self) -> None:
            super().__init__()
            self.seen = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.seen += len(x)
            return torch.full((len(x), 10), float("nan") if self.seen > 8 else 0.0)

    with pytest.raises(NonFiniteOutput):
        predict_correct(NaNFromSecondBatch(), images[:16], labels[:16], CPU, batch_size=8)

    class Source:
        def load(self, cell: Cell):  # type: ignore[no-untyped-def]
            return images[:16], labels[:16]

    classifier = create_model("sdnet18", width=4)
    classifier.network = NaNFromSecondBatch()  # type: ignore[assignment]
    with pytest.raises(NonFiniteOutput, match="fog severity 2"):
        evaluate_cells(
            classifier, [Cell("fog", 2)], Source(), CPU, {"model": "m", "dataset": "cifar10", "lam": None}, batch_size=8
        )
