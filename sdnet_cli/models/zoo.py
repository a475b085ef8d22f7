"""Models from elsewhere as baselines: RobustBench's model zoo, timm architectures, a user's own factory.

``load_zoo_model(spec, ...)`` turns ``robustbench:<name>``, ``timm:<name>`` or ``package.module:factory``
into a ``Classifier`` (float images in [0, 1], NCHW -> logits) and a ``ZooModelInfo`` saying where it
came from (source, name, sha256 of the file or, for a factory, of its state dict). Nothing is ever
downloaded: RobustBench's and timm's files are read from disk, with tensors only (no pickled code).
A factory spec imports and runs the user's own Python code; that is its purpose, and the only one here
that runs code from outside the package. Only a person types one (``--model``, ``model=``): names read
from files are held to ``schemas.file_model_rule``, which refuses them. Importing or calling the factory
never ends the process: whatever it raises (``SystemExit`` included) becomes one ``ModelError``.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.resources
import importlib.util
import pickle
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..schemas import ROBUSTBENCH, TIMM, is_factory_spec
from .checkpoints import load_into, read_state_dict, sha256_of
from .classifier import Classifier
from .inputs import model_input
from .record import ModelError, ModelInfo, state_dict_sha256

THREATS = ("corruptions", "Linf", "L2")
DEFAULT_MODEL_DIR = Path("models")
"""RobustBench's own default (``./models``), laid out as ``<dir>/<dataset>/<threat>/<name>.pt``."""

_IDENTITY = ([0.0, 0.0, 0.0], [1.0, 1.0, 1.0])  # for networks that normalise [0,1] inputs themselves


@dataclass
class ZooModelInfo(ModelInfo):
    """A ``ModelInfo`` of a model from outside: ``source`` is robustbench, timm or factory; ``details``
    what that source needs to reproduce it (threat model, factory path, normalisation). The ResNet
    fields (width, n_steps, square_noise, stem) do not apply and are left out of ``as_meta``."""

    source: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def as_meta(self) -> dict[str, Any]:
        meta = super().as_meta()
        for key in ("width", "n_steps", "square_noise", "stem"):
            meta.pop(key)
        return meta


def is_zoo_spec(name: str) -> bool:
    """Whether ``--model`` names a model from outside (``robustbench:``, ``timm:``, ``module:factory``)."""
    return name.startswith((ROBUSTBENCH, TIMM)) or is_factory_spec(name)


def load_zoo_model(
    spec: str,
    *,
    threat: str = "corruptions",
    model_dir: Path | None = None,
    checkpoint: Path | None = None,
    dataset: str = "cifar10",
) -> tuple[Classifier, ZooModelInfo]:
    """The model ``spec`` names, in eval mode, and where it came from.

    ``robustbench:<name>``: RobustBench's zoo entry for ``dataset`` and ``threat`` (corruptions, Linf,
    L2), its weights read from ``model_dir`` (default ``./models``) in RobustBench's layout and loaded
    by RobustBench's own ``load_model``. ``timm:<name>``: timm's architecture with ``checkpoint``'s
    weights, normalised with the model's pretrained config. ``package.module:factory``: the nn.Module
    the user's factory returns (called with no arguments), taking [0, 1] inputs; it runs the user's code.
    """
    spec_ = model_input(dataset)
    if spec.startswith(ROBUSTBENCH):
        if checkpoint is not None:
            raise ModelError(
                "robustbench models are read from model_dir in RobustBench's layout, not from checkpoint",
                parameter="checkpoint",
            )
        loaded = _robustbench(spec[len(ROBUSTBENCH) :], threat, Path(model_dir or DEFAULT_MODEL_DIR), dataset)
    elif spec.startswith(TIMM):
        loaded = _timm(spec[len(TIMM) :], checkpoint, dataset, spec_.num_classes)
    elif is_factory_spec(spec):
        loaded = _factory(spec, checkpoint, dataset, spec_.num_classes)
    else:
        raise ModelError(
            f"{spec!r} is not robustbench:<name>, timm:<name> or package.module:factory", parameter="model"
        )
    return loaded


# --- RobustBench ----------------------------------------------------------------------------------


