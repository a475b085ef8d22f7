"""``stream="mixed"``: the cells' images interleaved in one seeded stream, counted back per cell."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_adapt import BASE, FakeSource, small_net

from sdnet_cli.adapt import BatchNormAdaptation, make_adaptation
from sdnet_cli.data.cells import Cell
from sdnet_cli.errors import UsageError
from sdnet_cli.evaluate import evaluate_cells, mixed_order
from sdnet_cli.lam import FixedLambda
from sdnet_cli.models import Classifier
from sdnet_cli.runtime import Runtime

CPU = Runtime.create("cpu")
CELLS = [Cell("clean", 0), Cell("gaussian_noise", 5), Cell("fog", 2)]


def data(n: int = 10) -> dict[Cell, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    return {c: (rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), rng.integers(0, 10, n)) for c in CELLS}


def strip(rows: list[dict]) -> list[tuple]:
    return [(r["corruption"], r["severity"], r["n"], r["correct"]) for r in rows]


def test_without_adaptation_the_mixed_stream_counts_what_the_cells_count() -> None:
    model, source = small_net(), FakeSource(data())
    cells = evaluate_cells(model, CELLS, source, CPU, BASE, batch_size=4)
    mixed = evaluate_cells(model, CELLS, source, CPU, BASE, batch_size=4, stream="mixed", seed=3)
    assert strip(mixed) == strip(cells)
    assert all(r["stream"] == "mixed" for r in mixed) and "stream" not in cells[0]
    per_image = make_adaptation("bn-prior", 7)  # per image: the order cannot matter either
    assert strip(evaluate_cells(model, CELLS, source, CPU, BASE, adapt=per_image, stream="mixed")) == strip(
        evaluate_cells(model, CELLS, source, CPU, BASE, adapt=per_image)
    )


def test_bn_adaptation_sees_batches_of_the_seeded_mixed_order() -> None:
    model, found = small_net(), data()
    order = mixed_order([10, 10, 10], seed=5)
    assert sorted(order.tolist()) == list(range(30)) and order.tolist() != list(range(30))
    assert np.array_equal(order, mixed_order([10, 10, 10], seed=5))
    images = np.concatenate([found[c][0] for c in CELLS])[order]
    labels = np.concatenate([found[c][1] for c in CELLS])[order]
    owner = np.repeat(np.arange(3), 10)[order]
    x = CPU.to_input(images)
    with torch.no_grad(), BatchNormAdaptation().cell(model) as forward:  # by hand: batches of 6 of the stream
        pred = torch.cat([forward(x[i : i + 6]) for i in range(0, 30, 6)]).argmax(1).numpy()
    expected = [int((pred == labels)[owner == k].sum()) for k in range(3)]
    rows = evaluate_cells(
        model, CELLS, FakeSource(found), CPU, BASE, adapt=make_adaptation("bn", 6), stream="mixed", seed=5
    )
    assert [r["correct"] for r in rows[:3]] == expected
    assert rows[3]["corruption"] == "mean" and rows[3]["stream"] == "mixed" and rows[3]["adapt"] == "bn"
    one = evaluate_cells(model, CELLS, FakeSource(found), CPU, BASE, adapt=make_adaptation("bn", 1), stream="mixed")
    assert one[0]["adapt_batch_size"] == 1 and sum(r["n"] for r in one[:3]) == 30


def test_mixed_stream_notes_each_cells_lambdas_and_refuses_a_per_cell_lambda() -> None:
    class PerInput:
        name = "per-input"

        def __call__(self, model: Classifier, xn: torch.Tensor) -> torch.Tensor:
            return 0.05 + 0.1 * xn.mean(dim=(1, 2, 3)).abs()

    model, found = small_net(), data()
    with model.using(PerInput()):
        rows = evaluate_cells(model, CELLS, FakeSource(found), CPU, BASE, batch_size=4, stream="mixed")
    for row, cell in zip(rows, CELLS):
        lams = PerInput()(model, model.normalize(CPU.to_input(found[cell][0]))).numpy()
        assert row["lam_mean"] == round(float(lams.mean()), 4)
    with pytest.raises(UsageError, match="per-cell lambda"):
        evaluate_cells(
            model, CELLS, FakeSource(found), CPU, BASE, cell_policy=lambda c: FixedLambda(0.1), stream="mixed"
        )
    with pytest.raises(UsageError, match="unknown stream"):
        evaluate_cells(model, CELLS, FakeSource(found), CPU, BASE, stream="wild")


def test_cli_eval_mixed_stream(tiny_checkpoint: Path, data_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from sdnet_cli.cli import app

    args = ["eval", "--model", "sdnet18", "--checkpoint", str(tiny_checkpoint), "-c", "gaussian_noise", "-s", "1"]
    args += ["-s", "5", "-n", "8", "--lam", "0.2", "--data-dir", str(data_dir), "--cache-dir", str(tmp_path / "c")]
    args += ["--out", str(tmp_path), "--device", "cpu", "--stream", "mixed", "--adapt", "bn", "--batch-size", "4"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "eval-sdnet18.json").read_text())
    assert [r["n"] for r in report["rows"]] == [8, 8, 8, 16] and report["meta"]["stream"]["kind"] == "mixed"
    refused = CliRunner().invoke(app, [*args[:-6], "--stream", "wild"])
    assert refused.exit_code == 2 and "stream" in refused.output


@pytest.mark.slow
def test_api_per_image_remedies_and_mixed_stream_on_a_plain_module_and_resnet18(data_dir: Path, tmp_path: Path) -> None:
    """A plain ``nn.Module`` (no Classifier, its own normalisation) and a small resnet18 through the API."""
    from sdnet_cli import api
    from sdnet_cli.models import create_model
    from sdnet_cli.specs import DataSpec, RunSpec

    torch.manual_seed(0)
    plain = small_net().network  # the bare Sequential
    common = {"corruptions": ["gaussian_noise"], "severities": [5], "run": RunSpec(device="cpu", batch_size=2)}
    common["data"] = DataSpec(data_dir=data_dir, cache_dir=tmp_path, n_examples=4)
    for model in (plain, create_model("resnet18", width=8).eval()):
        for adapt in ("bn-prior", "memo"):
            report = api.evaluate_corruptions(model=model, adapt=adapt, stream="mixed", **common)
            assert [r["n"] for r in report.rows] == [4, 4, 4]
            assert all(r["adapt"] == adapt and r["stream"] == "mixed" for r in report.rows)
            assert report.meta["adaptation"]["method"] == adapt and report.meta["stream"]["kind"] == "mixed"
