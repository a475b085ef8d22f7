"""The deployed model: [0,1] images -> normalisation -> network (with a lambda policy) -> logits.

Every model the tool evaluates or attacks is a ``Classifier``, so attacks always see the whole
pipeline, test-time lambda selection included: an adaptive attack must differentiate the defence
as deployed (Tramer et al., "On Adaptive Attacks to Adversarial Example Defenses", 2020).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Protocol, Sequence

import torch
from torch import nn

from .csc import CSCLayer, Lambda


class LambdaPolicy(Protocol):
    """Decides the CSC lambda for a batch: a float, or a [B] tensor (one lambda per input)."""

    name: str

    def __call__(self, model: "Classifier", x_normalized: torch.Tensor) -> Lambda | None: ...


class Classifier(nn.Module):
    """Wraps a network that expects normalised inputs; takes float images in [0, 1], NCHW."""

    def __init__(self, network: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.network = network
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self._lam_policy: LambdaPolicy | None = None
        self.csc_layers: list[CSCLayer] = [m for m in network.modules() if isinstance(m, CSCLayer)]

    @property
    def stem_csc(self) -> CSCLayer | None:
        layers = self.csc_layers
        return layers[0] if layers else None

    @property
    def training_lam(self) -> float | None:
        stem = self.stem_csc
        return None if stem is None else stem.lam

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    @property
    def lam_policy(self) -> LambdaPolicy | None:
        """The policy in force (None: each CSC layer's training lambda); change it with ``using``."""
        return self._lam_policy

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xn = self.normalize(x)
        lam = self._lam_policy(self, xn) if self._lam_policy is not None else None
        with self.test_lambda(lam):
            return self.network(xn)

    @contextmanager
    def using(self, policy: LambdaPolicy | None) -> Iterator["Classifier"]:
        """Run forwards with ``policy`` inside the block (None: training lambda); the previous policy
        comes back on exit, so blocks nest."""
        previous = self._lam_policy
        self._lam_policy = policy
        try:
            yield self
        finally:
            self._lam_policy = previous

    @contextmanager
    def test_lambda(self, lam: Lambda | None) -> Iterator[None]:
        """Run every CSC layer with ``lam`` (a float or a [B] tensor) inside the block; None keeps what
        was in force. The previous values come back on exit, so blocks nest."""
        previous = [layer.test_lam for layer in self.csc_layers]
        if lam is not None:
            for layer in self.csc_layers:
                layer.test_lam = lam
        try:
            yield
        finally:
            for layer, value in zip(self.csc_layers, previous):
                layer.test_lam = value