@contextmanager
def _robustbench_import_shims() -> Iterator[None]:
    """What robustbench 1.1.1 imports but today's PyPI stack lacks, present only while it is imported.

    - ``pkg_resources``: robustbench uses only ``resource_filename`` (its ImageNet image list);
      setuptools >= 81 no longer ships the module. Pinning ``setuptools<81`` in our extra would
      downgrade a user's setuptools for one function, so this provides that function with
      ``importlib.resources`` instead.
    - ``autoattack``: robustbench imports AutoAttack under that name, while its declared dependency
      ``pyautoattack`` installs it as ``pyautoattack`` (no ``autoattack`` package is on PyPI).
    Each is added only when it cannot be imported, and removed from ``sys.modules`` afterwards (the
    robustbench modules keep what they imported), so nothing else sees them.
    """
    added = []
    if importlib.util.find_spec("pkg_resources") is None:
        shim = types.ModuleType("pkg_resources")
        shim.resource_filename = lambda package, resource: str(importlib.resources.files(package) / resource)  # type: ignore[attr-defined]
        sys.modules["pkg_resources"] = shim
        added.append("pkg_resources")
    if importlib.util.find_spec("autoattack") is None and importlib.util.find_spec("pyautoattack") is not None:
        sys.modules["autoattack"] = importlib.import_module("pyautoattack")
        sys.modules["autoattack.state"] = importlib.import_module("pyautoattack.state")
        added += ["autoattack", "autoattack.state"]
    try:
        yield
    finally:
        for name in added:
            sys.modules.pop(name, None)


def import_robustbench() -> types.ModuleType:
    """``robustbench.utils``, or one line saying how to install the extra."""
    if importlib.util.find_spec("robustbench") is None:
        raise ModelError(
            'robustbench models need the robustbench package: pip install "sdnet-cli[robustbench]"', parameter="model"
        )
    with _robustbench_import_shims():
        return importlib.import_module("robustbench.utils")


def robustbench_files(name: str, threat: str, model_dir: Path, dataset: str) -> tuple[list[Path], dict[str, Any]]:
    """The weight files RobustBench's ``load_model`` reads for this zoo entry (an ensemble has several),
    and the entry itself; unknown names and entries that would be downloaded at load time are refused."""
    import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    if threat not in THREATS:
        raise ModelError(f"unknown threat {threat!r}; choose one of: {', '.join(THREATS)}", parameter="threat")
    try:
        zoo = model_dicts[BenchmarkDataset(dataset)][ThreatModel(threat)]
    except (ValueError, KeyError):
        raise ModelError(f"RobustBench has no {dataset} {threat} leaderboard", parameter="threat") from None
    if name not in zoo:
        close = difflib.get_close_matches(name, list(zoo), n=3)
        hint = (
            f"; did you mean {', '.join(close)}?" if close else f" ({len(zoo)} models, e.g. {', '.join(list(zoo)[:3])})"
        )
        raise ModelError(f"RobustBench has no {dataset} {threat} model {name!r}{hint}", parameter="model")
    entry = zoo[name]
    gdrive = entry["gdrive_id"]
    if gdrive is None or (dataset == "imagenet" and "Standard" in name):
        raise ModelError(
            f"RobustBench loads {name} from a hub at run time (timm or torchvision weights), which sdnet never "
            f"does; use its timm or torchvision name with a local checkpoint file instead",
            parameter="model",
        )
    path = model_dir / dataset / threat / f"{name}.pt"
    files = [Path(f"{path}_m{i}.pt") for i in range(len(gdrive))] if isinstance(gdrive, list) else [path]
    return files, entry


def _robustbench(name: str, threat: str, model_dir: Path, dataset: str) -> tuple[Classifier, ZooModelInfo]:
    utils = import_robustbench()
    files, entry = robustbench_files(name, threat, model_dir, dataset)
    missing = [f for f in files if not f.is_file()]
    if missing:  # before robustbench sees it: it would try to download the file
        raise ModelError(
            f"no weights for robustbench:{name}: {missing[0]} does not exist and sdnet never downloads; put "
            f"RobustBench's file there (on a machine with internet, robustbench.utils.load_model({name!r}, "
            f"model_dir=DIR, dataset={dataset!r}, threat_model={threat!r}) saves it as DIR/{dataset}/{threat}/"
            f"{missing[0].name}) or point model_dir at the folder holding {dataset}/{threat}/",
            parameter="model_dir",
        )
    for f in files:
        _require_tensors_only(f)  # torch >= 2.6 loads weights-only by default; older torch would unpickle anything
    try:
        network = utils.load_model(name, model_dir=str(model_dir), dataset=dataset, threat_model=threat)
    except RuntimeError as exc:  # a file of another architecture: load_state_dict's mismatch report
        raise ModelError(f"{files[0]} does not fit RobustBench's {name}: {str(exc).splitlines()[0]}") from None
    classifier = Classifier(network.eval(), *_IDENTITY).eval()
    digest = sha256_of(files[0]) if len(files) == 1 else _combined_sha256(files)
    info = ZooModelInfo(
        name=f"{ROBUSTBENCH}{name}",
        architecture=type(network).__name__,
        dataset=dataset,
        width=0,
        num_classes=model_input(dataset).num_classes,
        lam=None,
        n_steps=0,
        square_noise=False,
        stem="",
        checkpoint=str(files[0]),
        sha256=digest,
        source="robustbench",
        details={
            "robustbench_name": name,
            "threat": threat,
            "model_dir": str(model_dir),
            "files": [str(f) for f in files],
            "normalisation": "inside RobustBench's model",
            "robustbench_version": _version("robustbench"),
        },
    )
    return classifier, info


