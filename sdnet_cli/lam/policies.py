"""Lambda policies: what sparsity weight each input's CSC layers use at test time.

A policy maps (model, normalised batch) to a float or a per-sample [B] tensor; the
``Classifier`` applies it on every forward (set it with ``Classifier.using``), so evaluation,
sweeps and attacks all see the same deployed pipeline. The label-free per-input rules
(``ReconErrorLambda``, ``NoiseLevelLambda``) read a scalar feature of each input off a clamped line
fitted on corrupted training images (see ``calibration``); ``lam="auto"`` is whichever of them the
calibration recommends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
import torch.nn.functional as F

from ..errors import UsageError
from ..models.classifier import Classifier

AUTO, RECON, NOISE, ORACLE = "auto", "recon", "noise", "oracle"


@dataclass(frozen=True)
class FixedLambda:
    """The same lambda for every input (the reference behaviour); ``label`` tags where it came from."""

    value: float
    label: str = ""

    @property
    def name(self) -> str:
        return f"{self.label}:{self.value:g}" if self.label else f"{self.value:g}"

    def __call__(self, model: Classifier, x_normalized: torch.Tensor) -> float:
        return self.value


# -- label-free per-input features ---------------------------------------------------------------
def stem_error(model: Classifier, x_normalized: torch.Tensor) -> torch.Tensor:
    """[B] stem reconstruction error ||x - A^T z||^2 at the training lambda; keeps the graph for attacks."""
    stem = model.stem_csc
    if stem is None:
        raise UsageError(
            "this model has no CSC layer, so it has no reconstruction error to read lambda from", parameter="model"
        )
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


def noise_sigma(model: Classifier, x_normalized: torch.Tensor) -> torch.Tensor:
    """[B] estimated noise level of the input in [0,1] pixel units (undoes the normalisation)."""
    with torch.autocast(device_type=x_normalized.device.type, enabled=False):
        x = x_normalized.float() * model.std + model.mean
        return estimate_noise_sigma(x)


# -- per-input rules -----------------------------------------------------------------------------
@dataclass(frozen=True)
class LineRule:
    """lambda(x) = clamp(a * feature(x) + b, lo, hi), one lambda per input in one batched forward.

    ``label`` tags how the user asked for it: ``"auto"`` when the calibration's recommendation
    picked it, so reports say ``auto:noise`` rather than hiding which rule ran.
    """

    a: float
    b: float
    lo: float
    hi: float
    label: str = ""
    rule: ClassVar[str]
    feature: ClassVar[Callable[[Classifier, torch.Tensor], torch.Tensor]]

    @property
    def name(self) -> str:
        return f"{self.label}:{self.rule}" if self.label else self.rule

    def __call__(self, model: Classifier, x_normalized: torch.Tensor) -> torch.Tensor:
        values = type(self).feature(model, x_normalized)
        return (self.a * values + self.b).clamp(self.lo, self.hi)


@dataclass(frozen=True)
class ReconErrorLambda(LineRule):
    """Per-input lambda read off the stem's reconstruction error at the training lambda.

    SDNet's robust inference (Dai et al., NeurIPS 2022) tunes the stem's lambda per corruption and
    relates the accuracy-optimal lambda to the mean reconstruction error by a straight line; this
    rule reads that line per input, so it needs no labels.
    """

    rule: ClassVar[str] = RECON
    feature: ClassVar = staticmethod(stem_error)


@dataclass(frozen=True)
class NoiseLevelLambda(LineRule):
    """Per-input lambda read off an estimate of the input's pixel noise level (a model-free feature)."""

    rule: ClassVar[str] = NOISE
    feature: ClassVar = staticmethod(noise_sigma)


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
