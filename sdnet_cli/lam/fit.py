"""Fitting the per-input lambda lines (one feature or several), and the lambda grids they are fitted on."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import UsageError
from ..schemas import GRID_MAX, check_lam


def lambda_grid(lams: str | Sequence[float]) -> list[float]:
    """The sorted, distinct lambdas of ``lams``: a sequence of numbers, or text ``start:stop:step`` (stop
    included) or a comma list. Each is a valid lambda (``schemas.check_lam``) and there are at most
    ``GRID_MAX`` of them, counted before any list is built (each point costs a full evaluation)."""
    if isinstance(lams, str):
        values = _grid_text(lams)
    else:
        values = list(lams)
        if len(values) > GRID_MAX:
            raise UsageError(f"lams has {len(values):,} points; at most {GRID_MAX:,} are allowed", parameter="lams")
    if not values:
        raise UsageError(f"lams needs at least one lambda, got {lams!r}", parameter="lams")
    return sorted({round(check_lam(v, "lams"), 10) for v in values})


def _grid_text(text: str) -> list[float]:
    try:
        if ":" in text:
            start, stop, step = (float(p) for p in text.split(":"))
            if (
                not (math.isfinite(start) and math.isfinite(stop) and math.isfinite(step))
                or not step > 0
                or stop < start
            ):
                raise ValueError
            count = int(math.floor((stop - start) / step + 1e-9)) + 1
            if count > GRID_MAX:
                raise UsageError(
                    f"lams {text!r} has {count:,} points; at most {GRID_MAX:,} are allowed (use a larger step)",
                    parameter="lams",
                )
            return [start + i * step for i in range(count)]
        parts = [p for p in text.split(",") if p.strip()]
        if len(parts) > GRID_MAX:
            raise UsageError(f"lams has {len(parts):,} points; at most {GRID_MAX:,} are allowed", parameter="lams")
        return [float(p) for p in parts]
    except ValueError as exc:
        if isinstance(exc, UsageError):
            raise
        raise UsageError(
            f"lams must be START:STOP:STEP (e.g. 0.1:1.4:0.1) or a comma list, got {text!r}", parameter="lams"
        ) from None


def fit_line(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Least-squares (slope, intercept) of y on x."""
    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if xs.shape != ys.shape or len(xs) < 2:
        raise UsageError("a line fit needs at least two points")
    dx = xs - xs.mean()
    spread = float((dx * dx).sum())
    if spread <= 1e-12 * max(1.0, float((xs * xs).sum())):
        raise UsageError("a line fit needs points with different x values")
    slope = float((dx * (ys - ys.mean())).sum()) / spread
    return slope, float(ys.mean() - slope * xs.mean())


def fit_line_for_accuracy(features: Sequence[float], curves: np.ndarray, grid: Sequence[float]) -> tuple[float, float]:
    """(slope, intercept) of the clamped line lambda = clamp(a * feature + b) that maximises the mean group accuracy.

    ``curves[g, j]`` is group g's accuracy at ``grid[j]``; a group's accuracy at the line's lambda is
    read off its curve (linear between grid points). Unlike a least-squares line through each group's
    best lambda, this weighs a miss by what it costs: a group whose accuracy barely depends on
    lambda cannot drag the line away from one whose accuracy falls steeply. The line is searched
    through its values at the smallest and largest feature, in steps of a quarter of the grid's
    smallest spacing, reaching one grid span beyond either end (the clamp cuts those back);
    ties go to the line closest to the groups' best lambdas, then to the flattest.
    """
    coefficients, intercept = fit_rule_for_accuracy(np.asarray(features, dtype=np.float64)[:, None], curves, grid)
    return coefficients[0], intercept


