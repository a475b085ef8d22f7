"""An interrupted lambda sweep (test cells, then the calibration's training groups) keeps every finished cell,
and a resumed one gives the sweeps, report and calibration of an uninterrupted run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_adapt import FakeSource
from test_eval_resume import StopInCell
from typer.testing import CliRunner

import sdnet_cli.sweep.runs as runs
from sdnet_cli.cli import app
from sdnet_cli.data.cells import Cell
from sdnet_cli.errors import UsageError
from sdnet_cli.models import create_model
from sdnet_cli.runtime import Runtime
from sdnet_cli.sweep.plan import SweepPlan
from sdnet_cli.sweep.runs import CellSweep, SweptCells, calibrate, sweep_cells

CPU = Runtime.create("cpu")
CELLS = [Cell("clean", 0), Cell("gaussian_noise", 5), Cell("fog", 2)]
GRID = [0.1, 0.2, 0.3, 0.4, 0.5]
PLAN = SweepPlan(span=0.2, margin=0.0, audit=0.5)  # two lambdas inferred per image, half of those audited
CONFIG = {"command": "sweep-lambda", "seed": 0}


def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("sdnet18", width=8).eval()


def images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), (np.arange(n) + seed) % 10


def same_sweeps(a: CellSweep, b: CellSweep) -> None:
    """Everything but the seconds, which are the clock's."""
    assert a.cell == b.cell and a.grid == b.grid
    np.testing.assert_array_equal(a.correct, b.correct)
    assert a.mean_error == b.mean_error  # exact: the state file keeps every float's repr
    assert (a.top2 is None) == (b.top2 is None)
    if a.top2 is not None:
        np.testing.assert_array_equal(a.top2, b.top2)
    assert (a.pairs_run, a.audited, a.audit_same, a.in_eval_batches) == (
        b.pairs_run,
        b.audited,
        b.audit_same,
        b.in_eval_batches,
    )


def test_a_resumed_sweep_runs_only_the_unfinished_cells_and_gives_the_uninterrupted_sweeps(tmp_path: Path) -> None:
    model, path = tiny(), tmp_path / "run.state.json"
    source = FakeSource({cell: images(10, i) for i, cell in enumerate(CELLS)})

    def sweep(saved: SweptCells | None, progress: StopInCell) -> list[CellSweep]:
        return sweep_cells(model, CELLS, source, CPU, GRID, 4, progress, PLAN, seed=3, saved=saved)

    straight = sweep(None, StopInCell())
    with pytest.raises(KeyboardInterrupt):
        sweep(SweptCells(path, CONFIG, resume=False), StopInCell(stop_after=10 * 5 + 4))  # in the second cell
    assert list(json.loads(path.read_text())["cells"]) == ["test:clean/0"]
    counted = StopInCell()
    resumed = sweep(SweptCells(path, CONFIG, resume=True), counted)
    assert counted.seen == 2 * 10 * 5  # the two unfinished cells, each (lambda, image) pair once
    for a, b in zip(resumed, straight, strict=True):
        same_sweeps(a, b)
    # the fields the file must carry are there to compare
    assert all(s.top2 is not None and s.audited > 0 and s.pairs_run < s.correct.size for s in straight)
    assert any(s.correct.any() for s in straight)


def test_a_resumed_calibration_gives_the_uninterrupted_one(tmp_path: Path) -> None:
    model, path = tiny(), tmp_path / "run.state.json"
    train = images(12, 9)
    args = (model, *train, CPU, GRID, ["gaussian_noise"], [1, 5])

    def fit(saved: SweptCells | None, progress: StopInCell) -> Any:
        return calibrate(*args, n=8, seed=2, progress=progress, batch_size=4, plan=PLAN, saved=saved)

    straight = fit(None, StopInCell())
    with pytest.raises(KeyboardInterrupt):
        fit(SweptCells(path, CONFIG, resume=False), StopInCell(stop_after=2 * 8 * 5 + 4))  # in the third group
    assert sorted(json.loads(path.read_text())["cells"]) == ["train:clean/0", "train:gaussian_noise/1"]
    counted = StopInCell()
    resumed = fit(SweptCells(path, CONFIG, resume=True), counted)
    assert counted.seen == 8 * 5
    assert resumed.to_json() == straight.to_json()


