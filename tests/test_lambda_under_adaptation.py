"""The lambda rule calibrated under test-time adaptation: the sweep's forwards under ``bn`` against a hand-run
batched forward, the calibration's record of the adaptation, and ``eval``'s note on a mismatch."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_adapt import FakeSource

from sdnet_cli.adapt import AdaptSpec, BatchNormAdaptation, calibration_record, make_adaptation
from sdnet_cli.data.cells import Cell
from sdnet_cli.errors import UsageError
from sdnet_cli.lam import Calibration, FixedLambda, adaptation_label, calibration_mismatch
from sdnet_cli.models import create_model
from sdnet_cli.runtime import Runtime
from sdnet_cli.sweep.plan import SweepPlan
from sdnet_cli.sweep.runs import sweep_cells

CPU = Runtime.create("cpu")


def test_sweep_under_bn_runs_every_pair_in_batches_of_the_adaptation() -> None:
    torch.manual_seed(0)
    model = create_model("sdnet18", width=8).eval()
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 6)
    cell = Cell("gaussian_noise", 5)
    grid = [0.1, 0.6]
    adapt = make_adaptation("bn", 3)
    (found,) = sweep_cells(
        model, [cell], FakeSource({cell: (images, labels)}), CPU, grid, 2, plan=SweepPlan(), adapt=adapt
    )
    x = CPU.to_input(images)
    for j, lam in enumerate(grid):  # by hand: batches of 3 with their own statistics, at each lambda
        with torch.no_grad(), model.using(FixedLambda(lam)), BatchNormAdaptation().cell(model) as forward:
            pred = torch.cat([forward(x[:3]), forward(x[3:])]).argmax(1).numpy()
        assert np.array_equal(found.correct[j], pred == labels)
    assert found.pairs_run == 12  # every pair ran: the plan's subsets would change a batch's statistics
    with pytest.raises(UsageError, match="calibration runs under"):
        sweep_cells(model, [cell], FakeSource({cell: (images, labels)}), CPU, grid, adapt=make_adaptation("tent"))


def calibration(adaptation: dict | None) -> Calibration:
    line = {"a": 0.0, "b": 0.2, "lo": 0.1, "hi": 1.0}
    data = {
        "rules": {"recon": line, "noise": {**line, "c": 0.0}},
        "recommended": "noise",
        "grid": [0.1, 1.0],
        "points": [],
        "corruptions": ["gaussian_noise"],
        "severities": [5],
        "n": 8,
        "seed": 0,
        "training_lam": 0.1,
        "checkpoint_sha256": "",
        "split": "train",
        **({"adaptation": adaptation} if adaptation is not None else {}),
    }
    return Calibration.from_json(data)


def test_the_calibration_records_its_adaptation_and_eval_compares() -> None:
    bn = calibration_record(make_adaptation("bn"))
    assert bn == {"method": "bn", "batch_size": 200}
    assert calibration_record(make_adaptation(AdaptSpec("bn-prior", prior_strength=4))) == {
        "method": "bn-prior",
        "prior_strength": 4.0,
    }
    stored, under_bn = calibration(None), calibration(bn)
    assert "adaptation" not in stored.to_json() and under_bn.to_json()["adaptation"] == bn
    assert Calibration.from_json(under_bn.to_json()).adaptation == bn
    assert calibration_mismatch(under_bn, bn) is None and calibration_mismatch(stored, None) is None
    note = calibration_mismatch(stored, bn)
    assert note is not None and "none (stored BatchNorm statistics)" in note and "bn (batches of 200)" in note
    assert "sweep-lambda --fit --adapt bn" in note
    assert calibration_mismatch(under_bn, {"method": "bn", "batch_size": 1}) is not None  # another batch size
    assert adaptation_label({"method": "bn-prior", "prior_strength": 16.0}) == "bn-prior (N=16)"


@pytest.mark.slow
def test_cli_fit_under_bn_then_eval(tiny_checkpoint: Path, data_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from sdnet_cli.cli import app

    checkpoint = tmp_path / "w8.safetensors"
    shutil.copy(tiny_checkpoint, checkpoint)
    common = ["--model", "sdnet18", "--checkpoint", str(checkpoint), "-n", "8", "--data-dir", str(data_dir)]
    common += ["--cache-dir", str(tmp_path / "c"), "--device", "cpu", "-c", "gaussian_noise", "-s", "5"]
    common += ["--batch-size", "4", "--out", str(tmp_path / "out")]
    fit = ["sweep-lambda", *common, "--lams", "0.1,0.5", "--fit", "--fit-n", "8", "--adapt", "bn"]
    result = CliRunner().invoke(app, fit)
    assert result.exit_code == 0, result.output
    fitted = tmp_path / "w8.lambda-bn.json"
    assert json.loads(fitted.read_text())["adaptation"] == {"method": "bn", "batch_size": 4}
    assert not (tmp_path / "w8.lambda.json").exists()  # the stored-statistics calibration's name stays free

    result = CliRunner().invoke(app, ["eval", *common, "--lam", "auto", "--adapt", "bn", "--name", "e"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "e.json").read_text())
    assert "calibration_mismatch" not in report["meta"] and "note:" not in result.output
    args = ["eval", *common, "--lam", "auto", "--calibration", str(fitted), "--name", "f"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "f.json").read_text())
    assert "calibrated under adapt bn (batches of 4)" in report["meta"]["calibration_mismatch"]
    assert "note:" in result.output and "calibrated under adapt bn" in result.output


def test_cli_fit_under_bn_prior_records_its_strength(tiny_checkpoint: Path, data_dir: Path, tmp_path: Path) -> None:
    """``--prior-strength`` reaches the calibration's record, and eval at the default strength says it differs."""
    from typer.testing import CliRunner

    from sdnet_cli.cli import app

    checkpoint = tmp_path / "w8.safetensors"
    shutil.copy(tiny_checkpoint, checkpoint)
    common = ["--model", "sdnet18", "--checkpoint", str(checkpoint), "-n", "6", "--data-dir", str(data_dir)]
    common += ["--cache-dir", str(tmp_path / "c"), "--device", "cpu", "-c", "gaussian_noise", "-s", "5"]
    common += ["--out", str(tmp_path / "out"), "--adapt", "bn-prior"]
    fit = ["sweep-lambda", *common, "--lams", "0.1,0.5", "--fit", "--fit-n", "6", "--prior-strength", "4"]
    result = CliRunner().invoke(app, fit)
    assert result.exit_code == 0, result.output
    fitted = json.loads((tmp_path / "w8.lambda-bn-prior.json").read_text())
    assert fitted["adaptation"] == {"method": "bn-prior", "prior_strength": 4.0}
    result = CliRunner().invoke(app, ["eval", *common, "--lam", "auto", "--name", "e"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "e.json").read_text())
    assert "N=4" in report["meta"]["calibration_mismatch"] and "N=16" in report["meta"]["calibration_mismatch"]


def test_fit_never_replaces_the_shipped_calibration_by_default(tmp_path: Path) -> None:
    """A shipped checkpoint's calibration is what every ``--lam auto`` run reads: a fit must name its output, and
    is refused before any work when it does not; the shipped files are left as they were."""
    from typer.testing import CliRunner

    from sdnet_cli.cli import app
    from sdnet_cli.models.weights import packaged_weights_dir

    before = {p.name: p.read_bytes() for p in packaged_weights_dir().glob("*.json")}
    args = ["sweep-lambda", "--model", "sdnet18", "--fit", "-n", "2", "--fit-n", "2", "--out", str(tmp_path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "--calibration-out" in result.output and "shipped" in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert not list(tmp_path.iterdir())
    assert {p.name: p.read_bytes() for p in packaged_weights_dir().glob("*.json")} == before
