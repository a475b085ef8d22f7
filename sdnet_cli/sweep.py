"""Test-time lambda: sweeps over a lambda grid, and the calibration of the per-input rules.

``sweep_lambda`` evaluates every (cell, lambda) pair through the ordinary evaluation loop with a
``FixedLambda`` policy and records the stem's mean reconstruction error; ``calibrate`` runs the
same sweep on corrupted TRAINING images and fits the lines that ``ReconErrorLambda`` and
``NoiseLevelLambda`` apply per input; ``compare_rules`` sets rules beside both label-using oracles
and ``hold_out`` refits the calibration without one corruption at a time. SDNet's robust inference (Dai et al., NeurIPS 2022) sweeps the
stem's lambda the same way and relates each corruption's best lambda to its mean reconstruction
error; the calibration never sees a test image, so test accuracies of the rules stay honest.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch

from .data.cells import Cell, expand_cells
from .data.corruptions import ALL_CORRUPTIONS, corrupt
from .errors import UsageError
from .evaluate import cell_row, evaluate_cells, lambda_columns, mean_row
from .lam import (
    AUTO,
    FEATURES,
    NOISE,
    RECON,
    Calibration,
    FixedLambda,
    fit_line,
    fit_rules,
    lambda_grid,
    lambda_label,
    oracle_scores,
    recommend,
)
from .models.classifier import Classifier, LambdaPolicy
from .models.csc import CSCLayer, require_csc
from .plots import save_figure, save_line_plot, save_points_plot
from .rows import CLEAN, HELD_OUT, IN_CALIBRATION, MEAN, REFERENCE, WORST
from .runtime import Counts, Runtime, iter_batches, predict


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
    Both oracles (``lam.oracle_scores``) are functions of ``correct`` alone."""

    cell: Cell
    grid: list[float]
    correct: np.ndarray
    mean_error: list[float]
    seconds: list[float]


def sweep_cells(
    model: Classifier,
    cells: Sequence[Cell],
    source: ImageSource,
    runtime: Runtime,
    lams: Sequence[float],
    batch_size: int = 256,
    progress: Callable[[int], None] | None = None,
) -> list[CellSweep]:
    """Every (cell, lambda) pair through the evaluation's ``predict`` with a ``FixedLambda`` policy; ``lams``
    is read by ``lambda_grid`` (sorted, distinct)."""
    stem = _stem(model)
    grid = lambda_grid(lams)
    sweeps = []
    for cell in cells:
        images, labels = source.load(cell)
        correct, errors, seconds = _sweep_images(model, stem, grid, images, labels, runtime, batch_size, progress)
        sweeps.append(CellSweep(cell, grid, correct, errors.mean(axis=1).tolist(), seconds.tolist()))
    return sweeps


def sweep_rows(sweeps: Sequence[CellSweep], row_base: dict) -> list[dict]:
    """One row per (cell, lambda): the eval columns plus the stem's ``mean_error`` at that lambda and
    ``oracle`` (true on the first most accurate lambda of each cell)."""
    rows: list[dict] = []
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
    row_base: dict,
    batch_size: int = 256,
    progress: Callable[[int], None] | None = None,
) -> list[dict]:
    """``sweep_rows`` of ``sweep_cells``: one row per (cell, lambda)."""
    return sweep_rows(sweep_cells(model, cells, source, runtime, lams, batch_size, progress), row_base)


