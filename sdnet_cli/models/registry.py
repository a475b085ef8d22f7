"""Model names -> builders, and loading a named model from its shipped or given checkpoint.

``create_model`` builds an (untrained) architecture by name; ``load_model`` resolves what a
user typed (``--model`` and optionally ``--checkpoint``) to a ready ``Classifier``. Besides our
ResNet/SDNet builders, ``tv_resnet18`` / ``tv_resnet50`` are torchvision's ImageNet ResNets, the
usual ImageNet-C baselines, loaded from a local file or the torch hub cache (never downloaded).
Where shipped checkpoints are found, and their manifest, is ``weights.py``'s business.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from ..schemas import FISTA_STEPS_MAX, ROBUSTBENCH, check_count
from .checkpoints import CheckpointError, load_into, read_metadata, read_state_dict, sha256_of
from .classifier import Classifier
from .csc import no_csc_message
from .inputs import model_input
from .record import ModelError, ModelInfo
from .resnet import ConvFactory, ResNet, Stem, csc_conv
from .weights import find_shipped, read_manifest, resolve_weights_dir, verified_checkpoint
from .zoo import is_zoo_spec, load_zoo_model

Builder = Callable[[int, int, Stem, ConvFactory], nn.Module]
"""``(num_classes, width, stem, csc) -> network``; ``csc`` builds the CSC layers of a sparse one."""


@dataclass(frozen=True)
class Architecture:
    name: str
    sparse: bool  # whether it has CSC layers (an SDNet), so lambda and FISTA options apply
    build: Builder


ARCHITECTURES: dict[str, Architecture] = {}
"""Filled once, at import, by ``@register_architecture``; ``create_model`` builds from it."""


def register_architecture(name: str, sparse: bool) -> Callable[[Builder], Builder]:
    """Add an architecture under ``name``; the decorated function builds its network."""

    def add(build: Builder) -> Builder:
        if name in ARCHITECTURES:
            raise RuntimeError(f"architecture {name!r} is registered twice")
        ARCHITECTURES[name] = Architecture(name, sparse, build)
        return build

    return add


@register_architecture("resnet18", sparse=False)
def resnet18(num_classes: int, width: int, stem: Stem, csc: ConvFactory) -> nn.Module:
    """ResNet-18 with BasicBlocks (He et al., 2016)."""
    return ResNet((2, 2, 2, 2), num_classes, width, stem, "none", csc)


@register_architecture("sdnet18", sparse=True)
def sdnet18(num_classes: int, width: int, stem: Stem, csc: ConvFactory) -> nn.Module:
    """SDNet-18: ResNet-18 whose stem conv is a CSC layer (Dai et al., NeurIPS 2022)."""
    return ResNet((2, 2, 2, 2), num_classes, width, stem, "stem", csc)


@register_architecture("sdnet18_all", sparse=True)
def sdnet18_all(num_classes: int, width: int, stem: Stem, csc: ConvFactory) -> nn.Module:
    """SDNet-18-All: every 3x3 conv a CSC layer (Dai et al., NeurIPS 2022)."""
    return ResNet((2, 2, 2, 2), num_classes, width, stem, "all", csc)


@register_architecture("resnet34", sparse=False)
def resnet34(num_classes: int, width: int, stem: Stem, csc: ConvFactory) -> nn.Module:
    """ResNet-34 with BasicBlocks (He et al., 2016)."""
    return ResNet((3, 4, 6, 3), num_classes, width, stem, "none", csc)


@register_architecture("sdnet34", sparse=True)
def sdnet34(num_classes: int, width: int, stem: Stem, csc: ConvFactory) -> nn.Module:
    """SDNet-34: ResNet-34 whose stem conv is a CSC layer (Dai et al., NeurIPS 2022)."""
    return ResNet((3, 4, 6, 3), num_classes, width, stem, "stem", csc)


@register_architecture("sdnet34_all", sparse=True)
def sdnet34_all(num_classes: int, width: int, stem: Stem, csc: ConvFactory) -> nn.Module:
    """SDNet-34-All: every 3x3 conv a CSC layer (Dai et al., NeurIPS 2022)."""
    return ResNet((3, 4, 6, 3), num_classes, width, stem, "all", csc)


TORCHVISION_MODELS: dict[str, str] = {"tv_resnet18": "resnet18", "tv_resnet50": "resnet50"}
"""Our name -> torchvision builder; their weights are torchvision's IMAGENET1K_V1."""


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
    spec = model_input(dataset)
    if name in TORCHVISION_MODELS:
        if spec.stem != "imagenet":
            raise ModelError(
                f"{name} is torchvision's ImageNet model; use it with dataset imagenet", parameter="dataset"
            )
        import torchvision.models

        classes = num_classes or spec.num_classes
        network = torchvision.models.get_model(TORCHVISION_MODELS[name], weights=None, num_classes=classes)
        return Classifier(network, spec.mean, spec.std)
    if name not in ARCHITECTURES:
        raise ModelError(f"unknown model {name!r}; choose one of: {', '.join([*ARCHITECTURES, *TORCHVISION_MODELS])}")
    network = ARCHITECTURES[name].build(
        num_classes or spec.num_classes,
        width,
        stem or spec.stem,  # type: ignore[arg-type]
        csc_conv(lam=lam, n_steps=n_steps, square_noise=square_noise),
    )
    return Classifier(network, spec.mean, spec.std)


