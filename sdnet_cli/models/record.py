"""What every loaded model carries into reports, whichever way it was loaded (registry, zoo, a module): where
it came from (``ModelInfo``), its identity when it comes from code rather than a file (``state_dict_sha256``),
and the error a bad model name or file raises. The loaders (``registry`` for ours, ``zoo`` for models from
elsewhere) share it without importing each other."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.parameter import UninitializedBuffer, UninitializedParameter

from ..errors import UsageError


class ModelError(UsageError):
    """The user asked for a model that does not exist or cannot be loaded."""


@dataclass
class ModelInfo:
    """Where a loaded model came from; goes into every report's ``meta``."""

    name: str
    architecture: str
    dataset: str
    width: int
    num_classes: int
    lam: float | None
    n_steps: int
    square_noise: bool
    stem: str
    checkpoint: str | None = None
    sha256: str | None = None
    manifest_entry: dict[str, Any] = field(default_factory=dict)

    def as_meta(self) -> dict[str, Any]:
        meta = asdict(self)
        meta.pop("manifest_entry")
        return meta


def state_dict_sha256(module: nn.Module) -> str:
    """A fingerprint of a module's weights: its state dict in sorted key order, each entry's name, dtype,
    shape and raw bytes, so equal weights give equal digests whatever their device or insertion order.
    0-dim tensors (BatchNorm's ``num_batches_tracked``) are hashed as one element. A module with tensors
    that hold no values (on the meta device, or lazy modules never run) is refused: it cannot be run either."""
    digest = hashlib.sha256()
    state = module.state_dict()
    for key, tensor in state.items():
        empty = "is on the meta device" if tensor.is_meta else None
        if isinstance(tensor, (UninitializedParameter, UninitializedBuffer)):
            empty = "is a lazy module's, not initialised yet"
        if empty:
            raise ModelError(
                f"model {type(module).__name__} has tensors without values: {key} {empty}; load or initialise "
                "its weights first",
                parameter="model",
            )
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
