"""An interrupted evaluation keeps its finished cells and a resumed one gives the uninterrupted rows."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_adapt import BASE, FakeSource, small_net

from sdnet_cli.adapt import make_adaptation
from sdnet_cli.data.cells import Cell
from sdnet_cli.errors import UsageError
from sdnet_cli.evaluate import CellState, evaluate_cells
from sdnet_cli.models import Classifier
from sdnet_cli.runtime import Runtime

CPU = Runtime.create("cpu")
CELLS = [Cell("clean", 0), Cell("gaussian_noise", 5), Cell("fog", 2)]
CONFIG = {"command": "eval", "seed": 0}


def data(n: int = 12) -> dict[Cell, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(1)
    return {c: (rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), rng.integers(0, 10, n)) for c in CELLS}


class PerInput:
    """A per-input lambda, so every row carries lambda percentiles and the mean row needs every image's."""

    name = "per-input"

    def __call__(self, model: Classifier, xn: torch.Tensor) -> torch.Tensor:
        return 0.05 + 0.1 * xn.mean(dim=(1, 2, 3)).abs()


class StopInCell:
    """Progress that counts images and raises Ctrl-C once ``stop_after`` images have been counted."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.seen, self.stop_after = 0, stop_after

    def __call__(self, k: int) -> None:
        self.seen += k
        if self.stop_after is not None and self.seen > self.stop_after:
            raise KeyboardInterrupt


def without_seconds(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


@pytest.mark.parametrize("adapt", [None, "bn"])
def test_resumed_run_skips_finished_cells_and_gives_the_uninterrupted_rows(adapt: str | None, tmp_path: Path) -> None:
    model, source, path = small_net(), FakeSource(data()), tmp_path / "run.state.json"

    def run(saved: CellState | None, progress: StopInCell) -> list[dict]:
        adaptation = make_adaptation(adapt, 4) if adapt else None
        with model.using(PerInput()):
            return evaluate_cells(model, CELLS, source, CPU, BASE, 4, progress, adapt=adaptation, saved=saved)

    straight = run(None, StopInCell())
    with pytest.raises(KeyboardInterrupt):
        run(CellState(path, CONFIG, resume=False), StopInCell(stop_after=12 + 4))  # in the second cell
    assert list(json.loads(path.read_text())["cells"]) == ["clean/0"]
    counted = StopInCell()
    resumed = run(CellState(path, CONFIG, resume=True), counted)
    assert counted.seen == 2 * 12  # only the two unfinished cells went through the model
    assert without_seconds(resumed) == without_seconds(straight)
    assert resumed[-1]["corruption"] == "mean" and "lam_p90" in resumed[-1]  # from every corrupted image's lambda


def one_cell_saved(path: Path) -> None:
    model, source = small_net(), FakeSource(data())
    evaluate_cells(model, CELLS[:1], source, CPU, BASE, 4, saved=CellState(path, CONFIG, resume=False))


def test_a_state_from_other_settings_or_without_resume_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "run.state.json"
    one_cell_saved(path)
    with pytest.raises(UsageError, match="holds an unfinished run; pass resume=True") as caught:
        CellState(path, CONFIG, resume=False)
    assert caught.value.parameter == "resume"
    with pytest.raises(UsageError, match=r"different settings \(seed\)"):
        CellState(path, {**CONFIG, "seed": 1}, resume=True)


def test_a_saved_row_whose_count_does_not_give_its_accuracy_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "run.state.json"
    one_cell_saved(path)
    saved = json.loads(path.read_text())
    row = saved["cells"]["clean/0"]["row"]
    assert CellState(path, CONFIG, resume=True).get(CELLS[0]) == (row, None)
    row["correct"] = row["correct"] + 1 if row["correct"] < row["n"] else row["correct"] - 1
    path.write_text(json.dumps(saved))
    with pytest.raises(UsageError, match=r"cells\.clean/0\.row.*correct/n give accuracy.*damaged"):
        CellState(path, CONFIG, resume=True)


def test_under_torchrun_only_cells_saved_on_every_rank_stay_saved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rank 0 (here) saved clean and gaussian_noise 5; the other rank saved clean only (it was killed between
    the two ranks' writes): gaussian_noise 5 runs again on both. A saved cell this run does not ask for stays."""
    from sdnet_cli import distributed

    path = tmp_path / "run.state.json"
    model, source = small_net(), FakeSource(data())
    evaluate_cells(model, CELLS, source, CPU, BASE, 4, saved=CellState(path, CONFIG, resume=False))
    other_rank = np.array([1, 0])  # clean saved, gaussian_noise 5 not
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "combine", lambda here, op: here + other_rank)
    saved = CellState(path, CONFIG, resume=True)
    saved.keep_common(CELLS[:2])
    assert [cell in saved for cell in CELLS] == [True, False, True]


