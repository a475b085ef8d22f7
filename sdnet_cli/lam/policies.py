"""Lambda policies: what sparsity weight each input's CSC layers use at test time.

A policy maps (model, normalised batch) to a float or a per-sample [B] tensor; the
``Classifier`` applies it on every forward (set it with ``Classifier.using``), so evaluation,
sweeps and attacks all see the same deployed pipeline. The label-free per-input rules
(``ReconErrorLambda``, ``NoiseLevelLambda``) read label-free features of each input (``FEATURES``)
off a clamped line fitted on corrupted training images (see ``calibration``); ``lam="auto"`` is
whichever of them the calibration recommends.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import torch
import torch.nn.functional as F

from ..models.classifier import Classifier
from ..models.csc import require_csc
from ..schemas import RuleLine, check_lam, load

AUTO, RECON, NOISE, ORACLE = "auto", "recon", "noise", "oracle"


@dataclass(frozen=True)
class FixedLambda:
    """The same lambda for every input (the reference behaviour); ``label`` tags where it came from."""

    value: float
    label: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "value", check_lam(self.value))

    @property
    def name(self) -> str:
        return f"{self.label}:{self.value:g}" if self.label else f"{self.value:g}"

    def __call__(self, model: Classifier, x_normalized: torch.Tensor) -> float:
        return self.value


# -- label-free per-input features ---------------------------------------------------------------
def stem_error(model: Classifier, x_normalized: torch.Tensor) -> torch.Tensor:
    """[B] stem reconstruction error ||x - A^T z||^2 at the training lambda; keeps the graph for attacks."""
    require_csc(model, "it has no reconstruction error to read lambda from", parameter="model")
    stem = model.stem_csc
    assert stem is not None
    _, error = stem.solve(x_normalized, stem.lam)
    assert error is not None
    return error


# Immerkaer's noise-estimation kernel (Immerkaer, "Fast Noise Variance Estimation", CVIU 1996): the
# difference of two Laplacians. It is zero on every image that is a sum of one-variable functions of
# x and y (ramps, smooth shading), and its response to white noise of standard deviation sigma has
# standard deviation 6 * sigma (the kernel's L2 norm).
_NOISE_KERNEL = torch.tensor([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])
_MAD_TO_SIGMA = 0.6745  # median |N(0, 1)|


def estimate_noise_sigma(images: torch.Tensor) -> torch.Tensor:
    """[B] noise standard deviation of [B,C,H,W] images, in their own units.

    The median absolute high-pass response (robust to edges, unlike a mean) over all channels
    and valid pixels, rescaled so white gaussian noise of std sigma gives sigma.
    """
    channels = images.shape[1]
    kernel = _NOISE_KERNEL.to(images.device, images.dtype).expand(channels, 1, 3, 3)
    response = F.conv2d(images, kernel, groups=channels).flatten(1)
    scale = float(_NOISE_KERNEL.norm()) * _MAD_TO_SIGMA
    return response.abs().median(dim=1).values / scale


def _pixels(model: Classifier, x_normalized: torch.Tensor) -> torch.Tensor:
    """The input in [0,1] pixel units, float32 (undoes the normalisation); call with autocast off."""
    return x_normalized.float() * model.std + model.mean


def noise_sigma(model: Classifier, x_normalized: torch.Tensor) -> torch.Tensor:
    """[B] estimated noise level of the input in [0,1] pixel units (undoes the normalisation)."""
    with torch.autocast(device_type=x_normalized.device.type, enabled=False):
        return estimate_noise_sigma(_pixels(model, x_normalized))


_EXTREME = 1.5 / 255  # within this of 0 or 1: the 8-bit values 0, 1, 254, 255 (robust to float round-off)
_IMPULSE_JUMP = 0.5  # how far a salt-and-pepper value lies from its neighbourhood's median


def estimate_impulse_fraction(images: torch.Tensor) -> torch.Tensor:
    """[B] fraction of the channel values of [B,C,H,W] images in [0,1] that are salt-and-pepper impulses.

    An impulse is a value within 1.5/255 of 0 or 1 whose 3x3 same-channel median (replicate padding)
    lies more than 0.5 away: an isolated dark or bright dot, never a white background or a black
    region (their neighbours are extreme too). A median-based noise sigma barely moves under such dots,
    which is why the ``noise`` rule reads this beside it. No median is formed: for a value near 0 the
    median of its 9 values lies more than 0.5 above it exactly when at least 5 of its 8 neighbours do
    (no value in [0,1] lies 0.5 below it), and likewise near 1, so only the extreme values are looked
    at, each against its 8 neighbours.
    """
    batch, channels, height, width = images.shape
    padded = F.pad(images, (1, 1, 1, 1), mode="replicate")
    b, c, y, x = ((images <= _EXTREME) | (images >= 1 - _EXTREME)).nonzero(as_tuple=True)
    values = images[b, c, y, x]
    far = torch.zeros(values.shape, dtype=torch.uint8, device=images.device)
    for dy in range(3):
        for dx in range(3):
            if (dy, dx) != (1, 1):  # padded (y + 1, x + 1) is the value itself
                far += (padded[b, c, y + dy, x + dx] - values).abs() > _IMPULSE_JUMP
    counts = torch.zeros(batch, dtype=torch.float32, device=images.device).index_add_(0, b, (far >= 5).float())
    return counts / (channels * height * width)


def impulse_fraction(model: Classifier, x_normalized: torch.Tensor) -> torch.Tensor:
    """[B] fraction of salt-and-pepper values of the input in [0,1] pixels (undoes the normalisation).
    Piecewise constant in x: it passes no gradient, so attacks see lambda move only through the others."""
    with torch.no_grad(), torch.autocast(device_type=x_normalized.device.type, enabled=False):
        return estimate_impulse_fraction(_pixels(model, x_normalized))


Feature = Callable[[Classifier, torch.Tensor], torch.Tensor]
FEATURES: dict[str, Feature] = {"error": stem_error, "noise": noise_sigma, "impulse": impulse_fraction}
"""Feature key -> the label-free per-input feature; a calibration point stores its group's mean under the key."""


