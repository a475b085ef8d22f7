"""Rules beside the label-using oracles, the per-row lambda statistics of per-input policies, and the
hold-out protocol, on width-8 models and small slices; references are plain forwards per lambda,
numpy statistics of lambdas known by construction, and spies on what reaches the line fits."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import sdnet_cli.lam.calibration as calibration_module
import sdnet_cli.sweep.runs as sweep
from sdnet_cli import api
from sdnet_cli.data.cells import Cell, CellSource
from sdnet_cli.evaluate import evaluate_cells
from sdnet_cli.lam import Calibration, FixedLambda, NoiseLevelLambda, ReconErrorLambda
from sdnet_cli.models import create_model
from sdnet_cli.models.checkpoints import sha256_of
from sdnet_cli.runtime import Runtime

pytestmark = pytest.mark.slow  # every test sweeps generated corrupted cells through a model

CPU = Runtime.create("cpu")
CELLS = [Cell("clean", 0), Cell("gaussian_noise", 5), Cell("contrast", 5)]
GRID = [0.1, 0.6, 1.4]
N = 32
ROW_KEYS = {"model", "dataset", "corruption", "severity", "lam", "n", "correct", "accuracy", "seconds"}
LAM_KEYS = {"lam_mean", "lam_p10", "lam_p90"}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def source(data_dir: Path, cache_dir: Path) -> CellSource:
    cells = CellSource(data_dir, cache_dir=cache_dir, seed=1, n_examples=N, workers=1)
    cells.prepare(["gaussian_noise", "contrast"])
    return cells


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("sdnet18", width=8).eval()


def correct_at(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, lam: float) -> np.ndarray:
    """Reference: per-image correctness from one plain forward at ``lam``."""
    x = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad(), model.test_lambda(lam):
        return model.network(model.normalize(x)).argmax(1).numpy() == labels


class MeanPixel:
    """A per-input policy whose lambdas are known without the model: each input's mean pixel value."""

    name = "mean-pixel"

    def __call__(self, model: torch.nn.Module, x_normalized: torch.Tensor) -> torch.Tensor:
        return (x_normalized * model.std + model.mean).mean(dim=(1, 2, 3))


def test_sweep_matrix_and_both_oracles_match_plain_forwards(model: torch.nn.Module, source: CellSource) -> None:
    sweeps = sweep.sweep_cells(model, CELLS, source, CPU, GRID, batch_size=10)
    rows = sweep.oracle_rows(sweeps, {"model": "m", "dataset": "cifar10"})
    by_key = {(r["lam"], r["corruption"]): r for r in rows}
    for swept in sweeps:
        images, labels = source.load(swept.cell)
        reference = np.stack([correct_at(model, images, labels, lam) for lam in GRID])
        np.testing.assert_array_equal(swept.correct, reference)
        counts = reference.sum(axis=1)
        cell_row = by_key[(sweep.ORACLE_CELL, swept.cell.corruption)]
        assert cell_row["correct"] == counts.max() and cell_row["lam_mean"] == GRID[int(np.argmax(counts))]
        assert cell_row["lam_p10"] == cell_row["lam_p90"] == cell_row["lam_mean"]
        input_row = by_key[(sweep.ORACLE_INPUT, swept.cell.corruption)]
        assert input_row["correct"] == int(reference.any(axis=0).sum()) >= cell_row["correct"]
        assert not LAM_KEYS & set(input_row)
    assert all(r["uses_labels"] for r in rows)
    mean = by_key[(sweep.ORACLE_CELL, "mean")]
    assert mean["accuracy"] == pytest.approx(
        np.mean([by_key[(sweep.ORACLE_CELL, c.corruption)]["accuracy"] for c in CELLS[1:]]), abs=1e-4
    )
    # the sweep's ordinary rows are unchanged by keeping the matrix
    plain = sweep.sweep_rows(sweeps, {"model": "m", "dataset": "cifar10"})
    assert [r["correct"] for r in plain] == [int(c) for s in sweeps for c in s.correct.sum(axis=1)]


