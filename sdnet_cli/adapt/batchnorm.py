"""Test-time adaptation of a model's BatchNorm layers: BN adaptation, TENT, and the per-image prior mix.

BN adaptation and TENT see a batch of test images of ONE cell (one corruption at one severity) at a
time, which the per-input lambda rules never do (they see one image): every row they produce says so.
``BatchNormPrior`` decides per image, as the lambda rules do. All work on any model with BatchNorm
layers, lambda policies included (``Classifier.using`` is untouched), and put the model back exactly
as it was when the cell ends, so results do not depend on cell order.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

import torch
from torch import nn

from ..errors import UsageError

DEFAULT_BATCH_SIZE = 200
"""Test images per adaptation batch: TENT's CIFAR-10-C setting (Wang et al., ICLR 2021)."""


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@contextmanager
def batch_statistics(model: nn.Module) -> Iterator[list[nn.modules.batchnorm._BatchNorm]]:
    """Every BatchNorm layer normalises with the statistics of the batch it sees, in eval mode too.

    With no running buffers, ``F.batch_norm`` uses the batch's mean and (biased) variance whatever the
    module's mode, and updates nothing; the buffers and ``track_running_stats`` come back on exit."""
    layers = batchnorm_layers(model)
    saved = [(m.track_running_stats, m.running_mean, m.running_var) for m in layers]
    for m in layers:
        m.track_running_stats, m.running_mean, m.running_var = False, None, None
    try:
        yield layers
    finally:
        for m, (track, mean, var) in zip(layers, saved):
            m.track_running_stats, m.running_mean, m.running_var = track, mean, var


def mean_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean Shannon entropy (nats) of the softmax predictions: TENT's loss."""
    log_p = logits.float().log_softmax(dim=1)
    return -(log_p.exp() * log_p).sum(dim=1).mean()


class _TentForward(nn.Module):
    """The model's forward plus one entropy-minimising optimiser step per batch.

    Returns the logits of the forward that computed the loss (the step then serves the next batch), as
    TENT does: one forward and one backward per image. Runs with gradients even inside ``no_grad``."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        super().__init__()
        self.model = model
        self.optimizer = optimizer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            logits = self.model(x)
            self.optimizer.zero_grad(set_to_none=True)
            mean_entropy(logits).backward()
            self.optimizer.step()
        return cast(torch.Tensor, logits.detach())


@dataclass(frozen=True)
class BatchNormAdaptation:
    """BN adaptation (Schneider et al., NeurIPS 2020; Nado et al., 2020): BatchNorm statistics of the
    current test batch replace the training ones; no parameter changes."""

    batch_size: int = DEFAULT_BATCH_SIZE
    name = "bn"
    stateful = False  # each batch is adapted on its own: batches may be split across processes

    @contextmanager
    def cell(self, model: nn.Module) -> Iterator[nn.Module]:
        """The module to run one cell's batches through; the model is restored on exit."""
        self.check(model)
        with batch_statistics(model):
            yield model

    def check(self, model: nn.Module) -> None:
        """Refuse a model this cannot adapt, before any work starts."""
        if not batchnorm_layers(model):
            raise UsageError(
                f"adapt={self.name!r} needs a model with BatchNorm layers; this one has none", parameter="adapt"
            )

    def describe(self) -> dict[str, Any]:
        return {
            "method": self.name,
            "batch_size": self.batch_size,
            "statistics": "of the test batch (biased variance), per cell",
            "cost_per_image": {"forwards": 1, "backwards": 0},
        }

    def columns(self) -> dict[str, Any]:
        """What every row adapted this way relies on: the method, whether it needs a batch of test images,
        the batch size, the test images behind each prediction and the gradient steps per batch."""
        return {
            "adapt": self.name,
            "uses_test_batches": True,
            "adapt_batch_size": self.batch_size,
            "images_per_decision": self.batch_size,
            "gradient_steps": 0,
        }


@dataclass(frozen=True)
class Tent(BatchNormAdaptation):
    """TENT (Wang et al., ICLR 2021): BN adaptation, and the BatchNorm affine parameters take one
    Adam step per batch minimising the mean prediction entropy. Their CIFAR setting: Adam, lr 1e-3,
    betas (0.9, 0.999), no weight decay, one step per batch of 200. Each cell starts from the original
    parameters with a fresh optimiser, in batch order; nothing is random, so a run repeats exactly
    (up to non-deterministic GPU kernels)."""

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    name = "tent"
    stateful = True  # batch k's prediction depends on batches 0..k-1: one process must see them in order

    @contextmanager
    def cell(self, model: nn.Module) -> Iterator[nn.Module]:
        self.check(model)
        params = list(model.parameters())
        requires_grad = [p.requires_grad for p in params]
        with batch_statistics(model) as layers:
            affine = [p for m in layers for p in (m.weight, m.bias) if p is not None]
            saved = [p.detach().clone() for p in affine]
            for p in params:
                p.requires_grad_(False)
            for p in affine:
                p.requires_grad_(True)
            optimizer = torch.optim.Adam(affine, lr=self.lr, betas=self.betas, weight_decay=0.0)
            try:
                yield _TentForward(model, optimizer)
            finally:
                with torch.no_grad():
                    for p, value in zip(affine, saved):
                        p.copy_(value)
                        p.grad = None
                for p, flag in zip(params, requires_grad):
                    p.requires_grad_(flag)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "optimizer": "Adam",
            "lr": self.lr,
            "betas": list(self.betas),
            "weight_decay": 0.0,
            "steps_per_batch": 1,
            "parameters": "BatchNorm affine (weight, bias)",
            "reset": "every cell starts from the original parameters and a fresh optimiser",
            "cost_per_image": {"forwards": 1, "backwards": 1},
        }

    def columns(self) -> dict[str, Any]:
        return {**super().columns(), "gradient_steps": 1}


