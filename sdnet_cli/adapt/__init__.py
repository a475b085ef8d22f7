"""Test-time adaptation baselines: ``none``, ``bn`` (BatchNorm statistics of the test batch), ``tent``, and
the per-image remedies ``bn-prior`` (BatchNorm statistics mixed from the stored ones and the image's) and
``memo`` (one entropy step on augmented copies of the image, then reset).

An adaptation is applied per evaluation cell: ``with adaptation.cell(model) as forward:`` runs that
cell's batches through ``forward``, and the model is back as it was afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
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
    check_prior_strength,
    mean_entropy,
)
from .memo import DEFAULT_COPIES, DEFAULT_LR, Memo, check_memo_copies, check_memo_lr, marginal_entropy

Adapt = Literal["none", "bn", "tent", "bn-prior", "memo"]
ADAPT_CHOICES: tuple[str, ...] = get_args(Adapt)


def check_adapt(name: str) -> Adapt:
    """``name`` if it is one of ``ADAPT_CHOICES`` (typed as such), else a usage error."""
    if name not in ADAPT_CHOICES:
        raise UsageError(f"unknown adapt {name!r}; choose one of: {', '.join(ADAPT_CHOICES)}", parameter="adapt")
    return cast(Adapt, name)


SETTINGS: tuple[tuple[str, str, Callable[[Any], Any]], ...] = (
    ("prior_strength", "bn-prior", check_prior_strength),
    ("memo_copies", "memo", check_memo_copies),
    ("memo_lr", "memo", check_memo_lr),
)
"""Each method-specific setting of ``AdaptSpec``: its name, the method it belongs to and its one validator."""


@dataclass(frozen=True)
class AdaptSpec:
    """A test-time adaptation and the settings of the method that has them, checked when made, whichever door
    they come in by (flag or API argument). A setting left None takes the method's published default
    (``bn-prior``: N = 16; ``memo``: 32 copies, SGD lr 0.005); a setting of another method is refused."""

    method: Adapt = "none"
    prior_strength: float | None = None
    memo_copies: int | None = None
    memo_lr: float | None = None

    def __post_init__(self) -> None:
        check_adapt(self.method)
        for setting, owner, check in SETTINGS:
            value = getattr(self, setting)
            if value is None:
                continue
            if self.method != owner:
                raise UsageError(f"{setting} applies to adapt={owner!r}, not {self.method!r}", parameter=setting)
            check(value)

    @classmethod
    def of(cls, value: AdaptSpec | str) -> AdaptSpec:
        """``value`` as a spec: a method name takes its default settings."""
        return value if isinstance(value, AdaptSpec) else cls(check_adapt(value))


def make_adaptation(
    adapt: AdaptSpec | str, batch_size: int | None = None, compile: bool = False, seed: int = 0
) -> Adaptation | None:
    """``adapt`` (a method name or an ``AdaptSpec``) -> the adaptation (None for ``none``); ``batch_size``: test
    images per adapted batch (default 200, TENT's CIFAR setting; for a per-image method only how many are
    computed together). ``seed``: of ``memo``'s augmentations (with each image's content).
    An adapted model changes while it runs, so it runs eagerly: ``compile`` is refused with it."""
    spec = AdaptSpec.of(adapt)
    if spec.method != "none" and compile:
        raise UsageError(
            "adapt runs the model eagerly (its BatchNorm layers change); drop compile", parameter="compile"
        )
    if batch_size is not None:
        check_count(batch_size, "batch_size", BATCH_MAX)
    size = batch_size or DEFAULT_BATCH_SIZE
    if spec.method == "none":
        return None
    if spec.method == "bn-prior":  # a setting left None keeps the method's own default
        return BatchNormPrior(batch_size=size, **_given(prior_strength=spec.prior_strength))
    if spec.method == "memo":
        return Memo(batch_size=size, seed=seed, **_given(copies=spec.memo_copies, lr=spec.memo_lr))
    method = Tent if spec.method == "tent" else BatchNormAdaptation
    return method(batch_size=size)


def _given(**settings: Any) -> dict[str, Any]:
    """The settings that were set (not None)."""
    return {name: value for name, value in settings.items() if value is not None}


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
    "AdaptSpec",
    "make_adaptation",
    "mean_entropy",
]
