"""Test-time lambda: sweeps over a lambda grid, and the calibration of the per-input rules.

``sweep_lambda`` evaluates every (cell, lambda) pair through the ordinary evaluation loop with a
``FixedLambda`` policy and records the stem's mean reconstruction error; ``calibrate`` runs the
same sweep on corrupted TRAINING images and fits the lines that ``ReconErrorLambda`` and
``NoiseLevelLambda`` apply per input; ``compare_rules`` sets rules beside both label-using oracles
and ``hold_out`` refits the calibration without one corruption at a time. SDNet's robust inference (Dai et al., NeurIPS 2022) sweeps the
stem's lambda the same way and relates each corruption's best lambda to its mean reconstruction
error; the calibration never sees a test image, so test accuracies of the rules stay honest.
Their Markdown and plots are laid out in ``sweep.report``.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from ..adapt import Adaptation, calibratable, calibration_record
from ..data.cells import Cell, expand_cells
from ..data.corruptions import ALL_CORRUPTIONS, corrupt
from ..errors import UsageError
from ..evaluate import cell_row, evaluate_cells, lambda_columns, mean_row
from ..lam import (
    AUTO,
    FEATURES,
    NOISE,
    RECON,
    Calibration,
    FixedLambda,
    fit_rules,
    lambda_grid,
    lambda_label,
    oracle_scores,
    recommend,
)
from ..models.classifier import Classifier, LambdaPolicy
from ..models.csc import CSCLayer, require_csc
from ..resume import ADVICE, ResumeFile
from ..rows import CLEAN, HELD_OUT, IN_CALIBRATION, MEAN, REFERENCE
from ..runtime import Counts, Runtime, iter_batches
from ..schemas import SweepState
from .plan import EVERY_PAIR, SweepPlan, sweep_images


class ImageSource(Protocol):
    def load(self, cell: Cell) -> tuple[np.ndarray, np.ndarray]: ...


class CorruptedTrainSet:
    """A seeded random subset of the training split, corrupted per cell: calibration never sees test images."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, n: int, seed: int, strength: str = "cifar") -> None:
        rng = np.random.default_rng(seed)
        self.indices = np.sort(rng.choice(len(images), size=min(n, len(images)), replace=False))
        # decoded once: file-backed (ImageNet) images would otherwise be decoded for every cell
        self.images, self.labels = np.asarray(images[self.indices]), labels[self.indices]
        self.seed, self.strength = seed, strength

    @property
    def n(self) -> int:
        return len(self.indices)

    def load(self, cell: Cell) -> tuple[np.ndarray, np.ndarray]:
        """The subset under ``cell``'s corruption; the same seed always gives the same images."""
        if cell.corruption == CLEAN:
            return self.images, self.labels
        rng = np.random.default_rng([self.seed, ALL_CORRUPTIONS.index(cell.corruption), cell.severity])
        return corrupt(self.images, cell.corruption, cell.severity, rng, self.strength), self.labels


def _stem(model: Classifier) -> CSCLayer:
    require_csc(model, "it has no lambda to sweep", parameter="model")
    stem = model.stem_csc
    assert stem is not None
    return stem


@dataclass(frozen=True)
class CellSweep:
    """One cell swept over a lambda grid: which images each lambda classifies correctly (``correct[j, i]``
    for ``grid[j]`` and image i), and the stem's mean reconstruction error and the seconds at each lambda.
    Both oracles (``lam.oracle_scores``) are functions of ``correct`` alone. ``top2``: per image, whether
    the label is among the two most likely classes at the training lambda (None when it is off the grid).
    ``pairs_run``: the (lambda, image) pairs the network ran on (the rest inferred by the ``SweepPlan``),
    ``audited`` of the inferred ones run anyway, ``audit_same`` of those with unchanged correctness;
    ``wall_seconds``: the whole sweep of the cell, stem-only solves and bookkeeping included;
    ``in_eval_batches``: the grid indices whose every image ran in an evaluation's batches (``PairResults``)."""

    cell: Cell
    grid: list[float]
    correct: np.ndarray
    mean_error: list[float]
    seconds: list[float]
    top2: np.ndarray | None = None
    pairs_run: int = 0
    audited: int = 0
    audit_same: int = 0
    wall_seconds: float = 0.0
    in_eval_batches: tuple[int, ...] = ()