def fit_rule_for_accuracy(
    features: np.ndarray, curves: np.ndarray, grid: Sequence[float]
) -> tuple[tuple[float, ...], float]:
    """((a, c, ...), b) of lambda = clamp(a * f1 + c * f2 + ... + b) maximising the mean group accuracy.

    ``features[g, k]`` is group g's mean of feature k. The line in the first feature is searched as
    ``fit_line_for_accuracy`` describes, once for every combination of the further coefficients; each
    of those steps its term's value at the feature's largest magnitude by the same quarter grid
    spacing, up to two grid spans either way (from a line one span below the grid, a term can still
    reach its top), so the cost grows as (16 x grid span / smallest spacing) ** (features - 1). Ties go to
    the lambdas closest to the groups' best ones, then to the flattest first-feature line, then to
    the smallest further terms; a further feature that is 0 in every group gets coefficient 0.
    """
    xs = np.asarray(features, dtype=np.float64)
    curves = np.asarray(curves, dtype=np.float64)
    grid_values = np.asarray(grid, dtype=np.float64)
    if xs.ndim != 2 or curves.shape != (len(xs), len(grid_values)) or len(xs) < 2 or len(grid_values) < 2:
        raise UsageError(
            "an accuracy fit needs at least two groups and two grid lambdas, each group with an accuracy per lambda"
        )
    first = xs[:, 0]
    x_lo, x_hi = float(first.min()), float(first.max())
    if x_hi - x_lo <= 1e-12 * max(1.0, abs(x_hi)):
        raise UsageError("a line fit needs points with different x values")
    order = np.argsort(grid_values)
    grid_values, curves = grid_values[order], curves[:, order]
    lo, hi = float(grid_values[0]), float(grid_values[-1])
    best = grid_values[curves.argmax(axis=1)]
    step = float(np.diff(grid_values).min()) / 4
    candidates = np.arange(lo - (hi - lo), hi + (hi - lo) + step / 2, step)
    start, end = (c.ravel() for c in np.meshgrid(candidates, candidates, indexing="ij"))
    t = (first - x_lo) / (x_hi - x_lo)
    lines = start[:, None] + t[None, :] * (end - start)[:, None]  # [lines, groups], before the further terms
    reach = int(round(2 * (hi - lo) / step))
    scales = np.abs(xs[:, 1:]).max(axis=0)  # each further feature's largest magnitude over the groups
    further = [np.arange(-reach, reach + 1) * step / scale if scale > 0 else np.zeros(1) for scale in scales]
    chosen: tuple[Any, ...] | None = None
    for extra in itertools.product(*further):
        lams = np.clip(lines + xs[:, 1:] @ np.asarray(extra, dtype=np.float64), lo, hi)
        accuracy = np.stack([np.interp(lams[:, g], grid_values, curves[g]) for g in range(len(xs))], axis=1)
        accuracy = accuracy.mean(axis=1)
        distance = np.abs(lams - best[None, :]).mean(axis=1)
        k = np.lexsort((np.abs(end - start), distance, -np.round(accuracy, 9)))[0]
        size = float(np.abs(np.asarray(extra, dtype=np.float64) * scales).sum())
        key = (-round(float(accuracy[k]), 9), float(distance[k]), float(abs(end[k] - start[k])), size)
        if chosen is None or key < chosen[0]:
            chosen = (key, k, extra)
    assert chosen is not None
    _, k, extra = chosen
    slope = (end[k] - start[k]) / (x_hi - x_lo)
    return (float(slope), *(float(c) for c in extra)), float(start[k] - slope * x_lo)


def mean_group_accuracy(lams: Sequence[float], curves: np.ndarray, grid: Sequence[float]) -> float:
    """Mean over groups of group g's accuracy at ``lams[g]``, read off its sweep curve ``curves[g]``
    (linear between grid points): the score ``fit_line_for_accuracy`` maximises, and the one that
    decides which rule ``lam="auto"`` recommends."""
    grid_values = np.asarray(grid, dtype=np.float64)
    order = np.argsort(grid_values)
    curves = np.asarray(curves, dtype=np.float64)[:, order]
    return float(np.mean([np.interp(lam, grid_values[order], curve) for lam, curve in zip(lams, curves)]))