def test_a_mixed_stream_cannot_resume_cell_by_cell(tmp_path: Path) -> None:
    saved = CellState(tmp_path / "run.state.json", CONFIG, resume=False)
    with pytest.raises(UsageError, match="mixed stream") as caught:
        evaluate_cells(small_net(), CELLS, FakeSource(data()), CPU, BASE, stream="mixed", saved=saved)
    assert caught.value.parameter == "resume"


@pytest.mark.slow
def test_interrupted_eval_says_what_was_saved_and_resume_finishes_it(
    tiny_checkpoint: Path, data_dir: Path, tmp_path: Path
) -> None:
    from sdnet_cli import api
    from sdnet_cli.errors import Interrupted

    common = dict(
        model=api.ModelSpec("sdnet18", checkpoint=tiny_checkpoint),
        data=api.DataSpec(n_examples=8, data_dir=data_dir, cache_dir=tmp_path / "cache"),
        run=api.RunSpec(batch_size=4, device="cpu"),
        corruptions=["gaussian_noise"],
        severities=[1, 2],
        name="run",
        state_dir=tmp_path,
    )

    class StopInThirdCell:
        def task(self, description: str, total: int):  # type: ignore[no-untyped-def]
            stop = StopInCell(stop_after=2 * 8 if description.startswith("evaluating") else None)
            return stop

        def note(self, text: str) -> None:
            pass

    with pytest.raises(Interrupted) as caught:
        api.evaluate_corruptions(**common, progress=StopInThirdCell())
    assert "2 finished cells of 3 are saved in" in str(caught.value) and caught.value.parameter == "resume"
    with pytest.raises(UsageError, match="pass resume=True"):
        api.evaluate_corruptions(**common)
    resumed = api.evaluate_corruptions(**common, resume=True)
    straight = api.evaluate_corruptions(**{**common, "state_dir": None})
    assert without_seconds(resumed.rows) == without_seconds(straight.rows)
    assert not (tmp_path / "run.state.json").exists() and resumed.name == "run"
    assert resumed.meta["resumed_cells"] == 2 and "resumed_cells" not in straight.meta  # the rows of the first sitting
    written = resumed.write(tmp_path / "out")
    assert "- resumed_cells: `2`" in next(p for p in written if p.suffix == ".md").read_text()


def test_saved_lambdas_of_the_wrong_count_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "run.state.json"
    with small_net().using(PerInput()) as model:
        evaluate_cells(model, CELLS[:1], FakeSource(data()), CPU, BASE, 4, saved=CellState(path, CONFIG, resume=False))
    saved = json.loads(path.read_text())
    lams = np.frombuffer(base64.b64decode(saved["cells"]["clean/0"]["lams"]), dtype=np.float64)
    assert len(lams) == 12  # one per image of the cell
    saved["cells"]["clean/0"]["lams"] = base64.b64encode(lams[:11].tobytes()).decode()
    path.write_text(json.dumps(saved))
    with pytest.raises(UsageError, match=r"must hold 12 finite lambdas.*delete it"):
        CellState(path, CONFIG, resume=True).get(CELLS[0])


def test_a_resume_file_from_a_run_with_other_fista_steps_is_refused(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """The checkpoint's digest does not cover ``n_steps``, which changes every forward of an SDNet, so the
    resume config names it: cells from 2 FISTA steps are never mixed into a run with 3."""
    from sdnet_cli.api._session import Session
    from sdnet_cli.specs import DataSpec, ModelSpec, RunSpec

    def config(n_steps: int) -> dict:
        spec = ModelSpec("sdnet18", checkpoint=tiny_checkpoint, n_steps=n_steps)
        return Session.open("eval", model=spec, data=DataSpec(), run=RunSpec(device="cpu")).resume_config()

    path = tmp_path / "run.state.json"
    path.write_text(json.dumps({"config": config(2), "cells": {}}))
    assert CellState(path, config(2), resume=True).parts == {}
    with pytest.raises(UsageError, match=r"different settings \(n_steps\)"):
        CellState(path, config(3), resume=True)