class SweptCells(ResumeFile):
    """Finished cells of an interrupted sweep-lambda run in ``<name>.state.json``: each ``CellSweep`` whole,
    keyed ``test:<corruption>/<severity>`` (test cells) or ``train:...`` (calibration groups), so a resumed
    run skips them and gives the report (and calibration) of an uninterrupted one: a cell's sweep depends
    only on its images, the model, the grid, the plan and its own seed."""

    SCHEMA = SweepState
    PARTS = "cells"

    @staticmethod
    def key(phase: str, cell: Cell) -> str:
        return f"{phase}:{cell.corruption}/{cell.severity}"

    def has(self, phase: str, cell: Cell) -> bool:
        return self.key(phase, cell) in self.parts

    def get(self, phase: str, cell: Cell, grid: Sequence[float]) -> CellSweep | None:
        saved = self.parts.get(self.key(phase, cell))
        if saved is None:
            return None
        if len(saved["correct"]) != len(grid):
            raise UsageError(
                f"the resume state {self.path} is damaged ({self.key(phase, cell)} holds {len(saved['correct'])} "
                f"lambdas, not the grid's {len(grid)}); {ADVICE}",
                parameter="resume",
            )
        bits = np.stack([_unpack(row) for row in saved["correct"]])
        top2 = None if saved["top2"] is None else _unpack(saved["top2"])
        return CellSweep(
            cell, list(grid), bits, saved["mean_error"], saved["seconds"], top2, saved["pairs_run"],
            saved["audited"], saved["audit_same"], saved["wall_seconds"], tuple(saved["in_eval_batches"]),
        )  # fmt: skip

    def put_sweep(self, phase: str, found: CellSweep) -> None:
        self.put(
            self.key(phase, found.cell),
            {
                "correct": [_pack(row) for row in found.correct],
                "mean_error": [float(e) for e in found.mean_error],
                "seconds": [float(t) for t in found.seconds],
                "top2": None if found.top2 is None else _pack(found.top2),
                "pairs_run": found.pairs_run,
                "audited": found.audited,
                "audit_same": found.audit_same,
                "wall_seconds": found.wall_seconds,
                "in_eval_batches": list(found.in_eval_batches),
            },
        )


def _pack(mask: np.ndarray) -> str:
    """A boolean mask as the state file's ``"0101"`` text."""
    return (np.asarray(mask, dtype=np.uint8) + ord("0")).tobytes().decode()


def _unpack(text: str) -> np.ndarray:
    return np.asarray(np.frombuffer(text.encode(), dtype=np.uint8) == ord("1"))


def sweep_cells(
    model: Classifier,
    cells: Sequence[Cell],
    source: ImageSource,
    runtime: Runtime,
    lams: Sequence[float],
    batch_size: int = 256,
    progress: Callable[[int], None] | None = None,
    plan: SweepPlan | None = None,
    seed: int = 0,
    adapt: Adaptation | None = None,
    saved: SweptCells | None = None,
    phase: str = "test",
) -> list[CellSweep]:
    """Every (cell, lambda) pair through the evaluation's ``predict_logits`` with a ``FixedLambda`` policy,
    visited by ``plan`` (default ``SweepPlan()``; ``EVERY_PAIR`` runs them all); ``seed`` draws the plan's
    audit sample of each cell. ``lams`` is read by ``lambda_grid`` (sorted, distinct). ``adapt`` (one of
    ``adapt.CALIBRATABLE``) runs every forward under that adaptation, reset per cell; one that normalises
    with a batch's statistics runs every pair in its batches of ``adapt.batch_size`` (a plan's subsets of a
    batch would change the statistics). ``saved``: finished cells are kept there under ``phase`` (``test`` cells or
    ``train``ing groups) and not run again."""
    stem = _stem(model)
    grid = lambda_grid(lams)
    plan = plan or SweepPlan()
    if adapt is not None:
        calibratable(adapt.name)
        if adapt.columns()["uses_test_batches"]:
            plan, batch_size = EVERY_PAIR, adapt.batch_size
    sweeps = []
    for cell in cells:
        kept = saved.get(phase, cell, grid) if saved is not None else None
        if kept is not None:
            sweeps.append(kept)
            continue
        images, labels = source.load(cell)
        start = time.perf_counter()
        rng = np.random.default_rng([seed, zlib.crc32(f"{cell.corruption}/{cell.severity}".encode())])
        with adapt.cell(model) if adapt is not None else nullcontext(model):
            found = sweep_images(model, stem, grid, images, labels, runtime, batch_size, plan, rng, progress)
        correct = found.pred == np.asarray(labels)[None, :]
        sweeps.append(
            CellSweep(
                cell,
                grid,
                correct,
                found.errors.mean(axis=1).tolist(),
                found.seconds.tolist(),
                found.top2,
                int(found.ran.sum()),
                found.audited,
                found.audit_same,
                time.perf_counter() - start,
                found.in_eval_batches,
            )  # fmt: skip
        )
        if saved is not None:
            saved.put_sweep(phase, sweeps[-1])
    return sweeps


