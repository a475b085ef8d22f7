"""The label-using references for test-time lambda: ceilings, not methods.

Both are pure functions of one sweep's per-image correctness matrix ``correct[j, i]`` (image i
classified correctly at grid lambda j), measured on the very images they are scored on:

- per-cell oracle: the best single lambda of the grid for the cell, the ceiling of any method
  that uses one lambda per cell;
- per-input oracle: an image counts as correct if any grid lambda classifies it correctly, the
  ceiling of any rule that picks a grid lambda per input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import UsageError


def _matrix(correct: np.ndarray, grid: Sequence[float] | None = None) -> np.ndarray:
    matrix = np.asarray(correct)
    if matrix.ndim != 2 or matrix.dtype != bool or matrix.shape[0] < 1:
        raise UsageError("correct must be a boolean [lambdas, images] matrix", parameter="correct")
    if grid is not None and len(grid) != matrix.shape[0]:
        raise UsageError(f"correct has {matrix.shape[0]} rows but the grid {len(grid)} lambdas", parameter="grid")
    return matrix


def per_cell_oracle(correct: np.ndarray, grid: Sequence[float]) -> tuple[float, int]:
    """(lambda, images correct) of the grid lambda that classifies most images correctly; ties go to
    the smallest lambda."""
    matrix = _matrix(correct, grid)
    counts = matrix.sum(axis=1)
    best = max(range(len(grid)), key=lambda j: (counts[j], -grid[j]))
    return float(grid[best]), int(counts[best])


def per_input_oracle(correct: np.ndarray) -> int:
    """Images that at least one grid lambda classifies correctly."""
    return int(_matrix(correct).any(axis=0).sum())


@dataclass(frozen=True)
class OracleScores:
    """Both oracles of one cell."""

    n: int
    cell_lam: float
    cell_correct: int
    input_correct: int


def oracle_scores(correct: np.ndarray, grid: Sequence[float]) -> OracleScores:
    lam, cell_correct = per_cell_oracle(correct, grid)
    return OracleScores(int(np.shape(correct)[1]), lam, cell_correct, per_input_oracle(correct))
