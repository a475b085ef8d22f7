"""The sweep plan: which (lambda, image) pairs run the network, what the others are given, the audit that
measures the agreement, and the two-guesses reference. Checked against running every pair and against
plain forwards of the shipped sdnet18 (its predictions do move across lambda, so the refinement works)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import sdnet_cli.sweep.runs as sweep
from sdnet_cli.cli import app
from sdnet_cli.data.cells import Cell, CellSource
from sdnet_cli.errors import UsageError
from sdnet_cli.models import load_model
from sdnet_cli.runtime import Runtime
from sdnet_cli.sweep.plan import EVERY_PAIR, PairResults, SweepPlan, sweep_images
from sdnet_cli.sweep.report import sweep_note

FINE = [round(0.1 + 0.05 * i, 2) for i in range(27)]  # 0.1:1.4:0.05
CPU = Runtime.create("cpu")
N = 64


@pytest.mark.parametrize(
    ("grid", "span", "always", "expected"),
    [
        (FINE, 0.2, None, [0, 4, 8, 12, 16, 20, 24, 26]),
        (FINE, 0.2, 1, [0, 1, 4, 8, 12, 16, 20, 24, 26]),
        (FINE, 0.0, None, list(range(27))),
        ([0.1, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4], 0.2, None, [0, 2, 3, 4, 5, 6, 7, 8]),
        ([0.1, 1.0], 0.2, None, [0, 1]),  # a gap wider than the span: both ends run
    ],
)
def test_coarse_lambdas_hand_worked(grid: list[float], span: float, always: int | None, expected: list[int]) -> None:
    assert SweepPlan(span=span).coarse(grid, always) == expected


@pytest.mark.parametrize(("field", "value"), [("span", -0.1), ("span", float("nan")), ("margin", 1.5), ("audit", -1)])
def test_plan_values_are_validated(field: str, value: float) -> None:
    with pytest.raises(UsageError) as raised:
        SweepPlan(**{field: value})
    assert raised.value.parameter == f"sweep_{field}"


@pytest.fixture(scope="module")
def shipped() -> torch.nn.Module:
    model, _ = load_model("sdnet18")
    return model


@pytest.fixture(scope="module")
def clean(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, np.ndarray]:
    source = CellSource(data_dir, cache_dir=tmp_path_factory.mktemp("cache"), seed=0, n_examples=N, workers=1)
    return source.load(Cell("clean", 0))


def run(model: torch.nn.Module, clean: tuple[np.ndarray, np.ndarray], plan: SweepPlan, batch: int = 3) -> PairResults:
    """Batches of 3 make parts of 48 images (two parts) and gathered sub-batches inside them."""
    return sweep_images(model, model.stem_csc, FINE, *clean, CPU, batch, plan, np.random.default_rng(7))


@pytest.fixture(scope="module")
def every(shipped: torch.nn.Module, clean: tuple[np.ndarray, np.ndarray]) -> PairResults:
    return run(shipped, clean, EVERY_PAIR, batch=16)


def plain_logits(model: torch.nn.Module, images: np.ndarray, lam: float) -> torch.Tensor:
    x = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad(), model.test_lambda(lam):
        return model.network(model.normalize(x))


@pytest.mark.slow
def test_every_pair_matches_plain_forwards_and_top2(
    shipped: torch.nn.Module, clean: tuple[np.ndarray, np.ndarray], every: PairResults
) -> None:
    images, labels = clean
    assert every.ran.all() and every.audited == 0
    for j in (0, 13, 26):
        np.testing.assert_array_equal(every.pred[j], plain_logits(shipped, images, FINE[j]).argmax(1).numpy())
    top2 = plain_logits(shipped, images, 0.1).topk(2, dim=1).indices.numpy()  # 0.1: the training lambda
    np.testing.assert_array_equal(every.top2, (top2 == labels[:, None]).any(axis=1))
    assert (every.pred != every.pred[:1]).any(axis=0).mean() > 0.2  # predictions do move across lambda


@pytest.mark.slow
def test_plan_runs_fewer_pairs_and_infers_only_between_agreeing_ends(
    shipped: torch.nn.Module, clean: tuple[np.ndarray, np.ndarray], every: PairResults
) -> None:
    plan = SweepPlan(audit=0.0)
    found = run(shipped, clean, plan)
    assert 0.25 < found.ran.mean() < 0.8
    np.testing.assert_array_equal(found.pred[found.ran], every.pred[found.ran])  # ran pairs: the same forwards
    np.testing.assert_allclose(found.errors, every.errors, rtol=1e-4)  # stem-only errors of inferred pairs exact
    np.testing.assert_array_equal(found.top2, every.top2)
    coarse = plan.coarse(FINE, 0)
    assert found.ran[coarse].all()
    for i in range(N):  # every inferred pair lies between two run lambdas with its class and a margin >= 0.2
        ran = np.flatnonzero(found.ran[:, i])
        for j in np.flatnonzero(~found.ran[:, i]):
            lo, hi = ran[ran < j].max(), ran[ran > j].min()
            assert found.pred[lo, i] == found.pred[hi, i] == found.pred[j, i]
            assert min(found.margin[lo, i], found.margin[hi, i]) >= plan.margin
    same = (found.pred == every.pred).mean()
    assert same > 0.99, same


@pytest.mark.slow
def test_full_audit_runs_every_inferred_pair_and_counts_the_agreement(
    shipped: torch.nn.Module, clean: tuple[np.ndarray, np.ndarray], every: PairResults
) -> None:
    _, labels = clean
    inferred = run(shipped, clean, SweepPlan(audit=0.0))
    audited = run(shipped, clean, SweepPlan(audit=1.0))
    np.testing.assert_array_equal(audited.pred, every.pred)  # every inferred pair was run after all
    assert audited.audited == int((~inferred.ran).sum())
    right = (inferred.pred == labels) == (every.pred == labels)
    assert audited.audit_same == int(right[~inferred.ran].sum())


@pytest.mark.slow
def test_the_audit_sample_is_seeded(shipped: torch.nn.Module, clean: tuple[np.ndarray, np.ndarray]) -> None:
    first, second = run(shipped, clean, SweepPlan(audit=0.3)), run(shipped, clean, SweepPlan(audit=0.3))
    assert first.audited > 0 and (first.audited, first.audit_same) == (second.audited, second.audit_same)
    np.testing.assert_array_equal(first.ran, second.ran)


def test_top2_reference_and_plan_summary_from_hand_built_sweeps() -> None:
    correct = np.array([[True, False, False, False], [False, True, False, False]])
    top2 = np.array([True, True, True, False])
    swept = sweep.CellSweep(Cell("gaussian_noise", 3), [0.1, 0.5], correct, [1.0, 2.0], [0.5, 0.5], top2, 6, 2, 1)
    rows = sweep.oracle_rows([swept], {"model": "m", "dataset": "cifar10"}, training_lam=0.1)
    by_lam = {r["lam"]: r for r in rows if r["corruption"] == "gaussian_noise"}
    assert by_lam[sweep.top2_label(0.1)]["correct"] == 3 and by_lam[sweep.ORACLE_INPUT]["correct"] == 2
    assert by_lam[sweep.top2_label(0.1)]["uses_labels"]
    assert sweep.top2_label(0.1) not in {
        r["lam"] for r in sweep.oracle_rows([swept], {"model": "m", "dataset": "cifar10"}, training_lam=None)
    }
    summary = sweep.plan_summary([swept], SweepPlan())
    assert summary["pairs"] == 8 and summary["pairs_run"] == 6 and summary["audit_agreement"] == 0.5
    assert "6 of its 8" in sweep_note(summary) and "1 of 2 (50.0000%)" in sweep_note(summary)
    assert "every one of its 8" in sweep_note(sweep.plan_summary([swept], EVERY_PAIR))


def test_cli_refuses_a_bad_span_before_work(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["lambda-rules", "--sweep-span", "-1", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "sweep-span" in result.output.replace("_", "-")
    assert list(tmp_path.iterdir()) == []
