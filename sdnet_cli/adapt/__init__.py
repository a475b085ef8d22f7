"""Test-time adaptation baselines: ``none``, ``bn`` (BatchNorm statistics of the test batch), ``tent``, and
the per-image remedies ``bn-prior`` (BatchNorm statistics mixed from the stored ones and the image's) and
``memo`` (one entropy step on augmented copies of the image, then reset).

An adaptation is applied per evaluation cell: ``with adaptation.cell(model) as forward:`` runs that
cell's batches through ``forward``, and the model is back as it was afterwards.
"""

from __future__ import annotations

from ..errors import UsageError
from .base import Adaptation
from .batchnorm import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_PRIOR_STRENGTH,
    BatchNormAdaptation,
    BatchNormPrior,
    Tent,
    batch_statistics,
    mean_entropy,
)
from .memo import DEFAULT_COPIES, DEFAULT_LR, Memo, marginal_entropy

ADAPT_CHOICES = ("none", "bn", "tent", "bn-prior", "memo")


def make_adaptation(
    name: str,
    batch_size: int | None = None,
    compile: bool = False,
    prior_strength: float | None = None,
    seed: int = 0,
) -> Adaptation | None:
    """``name`` -> the adaptation (None for ``none``); ``batch_size``: test images per adapted batch
    (default 200, TENT's CIFAR setting; for a per-image method only how many are computed together).
    ``prior_strength``: N of ``bn-prior`` (default ``DEFAULT_PRIOR_STRENGTH``), refused with any other method.
    ``seed``: of ``memo``'s augmentations (with each image's content).
    An adapted model changes while it runs, so it runs eagerly: ``compile`` is refused with it."""
    if name not in ADAPT_CHOICES:
        raise UsageError(f"unknown adapt {name!r}; choose one of: {', '.join(ADAPT_CHOICES)}", parameter="adapt")
    if name != "none" and compile:
        raise UsageError(
            "adapt runs the model eagerly (its BatchNorm layers change); drop compile", parameter="compile"
        )
    if batch_size is not None and batch_size < 1:
        raise UsageError(f"batch_size must be >= 1, got {batch_size}", parameter="batch_size")
    if prior_strength is not None and name != "bn-prior":
        raise UsageError(f"prior_strength applies to adapt='bn-prior', not {name!r}", parameter="prior_strength")
    if name == "none":
        return None
    size = batch_size or DEFAULT_BATCH_SIZE
    if name == "bn-prior":
        return BatchNormPrior(
            batch_size=size, prior_strength=DEFAULT_PRIOR_STRENGTH if prior_strength is None else prior_strength
        )
    if name == "memo":
        return Memo(batch_size=size, seed=seed)
    method = Tent if name == "tent" else BatchNormAdaptation
    return method(batch_size=size)


__all__ = [
    "ADAPT_CHOICES",
    "DEFAULT_COPIES",
    "DEFAULT_LR",
    "Adaptation",
    "Memo",
    "marginal_entropy",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_PRIOR_STRENGTH",
    "BatchNormAdaptation",
    "BatchNormPrior",
    "Tent",
    "batch_statistics",
    "make_adaptation",
    "mean_entropy",
]