def _sweep_images(
    model: Classifier,
    stem: CSCLayer,
    grid: Sequence[float],
    images: np.ndarray,
    labels: np.ndarray,
    runtime: Runtime,
    batch_size: int,
    progress: Callable[[int], None] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-image correctness [L, N] and stem reconstruction error [L, N] at every grid lambda, and the
    seconds [L] each lambda's forwards took. Each batch is converted to model input once and then run at
    every lambda (the same forwards, on the same inputs, as one ``predict_correct`` per lambda), so the
    uint8 decoding and copying is not repeated per lambda."""
    correct = np.zeros((len(grid), len(images)), dtype=bool)
    errors = np.zeros((len(grid), len(images)), dtype=np.float64)
    seconds = np.zeros(len(grid))
    policies = [FixedLambda(lam) for lam in grid]
    with stem.recording_error() as record:
        for batch in iter_batches(images, labels, runtime, batch_size):
            for j, policy in enumerate(policies):
                start = time.perf_counter()
                with model.using(policy):
                    correct[j, batch.rows] = (predict(model, batch.x, runtime) == batch.y).cpu().numpy()
                errors[j, batch.rows] = record.error.cpu().numpy()  # type: ignore[union-attr]
                seconds[j] += time.perf_counter() - start
                if progress is not None:
                    progress(batch.rows.stop - batch.rows.start)
    return correct, errors, seconds


def mean_features(
    model: Classifier, images: np.ndarray, labels: np.ndarray, runtime: Runtime, batch_size: int = 256
) -> dict[str, float]:
    """Mean of each rule's label-free feature over the images, computed exactly as the rule computes it
    (``labels`` only ride along with the batches)."""
    sums = dict.fromkeys(FEATURES, 0.0)
    with torch.no_grad(), runtime.autocast():
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
    rows: Sequence[dict],
    batch_size: int = 256,
) -> list[dict]:
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
) -> Calibration:
    """Fit lambda = clamp(a * feature + b, min grid, max grid) for each rule on corrupted training images.

    Per (corruption, severity) group (and clean): the accuracy-optimal lambda on the grid and the
    group's mean feature; the line is the one that maximises the groups' mean accuracy, each read off
    its sweep curve (``fit_line_for_accuracy``); ``lam="auto"`` will run the rule with the higher
    mean group accuracy. ``strength`` is the dataset's corruption strength table ("cifar" or "imagenet").
    """
    if n < 1:
        raise UsageError(f"n must be >= 1, got {n}", parameter="n")
    grid = lambda_grid(lams)
    corruptions = [c for c in corruptions if c != CLEAN]
    train = CorruptedTrainSet(train_images, train_labels, n, seed, strength)
    cells = expand_cells(corruptions, severities)
    rows = sweep_lambda(model, cells, train, runtime, grid, {"model": None, "dataset": "train"}, batch_size, progress)
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
    )


# -- rules beside the label-using references ------------------------------------------------------
ORACLE_CELL, ORACLE_INPUT = "oracle:per-cell", "oracle:per-input"
ORACLE_NOTE = (
    "Rows with uses_labels = true are references, not methods: they choose lambda with the test labels of the "
    "very images they are scored on. oracle:per-cell is the best single grid lambda of each cell (the ceiling of "
    "any one-lambda-per-cell method); oracle:per-input counts an image correct if any grid lambda classifies it "
    "correctly (the ceiling of any rule picking a grid lambda per input)."
)


def oracle_rows(sweeps: Sequence[CellSweep], row_base: dict) -> list[dict]:
    """Both oracles of every swept cell as eval rows (plus their mean rows); ``seconds`` is what the sweep
    of the cell took. The per-cell oracle's lambda columns give the lambda it chose."""
    rows = []
    for lam, pick in ((ORACLE_CELL, "cell"), (ORACLE_INPUT, "input")):
        found, chosen = [], []
        for swept in sweeps:
            scores = oracle_scores(swept.correct, swept.grid)
            counts = Counts(
                scores.n, scores.cell_correct if pick == "cell" else scores.input_correct, sum(swept.seconds)
            )
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
    row_base: dict,
    batch_size: int = 256,
    progress: Callable[[int], None] | None = None,
) -> list[dict]:
    """Eval rows of every policy on ``cells`` (through ``evaluate_cells``, so per-input policies carry
    their lambda columns), then both oracles from one sweep of ``lams`` over the same images."""
    rows = []
    for policy in policies:
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
        rows += [{**r, "uses_labels": False} for r in found]
    return rows + oracle_rows(sweep_cells(model, cells, source, runtime, lams, batch_size, progress), row_base)


