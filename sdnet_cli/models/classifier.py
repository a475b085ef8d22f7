"""The deployed model: [0,1] images -> normalisation -> network (with a lambda policy) -> logits.

Every model the tool evaluates or attacks is a ``Classifier``, so attacks always see the whole
pipeline, test-time lambda selection included: an adaptive attack must differentiate the defence
as deployed (Tramer et al., "On Adaptive Attacks to Adversarial Example Defenses", 2020).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, cast

import torch
from torch import nn

from .csc import CSCLayer, Lambda, per_sample


class LambdaPolicy(Protocol):
    """Decides the CSC lambda for a batch: a float, or a [B] tensor (one lambda per input)."""

    @property
    def name(self) -> str: ...

    def __call__(self, model: Classifier, x_normalized: torch.Tensor) -> Lambda | None: ...


@dataclass
class CompiledInference:
    """``torch.compile(network, dynamic=False)`` and what its graph was traced for: one input shape
    (set by the first no-grad eval forward, which runs eagerly and fills the CSC step-size caches) and
    the CSC layers' step-size cache keys then. Kept outside the module tree, so state dicts and
    ``.to()`` see only the plain network."""

    network: Callable[[torch.Tensor], torch.Tensor]
    shape: torch.Size | None = None
    step_keys: tuple[Any, ...] = ()


class Classifier(nn.Module):
    """Wraps a network that expects normalised inputs; takes float images in [0, 1], NCHW."""

    mean: torch.Tensor  # buffers [1, C, 1, 1]
    std: torch.Tensor

    def __init__(self, network: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.network = network
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self._lam_policy: LambdaPolicy | None = None
        self._compiled: CompiledInference | None = None
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
        if self._runs_compiled(xn):
            # every layer gets a [B] tensor (what is in force where lam is None): one graph then serves
            # every policy and lambda value, where a float would be baked into the graph
            in_force = [
                lam if lam is not None else layer.test_lam if layer.test_lam is not None else layer.lam
                for layer in self.csc_layers
            ]
            lams = [per_sample(value, xn.shape[0], xn).reshape(-1).contiguous() for value in in_force]
            with self._layer_lambdas(lams):
                return self._compiled.network(xn)  # type: ignore[union-attr]
        with self.test_lambda(lam):
            logits = self.network(xn)
        self._note_eager_forward(xn)
        return cast(torch.Tensor, logits)

    def compile_inference(self) -> None:
        """Run no-grad eval forwards through ``torch.compile`` (dynamic=False): the lambda policy still
        runs eagerly, then the network compiled for one input shape, the first one seen. Forwards with
        gradients (training, attacks: compiled backward passes were slower on CPU), of another shape (a
        last partial batch) or after a weight change (the step size is re-estimated eagerly first) run
        the plain network, so nothing recompiles; inside ``CSCLayer.recording_error`` blocks a second
        graph is compiled once."""
        self._compiled = CompiledInference(torch.compile(self.network, dynamic=False))

    def _step_keys(self) -> tuple[Any, ...]:
        return tuple(layer._cache_key for layer in self.csc_layers)

    def _inference_only(self) -> bool:
        return not self.training and not torch.is_grad_enabled()

    def _runs_compiled(self, xn: torch.Tensor) -> bool:
        compiled = self._compiled
        return (
            compiled is not None
            and self._inference_only()
            and xn.shape == compiled.shape
            and self._step_keys() == compiled.step_keys
            and all(layer.step_size_is_current() for layer in self.csc_layers)
        )

    def _note_eager_forward(self, xn: torch.Tensor) -> None:
        """After an eager inference forward at the compiled shape (or the first one): the step sizes it
        cached are the ones compiled forwards may read."""
        compiled = self._compiled
        if compiled is not None and self._inference_only() and compiled.shape in (None, xn.shape):
            compiled.shape, compiled.step_keys = xn.shape, self._step_keys()

    @contextmanager
    def using(self, policy: LambdaPolicy | None) -> Iterator[Classifier]:
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
        values = [layer.test_lam for layer in self.csc_layers] if lam is None else [lam] * len(self.csc_layers)
        with self._layer_lambdas(values):
            yield

    @contextmanager
    def _layer_lambdas(self, values: Sequence[Lambda | None]) -> Iterator[None]:
        """Each CSC layer's ``test_lam`` set to its value inside the block, restored on exit."""
        previous = [layer.test_lam for layer in self.csc_layers]
        for layer, value in zip(self.csc_layers, values):
            layer.test_lam = value
        try:
            yield
        finally:
            for layer, value in zip(self.csc_layers, previous):
                layer.test_lam = value
