"""Test-time lambda: sweeps over a lambda grid, and the calibration of the per-input rules.

``sweep_lambda`` evaluates every (cell, lambda) pair through the ordinary evaluation loop with a
``FixedLambda`` policy and records the stem's mean reconstruction error; ``calibrate`` runs the
same sweep on corrupted TRAINING images and fits the lines that ``AutoLambda`` and
``NoiseLevelLambda`` apply per input. SDNet's robust inference (Dai et al., NeurIPS 2022) sweeps the
stem's lambda the same way and relates each corruption's best lambda to its mean reconstruction
error; the calibration never sees a test image, so test accuracies of the rules stay honest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np
import pandas as pd
import torch

from .data.cells import CLEAN, Cell, expand_cells
from .data.corruptions import ALL_CORRUPTIONS, corrupt
from .errors import UsageError
from .evaluate import Batch, Counts, Runtime, cell_row, count_correct, iter_batches
from .lam import AutoLambda, Calibration, FixedLambda, LineRule, NoiseLevelLambda, fit_line, fit_line_for_accuracy, lambda_grid
from .models.classifier import Classifier
from .models.csc import CSCLayer
from .reports import save_line_plot, save_points_plot

FEATURES: dict[str, type[LineRule]] = {"error": AutoLambda, "noise": NoiseLevelLambda}
"""Point key -> the rule whose per-input feature it averages."""


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
    stem = model.stem_csc
    if stem is None:
        raise UsageError(
            "this model has no CSC layers, so it has no lambda to sweep (use an SDNet model)", parameter="model"
        )
    return stem


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
    """One row per (cell, lambda): the eval columns plus the stem's ``mean_error`` at that lambda and
    ``oracle`` (true on the first most accurate lambda of each cell). ``lams`` is read by ``lambda_grid``
    (sorted, distinct)."""
    stem = _stem(model)
    grid = lambda_grid(lams)
    rows: list[dict] = []
    for cell in cells:
        images, labels = source.load(cell)
        cell_rows = []
        for lam in grid:
            counts, mean_error = _run_at(model, stem, lam, images, labels, runtime, batch_size, progress)
            row = cell_row({**row_base, "lam": lam}, cell.corruption, cell.severity, counts)
            cell_rows.append({**row, "mean_error": mean_error, "oracle": False})
        cell_rows[int(np.argmax([r["correct"] for r in cell_rows]))]["oracle"] = True
        rows += cell_rows
    return rows


def _run_at(
    model: Classifier,
    stem: CSCLayer,
    lam: float,
    images: np.ndarray,
    labels: np.ndarray,
    runtime: Runtime,
    batch_size: int,
    progress: Callable[[int], None] | None,
) -> tuple[Counts, float]:
    """The counts at ``lam`` and the stem's mean reconstruction error there, from the same forwards."""
    errors = np.zeros(len(images), dtype=np.float64)
    with model.using(FixedLambda(lam)), stem.recording_error() as record:

        def observe(batch: Batch) -> None:
            errors[batch.rows] = record.error.cpu().numpy()  # type: ignore[union-attr]

        counts = count_correct(model, images, labels, runtime, batch_size, progress, observe)
    return counts, float(errors.mean())


def mean_features(
    model: Classifier, images: np.ndarray, labels: np.ndarray, runtime: Runtime, batch_size: int = 256
) -> dict[str, float]:
    """Mean of each rule's label-free feature over the images, computed exactly as the rule computes it
    (``labels`` only ride along with the batches)."""
    sums = dict.fromkeys(FEATURES, 0.0)
    with torch.no_grad(), runtime.autocast():
        for batch in iter_batches(images, labels, runtime, batch_size):
            xn = model.normalize(batch.x)
            for key, rule in FEATURES.items():
                sums[key] += float(rule.feature(model, xn).double().sum())
    return {key: total / len(images) for key, total in sums.items()}


