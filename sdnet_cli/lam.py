"""Lambda policies: what sparsity weight each input's CSC layers use at test time.

A policy maps (model, normalised batch) to a float or a per-sample [B] tensor; the
``Classifier`` applies it on every forward, so eval, sweeps and attacks all see the same
deployed pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .models.classifier import Classifier, LambdaPolicy


@dataclass(frozen=True)
class FixedLambda:
    """The same lambda for every input (the reference behaviour)."""

    value: float

    @property
    def name(self) -> str:
        return f"{self.value:g}"

    def __call__(self, model: Classifier, x_normalized: torch.Tensor) -> float:
        return self.value


def parse_lambda(text: str | None, model: Classifier) -> LambdaPolicy | None:
    """``--lam`` -> policy. None keeps each CSC layer's training lambda."""
    if text is None:
        return None
    if not model.csc_layers:
        raise ValueError("--lam was given, but this model has no CSC layers (only SDNet models have a lambda)")
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"--lam must be a number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"--lam must be a finite number >= 0, got {text!r}")
    return FixedLambda(value)


def lambda_label(model: Classifier) -> float | str | None:
    """What a report's ``lam`` column says for this model's current policy."""
    if model.lam_policy is not None:
        value = model.lam_policy.name
        try:
            return float(value)
        except ValueError:
            return value
    return model.training_lam