def rule_summary(rows: Sequence[dict], reference: float | str) -> list[dict]:
    """Per method (``lam``): accuracy on clean and averaged over the corrupted cells, each as the change
    from the ``reference`` method's, and its mean chosen lambda."""
    by_lam: dict[Any, dict[str, dict]] = {}
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
    row_base: dict,
    rule: str = AUTO,
    reference_lam: float = 0.1,
    batch_size: int = 256,
    progress: Callable[[int], None] | None = None,
) -> list[dict]:
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


def hold_out_summary(rows: Sequence[dict]) -> list[dict]:
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


def _cell_label(corruption: str, severity: int) -> str:
    return corruption if severity == 0 else f"{corruption} s{severity}"


def save_sweep_plots(
    rows: Sequence[dict],
    points: Sequence[dict],
    out_dir: Path,
    name: str,
    title: str,
    calibration: Calibration | None = None,
) -> list[Path]:
    """``<name>-accuracy.png`` (accuracy vs lambda, a line per cell) and ``<name>-fit.png`` (best lambda
    vs the stem's error at the training lambda: the test cells with their least-squares line, and the
    training groups with the calibrated ``recon`` line when given)."""
    frame = pd.DataFrame(list(rows))
    frame["cell"] = [_cell_label(c, s) for c, s in zip(frame["corruption"], frame["severity"])]
    wide = frame.pivot(index="lam", columns="cell", values="accuracy")
    order = list(dict.fromkeys(frame["cell"]))
    accuracy = save_line_plot(
        wide[order].reset_index(),
        "lam",
        order,
        Path(out_dir) / f"{name}-accuracy.png",
        f"{title}: accuracy vs lambda",
        "accuracy (%)",
    )
    series = [("test cells", [p["error"] for p in points], [p["best_lam"] for p in points], _line_or_none(points))]
    if calibration is not None:
        series.append(
            (
                "training groups (calibration)",
                [p["error"] for p in calibration.points],
                [p["best_lam"] for p in calibration.points],
                (calibration.recon.a, calibration.recon.b),
            )
        )
    fit = save_points_plot(
        series,
        Path(out_dir) / f"{name}-fit.png",
        f"{title}: best lambda vs reconstruction error",
        "mean stem reconstruction error at the training lambda",
        "best lambda",
    )
    return [accuracy, fit]


def _line_or_none(points: Sequence[dict]) -> tuple[float, float] | None:
    """The test cells' descriptive line, when their errors differ enough to define one."""
    try:
        return fit_line([p["error"] for p in points], [p["best_lam"] for p in points])
    except UsageError:
        return None