def test_per_input_rows_carry_lambda_statistics_and_fixed_rows_do_not(
    model: torch.nn.Module, source: CellSource
) -> None:
    deployed = FixedLambda(0.1)
    with model.using(deployed):
        fixed = evaluate_cells(
            model, CELLS, source, CPU, {"model": "m", "dataset": "cifar10", "lam": 0.1}, batch_size=10
        )
        assert model.lam_policy is deployed
        policy = MeanPixel()
        with model.using(policy):
            rows = evaluate_cells(
                model, CELLS, source, CPU, {"model": "m", "dataset": "cifar10", "lam": "mean-pixel"}, batch_size=10
            )
            assert model.lam_policy is policy  # nothing left behind by the call
    assert all(set(r) == ROW_KEYS for r in fixed)  # fixed lambda: today's columns, no others
    pooled = []
    for cell, row in zip(CELLS, rows):
        images, labels = source.load(cell)
        lams = np.asarray(images, dtype=np.float64).mean(axis=(1, 2, 3)) / 255
        assert row["lam_mean"] == pytest.approx(lams.mean(), abs=1e-4)
        assert row["lam_p10"] == pytest.approx(np.percentile(lams, 10), abs=1e-4)
        assert row["lam_p90"] == pytest.approx(np.percentile(lams, 90), abs=1e-4)
        assert row["lam_p10"] < row["lam_mean"] < row["lam_p90"]
        x = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float() / 255
        with torch.no_grad(), model.test_lambda(torch.from_numpy(lams).float()):
            expected = int((model.network(model.normalize(x)).argmax(1).numpy() == labels).sum())
        assert row["correct"] == expected
        if cell.severity:
            pooled.append(lams)
    mean = rows[-1]
    assert mean["corruption"] == "mean" and mean["lam_p90"] == pytest.approx(
        np.percentile(np.concatenate(pooled), 90), abs=1e-4
    )