def test_a_damaged_or_foreign_sweep_state_is_refused_by_name(tmp_path: Path) -> None:
    model, path = tiny(), tmp_path / "run.state.json"
    source = FakeSource({CELLS[0]: images(6, 0)})
    sweep_cells(model, CELLS[:1], source, CPU, GRID, 4, saved=SweptCells(path, CONFIG, resume=False))
    state = json.loads(path.read_text())
    with pytest.raises(UsageError, match="different settings \\(seed\\)"):
        SweptCells(path, {**CONFIG, "seed": 1}, resume=True)
    state["cells"]["test:clean/0"]["correct"][1] = "01"  # one lambda's mask shorter than the others
    path.write_text(json.dumps(state))
    with pytest.raises(UsageError, match="must give every correct mask .*the file is damaged"):
        SweptCells(path, CONFIG, resume=True)
    cell = state["cells"]["test:clean/0"]
    for key in ("correct", "mean_error", "seconds"):
        cell[key] = cell[key][:2]
    cell["correct"][1], cell["in_eval_batches"], cell["pairs_run"] = cell["correct"][0], [0], 12
    path.write_text(json.dumps(state))  # valid on its own, but for a grid of 2 lambdas
    with pytest.raises(UsageError, match="holds 2 lambdas, not the grid's 5"):
        sweep_cells(model, CELLS[:1], source, CPU, GRID, 4, saved=SweptCells(path, CONFIG, resume=True))


@pytest.mark.slow
def test_cli_sweep_with_fit_interrupted_then_resumed_writes_the_uninterrupted_report(
    tiny_checkpoint: Path, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint = tmp_path / "w8.safetensors"
    shutil.copy(tiny_checkpoint, checkpoint)
    common = ["sweep-lambda", "--model", "sdnet18", "--checkpoint", str(checkpoint), "-n", "8", "--data-dir"]
    common += [str(data_dir), "--cache-dir", str(tmp_path / "c"), "--device", "cpu", "-c", "gaussian_noise"]
    common += ["-s", "5", "--lams", "0.1,0.5", "--fit", "--fit-n", "8", "--batch-size", "4"]

    def run(out: str, *extra: str) -> Any:
        return CliRunner().invoke(app, [*common, "--out", str(tmp_path / out), *extra])

    assert run("straight").exit_code == 0
    straight_fit = (tmp_path / "w8.lambda.json").read_bytes()
    (tmp_path / "w8.lambda.json").unlink()

    real, calls = runs.sweep_images, []

    def stop_in_the_third(*args: Any, **kwargs: Any) -> Any:  # clean and gaussian_noise/5 of the test split finish
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(runs, "sweep_images", stop_in_the_third)
    stopped = run("out")
    assert stopped.exit_code == 130
    state = tmp_path / "out" / "sweep-lambda-sdnet18.state.json"
    assert "2 finished cells of 4 are saved in" in stopped.output and "--resume" in stopped.output
    assert sorted(json.loads(state.read_text())["cells"]) == ["test:clean/0", "test:gaussian_noise/5"]
    assert not (tmp_path / "out" / "sweep-lambda-sdnet18.json").exists()

    refused = run("out", "--resume", "--fit-n", "6")
    assert refused.exit_code == 2 and "different settings (fit_n)" in refused.output
    monkeypatch.setattr(runs, "sweep_images", real)
    resumed = run("out", "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert not state.exists()
    assert (tmp_path / "w8.lambda.json").read_bytes() == straight_fit

    def report(out: str) -> dict[str, Any]:
        return json.loads((tmp_path / out / "sweep-lambda-sdnet18.json").read_text())  # type: ignore[no-any-return]

    def rows(out: str) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in report(out)["rows"]]

    assert rows("out") == rows("straight")
    assert report("out")["meta"]["points"] == report("straight")["meta"]["points"]
    assert report("out")["meta"]["resumed_cells"] == 2 and "resumed_cells" not in report("straight")["meta"]