def infer_settings(state: dict[str, Any], metadata: dict[str, Any]) -> dict[str, Any]:
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
    return cast("Path", Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1])


def _hub_checkpoint(name: str) -> tuple[Path, str]:
    """The cached torchvision file of ``name`` and its sha256, whose first hex digits are in the file name."""
    path = torchvision_weights_file(name)
    if not path.is_file():
        raise ModelError(
            f"no weights for {name}: {path} does not exist and sdnet never downloads. Copy {path.name} "
            f"(torchvision's {TORCHVISION_MODELS[name]} IMAGENET1K_V1 file, https://download.pytorch.org/models/{path.name}) "
            f"there, set $TORCH_HOME to the folder whose hub/checkpoints holds it, or give a checkpoint file",
            parameter="checkpoint",
        )
    digest = sha256_of(path)
    if not digest.startswith(path.stem.rsplit("-", 1)[-1]):
        raise CheckpointError(f"{path} is corrupted: its sha256 {digest} does not start with the hash in its name")
    return path, digest


def load_model(
    model: str,
    checkpoint: Path | None = None,
    dataset: str = "cifar10",
    weights_dir: Path | None = None,
    n_steps: int | None = None,
    threat: str = "corruptions",
    model_dir: Path | None = None,
) -> tuple[Classifier, ModelInfo]:
    """Resolve ``--model`` / ``--checkpoint`` to a model in eval mode and where it came from.

    Without ``checkpoint``, ``model`` names a shipped entry or an architecture whose default
    shipped checkpoint is used; a shipped file must match the manifest's sha256. Shipped
    checkpoints are looked up in ``weights_dir``, else ``$SDNET_WEIGHTS``, else those installed
    with the package (see ``resolve_weights_dir``). ``n_steps`` overrides the FISTA step count the
    checkpoint records (2 when it records none, as in the authors' files), for weights trained with another.
    ``robustbench:<name>`` (with ``threat``, ``model_dir``), ``timm:<name>`` and ``package.module:factory``
    are models from outside: see ``zoo.load_zoo_model``.
    """
    if not model.startswith(ROBUSTBENCH):  # said and ignored would be a silent surprise
        for value, default, parameter in ((threat, "corruptions", "threat"), (model_dir, None, "model_dir")):
            if value != default:
                raise ModelError(
                    f"{parameter} applies to robustbench:<name> models, not to {model}", parameter=parameter
                )
    if is_zoo_spec(model):
        if n_steps is not None:
            raise ModelError(f"n_steps applies to our SDNet checkpoints, not to {model}", parameter="n_steps")
        return load_zoo_model(model, threat=threat, model_dir=model_dir, checkpoint=checkpoint, dataset=dataset)
    if n_steps is not None:
        check_count(n_steps, "n_steps", FISTA_STEPS_MAX)
    entry: dict[str, Any] = {}
    digest: str | None = None
    if checkpoint is None and model in TORCHVISION_MODELS:
        architecture = model
        checkpoint, digest = _hub_checkpoint(model)
    elif checkpoint is None:
        weights_dir = resolve_weights_dir(weights_dir)
        found = find_shipped(model, dataset, weights_dir)
        if found is None:
            known = sorted(
                {e["name"] for e in read_manifest(weights_dir)} | set(ARCHITECTURES) | set(TORCHVISION_MODELS)
            )
            if model not in known:
                raise ModelError(f"unknown model {model!r}; choose one of: {', '.join(known)}")
            raise ModelError(
                f"no shipped {dataset} checkpoint for {model!r} in {weights_dir}; give a checkpoint file "
                "(our .safetensors, the authors' model_best.pth.tar / checkpoint.pth.tar, or your own state_dict) "
                "or a weights_dir whose manifest.json lists one",
                parameter="checkpoint",
            )
        entry = found
        checkpoint, digest = verified_checkpoint(entry, weights_dir)
        architecture = entry["architecture"]
    else:
        architecture = model
    if architecture not in ARCHITECTURES and architecture not in TORCHVISION_MODELS:
        raise ModelError(
            f"unknown model {architecture!r}; choose one of: {', '.join([*ARCHITECTURES, *TORCHVISION_MODELS])}"
        )
    checkpoint = Path(checkpoint)
    state = read_state_dict(checkpoint)
    settings = infer_settings(state, read_metadata(checkpoint))
    sparse = architecture in ARCHITECTURES and ARCHITECTURES[architecture].sparse
    if n_steps is not None:
        if not sparse:
            raise ModelError(no_csc_message(architecture, "n_steps does not apply"), parameter="n_steps")
        settings["n_steps"] = n_steps
    classes = model_input(dataset).num_classes
    if settings["num_classes"] != classes:
        raise ModelError(
            f"{checkpoint} has {settings['num_classes']} output classes but {dataset} has {classes}; "
            "give the dataset it was trained on",
            parameter="dataset",
        )
    classifier = create_model(architecture, dataset=dataset, **settings)
    load_into(classifier.network, state, str(checkpoint))
    classifier.eval()
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