# -- per-input rules -----------------------------------------------------------------------------
@dataclass(frozen=True)
class LineRule:
    """lambda(x) = clamp(a * f1(x) + c * f2(x) + ... + b, lo, hi), one lambda per input in one batched forward.

    ``terms`` pairs each coefficient field with its feature's key in ``FEATURES``. A further term
    whose coefficient is 0 is not computed: a rule fitted before its further features existed (an
    older calibration file) costs and returns exactly what it did. ``label`` tags how the user asked
    for it: ``"auto"`` when the calibration's recommendation picked it, so reports say ``auto:noise``
    rather than hiding which rule ran.
    """

    a: float
    b: float
    lo: float
    hi: float
    label: str = ""
    rule: ClassVar[str]
    terms: ClassVar[tuple[tuple[str, str], ...]]

    def __post_init__(self) -> None:
        """The rules a calibration file's lines are held to (``schemas.RuleLine``), for a rule built in code."""
        load(
            RuleLine,
            {f: getattr(self, f) for f in ("a", "b", "lo", "hi", *(f for f, _ in self.terms))},
            "rule",
            self.rule,
        )

    @property
    def name(self) -> str:
        return f"{self.label}:{self.rule}" if self.label else self.rule

    @property
    def active_terms(self) -> list[tuple[float, str]]:
        """(coefficient, feature key) of the terms computed: the first always, the others where non-zero."""
        (first, key), *rest = self.terms
        return [(getattr(self, first), key)] + [(getattr(self, f), k) for f, k in rest if getattr(self, f)]

    @property
    def formula(self) -> str:
        text = "+".join(f"{coefficient:g}*{FEATURES[key].__name__}(x)" for coefficient, key in self.active_terms)
        return f"clamp({text.replace('+-', '-')}{self.b:+g}, {self.lo:g}, {self.hi:g})"

    def line_at(self, feature: Callable[[str], Any]) -> Any:
        """The unclamped line at the values ``feature(key)`` gives: per-input tensors or group means."""
        (a, first), *rest = self.active_terms
        value = a * feature(first)
        for coefficient, key in rest:
            value = value + coefficient * feature(key)
        return value + self.b

    def line(self, model: Classifier, x_normalized: torch.Tensor) -> torch.Tensor:
        """[B] the unclamped line; differentiable wherever the features are (attacks use its gradient)."""
        return cast(torch.Tensor, self.line_at(lambda key: FEATURES[key](model, x_normalized)))

    def __call__(self, model: Classifier, x_normalized: torch.Tensor) -> torch.Tensor:
        return self.line(model, x_normalized).clamp(self.lo, self.hi)


@dataclass(frozen=True)
class ReconErrorLambda(LineRule):
    """Per-input lambda read off the stem's reconstruction error at the training lambda.

    SDNet's robust inference (Dai et al., NeurIPS 2022) tunes the stem's lambda per corruption and
    relates the accuracy-optimal lambda to the mean reconstruction error by a straight line; this
    rule reads that line per input, so it needs no labels.
    """

    rule: ClassVar[str] = RECON
    terms: ClassVar = (("a", "error"),)


@dataclass(frozen=True)
class NoiseLevelLambda(LineRule):
    """Per-input lambda read off the input's pixel noise (model-free features): its noise sigma and,
    with weight ``c``, its fraction of salt-and-pepper values, which the sigma barely sees."""

    c: float = 0.0
    rule: ClassVar[str] = NOISE
    terms: ClassVar = (("a", "noise"), ("c", "impulse"))


RULES: dict[str, type[LineRule]] = {RECON: ReconErrorLambda, NOISE: NoiseLevelLambda}
"""Rule name (a ``lam`` value) -> the rule class a calibration fits; ``"auto"`` names the recommended one."""


def lambda_label(model: Classifier) -> float | str | None:
    """What a report's ``lam`` column says for this model's current policy."""
    if model.lam_policy is not None:
        value = model.lam_policy.name
        try:
            return float(value)
        except ValueError:
            return value
    return model.training_lam
