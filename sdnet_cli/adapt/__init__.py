"""Test-time adaptation baselines: ``none``, ``bn`` (BatchNorm statistics of the test batch), ``tent``, and
the per-image remedies ``bn-prior`` (BatchNorm statistics mixed from the stored ones and the image's) and
``memo`` (one entropy step on augmented copies of the image, then reset).

An adaptation is applied per evaluation cell: ``with adaptation.cell(model) as forward:`` runs that
cell's batches through ``forward``, and the model is back as it was afterwards.
"""

from __future__ import annotations

from typing import Any, Literal, cast, get_args

from ..errors import UsageError
from ..schemas import BATCH_MAX, check_count
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

Adapt = Literal["none", "bn", "tent", "bn-prior", "memo"]
ADAPT_CHOICES: tuple[str, ...] = get_args(Adapt)


def check_adapt(name: str) -> Adapt:
    """``name`` if it is one of ``ADAPT_CHOICES`` (typed as such), else a usage error."""
    if name not in ADAPT_CHOICES:
        raise UsageError(f"unknown adapt {name!r}; choose one of: {', '.join(ADAPT_CHOICES)}", parameter="adapt")
    return cast(Adapt, name)


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
    check_adapt(name)
    if name != "none" and compile:
        raise UsageError(
            "adapt runs the model eagerly (its BatchNorm layers change); drop compile", parameter="compile"
        )
    if batch_size is not None:
        check_count(batch_size, "batch_size", BATCH_MAX)
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


CALIBRATABLE = ("none", "bn", "bn-prior")
"""Adaptations a lambda calibration can run under: no state between batches and no gradient steps."""


def calibration_record(adapt: Adaptation | None) -> dict[str, Any] | None:
    """What a lambda calibration records of the adaptation it was fitted under (None: stored BatchNorm
    statistics), and what ``eval`` compares it with: the method and the settings that change its statistics."""
    if adapt is None:
        return None
    columns = adapt.columns()
    record: dict[str, Any] = {"method": adapt.name}
    if columns["uses_test_batches"]:
        record["batch_size"] = adapt.batch_size
    if "prior_strength" in columns:
        record["prior_strength"] = columns["prior_strength"]
    return record


def calibratable(name: str) -> str:
    """Refuse an adaptation a calibration cannot run under (TENT carries state, MEMO steps per image)."""
    if name not in CALIBRATABLE:
        raise UsageError(
            f"a lambda calibration runs under adapt {', '.join(CALIBRATABLE)}, not {name!r} (it carries state or "
            "takes gradient steps)",
            parameter="adapt",
        )
    return name


__all__ = [
    "CALIBRATABLE",
    "calibratable",
    "calibration_record",
    "ADAPT_CHOICES",
    "DEFAULT_COPIES",
    "DEFAULT_LR",
    "Adapt",
    "Adaptation",
    "Memo",
    "marginal_entropy",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_PRIOR_STRENGTH",
    "BatchNormAdaptation",
    "BatchNormPrior",
    "Tent",
    "batch_statistics",
    "check_adapt",
    "make_adaptation",
    "mean_entropy",
]