DEFAULT_PRIOR_STRENGTH = 16.0
"""Prior strength N of ``bn-prior`` for one image (n = 1): the value MEMO's released code (Zhang et al., NeurIPS
2022) uses for its single-image BN adaptation, taken from Schneider et al. (NeurIPS 2020)."""
MAX_PRIOR_STRENGTH = 1e6
"""Beyond this the stored statistics alone decide (the image's weight is below 1e-6)."""


def check_prior_strength(value: float) -> float:
    """N >= 0 and finite: 0 normalises with the image's own statistics, large N with the stored ones."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_PRIOR_STRENGTH:
        raise UsageError(
            f"prior_strength must be a number from 0 to {MAX_PRIOR_STRENGTH:g}, got {value!r}",
            parameter="prior_strength",
        )
    return float(value)


def prior_mixed_batchnorm(layer: nn.modules.batchnorm._BatchNorm, x: torch.Tensor, weight: float) -> torch.Tensor:
    """``layer`` applied to every sample of ``x`` with its own statistics: mean and variance =
    ``weight`` * stored + (1 - ``weight``) * that sample's (over its spatial positions; biased variance).
    Per sample, so a batch of B gives what B batches of one give."""
    dims = tuple(range(2, x.ndim))
    shape = (*x.shape[:2], *([1] * len(dims)))
    xf = x.float()
    if dims:
        var, mean = torch.var_mean(xf, dim=dims, correction=0)
    else:  # (B, C): one value per channel, no spread
        mean, var = xf, torch.zeros_like(xf)
    assert layer.running_mean is not None and layer.running_var is not None
    mixed_mean = weight * layer.running_mean.float() + (1.0 - weight) * mean
    mixed_var = weight * layer.running_var.float() + (1.0 - weight) * var
    y = (xf - mixed_mean.view(shape)) * torch.rsqrt(mixed_var.view(shape) + layer.eps)
    if layer.weight is not None:
        y = y * layer.weight.view(1, -1, *([1] * len(dims)))
    if layer.bias is not None:
        y = y + layer.bias.view(1, -1, *([1] * len(dims)))
    return y.to(x.dtype)


@dataclass(frozen=True)
class BatchNormPrior(BatchNormAdaptation):
    """BN adaptation to ONE image with a prior (Schneider et al., NeurIPS 2020, "Improving robustness against
    common corruptions by covariate shift adaptation"): each BatchNorm layer normalises each image with
    mean and variance N/(N+1) * stored + 1/(N+1) * that image's own (n = 1 of their
    N/(N+n), n/(N+n) mix), N = ``prior_strength``. No state between images and nothing learnt: batching
    only sets throughput (``batch_size`` images are computed together, each with its own statistics)."""

    prior_strength: float = DEFAULT_PRIOR_STRENGTH
    name = "bn-prior"
    stateful = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "prior_strength", check_prior_strength(self.prior_strength))

    @contextmanager
    def cell(self, model: nn.Module) -> Iterator[nn.Module]:
        self.check(model)
        layers = batchnorm_layers(model)
        missing = [m for m in layers if m.running_mean is None or m.running_var is None]
        if missing:
            raise UsageError(
                f"adapt={self.name!r} mixes the stored BatchNorm statistics with the image's, and this model has "
                "BatchNorm layers without stored statistics",
                parameter="adapt",
            )
        weight = self.prior_strength / (self.prior_strength + 1.0)
        for m in layers:  # an instance attribute shadows the class's forward until deleted
            m.forward = partial(prior_mixed_batchnorm, m, weight=weight)  # type: ignore[method-assign]
        try:
            yield model
        finally:
            for m in layers:
                del m.forward

    def describe(self) -> dict[str, Any]:
        return {
            "method": self.name,
            "batch_size": self.batch_size,
            "prior_strength": self.prior_strength,
            "statistics": "per image: N/(N+1) * stored + 1/(N+1) * the image's own (biased variance)",
            "reset": "nothing is kept between images",
            "cost_per_image": {"forwards": 1, "backwards": 0},
        }

    def columns(self) -> dict[str, Any]:
        return {
            "adapt": self.name,
            "uses_test_batches": False,
            "adapt_batch_size": self.batch_size,
            "images_per_decision": 1,
            "gradient_steps": 0,
            "prior_strength": self.prior_strength,
        }
