"""Gradient-masking warning signs, measured before an attack run.

A robustness number is only as good as the gradients the attacks follow. These are the signs that
standard AutoAttack (Croce & Hein, ICML 2020) and Carlini et al., "On Evaluating Adversarial
Robustness" (2019) list: a randomised forward, probabilities instead of logits, zero input
gradients, a forward that optimises its own input, and a black-box attack beating the white-box ones.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from .base import AttackedModel

SQUARE_MARGIN = 0.2  # points by which Square may beat the white-box attacks before we warn
DIAGNOSTIC_IMAGES = 32  # images the checks run on: the first of the run


@dataclass
class Diagnostics:
    """The warning signs, measured on the first images of a run."""

    n: int
    output_difference: float  # max |logits| difference between two identical forwards
    nondeterministic: bool
    looks_like_probabilities: bool
    zero_gradient_fraction: float  # samples whose input gradient of the loss is exactly zero
    forward_calls_autograd: bool
    lambda_gradient: str
    square_gain: dict[str, float] = field(default_factory=dict)  # eps -> points Square took after the white-box attacks
    max_excess: float = (
        0.0  # largest raw overshoot of the threat set by an attack (examples are projected before judging)
    )

    def warnings(self) -> list[str]:
        notes = []
        if self.nondeterministic:
            notes.append(
                f"two identical forwards differ (max {self.output_difference:.3g}): a randomised model; "
                "use AutoAttack version rand (EOT) and treat single-draw numbers with care"
            )
        if self.looks_like_probabilities:
            notes.append("outputs look like probabilities (rows in [0,1] summing to 1), not logits: losses saturate")
        if self.zero_gradient_fraction > 0:
            notes.append(
                f"{100 * self.zero_gradient_fraction:.1f}% of samples have an all-zero input gradient: "
                "gradient masking, white-box numbers are unreliable"
            )
        if self.forward_calls_autograd:
            notes.append(
                "the forward pass itself computes gradients (test-time optimisation): needs an adaptive attack"
            )
        if self.lambda_gradient.startswith("none"):
            notes.append(f"lambda gradient: {self.lambda_gradient}")
        for eps, gain in self.square_gain.items():
            if gain > SQUARE_MARGIN:
                notes.append(
                    f"at eps {eps} the black-box Square attack fooled {gain:.2f} points more than the "
                    "white-box attacks: their gradients are likely masked"
                )
        return notes

    def as_meta(self) -> dict[str, Any]:
        return {**asdict(self), "warnings": self.warnings()}


_AUTOGRAD_ENTRIES = ("grad", "backward")


def forward_calls_autograd(model: nn.Module, x: torch.Tensor) -> bool:
    """Does one forward (under no_grad, as at evaluation) call torch.autograd.grad/backward, or fail without gradients?"""
    calls: list[str] = []

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        code = frame.f_code
        if (
            event == "call"
            and code.co_name in _AUTOGRAD_ENTRIES
            and "torch" in code.co_filename
            and "autograd" in code.co_filename
        ):
            calls.append(code.co_name)

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        with torch.no_grad():
            model(x)
    except RuntimeError:
        return True
    finally:
        sys.settrace(previous)
    return bool(calls)


def diagnose(model: AttackedModel, x: torch.Tensor, y: torch.Tensor) -> Diagnostics:
    """Determinism, logits vs probabilities, zero gradients and autograd-in-forward on a small batch."""
    calls_autograd = forward_calls_autograd(model.model, x)
    first, second = model(x).detach(), model(x).detach()
    difference = float((first - second).abs().max())
    scale = max(1.0, float(first.abs().max()))
    in_unit = bool(((first >= 0) & (first <= 1)).all())
    probabilities = in_unit and torch.allclose(first.sum(1), torch.ones_like(first[:, 0]), atol=1e-4)
    xg = x.clone().requires_grad_(True)
    loss = F.cross_entropy(model(xg), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, xg)
    zero = float((grad.flatten(1).abs().amax(dim=1) == 0).float().mean())
    return Diagnostics(
        n=len(x),
        output_difference=difference,
        nondeterministic=difference > 1e-5 * scale,
        looks_like_probabilities=probabilities,
        zero_gradient_fraction=zero,
        forward_calls_autograd=calls_autograd,
        lambda_gradient=model.lambda_gradient(x),
    )
