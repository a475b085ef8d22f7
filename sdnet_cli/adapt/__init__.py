"""Test-time adaptation baselines: ``none``, ``bn`` (BatchNorm statistics of the test batch) and ``tent``.

An adaptation is applied per evaluation cell: ``with adaptation.cell(model) as forward:`` runs that
cell's batches through ``forward``, and the model is back as it was afterwards.
"""

from __future__ import annotations

from typing import Literal, cast, get_args

from ..errors import UsageError
from .batchnorm import DEFAULT_BATCH_SIZE, BatchNormAdaptation, Tent, batch_statistics, mean_entropy

Adapt = Literal["none", "bn", "tent"]
ADAPT_CHOICES: tuple[str, ...] = get_args(Adapt)


def check_adapt(name: str) -> Adapt:
    """``name`` if it is one of ``ADAPT_CHOICES`` (typed as such), else a usage error."""
    if name not in ADAPT_CHOICES:
        raise UsageError(f"unknown adapt {name!r}; choose one of: {', '.join(ADAPT_CHOICES)}", parameter="adapt")
    return cast(Adapt, name)


def make_adaptation(name: str, batch_size: int | None = None, compile: bool = False) -> BatchNormAdaptation | None:
    """``name`` -> the adaptation (None for ``none``); ``batch_size``: test images per adapted batch
    (default 200, TENT's CIFAR setting). An adapted model changes while it runs, so it runs eagerly:
    ``compile`` is refused with it."""
    check_adapt(name)
    if name != "none" and compile:
        raise UsageError(
            "adapt runs the model eagerly (its BatchNorm layers change); drop compile", parameter="compile"
        )
    if batch_size is not None and batch_size < 1:
        raise UsageError(f"batch_size must be >= 1, got {batch_size}", parameter="batch_size")
    if name == "none":
        return None
    method = Tent if name == "tent" else BatchNormAdaptation
    return method(batch_size=batch_size or DEFAULT_BATCH_SIZE)


__all__ = [
    "ADAPT_CHOICES",
    "Adapt",
    "DEFAULT_BATCH_SIZE",
    "BatchNormAdaptation",
    "Tent",
    "batch_statistics",
    "check_adapt",
    "make_adaptation",
    "mean_entropy",
]