def _require_tensors_only(path: Path) -> None:
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ModelError(
            f"refusing to load {path}: it holds pickled objects other than tensors, and unpickling them could run code",
            parameter="model_dir",
        ) from None
    except Exception as exc:
        raise ModelError(f"{path} is not a readable PyTorch file: {str(exc).splitlines()[0]}") from None


def _combined_sha256(files: list[Path]) -> str:
    """One digest of an ensemble: sha256 over the members' sha256 hex digests, in member order."""
    return hashlib.sha256("".join(sha256_of(f) for f in files).encode()).hexdigest()


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


# --- timm -----------------------------------------------------------------------------------------


def _timm(name: str, checkpoint: Path | None, dataset: str, num_classes: int) -> tuple[Classifier, ZooModelInfo]:
    if importlib.util.find_spec("timm") is None:
        raise ModelError('timm models need the timm package: pip install "sdnet-cli[timm]"', parameter="model")
    import timm

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ModelError(f"timm has no model {name!r}{hint}", parameter="model")
    if checkpoint is None:
        raise ModelError(
            f"timm:{name} needs checkpoint, a file of its weights (.safetensors, or a .pt/.pth state_dict); "
            "sdnet never downloads pretrained weights",
            parameter="checkpoint",
        )
    state = read_state_dict(Path(checkpoint))  # safetensors, or torch.load(weights_only=True)
    network = timm.create_model(name, pretrained=False, num_classes=num_classes)
    load_into(network, state, str(checkpoint))
    config = network.pretrained_cfg
    mean, std = list(config["mean"]), list(config["std"])
    info = ZooModelInfo(
        name=f"{TIMM}{name}",
        architecture=name,
        dataset=dataset,
        width=0,
        num_classes=num_classes,
        lam=None,
        n_steps=0,
        square_noise=False,
        stem="",
        checkpoint=str(checkpoint),
        sha256=sha256_of(Path(checkpoint)),
        source="timm",
        details={"normalisation": {"mean": mean, "std": std}, "timm_version": _version("timm")},
    )
    return Classifier(network, mean, std).eval(), info


# --- a user's factory -----------------------------------------------------------------------------


def _describe(exc: BaseException) -> str:
    """``SystemExit(0)``, ``TypeError: build() missing 1 required positional argument: 'width'``: one line."""
    if isinstance(exc, SystemExit):
        return f"SystemExit({exc.code!r}) (it tried to end the process)"
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _factory(spec: str, checkpoint: Path | None, dataset: str, num_classes: int) -> tuple[Classifier, ZooModelInfo]:
    module_name, attribute = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(f"cannot import {module_name} for model {spec}: {exc}", parameter="model") from None
    except (Exception, SystemExit) as exc:  # the module's own code failed, or tried to end the process
        raise ModelError(
            f"importing {module_name} for model {spec} raised {_describe(exc)}", parameter="model"
        ) from None
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise ModelError(f"{module_name} has no callable {attribute!r}", parameter="model")
    try:
        network = factory()
    except (Exception, SystemExit) as exc:  # a factory that needs arguments, fails, or calls sys.exit
        raise ModelError(f"model {spec}: calling {spec}() raised {_describe(exc)}", parameter="model") from None
    if not isinstance(network, nn.Module):
        raise ModelError(f"{spec}() returned a {type(network).__name__}, not a torch nn.Module", parameter="model")
    if checkpoint is not None:
        load_into(network, read_state_dict(Path(checkpoint)), str(checkpoint))
    classifier = network if isinstance(network, Classifier) else Classifier(network, *_IDENTITY)
    classifier.eval()
    info = ZooModelInfo(
        name=spec,
        architecture=type(network).__name__,
        dataset=dataset,
        width=0,
        num_classes=num_classes,
        lam=classifier.training_lam,
        n_steps=0,
        square_noise=False,
        stem="",
        checkpoint=str(checkpoint) if checkpoint is not None else None,
        sha256=sha256_of(Path(checkpoint)) if checkpoint is not None else state_dict_sha256(network),
        source="factory",
        details={
            "factory": spec,
            "file": getattr(module, "__file__", None),
            "normalisation": "the factory's module takes [0, 1] inputs",
        },
    )
    return classifier, info