def cell_points(
    model: Classifier, cells: Sequence[Cell], source: ImageSource, runtime: Runtime, rows: Sequence[dict], batch_size: int = 256
) -> list[dict]:
    """Per cell of a sweep: its best lambda, the accuracy there, and the mean rule features (the fit's x)."""
    best = {(r["corruption"], r["severity"]): r for r in rows if r["oracle"]}
    points = []
    for cell in cells:
        row = best[(cell.corruption, cell.severity)]
        images, labels = source.load(cell)
        points.append(
            {"corruption": cell.corruption, "severity": cell.severity, "best_lam": row["lam"], "accuracy": row["accuracy"],
             **mean_features(model, images, labels, runtime, batch_size)}
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
    its sweep curve (``fit_line_for_accuracy``). ``strength`` is the dataset's corruption strength
    table ("cifar" or "imagenet").
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
    curves = np.array([p["curve"] for p in points])
    try:
        rules = {key: rule(*fit_line_for_accuracy([p[key] for p in points], curves, grid), grid[0], grid[-1])
                 for key, rule in FEATURES.items()}
    except UsageError as exc:
        raise UsageError(
            f"calibration failed ({exc}): give more corruptions/severities so the groups differ", parameter="corruptions"
        ) from None
    return Calibration(
        auto=rules["error"],  # type: ignore[arg-type]
        noise=rules["noise"],  # type: ignore[arg-type]
        grid=grid,
        points=points,
        corruptions=list(corruptions),
        severities=[int(s) for s in severities],
        n=train.n,
        seed=seed,
        training_lam=float(_stem(model).lam),
        checkpoint_sha256=checkpoint_sha256,
    )


def _cell_label(corruption: str, severity: int) -> str:
    return corruption if severity == 0 else f"{corruption} s{severity}"


def save_sweep_plots(
    rows: Sequence[dict], points: Sequence[dict], out_dir: Path, name: str, title: str, calibration: Calibration | None = None
) -> list[Path]:
    """``<name>-accuracy.png`` (accuracy vs lambda, a line per cell) and ``<name>-fit.png`` (best lambda
    vs the stem's error at the training lambda: the test cells with their least-squares line, and the
    training groups with the calibrated ``auto`` line when given)."""
    frame = pd.DataFrame(list(rows))
    frame["cell"] = [_cell_label(c, s) for c, s in zip(frame["corruption"], frame["severity"])]
    wide = frame.pivot(index="lam", columns="cell", values="accuracy")
    order = list(dict.fromkeys(frame["cell"]))
    accuracy = save_line_plot(wide[order].reset_index(), "lam", order, Path(out_dir) / f"{name}-accuracy.png",
                              f"{title}: accuracy vs lambda", "accuracy (%)")
    series = [("test cells", [p["error"] for p in points], [p["best_lam"] for p in points], _line_or_none(points))]
    if calibration is not None:
        series.append(("training groups (calibration)", [p["error"] for p in calibration.points],
                       [p["best_lam"] for p in calibration.points], (calibration.auto.a, calibration.auto.b)))
    fit = save_points_plot(series, Path(out_dir) / f"{name}-fit.png", f"{title}: best lambda vs reconstruction error",
                           "mean stem reconstruction error at the training lambda", "best lambda")
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

    from .reports import atomic_path

    def final(rows_of: Sequence[dict]) -> list[dict]:  # AutoAttack: the worst case over its components
        names = {r["attack"] for r in rows_of}
        return [r for r in rows_of if r["attack"] == "worst" or "worst" not in names]

    ours = final([r for r in rows if r["model"] == model])
    frame = pd.DataFrame(ours).sort_values("lam")
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    clean = frame.drop_duplicates("lam")
    ax.plot(clean["lam"], clean["clean_accuracy"], marker="o", markersize=3, color="black", label=f"{model} clean")
    colours = {}
    for i, (eps_text, group) in enumerate(frame.groupby("eps_text", sort=False)):
        colours[eps_text] = f"C{i}"
        ax.plot(group["lam"], group["robust_accuracy"], marker="o", markersize=3, color=colours[eps_text],
                label=f"{model} robust, eps {eps_text}")
    for reference in sorted({r["model"] for r in rows} - {model}):
        theirs = final([r for r in rows if r["model"] == reference])
        ax.axhline(theirs[0]["clean_accuracy"], color="black", linestyle="--", linewidth=1, label=f"{reference} clean")
        for r in theirs:
            ax.axhline(r["robust_accuracy"], color=colours.get(r["eps_text"], "gray"), linestyle="--", linewidth=1,
                       label=f"{reference} robust, eps {r['eps_text']}")
    ax.set_xlabel("test-time lambda")
    ax.set_ylabel("accuracy (%)")
    attack = "autoattack" if ours[0]["attack"] == "worst" else ours[0]["attack"]
    ax.set_title(f"{model}: accuracy under {attack} vs lambda ({ours[0]['n']} images)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=7)
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)
