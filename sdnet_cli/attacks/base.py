"""The model as attacks see it, shared by the runner and the gradient-masking checks.

Attacks work on [0,1] images and differentiate ``AttackedModel``: the deployed model itself
(normalisation, lambda policy, network), in eval mode, at the run's precision, with float32 logits.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, cast

import torch
from torch import nn

from ..lam import FixedLambda
from ..runtime import Runtime, predict


class StraightThroughLine:
    """BPDA for a rule lambda(x) = clamp(a * feature(x) + b, lo, hi) (``lam.AutoLambda`` and kin).

    The forward value is the rule's own (deployed) lambda; the backward pass uses the line's
    gradient, so an input whose lambda sits at a clamp bound still passes a gradient through lambda
    (Athalye et al., "Obfuscated Gradients Give a False Sense of Security", ICML 2018).
    """

    def __init__(self, rule: Any) -> None:
        self.rule = rule
        self.name = rule.name

    def __call__(self, model: nn.Module, x_normalized: torch.Tensor) -> torch.Tensor:
        line = self.rule.line(model, x_normalized)
        deployed = torch.as_tensor(self.rule(model, x_normalized), dtype=line.dtype, device=line.device).detach()
        return cast(torch.Tensor, deployed + (line - line.detach()))  # exactly the deployed value; the line's gradient


def is_line_rule(policy: Any) -> bool:
    return all(hasattr(policy, key) for key in ("line", "lo", "hi"))


class _PlainGradient(torch.autograd.Function):
    """Identity whose backward hands out an NCHW-contiguous gradient (torchattacks ``.view()``s gradients,
    which fails on the channels_last ones a channels_last model produces)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


class AttackedModel(nn.Module):
    """The deployed model as attacks see it: precision of the run, float32 logits, and a
    straight-through clamp where the lambda policy is a clamped line (else the policy unchanged)."""

    model: Any  # a Classifier, or any module mapping [0,1] images to logits (``using``/``normalize`` when it has them)

    def __init__(self, model: nn.Module, runtime: Runtime) -> None:
        super().__init__()
        self.model = model
        self.runtime = runtime
        deployed = getattr(model, "lam_policy", None)
        self.policy = StraightThroughLine(deployed) if is_line_rule(deployed) else deployed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of [0,1] images: plain NCHW tensors and gradients for the attacks, channels_last inside."""
        swap = self.policy is not getattr(self.model, "lam_policy", None)
        with self.model.using(self.policy) if swap else nullcontext(), self.runtime.autocast():
            return cast(
                torch.Tensor, self.model(_PlainGradient.apply(x).contiguous(memory_format=torch.channels_last)).float()
            )

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Labels from the deployed model (no straight-through view): the judge of every example."""
        return predict(self.model, x, self.runtime)

    def lambda_gradient(self, x: torch.Tensor) -> str:
        """How the backward pass treats lambda (for the report meta); probes an unknown policy on ``x``.
        Starts with "none" when lambda(x) cannot pass a gradient."""
        policy = getattr(self.model, "lam_policy", None)
        if policy is None or isinstance(policy, FixedLambda):
            return "constant lambda (no per-input rule): nothing to differentiate through"
        if is_line_rule(policy):
            return (
                f"per-input lambda '{policy.name}' = {policy.formula}: gradients flow through lambda(x) by "
                "autograd; the clamp is straight-through (BPDA)"
            )
        with torch.enable_grad():
            lam = policy(self.model, self.model.normalize(x).requires_grad_(True))
        if isinstance(lam, torch.Tensor) and lam.requires_grad:
            return f"per-input lambda '{policy.name}': autograd through the policy as deployed"
        return (
            f"none: per-input lambda '{policy.name}' is not differentiable and has no straight-through form, "
            "so the backward pass holds lambda constant; robust accuracy is an upper bound"
        )
