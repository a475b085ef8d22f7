"""Model names -> builders, and shipped checkpoints from ``weights/manifest.json``.

``create_model`` builds an (untrained) architecture by name; ``load_model`` resolves what a
user typed (``--model`` and optionally ``--checkpoint``) to a ready ``Classifier``. Besides our
ResNet/SDNet builders, ``tv_resnet18`` / ``tv_resnet50`` are torchvision's ImageNet ResNets, the
usual ImageNet-C baselines, loaded from a local file or the torch hub cache (never downloaded).
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from ..data.datasets import dataset_spec
from .checkpoints import CheckpointError, load_into, read_metadata, read_state_dict, sha256_of
from .classifier import Classifier
from .resnet import ResNet, Sparsity, csc_conv

ARCHITECTURES: dict[str, tuple[tuple[int, int, int, int], Sparsity]] = {
    "resnet18": ((2, 2, 2, 2), "none"),
    "resnet34": ((3, 4, 6, 3), "none"),
    "sdnet18": ((2, 2, 2, 2), "stem"),
    "sdnet34": ((3, 4, 6, 3), "stem"),
    "sdnet18_all": ((2, 2, 2, 2), "all"),
    "sdnet34_all": ((3, 4, 6, 3), "all"),
}

TORCHVISION_MODELS: dict[str, str] = {"tv_resnet18": "resnet18", "tv_resnet50": "resnet50"}
"""Our name -> torchvision builder; their weights are torchvision's IMAGENET1K_V1."""

WEIGHTS_DIR = Path(os.environ.get("SDNET_WEIGHTS", Path(__file__).resolve().parents[2] / "weights"))


class ModelError(ValueError):
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


def create_model(
    name: str,
    dataset: str = "cifar10",
    num_classes: int | None = None,
    width: int = 64,
    stem: str | None = None,
    lam: float = 0.1,
    n_steps: int = 2,
    square_noise: bool = True,
) -> Classifier:
    """An untrained model by architecture name; takes [0,1] images and returns logits."""
    spec = dataset_spec(dataset)
    if name in TORCHVISION_MODELS:
        if spec.stem != "imagenet":
            raise ModelError(f"{name} is torchvision's ImageNet model; use it with --dataset imagenet")
        import torchvision.models

        classes = num_classes or spec.num_classes
        network = torchvision.models.get_model(TORCHVISION_MODELS[name], weights=None, num_classes=classes)
        return Classifier(network, spec.mean, spec.std)
    if name not in ARCHITECTURES:
        raise ModelError(f"unknown model {name!r}; choose one of: {', '.join([*ARCHITECTURES, *TORCHVISION_MODELS])}")
    blocks, sparse = ARCHITECTURES[name]
    network = ResNet(
        blocks,
        num_classes=num_classes or spec.num_classes,
        width=width,
        stem=stem or spec.stem,  # type: ignore[arg-type]
        sparse=sparse,
        csc=csc_conv(lam=lam, n_steps=n_steps, square_noise=square_noise),
    )
    return Classifier(network, spec.mean, spec.std)


def read_manifest(weights_dir: Path = WEIGHTS_DIR) -> list[dict[str, Any]]:
    path = Path(weights_dir) / "manifest.json"
    if not path.is_file():
        return []
    return json.loads(path.read_text())["models"]


def find_shipped(model: str, dataset: str, weights_dir: Path = WEIGHTS_DIR) -> dict[str, Any] | None:
    """The manifest entry named ``model``, else the default entry for architecture ``model``."""
    entries = [e for e in read_manifest(weights_dir) if e["dataset"] == dataset]
    for entry in entries:
        if entry["name"] == model:
            return entry
    defaults = [e for e in entries if e["architecture"] == model and e.get("default")]
    return defaults[0] if defaults else None


def infer_settings(state: dict, metadata: dict) -> dict[str, Any]:
    """Width, classes and stem read off the tensors themselves, so foreign checkpoints need no flags."""
    stem_key = "layer0.0.dn.weight" if "layer0.0.dn.weight" in state else "layer0.0.weight"
    head_key = "linear.weight"
    if "conv1.weight" in state and "fc.weight" in state:  # torchvision's key names
        stem_key, head_key = "conv1.weight", "fc.weight"
    if stem_key not in state or head_key not in state:
        raise CheckpointError(
            "not a ResNet/SDNet checkpoint: no 'layer0.0[.dn].weight' and 'linear.weight' keys "
            "(nor torchvision's 'conv1.weight' and 'fc.weight')"
        )
    stem_weight = state[stem_key]
    return {
        "width": int(stem_weight.shape[0]),
        "num_classes": int(state[head_key].shape[0]),
        "stem": "imagenet" if stem_weight.shape[-1] == 7 else "cifar",
        "lam": float(metadata.get("lam", 0.1)),
        "n_steps": int(metadata.get("n_steps", 2)),
        "square_noise": bool(metadata.get("square_noise", True)),
    }