def plan_summary(sweeps: Sequence[CellSweep], plan: SweepPlan) -> dict[str, Any]:
    """What a report's meta says of how its sweeps were run: the plan, the share of pairs the network ran
    on, and the audit of the inferred pairs (the measured agreement of the plan with running them all)."""
    pairs = sum(s.correct.size for s in sweeps)
    audited = sum(s.audited for s in sweeps)
    same = sum(s.audit_same for s in sweeps)
    return {
        **plan.describe(),
        "pairs": pairs,
        "pairs_run": sum(s.pairs_run for s in sweeps),
        "audited": audited,
        "audit_same": same,
        "audit_agreement": round(same / audited, 6) if audited else None,
        "wall_seconds": round(sum(s.wall_seconds for s in sweeps), 1),
    }


def sweep_rows(sweeps: Sequence[CellSweep], row_base: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (cell, lambda): the eval columns plus the stem's ``mean_error`` at that lambda and
    ``oracle`` (true on the first most accurate lambda of each cell)."""
    rows: list[dict[str, Any]] = []
    for found in sweeps:
        cell_rows = []
        for j, lam in enumerate(found.grid):
            counts = Counts(found.correct.shape[1], int(found.correct[j].sum()), found.seconds[j])
            row = cell_row({**row_base, "lam": lam}, found.cell.corruption, found.cell.severity, counts)
            cell_rows.append({**row, "mean_error": found.mean_error[j], "oracle": False})
        cell_rows[int(np.argmax([r["correct"] for r in cell_rows]))]["oracle"] = True
        rows += cell_rows
    return rows


def sweep_lambda(
    model: Classifier,
    cells: Sequence[Cell],
    source: ImageSource,
    runtime: Runtime,
    lams: Sequence[float],
    row_base: dict[str, Any],
    batch_size: int = 256,
    progress: Callable[[int], None] | None = None,
    plan: SweepPlan | None = None,
    seed: int = 0,
    adapt: Adaptation | None = None,
) -> list[dict[str, Any]]:
    """``sweep_rows`` of ``sweep_cells``: one row per (cell, lambda)."""
    sweeps = sweep_cells(model, cells, source, runtime, lams, batch_size, progress, plan, seed, adapt)
    return sweep_rows(sweeps, row_base)


def mean_features(
    model: Classifier, images: np.ndarray, labels: np.ndarray, runtime: Runtime, batch_size: int = 256
) -> dict[str, float]:
    """Mean of each rule's label-free feature over the images, computed exactly as the rule computes it
    (``labels`` only ride along with the batches)."""
    sums = dict.fromkeys(FEATURES, 0.0)
    with torch.no_grad(), runtime.exact.autocast():  # features of bf16-checked runs: fp32, as decisions
        for batch in iter_batches(images, labels, runtime, batch_size):
            xn = model.normalize(batch.x)
            for key, feature in FEATURES.items():
                sums[key] += float(feature(model, xn).double().sum())
    return {key: total / len(images) for key, total in sums.items()}


def cell_points(
    model: Classifier,
    cells: Sequence[Cell],
    source: ImageSource,
    runtime: Runtime,
    rows: Sequence[dict[str, Any]],
    batch_size: int = 256,
) -> list[dict[str, Any]]:
    """Per cell of a sweep: its best lambda, the accuracy there, and the mean rule features (the fit's x)."""
    best = {(r["corruption"], r["severity"]): r for r in rows if r["oracle"]}
    points = []
    for cell in cells:
        row = best[(cell.corruption, cell.severity)]
        images, labels = source.load(cell)
        points.append(
            {
                "corruption": cell.corruption,
                "severity": cell.severity,
                "best_lam": row["lam"],
                "accuracy": row["accuracy"],
                **mean_features(model, images, labels, runtime, batch_size),
            }
        )
    return points


def calibration_groups(corruptions: Sequence[str], severities: Sequence[int]) -> list[Cell]:
    """The (corruption, severity) groups a calibration sweeps, clean included once."""
    return expand_cells([c for c in corruptions if c != CLEAN], severities)


def calibrate(
    model: Classifier,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    runtime: Runtime,
    lams: Sequence[float],
    corruptions: Sequence[str],
    severities: Sequence[int],
    n: int,
    seed: int,
    progress: Callable[[int], None] | None = None,
    batch_size: int = 256,
    checkpoint_sha256: str = "",
    strength: str = "cifar",
    plan: SweepPlan | None = None,
    adapt: Adaptation | None = None,
    saved: SweptCells | None = None,
) -> Calibration:
    """Fit lambda = clamp(a * feature + b, min grid, max grid) for each rule on corrupted training images.

    Per (corruption, severity) group (and clean): the accuracy-optimal lambda on the grid and the
    group's mean feature; the line is the one that maximises the groups' mean accuracy, each read off
    its sweep curve (``fit_line_for_accuracy``); ``lam="auto"`` will run the rule with the higher
    mean group accuracy. ``strength`` is the dataset's corruption strength table ("cifar" or "imagenet");
    ``plan`` how the sweep visits the grid (``sweep_cells``). ``adapt``: the test-time adaptation the
    groups run under (``sweep_cells``), recorded in the calibration so ``eval`` can compare. ``saved``: the
    run's resume file, which keeps each finished group (phase ``train``).
    """
    if n < 1:
        raise UsageError(f"n must be >= 1, got {n}", parameter="n")
    grid = lambda_grid(lams)
    corruptions = [c for c in corruptions if c != CLEAN]
    train = CorruptedTrainSet(train_images, train_labels, n, seed, strength)
    cells = calibration_groups(corruptions, severities)
    base = {"model": None, "dataset": "train"}
    sweeps = sweep_cells(model, cells, train, runtime, grid, batch_size, progress, plan, seed, adapt, saved, "train")
    rows = sweep_rows(sweeps, base)
    points = cell_points(model, cells, train, runtime, rows, batch_size)
    accuracy = {(r["corruption"], r["severity"], r["lam"]): r["accuracy"] for r in rows}
    for p in points:
        p["curve"] = [accuracy[(p["corruption"], p["severity"], lam)] for lam in grid]
    rules = fit_rules(points, grid)
    return Calibration(
        recon=rules[RECON],  # type: ignore[arg-type]
        noise=rules[NOISE],  # type: ignore[arg-type]
        recommended=recommend(rules, points, grid),
        grid=grid,
        points=points,
        corruptions=list(corruptions),
        severities=[int(s) for s in severities],
        n=train.n,
        seed=seed,
        training_lam=float(_stem(model).lam),
        checkpoint_sha256=checkpoint_sha256,
        adaptation=calibration_record(adapt),
    )


# -- rules beside the label-using references ------------------------------------------------------
ORACLE_CELL, ORACLE_INPUT = "oracle:per-cell", "oracle:per-input"


def top2_label(training_lam: float) -> str:
    """The method name of the two-guesses reference: top-2 accuracy at the training lambda."""
    return f"oracle:top-2@{training_lam:g}"


def oracle_rows(
    sweeps: Sequence[CellSweep], row_base: dict[str, Any], training_lam: float | None = None
) -> list[dict[str, Any]]:
    """Both oracles of every swept cell as eval rows (plus their mean rows); ``seconds`` is what the sweep
    of the cell took. The per-cell oracle's lambda columns give the lambda it chose. With ``training_lam``
    (on the grid), also the two-guesses reference: the label among the two most likely classes at that
    lambda, which uses the labels as the per-input oracle does, with two tries instead of one per lambda."""
    picks = [(ORACLE_CELL, "cell"), (ORACLE_INPUT, "input")]
    if training_lam is not None and all(s.top2 is not None for s in sweeps):
        picks.append((top2_label(training_lam), "top2"))
    rows = []
    for lam, pick in picks:
        found, chosen = [], []
        for swept in sweeps:
            scores = oracle_scores(swept.correct, swept.grid)
            correct = {"cell": scores.cell_correct, "input": scores.input_correct}.get(pick)
            if pick == "top2":
                correct = int(swept.top2.sum())  # type: ignore[union-attr]
            counts = Counts(scores.n, int(correct), sum(swept.seconds))  # type: ignore[arg-type]
            row = cell_row({**row_base, "lam": lam}, swept.cell.corruption, swept.cell.severity, counts)
            if pick == "cell":
                row.update(lambda_columns(np.full(1, scores.cell_lam)))
                if swept.cell.severity != 0:
                    chosen.append(np.full(scores.n, scores.cell_lam))
            found.append(row)
        summary = mean_row(found)
        if summary and chosen:
            summary.update(lambda_columns(np.concatenate(chosen)))
        rows += [{**r, "uses_labels": True} for r in found + ([summary] if summary else [])]
    return rows


def compare_rules(
    model: Classifier,
    cells: Sequence[Cell],
    source: ImageSource,
    runtime: Runtime,
    policies: Sequence[LambdaPolicy | None],
    lams: Sequence[float],
    row_base: dict[str, Any],
    batch_size: int = 256,
    progress: Callable[[int], None] | None = None,
    plan: SweepPlan | None = None,
    seed: int = 0,
) -> tuple[list[dict[str, Any]], list[CellSweep]]:
    """Eval rows of every policy on ``cells`` (through ``evaluate_cells``, so per-input policies carry
    their lambda columns), then the oracles from one sweep of ``lams`` over the same images (visited by
    ``plan``, see ``sweep_cells``); also returns that sweep. The sweep runs first: a policy of one grid
    lambda that the sweep ran on every image in the evaluation's batches (the training lambda and the
    plan's coarse lambdas, ``PairResults.in_eval_batches``) takes its counts from those same forwards
    instead of running them again."""
    sweeps = sweep_cells(model, cells, source, runtime, lams, batch_size, progress, plan, seed)
    stem = _stem(model)
    rows = []
    for policy in policies:
        with model.using(policy):
            base = {**row_base, "lam": lambda_label(model)}
            value = stem.lam if policy is None else policy.value if isinstance(policy, FixedLambda) else None
            j = sweeps[0].grid.index(value) if sweeps and value in sweeps[0].grid else None
            if j is not None and all(j in s.in_eval_batches for s in sweeps):
                found = swept_rows(sweeps, j, base, progress)
            else:
                found = evaluate_cells(model, cells, source, runtime, base, batch_size, progress)
        rows += [{**r, "uses_labels": False} for r in found]
    return rows + oracle_rows(sweeps, row_base, stem.lam), sweeps


def swept_rows(
    sweeps: Sequence[CellSweep], j: int, row_base: dict[str, Any], progress: Callable[[int], None] | None = None
) -> list[dict[str, Any]]:
    """``evaluate_cells``' rows of one fixed lambda, read from grid index ``j`` of sweeps that ran every image
    there in the evaluation's batches; ``seconds``: those forwards' seconds in the sweep."""
    rows = []
    for swept in sweeps:
        n = swept.correct.shape[1]
        counts = Counts(n, int(swept.correct[j].sum()), swept.seconds[j])
        rows.append(cell_row(row_base, swept.cell.corruption, swept.cell.severity, counts))
        if progress is not None:
            progress(n)
    summary = mean_row(rows)
    return rows + ([{**summary, "lam": row_base["lam"]}] if summary else [])


def rule_summary(rows: Sequence[dict[str, Any]], reference: float | str) -> list[dict[str, Any]]:
    """Per method (``lam``): accuracy on clean and averaged over the corrupted cells, each as the change
    from the ``reference`` method's, and its mean chosen lambda."""
    by_lam: dict[Any, dict[str, dict[str, Any]]] = {}
    for r in rows:
        by_lam.setdefault(r["lam"], {})[r["corruption"]] = r
    base = by_lam[reference]
    table = []
    for lam, found in by_lam.items():
        corrupted = found.get(MEAN)
        entry = {"lam": lam, "uses_labels": bool(next(iter(found.values())).get("uses_labels", False))}
        if corrupted is not None:
            entry.update(
                {
                    "corrupted_mean": corrupted["accuracy"],
                    "gain": round(corrupted["accuracy"] - base[MEAN]["accuracy"], 4),
                }
            )
        if CLEAN in found:
            entry.update(
                {
                    "clean": found[CLEAN]["accuracy"],
                    "clean_change": round(found[CLEAN]["accuracy"] - base[CLEAN]["accuracy"], 4),
                }
            )
        entry["lam_mean"] = (corrupted or {}).get("lam_mean")
        table.append(entry)
    return table


# -- generalisation to corruptions the calibration never saw ------------------------------------------


def hold_out(
    model: Classifier,
    full: Calibration,
    held_out: Sequence[str],
    source: ImageSource,
    runtime: Runtime,
    severities: Sequence[int],
    row_base: dict[str, Any],
    rule: str = AUTO,
    reference_lam: float = 0.1,
    batch_size: int = 256,
    progress: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """For each corruption of ``held_out`` in turn: its test cells under ``reference_lam``, under ``rule`` of the
    full calibration (``in-calibration``) and under ``rule`` refitted from the stored group curves without
    that corruption's groups (``held-out``: ``Calibration.without``). Rows carry ``held_out`` and ``variant``."""
    rows = []
    for corruption in held_out:
        variants: dict[str, LambdaPolicy] = {
            REFERENCE: FixedLambda(reference_lam),
            IN_CALIBRATION: full.policy(rule),
            HELD_OUT: full.without([corruption]).policy(rule),
        }
        cells = [Cell(corruption, s) for s in severities]
        for variant, policy in variants.items():
            with model.using(policy):
                found = evaluate_cells(
                    model,
                    cells,
                    source,
                    runtime,
                    {**row_base, "lam": lambda_label(model)},
                    batch_size,
                    progress,
                )
            rows += [{**r, "held_out": corruption, "variant": variant} for r in found]
    return rows


def hold_out_summary(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per held-out corruption: mean accuracy over its severities at the reference lambda, the
    rule's gain over it with the corruption in the calibration and held out, and the share of the gain
    kept (held-out gain / in-calibration gain; undefined when the in-calibration gain is not positive)."""
    means = {(r["held_out"], r["variant"]): r for r in rows if r["corruption"] == MEAN}
    table = []
    for corruption in dict.fromkeys(r["held_out"] for r in rows):
        reference, inside, outside = (means[(corruption, v)] for v in (REFERENCE, IN_CALIBRATION, HELD_OUT))
        gain_in = round(inside["accuracy"] - reference["accuracy"], 4)
        gain_out = round(outside["accuracy"] - reference["accuracy"], 4)
        table.append(
            {
                "held_out": corruption,
                "reference_lam": reference["lam"],
                "reference_accuracy": reference["accuracy"],
                "rule_in_calibration": inside["lam"],
                "gain_in_calibration": gain_in,
                "rule_held_out": outside["lam"],
                "gain_held_out": gain_out,
                "kept": round(gain_out / gain_in, 4) if gain_in > 0 else None,
                "lam_mean_held_out": outside.get("lam_mean"),
            }
        )
    return table
