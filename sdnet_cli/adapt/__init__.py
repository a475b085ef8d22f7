"""Test-time adaptation baselines: ``none``, ``bn`` (BatchNorm statistics of the test batch) and ``tent``.

An adaptation is applied per evaluation cell: ``with adaptation.cell(model) as forward:`` runs that
cell's batches through ``forward``, and the model is back as it was afterwards.
"""

from __future__ import annotations

from ..errors import UsageError
from ..schemas import BATCH_MAX, check_count
from .batchnorm import DEFAULT_BATCH_SIZE, BatchNormAdaptation, Tent, batch_statistics, mean_entropy

ADAPT_CHOICES = ("none", "bn", "tent")


def make_adaptation(name: str, batch_size: int | None = None, compile: bool = False) -> BatchNormAdaptation | None:
    """``name`` -> the adaptation (None for ``none``); ``batch_size``: test images per adapted batch
    (default 200, TENT's CIFAR setting). An adapted model changes while it runs, so it runs eagerly:
    ``compile`` is refused with it."""
    if name not in ADAPT_CHOICES:
        raise UsageError(f"unknown adapt {name!r}; choose one of: {', '.join(ADAPT_CHOICES)}", parameter="adapt")
    if name != "none" and compile:
        raise UsageError(
            "adapt runs the model eagerly (its BatchNorm layers change); drop compile", parameter="compile"
        )
    if batch_size is not None:
        check_count(batch_size, "batch_size", BATCH_MAX)
    if name == "none":
        return None
    method = Tent if name == "tent" else BatchNormAdaptation
    return method(batch_size=batch_size or DEFAULT_BATCH_SIZE)


__all__ = [
    "ADAPT_CHOICES",
    "DEFAULT_BATCH_SIZE",
    "BatchNormAdaptation",
    "Tent",
    "batch_statistics",
    "make_adaptation",
    "mean_entropy",
]