def torchvision_weights_file(name: str) -> Path:
    """Where torch hub keeps torchvision's IMAGENET1K_V1 weights of ``name`` (as a download would put them)."""
    import torchvision.models

    url = torchvision.models.get_model_weights(TORCHVISION_MODELS[name]).IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def _hub_checkpoint(name: str) -> tuple[Path, str]:
    """The cached torchvision file of ``name`` and its sha256, whose first hex digits are in the file name."""
    path = torchvision_weights_file(name)
    if not path.is_file():
        raise ModelError(
            f"no weights for {name}: {path} does not exist and sdnet never downloads. Copy {path.name} "
            f"(torchvision's {TORCHVISION_MODELS[name]} IMAGENET1K_V1 file, https://download.pytorch.org/models/{path.name}) "
            f"there, set $TORCH_HOME to the folder whose hub/checkpoints holds it, or pass --checkpoint PATH"
        )
    digest = sha256_of(path)
    if not digest.startswith(path.stem.rsplit("-", 1)[-1]):
        raise CheckpointError(f"{path} is corrupted: its sha256 {digest} does not start with the hash in its name")
    return path, digest


def load_model(
    model: str,
    checkpoint: Path | None = None,
    dataset: str = "cifar10",
    weights_dir: Path = WEIGHTS_DIR,
) -> tuple[Classifier, ModelInfo]:
    """Resolve ``--model`` / ``--checkpoint`` to a model in eval mode and where it came from.

    Without ``checkpoint``, ``model`` names a shipped entry or an architecture whose default
    shipped checkpoint is used; a shipped file must match the manifest's sha256.
    """
    entry: dict[str, Any] = {}
    digest: str | None = None
    if checkpoint is None and model in TORCHVISION_MODELS:
        architecture = model
        checkpoint, digest = _hub_checkpoint(model)
    elif checkpoint is None:
        found = find_shipped(model, dataset, weights_dir)
        if found is None:
            known = sorted({e["name"] for e in read_manifest(weights_dir)} | set(ARCHITECTURES) | set(TORCHVISION_MODELS))
            if model not in known:
                raise ModelError(f"unknown model {model!r}; choose one of: {', '.join(known)}")
            raise ModelError(
                f"no shipped {dataset} checkpoint for {model!r} in {weights_dir}; pass --checkpoint PATH "
                "(our .safetensors, the authors' model_best.pth.tar / checkpoint.pth.tar, or your own state_dict)"
            )
        entry = found
        checkpoint = Path(weights_dir) / entry["file"]
        architecture = entry["architecture"]
        digest = sha256_of(checkpoint) if checkpoint.is_file() else None
        if digest != entry["sha256"]:
            raise CheckpointError(
                f"{checkpoint} does not match weights/manifest.json (sha256 {digest} != {entry['sha256']}); "
                "the file is missing, corrupted or was replaced"
            )
    else:
        architecture = model
    if architecture not in ARCHITECTURES and architecture not in TORCHVISION_MODELS:
        raise ModelError(f"unknown model {architecture!r}; choose one of: {', '.join([*ARCHITECTURES, *TORCHVISION_MODELS])}")
    checkpoint = Path(checkpoint)
    state = read_state_dict(checkpoint)
    settings = infer_settings(state, read_metadata(checkpoint))
    classes = dataset_spec(dataset).num_classes
    if settings["num_classes"] != classes:
        raise ModelError(
            f"{checkpoint} has {settings['num_classes']} output classes but {dataset} has {classes}; "
            "pass the --dataset it was trained on"
        )
    classifier = create_model(architecture, dataset=dataset, **settings)
    load_into(classifier.network, state, str(checkpoint))
    classifier.eval()
    sparse = architecture in ARCHITECTURES and ARCHITECTURES[architecture][1] != "none"
    info = ModelInfo(
        name=entry.get("name", architecture),
        architecture=architecture,
        dataset=dataset,
        width=settings["width"],
        num_classes=settings["num_classes"],
        lam=settings["lam"] if sparse else None,
        n_steps=settings["n_steps"],
        square_noise=settings["square_noise"],
        stem=settings["stem"],
        checkpoint=str(checkpoint),
        sha256=digest or sha256_of(checkpoint),
        manifest_entry=entry,
    )
    return classifier, info


def update_manifest(entry: dict[str, Any], weights_dir: Path = WEIGHTS_DIR) -> Path:
    """Add or replace (by name) one manifest entry, atomically; a new default demotes the old one."""
    from ..reports import atomic_write_text

    path = Path(weights_dir) / "manifest.json"
    with manifest_lock(path):  # trainings finishing at the same time must not drop each other's entry
        models = [e for e in read_manifest(weights_dir) if e["name"] != entry["name"]]
        if entry.get("default"):
            for other in models:
                if other["architecture"] == entry["architecture"] and other["dataset"] == entry["dataset"]:
                    other["default"] = False
        models.append(entry)
        atomic_write_text(path, json.dumps({"models": models}, indent=2) + "\n")
    return path


@contextmanager
def manifest_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``<manifest>.lock`` for a read-modify-write (POSIX; no-op where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
