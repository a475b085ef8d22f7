"""Corruption error (CE), mCE and relative mCE (Hendrycks & Dietterich), from eval report rows.

For corruption c with top-1 errors E_{s,c} over severities s = 1..5 and a baseline's errors
A_{s,c} (AlexNet for ImageNet-C, whose errors Hendrycks & Dietterich, ICLR 2019, publish):

    CE_c          = sum_s E_{s,c} / sum_s A_{s,c}
    relative CE_c = sum_s (E_{s,c} - E_clean) / sum_s (A_{s,c} - A_clean)

mCE and relative mCE are their means over the corruptions. The baseline is given as its mean
over the 5 severities, so only corruptions evaluated at all 5 severities can be normalised.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .rows import CLEAN
from .schemas import SEVERITIES


def percent(count: float, n: int) -> float:
    """``count`` of ``n`` as a percentage (NaN for n = 0): the one accuracy formula of the tool."""
    return 100.0 * float(count) / n if n else float("nan")


def corruption_errors(
    rows: Sequence[Mapping[str, Any]], baseline: Mapping[str, float], baseline_clean: float | None = None
) -> dict[str, Any] | None:
    """CE per corruption, mCE and relative mCE in percent, or None when no corruption can be normalised.

    ``rows`` are eval rows (``corruption``, ``severity``, ``n``, ``correct``; the clean row has
    severity 0). ``complete`` says whether every corruption of ``baseline`` was included, i.e.
    whether the mCE is comparable with published ones.
    """
    if not baseline:
        return None
    error = {(r["corruption"], r["severity"]): 1.0 - r["correct"] / r["n"] for r in rows if r["n"]}
    clean = error.get((CLEAN, 0))
    included = [c for c in baseline if all((c, s) in error for s in SEVERITIES)]
    if not included:
        return None
    ce, relative = {}, {}
    for c in included:
        mean_error = sum(error[(c, s)] for s in SEVERITIES) / len(SEVERITIES)
        ce[c] = 100.0 * mean_error / baseline[c]
        if clean is not None and baseline_clean is not None:
            relative[c] = 100.0 * (mean_error - clean) / (baseline[c] - baseline_clean)
    return {
        "mCE": sum(ce.values()) / len(ce),
        "relative_mCE": sum(relative.values()) / len(relative) if relative else None,
        "CE": ce,
        "relative_CE": relative,
        "corruptions": included,
        "complete": len(included) == len(baseline),
        "normalisation": "per-corruption error of the baseline (AlexNet for ImageNet-C), mean over severities 1-5",
    }
