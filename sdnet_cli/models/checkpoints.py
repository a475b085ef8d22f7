"""Checkpoint I/O that never executes code: safetensors, or ``torch.load(weights_only=True)``.

Our own format is a safetensors file whose keys are the key names of the authors' released code
(SDNet, Dai et al., NeurIPS 2022), so one loader serves our files, the authors' released
``.pth.tar`` files and users' own. Weights that are not finite (NaN, inf) are refused at load:
the logits would be NaN, and argmax still picks a class, so a broken model would report an accuracy.

Dictionaries are written with unit-norm atoms (the forward normalises them anyway): the authors'
code computes a batch's step size from the stored weight before normalising it in place, so only
unit-norm atoms give it the right step size from the first batch on. ``export_official`` writes
the plain ``torch.save`` state_dict that code loads.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .._io import atomic_path, parse_json
from ..errors import UsageError
from ..schemas import CheckpointMeta, load
from .csc import CSCLayer, normalize_atoms


class CheckpointError(UsageError):
    """A checkpoint that cannot be used: unsafe, unreadable, or not matching the architecture."""


KEY_RULES: tuple[tuple[str, str], ...] = (
    (r"^module\.", ""),  # saved from DataParallel / DistributedDataParallel
    (r"^(layer[1-4])\.layers\.", r"\1."),  # the authors' SDNet-All stages
)
"""Renames applied to every foreign key so it matches our module names."""


COUNTER = "num_batches_tracked"
"""The one integer entry of a state_dict (batch norm's step counter); every other tensor is a weight."""


def _is_integer(value: torch.Tensor) -> bool:
    return not value.is_floating_point() and not value.is_complex() and value.dtype != torch.bool


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _first_line(exc: BaseException) -> str:
    """The gist of a library's error, kept to one line (some span a page)."""
    return (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, with foreign key names mapped to ours."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            raw: Mapping[str, object] = load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"{path} is not a readable safetensors file: {_first_line(exc)}") from exc
    else:
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise CheckpointError(
                f"refusing to load {path}: it contains pickled objects other than tensors, and unpickling "
                "them could run code. Re-save it as a plain state_dict (or safetensors) in a trusted environment."
            ) from exc
        except Exception as exc:
            raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {_first_line(exc)}") from exc
        if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
            raw = raw["state_dict"]  # the authors' checkpoint.pth.tar
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{path} does not hold a state_dict (found {type(raw).__name__})")
    state = {}
    for key, value in raw.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
        if not value.is_floating_point() and not (key.endswith(COUNTER) and _is_integer(value)):
            raise CheckpointError(
                f"{path}: tensor {key!r} holds {str(value.dtype).removeprefix('torch.')} values; weights must be "
                "floating point (float32, float16, bfloat16 or float64), so this is not a trained model's file"
            )
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise CheckpointError(
                f"{path}: tensor {key!r} has {bad} non-finite values (NaN or inf) of {value.numel()}; "
                "the training run that wrote it diverged or the file is damaged"
            )
        for pattern, repl in KEY_RULES:
            key = re.sub(pattern, repl, key)
        state[key] = value
    return state


def load_into(network: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load ``state`` strictly; on any mismatch, one readable error that lists every problem."""
    expected = network.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if state[k].shape != expected[k].shape
    )
    if missing or unexpected or shapes:
        parts = []
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
            if items:
                shown = ", ".join(items[:6]) + (f", ... ({len(items)} in all)" if len(items) > 6 else "")
                parts.append(f"{title}: {shown}")
        raise CheckpointError(f"checkpoint {source} does not fit this architecture; " + "; ".join(parts))
    network.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})


def unit_norm_state(network: nn.Module) -> dict[str, torch.Tensor]:
    """The network's state_dict on the CPU with every CSC dictionary rescaled to unit-norm atoms."""
    dictionaries = {f"{name}.weight" for name, module in network.named_modules() if isinstance(module, CSCLayer)}
    state = {}
    for key, value in network.state_dict().items():
        value = value.detach().cpu()
        if key in dictionaries:
            value = normalize_atoms(value.float()).to(value.dtype)
        state[key] = value.contiguous()
    return state


def save_checkpoint(network: nn.Module, path: Path, metadata: Mapping[str, object], half: bool = False) -> str:
    """Write the network's state_dict (unit-norm atoms) as safetensors, atomically, and return its sha256."""
    tensors = {}
    for key, value in unit_norm_state(network).items():
        if half and value.is_floating_point() and not key.endswith(("running_mean", "running_var")):
            value = value.half()
        tensors[key] = value
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={k: json.dumps(v) for k, v in metadata.items()})
    return sha256_of(path)


def official_key(key: str, all_sparse: bool) -> str:
    """Our key -> the authors' name for it: their SDNet-All keeps each stage's blocks under ``layers``."""
    return re.sub(r"^(layer[1-4])\.", r"\1.layers.", key) if all_sparse else key


def export_official(network: nn.Module, path: Path, image_size: int) -> str:
    """Write ``network`` (one of our ResNet/SDNet builds) as the authors' code saves and loads it: a plain
    ``torch.save`` of a state_dict of float32 tensors under their key names, unit-norm atoms, each step size
    0.9/L for ``image_size`` inputs. Their code reads the lambda and FISTA step count from its config file,
    not from the checkpoint. Returns the file's sha256."""
    from .resnet import ResNet

    if not isinstance(network, ResNet):
        raise CheckpointError(
            f"only our ResNet/SDNet builds have an official layout, not {type(network).__name__}", parameter="model"
        )
    layers = [m for m in network.modules() if isinstance(m, CSCLayer)]
    if layers:  # an eval forward brings every step-size buffer up to date with the weights and this input size
        was_training = network.training
        network.eval()
        with torch.no_grad():
            network(torch.zeros(1, 3, image_size, image_size, device=layers[0].weight.device))
        network.train(was_training)
    all_sparse = any(isinstance(m, CSCLayer) for m in network.layer1.modules())
    state = {
        official_key(k, all_sparse): v.float() if v.is_floating_point() else v
        for k, v in unit_norm_state(network).items()
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return sha256_of(path)


def read_metadata(path: Path) -> dict[str, object]:
    """The model settings stored in one of our safetensors files ({} for any other file), validated like the
    flags that set them (``schemas.CheckpointMeta``): ``lam = -5`` or ``nan`` is refused naming the file."""
    from safetensors import safe_open

    path = Path(path)
    if path.suffix != ".safetensors":
        return {}
    try:
        with safe_open(str(path), framework="pt") as f:
            stored = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{path} is not a readable safetensors file: {_first_line(exc)}") from exc
    metadata = {}
    for key, text in stored.items():
        metadata[key] = parse_json(text, f"checkpoint {path}: metadata {key}", "checkpoint", CheckpointError)
    load(CheckpointMeta, metadata, "checkpoint", path, parameter="checkpoint", error=CheckpointError)
    return metadata
