"""MEMO (Zhang, Levine, Finn, NeurIPS 2022, "MEMO: Test Time Robustness via Adaptation and Augmentation").

For each test image on its own: ``copies`` augmented versions (``augment``), one optimiser step on every
parameter of the model minimising the entropy of their mean ("marginal") prediction, the prediction of the
ORIGINAL image by the stepped model, and every parameter put back before the next image. No state passes
between images, so a batch of B images gives what B batches of one give; batching only groups the loop.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import UsageError
from ..models.classifier import Classifier, LambdaPolicy
from .augment import MAX_DEPTH, OPERATIONS, SEVERITY, WIDTH, augmented_copies
from .batchnorm import DEFAULT_BATCH_SIZE

DEFAULT_COPIES = 32
"""Augmented copies per test image: MEMO's B on CIFAR-10 (32 in the authors' released CIFAR-10 code)."""
DEFAULT_LR = 0.005
"""SGD learning rate of MEMO's CIFAR-10 experiments (the authors' released code: SGD, lr 0.005, one step, every
parameter); one step, so momentum would not act; no weight decay."""
MAX_COPIES = 256
"""Each copy is a forward and a backward per test image: the bound on the work a setting can ask for."""


def check_memo_copies(value: int) -> int:
    """MEMO's B: an integer from 1 to ``MAX_COPIES``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_COPIES:
        raise UsageError(
            f"memo_copies must be an integer from 1 to {MAX_COPIES}, got {value!r}", parameter="memo_copies"
        )
    return value


def check_memo_lr(value: float) -> float:
    """MEMO's SGD learning rate: finite, in (0, 1]."""
    if isinstance(value, bool) or not (isinstance(value, (int, float)) and math.isfinite(value) and 0 < value <= 1):
        raise UsageError(f"memo_lr must be a number in (0, 1], got {value!r}", parameter="memo_lr")
    return float(value)


def marginal_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of the mean of the softmax predictions of ``logits`` [copies, classes]: MEMO's loss."""
    log_p = logits.float().log_softmax(dim=1)
    log_mean = torch.logsumexp(log_p, dim=0) - math.log(len(logits))
    return -(log_mean.exp() * log_mean).sum()


def image_seed(seed: int, x: torch.Tensor) -> list[int]:
    """The generator seed of one image's augmentations: the run's seed and the image's 8-bit content, so an
    image gets the same copies wherever it falls in a batch or stream."""
    img = (x.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return [seed, zlib.crc32(img.tobytes())]


class _MemoForward(nn.Module):
    """One MEMO step per image of each batch; returns the stepped model's logits of the original images.
    ``policy``: the lambda policy in force when the cell began, under which the augmented copies run (the
    original image runs under whatever policy is in force then, so its lambda alone is noted)."""

    def __init__(self, model: nn.Module, memo: Memo, policy: LambdaPolicy | None) -> None:
        super().__init__()
        self.model = model
        self.memo = memo
        self.policy = policy
        self.params = [p for p in model.parameters()]
        self.saved = [p.detach().clone() for p in self.params]

    def _step(self, x: torch.Tensor) -> None:
        rng = np.random.default_rng(image_seed(self.memo.seed, x))
        copies = augmented_copies(x, self.memo.copies, rng)
        optimizer = torch.optim.SGD(self.params, lr=self.memo.lr, momentum=0.0, weight_decay=0.0)
        using = self.model.using(self.policy) if isinstance(self.model, Classifier) else nullcontext()
        with torch.enable_grad(), using:
            optimizer.zero_grad(set_to_none=True)
            marginal_entropy(self.model(copies)).backward()
            optimizer.step()

    def _restore(self) -> None:
        with torch.no_grad():
            for p, value in zip(self.params, self.saved):
                p.copy_(value)
                p.grad = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = []
        for i in range(len(x)):
            try:
                self._step(x[i])
                with torch.no_grad():
                    out.append(self.model(x[i : i + 1]).detach())
            finally:
                self._restore()
        return torch.cat(out)


@dataclass(frozen=True)
class Memo:
    """MEMO with its CIFAR-10 settings by default: ``copies`` (B) = 32 augmented copies, one SGD step of
    ``lr`` 0.005 on all parameters (no momentum, no weight decay), AugMix-style augmentations that leave out
    the benchmark corruptions (``augment``), seeded per image by ``seed`` and the image's content. BatchNorm
    layers keep their stored statistics (the model stays in eval mode)."""

    batch_size: int = DEFAULT_BATCH_SIZE
    copies: int = DEFAULT_COPIES
    lr: float = DEFAULT_LR
    seed: int = 0
    name = "memo"
    stateful = False

    def __post_init__(self) -> None:
        check_memo_copies(self.copies)
        check_memo_lr(self.lr)

    def check(self, model: nn.Module) -> None:
        if not any(True for _ in model.parameters()):
            raise UsageError("adapt='memo' steps the model's parameters, and this model has none", parameter="adapt")

    @contextmanager
    def cell(self, model: nn.Module) -> Iterator[nn.Module]:
        self.check(model)
        params = list(model.parameters())
        requires_grad = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(True)
        forward = _MemoForward(model, self, model.lam_policy if isinstance(model, Classifier) else None)
        try:
            yield forward
        finally:
            forward._restore()
            for p, flag in zip(params, requires_grad):
                p.requires_grad_(flag)

    def settings(self) -> str:
        return f"B={self.copies} augmented copies, SGD lr {self.lr:g}, 1 step, all parameters, reset per image"

    def describe(self) -> dict[str, Any]:
        return {
            "method": self.name,
            "batch_size": self.batch_size,
            "copies": self.copies,
            "optimizer": "SGD",
            "lr": self.lr,
            "momentum": 0.0,
            "weight_decay": 0.0,
            "steps_per_image": 1,
            "parameters": "all",
            "loss": "entropy of the mean softmax prediction over the augmented copies",
            "augmentations": {
                "pre": "random crop of the 4-pixel zero-padded image, horizontal flip p=0.5",
                "operations": list(OPERATIONS),
                "width": WIDTH,
                "max_depth": MAX_DEPTH,
                "severity": SEVERITY,
                "left_out": ["contrast", "color", "brightness", "sharpness"],
            },
            "seed": self.seed,
            "batchnorm": "stored statistics",
            "reset": "every parameter is restored after each image",
            "cost_per_image": {"forwards": self.copies + 1, "backwards": 1},
        }

    def columns(self) -> dict[str, Any]:
        return {
            "adapt": self.name,
            "uses_test_batches": False,
            "adapt_batch_size": self.batch_size,
            "images_per_decision": 1,
            "gradient_steps": 1,
            "adapt_settings": self.settings(),
        }