def test_a_fixed_rule_at_a_coarse_lambda_reads_the_sweep_and_equals_evaluating_it(
    model: torch.nn.Module, source: CellSource, monkeypatch: pytest.MonkeyPatch
) -> None:
    """lambda-rules ran each fixed rule's forwards again after the sweep had run them on every image: a
    rule at a lambda the plan runs on every image (0.3 of 0.1:0.9:0.1 with span 0.2) now takes the sweep's
    counts; one between them (0.2) is still evaluated. Both equal evaluating the rule and plain forwards."""
    evaluated: list[object] = []

    def spy(model: torch.nn.Module, *args: object, **kwargs: object) -> object:
        evaluated.append(model.lam_policy)
        return evaluate_cells(model, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(sweep, "evaluate_cells", spy)
    forwards = []
    hook = model.stem_csc.register_forward_pre_hook(lambda _m, args: forwards.append(len(args[0])))
    try:
        grid = [round(0.1 * k, 1) for k in range(1, 10)]
        base = {"model": "m", "dataset": "cifar10"}
        rules = [FixedLambda(0.3), FixedLambda(0.2)]
        rows, sweeps = sweep.compare_rules(model, CELLS, source, CPU, rules, grid, base, batch_size=10)
    finally:
        hook.remove()
    assert [p.value for p in evaluated] == [0.2]  # type: ignore[attr-defined]
    assert sum(forwards) == sum(s.pairs_run for s in sweeps) + len(CELLS) * N  # the 0.2 rule's forwards only
    for rule in rules:
        with model.using(rule):
            reference = evaluate_cells(model, CELLS, source, CPU, {**base, "lam": rule.value}, batch_size=10)
        found = [r for r in rows if r["lam"] == rule.value]
        assert [{**r, "seconds": 0} for r in found] == [{**r, "seconds": 0, "uses_labels": False} for r in reference]
        for cell, row in zip(CELLS, found):
            images, labels = source.load(cell)
            assert row["correct"] == int(correct_at(model, images, labels, rule.value).sum())


def make_calibration(sha: str) -> Calibration:
    """Clean and contrast groups ask for a small lambda, gaussian_noise for a large one."""
    points = [
        {"corruption": "clean", "severity": 0, "error": 10.0, "noise": 0.01, "curve": [90.0, 60.0, 30.0]},
        {"corruption": "gaussian_noise", "severity": 5, "error": 40.0, "noise": 0.2, "curve": [20.0, 50.0, 40.0]},
        {"corruption": "contrast", "severity": 5, "error": 20.0, "noise": 0.02, "curve": [50.0, 30.0, 10.0]},
    ]
    return Calibration(
        recon=ReconErrorLambda(0.02, -0.1, 0.1, 1.4),
        noise=NoiseLevelLambda(5.0, 0.05, 0.1, 1.4),
        recommended="noise",
        grid=GRID,
        points=points,
        corruptions=["gaussian_noise", "contrast"],
        severities=[5],
        n=8,
        seed=0,
        training_lam=0.1,
        checkpoint_sha256=sha,
    )


def test_hold_out_rows_compare_the_refit_rule_with_the_full_one(model: torch.nn.Module, source: CellSource) -> None:
    full = make_calibration("ab" * 32)
    rows = sweep.hold_out(
        model, full, ["gaussian_noise"], source, CPU, [5], {"model": "m", "dataset": "cifar10"}, batch_size=16
    )
    variants = {r["variant"]: r for r in rows if r["corruption"] == "gaussian_noise"}
    assert set(variants) == {sweep.REFERENCE, sweep.IN_CALIBRATION, sweep.HELD_OUT}
    images, labels = source.load(Cell("gaussian_noise", 5))
    assert variants[sweep.REFERENCE]["correct"] == int(correct_at(model, images, labels, 0.1).sum())
    # without gaussian_noise every remaining group wants the smallest lambda: the refit sits at 0.1 throughout
    refit = full.without(["gaussian_noise"]).policy("auto")
    assert variants[sweep.HELD_OUT]["lam"] == refit.name == "auto:noise"
    assert variants[sweep.HELD_OUT]["lam_p90"] == pytest.approx(0.1)
    assert variants[sweep.HELD_OUT]["correct"] == variants[sweep.REFERENCE]["correct"]
    assert variants[sweep.IN_CALIBRATION]["lam_mean"] > 0.1
    (summary,) = sweep.hold_out_summary(rows)
    means = {r["variant"]: r["accuracy"] for r in rows if r["corruption"] == "mean"}
    assert summary["gain_held_out"] == pytest.approx(means[sweep.HELD_OUT] - means[sweep.REFERENCE], abs=1e-4)
    assert summary["gain_in_calibration"] == pytest.approx(
        means[sweep.IN_CALIBRATION] - means[sweep.REFERENCE], abs=1e-4
    )


@pytest.fixture()
def checkpoint(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    path = tmp_path / "w8.safetensors"
    shutil.copy(tiny_checkpoint, path)
    return path


def test_api_hold_out_never_fits_on_the_held_out_groups(
    checkpoint: Path, data_dir: Path, cache_dir: Path, source: CellSource, monkeypatch: pytest.MonkeyPatch
) -> None:
    fitted: list[set[str]] = []
    real_fit_rules = calibration_module.fit_rules

    def spy(points, grid):  # type: ignore[no-untyped-def]
        fitted.append({p["corruption"] for p in points})
        return real_fit_rules(points, grid)

    monkeypatch.setattr(calibration_module, "fit_rules", spy)
    monkeypatch.setattr(sweep, "fit_rules", spy)
    report = api.lambda_hold_out(
        model=api.ModelSpec("sdnet18", checkpoint=checkpoint),
        data=api.DataSpec(n_examples=N, seed=1, data_dir=data_dir, cache_dir=cache_dir),
        run=api.RunSpec(device="cpu"),
        hold_out=["gaussian_noise", "contrast"],
        fit_corruptions=["gaussian_noise", "contrast"],
        fit_n=8,
        fit_lams=GRID,
        severities=[5],
    )
    everything = {"clean", "gaussian_noise", "contrast"}
    assert fitted == [everything, everything - {"gaussian_noise"}, everything - {"contrast"}]
    assert [s["held_out"] for s in report.meta["summary"]] == ["gaussian_noise", "contrast"]
    assert report.meta["calibration"]["split"] == "train"
    assert "left out" in report.markdown and "| held_out" in report.markdown
    with pytest.raises(api.UsageError, match="rule") as raised:
        api.lambda_hold_out(model=api.ModelSpec("sdnet18", checkpoint=checkpoint), rule="oracle")
    assert raised.value.parameter == "rule"


def test_api_compare_rules_report(checkpoint: Path, data_dir: Path, cache_dir: Path, source: CellSource) -> None:
    calibration = make_calibration(sha256_of(checkpoint)).save(checkpoint.with_name("w8.lambda.json"))
    report = api.compare_lambda_rules(
        model=api.ModelSpec("sdnet18", checkpoint=checkpoint),
        data=api.DataSpec(n_examples=N, seed=1, data_dir=data_dir, cache_dir=cache_dir),
        run=api.RunSpec(device="cpu", batch_size=16),
        corruptions=["gaussian_noise"],
        severities=[5],
        rules=[0.1, "recon", "auto"],
        lams=GRID,
    )
    assert calibration.is_file()
    lams = list(dict.fromkeys(r["lam"] for r in report.rows))
    top2 = sweep.top2_label(0.1)  # the training lambda of the width-8 checkpoint, on GRID
    assert lams == [0.1, "recon", "auto:noise", sweep.ORACLE_CELL, sweep.ORACLE_INPUT, top2]
    assert [r["uses_labels"] for r in report.rows] == [
        r["lam"] in (sweep.ORACLE_CELL, sweep.ORACLE_INPUT, top2) for r in report.rows
    ]
    accuracy = {(r["lam"], r["corruption"], r["severity"]): r["accuracy"] for r in report.rows}
    for (lam, corruption, severity), value in accuracy.items():
        if lam == top2:  # two guesses at 0.1 are right at least as often as one
            assert value >= accuracy[(0.1, corruption, severity)]
    summary = {s["lam"]: s for s in report.meta["summary"]}
    assert summary[0.1]["gain"] == 0 and summary[sweep.ORACLE_INPUT]["gain"] >= summary[sweep.ORACLE_CELL]["gain"] >= 0
    assert "uses_labels" in report.markdown and "very images they are scored on" in report.markdown
    fixed = [r for r in report.rows if r["lam"] == 0.1]
    assert all(set(r) == ROW_KEYS | {"uses_labels"} for r in fixed)
