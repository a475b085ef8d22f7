"""The convolutional sparse coding (CSC) layer of SDNet (Dai et al., "Revisiting Sparse
Convolutional Model for Visual Recognition", NeurIPS 2022).

A CSC layer replaces ``conv(x; A)`` by the non-negative sparse code

    z*(x) = argmin_{z >= 0} lam * ||z||_1 + 1/2 ||x - A^T z||_2^2

over a dictionary A of unit-norm atoms, computed by a fixed number of unrolled FISTA steps
(Beck & Teboulle, "A Fast Iterative Shrinkage-Thresholding Algorithm for Linear Inverse
Problems", SIAM J. Imaging Sciences 2009) with step size 0.9 / L, L the largest eigenvalue of
A A^T. It is differentiable end to end and has exactly the parameters of the convolution it
replaces.

The default update order is the one of the authors' released implementation, so a checkpoint
trained there with any step count is the same model here: both orders share the momentum
schedule (t = 1, then t' = (1 + sqrt(1 + 4 t^2)) / 2, extrapolated point y = z + (t - 1)/t' (z - z_prev)),
but the authors take the gradient of the data term at the current iterate z and step from y,
where textbook FISTA takes it at y. With 1 or 2 steps the momentum is still zero and the two
coincide (plain ISTA steps).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UsageError

Lambda = float | torch.Tensor
"""A sparsity weight: one float for the whole batch, or a tensor of shape [B] (per sample)."""

FistaOrder = Literal["authors", "textbook"]
"""Where a FISTA step takes its gradient: at the current iterate (the authors' released code, the
default) or at the extrapolated point (Beck & Teboulle 2009; converges to the lasso minimiser)."""
FISTA_ORDERS: tuple[str, ...] = ("authors", "textbook")


def normalize_atoms(weight: torch.Tensor) -> torch.Tensor:
    """Rescale every atom (output channel, flattened over C_in*k*k) to unit L2 norm."""
    norms = weight.flatten(1).norm(dim=1).clamp_min(1e-12)
    return cast(torch.Tensor, weight / norms.view(-1, 1, 1, 1))


def per_sample(lam: Lambda, batch_size: int, like: torch.Tensor) -> torch.Tensor:
    """Broadcastable [B,1,1,1] lambda from a float or a [B] tensor."""
    lam_t = torch.as_tensor(lam, dtype=like.dtype, device=like.device)
    if lam_t.dim() == 0:
        return lam_t.expand(batch_size).view(-1, 1, 1, 1)
    if lam_t.shape != (batch_size,):
        raise UsageError(f"per-sample lambda must have shape [{batch_size}], got {tuple(lam_t.shape)}", parameter="lam")
    return lam_t.view(-1, 1, 1, 1)


@dataclass
class ErrorRecord:
    """What ``CSCLayer.recording_error`` keeps: the per-sample ``||x - A^T z||^2`` [B] of the last
    forward inside the block (detached), None before the first."""

    error: torch.Tensor | None = None


class CSCLayer(nn.Module):
    """Sparse coding over a convolutional dictionary, as a drop-in for ``nn.Conv2d`` (no bias).

    ``weight`` has the conv's shape [C_out, C_in, k, k]; the buffer ``step_size`` mirrors the
    official checkpoints' ``dn.step_size`` key. ``lam`` is the training lambda; ``test_lam``,
    when set (float or [B] tensor, see ``models.classifier.Classifier``), overrides it for a forward.
    A forward keeps nothing of its input: the reconstruction error is only computed and kept
    inside ``recording_error``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        lam: float = 0.1,
        n_steps: int = 2,
        square_noise: bool = True,
        power_iters: int = 50,
        power_tol: float = 1e-5,
        fista: FistaOrder = "authors",
    ) -> None:
        super().__init__()
        if n_steps < 1:
            raise UsageError("a CSC layer needs at least one FISTA step", parameter="n_steps")
        if fista not in FISTA_ORDERS:
            raise UsageError(f"unknown FISTA order {fista!r}; use one of {', '.join(FISTA_ORDERS)}", parameter="fista")
        self.fista = fista
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.lam = lam
        self.test_lam: Lambda | None = None
        self.n_steps = n_steps
        self.square_noise = square_noise
        self.power_iters, self.power_tol = power_iters, power_tol
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.step_size: torch.Tensor
        self.register_buffer("step_size", torch.tensor(0.0))
        self._power_vector: torch.Tensor | None = None
        self._cache_key: tuple[Any, ...] | None = None
        self._record: ErrorRecord | None = None

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, lam={self.lam}, n_steps={self.n_steps}, square_noise={self.square_noise}, "
            f"fista={self.fista}"
        )

    # -- the two linear operators -------------------------------------------------------------
    def analysis(self, r: torch.Tensor, atoms: torch.Tensor) -> torch.Tensor:
        """A r: correlate an image-space map with the atoms (conv2d)."""
        return F.conv2d(r, atoms, stride=self.stride, padding=self.padding)

    def synthesis(self, z: torch.Tensor, atoms: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
        """A^T z: the image the code describes (conv_transpose2d, padded back to ``out_hw``)."""
        k, s, p = self.kernel_size, self.stride, self.padding
        output_padding = tuple(out_hw[i] - ((z.shape[2 + i] - 1) * s - 2 * p + k) for i in range(2))
        return F.conv_transpose2d(z, atoms, stride=s, padding=p, output_padding=output_padding)

    # -- step size ----------------------------------------------------------------------------
    @torch.no_grad()
    def lipschitz(self, atoms: torch.Tensor, in_hw: tuple[int, int]) -> float:
        """Largest eigenvalue of A A^T on code maps, by warm-started power iteration."""
        code_hw = tuple((in_hw[i] + 2 * self.padding - self.kernel_size) // self.stride + 1 for i in range(2))
        shape = (1, self.out_channels, *code_hw)
        v = self._power_vector
        if v is not None and v.shape == shape:
            v = v.to(atoms.device, atoms.dtype)
        else:
            # a fixed start makes the step size, hence every output, a pure function of the weights
            v = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(atoms.device, atoms.dtype)
        v = v / v.norm()
        eig = 0.0
        for _ in range(self.power_iters):
            w = self.analysis(self.synthesis(v, atoms, in_hw), atoms)
            new_eig = float((v * w).sum())
            v = w / w.norm().clamp_min(1e-12)
            if abs(new_eig - eig) <= self.power_tol * max(abs(new_eig), 1e-12):
                eig = new_eig
                break
            eig = new_eig
        self._power_vector = v
        return eig

    def _step_key(self, in_hw: tuple[int, int]) -> tuple[Any, ...]:
        """What the cached step size depends on: the weights' identity and version, the input size, the device."""
        return (self.weight._version, self.weight.data_ptr(), tuple(in_hw), self.weight.device)

    def step_size_is_current(self) -> bool:
        """Whether the cached step size was computed, in eval mode, from the weights as they are now (for
        the input size of the last eager forward)."""
        key = self._cache_key
        return key is not None and not self.training and key == self._step_key(key[2])

    def _eta(self, atoms: torch.Tensor, in_hw: tuple[int, int]) -> torch.Tensor:
        """Step size 0.9/L (the 0-dim ``step_size`` buffer): re-estimated every training forward, cached
        while weights are unchanged. A compiled forward reads the buffer as it is, so it neither breaks
        the graph nor specialises on the value: whoever compiles must run an eager forward whenever
        ``step_size_is_current`` is False (``Classifier.compile_inference`` does)."""
        if not torch.compiler.is_compiling():
            key = self._step_key(in_hw)
            if self.training or key != self._cache_key:
                self.step_size.fill_(0.9 / self.lipschitz(atoms, in_hw))
                self._cache_key = None if self.training else key
        return self.step_size

    # -- the solve ----------------------------------------------------------------------------
    def solve(
        self, x: torch.Tensor, lam: Lambda | None = None, with_error: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Sparse code z of x and (if asked) the per-sample error ||x - A^T z||^2, in float32 (float64
        inputs stay float64), under autocast too: lower precision moves the thresholded codes. Running only
        the solve's convolutions in bf16 (float32 accumulation, threshold and iterates) was measured on the
        shipped sdnet18 (benchmarks/stem_precision.py): it agreed with this float32 solve on clean images
        but changed the prediction of too many heavy-noise images to meet the 99.9% per-image agreement
        that a speed change must keep, for a few percent of bf16 speed."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.to(torch.promote_types(x.dtype, torch.float32))
            atoms = normalize_atoms(self.weight.to(x.dtype))
            in_hw = (x.shape[2], x.shape[3])
            eta = self._eta(atoms, in_hw)
            threshold = per_sample(self.lam if lam is None else lam, x.shape[0], x) * eta
            z = self._shrink(self.analysis(x, atoms), eta, None, threshold)  # the first step, from z = 0
            z_prev, t = z, 1.0
            for _ in range(1, self.n_steps):
                t_next = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
                momentum = (t - 1.0) / t_next
                y = z + momentum * (z - z_prev) if momentum else z  # zero on the second step
                at = z if self.fista == "authors" else y
                residual = self._data_gradient(x - self.synthesis(at, atoms, in_hw))
                z_prev, z = z, self._shrink(self.analysis(residual, atoms), eta, y, threshold)
                t = t_next
            error = self.reconstruction_error(x, z, atoms) if with_error else None
        return z, error

    @staticmethod
    def _shrink(
        gradient: torch.Tensor, eta: torch.Tensor, start: torch.Tensor | None, threshold: torch.Tensor
    ) -> torch.Tensor:
        """relu(start + eta * gradient - threshold), the non-negative soft threshold of a gradient step,
        computed in place in ``gradient`` (a fresh analysis output that nothing else holds): the stem's
        code maps are its largest tensors, and fresh ones cost an allocation each. Same operations in
        the same order as the out-of-place expression, so the same numbers; autograd-safe, as no
        operation here saves its overwritten input for the backward pass."""
        step = gradient.mul_(eta)
        if start is not None:
            step = step.add_(start)
        return step.sub_(threshold).relu_()

    def reconstruction_error(self, x: torch.Tensor, z: torch.Tensor, atoms: torch.Tensor) -> torch.Tensor:
        """Per-sample ||x - A^T z||^2: how much of the input the code leaves unexplained."""
        return (x - self.synthesis(z, atoms, (x.shape[2], x.shape[3]))).pow(2).flatten(1).sum(dim=1)

    def _data_gradient(self, residual: torch.Tensor) -> torch.Tensor:
        """Negative gradient of the data term w.r.t. the synthesis: r, or 0.5 r/||r|| (sqrt-lasso)."""
        if self.square_noise:
            return residual
        norms = residual.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        return cast(torch.Tensor, 0.5 * residual / norms)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The sparse code, solved in float32 and handed on in the autocast dtype when autocast is on:
        float32 codes would promote every residual add after the stem to float32, with a cast before
        each following convolution (faster this way with the same predictions: benchmarks/stem_precision.py,
        numbers in reports/benchmarks.md)."""
        record = self._record
        z, error = self.solve(x, self.test_lam, with_error=record is not None)
        if record is not None:
            record.error = error.detach()  # type: ignore[union-attr]
        device = x.device.type
        return z.to(torch.get_autocast_dtype(device)) if torch.is_autocast_enabled(device) else z

    @contextmanager
    def recording_error(self) -> Iterator[ErrorRecord]:
        """Inside the block every forward also computes the per-sample reconstruction error at the
        lambda in force and keeps the last batch's in the yielded record (e.g. for lambda sweeps);
        outside it forwards skip that work and hold no reference to their input. Blocks nest: the
        inner record receives the errors until it exits."""
        previous, record = self._record, ErrorRecord()
        self._record = record
        try:
            yield record
        finally:
            self._record = previous


class DictConv(nn.Module):
    """Holds a CSC layer under the attribute ``dn``, so state_dict keys match the official ``*.dn.weight``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self.dn = CSCLayer(*args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, self.dn(x))


def csc_layers(model: nn.Module) -> list[CSCLayer]:
    """The CSC layers of any module, in forward order of registration (empty for a ResNet)."""
    return [m for m in model.modules() if isinstance(m, CSCLayer)]


def no_csc_message(name: str, consequence: str) -> str:
    """The one wording of "this option needs an SDNet": ``consequence`` says what cannot be done."""
    return f"{name} has no CSC layers, so {consequence}; use an SDNet model (e.g. sdnet18)"


def require_csc(model: nn.Module, consequence: str, parameter: str, name: str = "this model") -> None:
    """Refuse a lambda (or FISTA) option for a model without CSC layers, before any work."""
    if not csc_layers(model):
        raise UsageError(no_csc_message(name, consequence), parameter=parameter)