def save_attack_sweep_plot(rows: Sequence[dict], model: str, path: Path) -> Path:
    """Clean and robust accuracy vs lambda (a line per eps) for ``model``'s rows of an attack sweep; any
    other model's rows (a baseline at its own lambda) become dashed horizontal reference lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def final(rows_of: Sequence[dict]) -> list[dict]:  # AutoAttack: the worst case over its components
        names = {r["attack"] for r in rows_of}
        return [r for r in rows_of if r["attack"] == WORST or WORST not in names]

    ours = final([r for r in rows if r["model"] == model])
    frame = pd.DataFrame(ours).sort_values("lam")
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    clean = frame.drop_duplicates("lam")
    ax.plot(clean["lam"], clean["clean_accuracy"], marker="o", markersize=3, color="black", label=f"{model} clean")
    colours = {}
    for i, (eps_text, group) in enumerate(frame.groupby("eps_text", sort=False)):
        colours[eps_text] = f"C{i}"
        ax.plot(
            group["lam"],
            group["robust_accuracy"],
            marker="o",
            markersize=3,
            color=colours[eps_text],
            label=f"{model} robust, eps {eps_text}",
        )
    for reference in sorted({r["model"] for r in rows} - {model}):
        theirs = final([r for r in rows if r["model"] == reference])
        ax.axhline(theirs[0]["clean_accuracy"], color="black", linestyle="--", linewidth=1, label=f"{reference} clean")
        for r in theirs:
            ax.axhline(
                r["robust_accuracy"],
                color=colours.get(r["eps_text"], "gray"),
                linestyle="--",
                linewidth=1,
                label=f"{reference} robust, eps {r['eps_text']}",
            )
    ax.set_xlabel("test-time lambda")
    ax.set_ylabel("accuracy (%)")
    attack = "autoattack" if ours[0]["attack"] == WORST else ours[0]["attack"]
    ax.set_title(f"{model}: accuracy under {attack} vs lambda ({ours[0]['n']} images)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=7)
    return save_figure(fig, Path(path))


def render_attack_sweep(
    title: str, rows: Sequence[dict], meta: dict[str, Any], diagnostics: dict[str, Any], plot_name: str
) -> str:
    """The attack sweep's Markdown: the rows, the plot and, per lambda, the gradient-masking warnings
    (or that there were none)."""
    from .report import render_markdown

    lines = [
        render_markdown(title, rows, meta),
        f"![accuracy vs lambda]({plot_name})",
        "",
        "## Gradient-masking diagnostics per lambda",
        "",
    ]
    for key, found in diagnostics.items():
        warnings = found["warnings"]
        quiet = f"no warning signs (zero-gradient fraction {found['zero_gradient_fraction']:.3f})"
        lines.append(f"- {key}: " + ("; ".join(warnings) if warnings else quiet))
    return "\n".join(lines) + "\n"


def wide_accuracy(rows: Sequence[dict]) -> list[dict]:
    """One row per cell, a column of accuracy per method (``lam``)."""
    table: dict[tuple[Any, Any], dict[str, Any]] = {}
    for r in rows:
        cell = table.setdefault(
            (r["corruption"], r["severity"]), {"corruption": r["corruption"], "severity": r["severity"]}
        )
        cell[str(r["lam"])] = r["accuracy"]
    return list(table.values())


def render_rules(title: str, rows: Sequence[dict], summary: Sequence[dict], meta: dict[str, Any]) -> str:
    """The rule comparison's Markdown: each method's gain first, then accuracy per cell, then every row."""
    from .report import markdown_table, render_markdown

    gains = (
        f"Gain and clean change: accuracy points against `{rows[0]['lam']}`; corrupted_mean: mean over the "
        f"corrupted cells. {ORACLE_NOTE}"
    )
    return "\n".join(
        [
            render_markdown(title, summary, meta).rstrip(),
            "",
            gains,
            "",
            "## Accuracy per cell (%)",
            "",
            markdown_table(wide_accuracy(rows)),
            "",
            "## All rows",
            "",
            markdown_table(rows),
            "",
        ]
    )


def render_hold_out(
    title: str, rows: Sequence[dict], summary: Sequence[dict], meta: dict[str, Any], severities: Sequence[int]
) -> str:
    """The hold-out's Markdown: one row per held-out corruption, what the columns mean, then every row."""
    from .report import markdown_table, render_markdown

    note = (
        f"Per held-out corruption: mean test accuracy over severities {', '.join(map(str, severities))} at "
        f"lambda {meta['reference_lam']:g}, and the gain (points) of rule `{meta['rule']}` over it when the "
        "corruption's training groups are in the calibration and when they are left out (refitted from the stored "
        "group curves of clean and the other corruptions). kept = held-out gain / in-calibration gain. No test "
        "labels choose anything."
    )
    table = [render_markdown(title, summary, meta).rstrip(), "", note, "", "## All rows", "", markdown_table(rows)]
    return "\n".join([*table, ""])
