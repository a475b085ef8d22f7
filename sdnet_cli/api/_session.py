"""What every API function opens first: checked common parameters, the runtime, the model, cells and meta.

``Session.open`` turns the parameters each job shares (model, device, precision, seed, data folders,
n_examples, batch size, compile, distributed or not) into a runtime and a prepared classifier, once, in
one order: numbers first, then the torchrun rule, then the device, then the model. Its helpers give
the jobs their validated and prepared cells, progress totals and report meta.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Union

from ..errors import UsageError
from ..report import base_meta

if TYPE_CHECKING:
    from torch import nn

    from ..data.cells import CellSource
    from ..models import Classifier, ModelInfo
    from ..runtime import Runtime


class Progress(Protocol):
    """Where long work reports what it is doing."""

    def task(self, description: str, total: int) -> Callable[[int], None]: ...

    def note(self, text: str) -> None: ...


class Silent:
    """Progress that goes nowhere (the default)."""

    def task(self, description: str, total: int) -> Callable[[int], None]:
        return lambda k: None

    def note(self, text: str) -> None:
        pass


@dataclass(frozen=True)
class LoadedModel:
    """A model loaded once (``api.load_model``) and passed as ``model=`` to any API function."""

    classifier: Classifier
    info: ModelInfo

    @property
    def name(self) -> str:
        return self.info.name


ModelArg = Union[str, LoadedModel, "nn.Module"]
"""``model=``: a name (architecture or shipped checkpoint), a ``LoadedModel``, or any ``torch.nn.Module``
mapping images in [0, 1], (N, 3, H, W), to logits."""


def at_least_one(value: int | None, parameter: str) -> None:
    if value is not None and value < 1:
        raise UsageError(f"{parameter} must be >= 1, got {value}", parameter=parameter)


def check_seed(seed: int) -> None:
    if not 0 <= seed < 2**32:
        raise UsageError(f"seed must be in 0 .. 2**32-1, got {seed}", parameter="seed")


def strings(values: str | int | Sequence[str | int]) -> list[str]:
    return [str(values)] if isinstance(values, (str, int)) else [str(v) for v in values]


def single_process(command: str) -> None:
    """Only eval and attack split their work over torchrun's processes; the others refuse rather than
    run N identical copies that race to write the same files."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UsageError(f"{command} runs in one process; under torchrun only eval and attack split their work")


def state_dict_sha256(module: nn.Module) -> str:
    """A fingerprint of a module's weights: its state dict in sorted key order, each entry's name, dtype,
    shape and raw bytes, so equal weights give equal digests whatever their device or insertion order."""
    import torch

    digest = hashlib.sha256()
    state = module.state_dict()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load_named(
    model: str,
    checkpoint: Path | None,
    dataset: str,
    weights_dir: Path | None,
    n_steps: int | None = None,
    threat: str = "corruptions",
    model_dir: Path | None = None,
) -> LoadedModel:
    """The model the user named; the dataset and checkpoint path are checked first, so a typo is reported
    as itself, not as a missing checkpoint. ``n_steps`` overrides the checkpoint's FISTA step count;
    ``threat`` and ``model_dir`` locate a ``robustbench:<name>`` model (see ``models.zoo``)."""
    from ..data.datasets import dataset_spec
    from ..models import load_model

    dataset_spec(dataset)
    if checkpoint is not None and Path(checkpoint).is_dir():
        raise UsageError(f"checkpoint {checkpoint} is a directory; give the checkpoint file", parameter="checkpoint")
    path = Path(checkpoint) if checkpoint is not None else None
    return LoadedModel(
        *load_model(model, path, dataset, weights_dir, n_steps=n_steps, threat=threat, model_dir=model_dir)
    )


def wrap_module(
    module: nn.Module, dataset: str, normalize: tuple[Sequence[float], Sequence[float]] | None
) -> LoadedModel:
    """A user's module as a ``Classifier`` (normalising first when ``normalize=(mean, std)`` is given) and
    a ``ModelInfo`` naming its class and the sha256 of its state dict, so reports say what was evaluated."""
    from ..data.datasets import dataset_spec
    from ..models import Classifier, ModelInfo

    spec = dataset_spec(dataset)
    if isinstance(module, Classifier) and normalize is None:
        classifier = module
    else:
        mean, std = normalize if normalize is not None else ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        classifier = Classifier(module, mean, std)
    kind = type(module)
    info = ModelInfo(
        name=kind.__name__,
        architecture=f"{kind.__module__}.{kind.__qualname__}",
        dataset=dataset,
        width=0,
        num_classes=spec.num_classes,
        lam=classifier.training_lam,
        n_steps=0,
        square_noise=False,
        stem="module",
        sha256=state_dict_sha256(module),
    )
    return LoadedModel(classifier, info)


def resolve_model(
    model: ModelArg,
    *,
    checkpoint: Path | None = None,
    dataset: str | None = None,
    weights_dir: Path | None = None,
    n_steps: int | None = None,
    normalize: tuple[Sequence[float], Sequence[float]] | None = None,
    threat: str = "corruptions",
    model_dir: Path | None = None,
) -> LoadedModel:
    """``model=`` as a ``LoadedModel``. ``checkpoint``, ``weights_dir``, ``n_steps``, ``threat`` and
    ``model_dir`` say how to load a name; ``normalize`` how to wrap a module; ``dataset`` defaults to a
    loaded model's own, else cifar10."""
    from torch import nn

    if isinstance(model, str):
        if normalize is not None:
            raise UsageError("normalize applies to a torch.nn.Module; a named model has its own", parameter="normalize")
        return load_named(model, checkpoint, dataset or "cifar10", weights_dir, n_steps, threat, model_dir)
    named_only = (
        (checkpoint, "checkpoint"),
        (weights_dir, "weights_dir"),
        (n_steps, "n_steps"),
        (model_dir, "model_dir"),
    )
    for value, parameter in named_only:
        if value is not None:
            raise UsageError(f"{parameter} applies to a model name, not to a model object", parameter=parameter)
    if isinstance(model, LoadedModel):
        if dataset not in (None, model.info.dataset) or normalize is not None:
            raise UsageError(
                f"{model.name} was loaded for {model.info.dataset}; dataset and normalize come with it",
                parameter="dataset" if normalize is None else "normalize",
            )
        return model
    if isinstance(model, nn.Module):
        return wrap_module(model, dataset or "cifar10", normalize)
    raise UsageError(
        f"model must be a name, api.load_model(...) or a torch.nn.Module, got {type(model).__name__}",
        parameter="model",
    )


SHARED = (
    "model",
    "checkpoint",
    "dataset",
    "weights_dir",
    "n_steps",
    "normalize",
    "threat",
    "model_dir",
    "device",
    "precision",
    "seed",
    "n_examples",
    "batch_size",
    "compile",
    "data_dir",
    "cache_dir",
    "cifar_c_dir",
    "progress",
)
"""The parameters every API function names alike and hands to ``Session.open`` unchanged."""


def shared(parameters: dict[str, Any]) -> dict[str, Any]:
    """The ``SHARED`` parameters among an API function's own (its ``locals()`` on entry)."""
    return {name: parameters[name] for name in SHARED if name in parameters}


@dataclass
class Session:
    """The opened common parameters of one job: runtime, prepared classifier and what reports record."""

    command: str
    runtime: Runtime
    model: LoadedModel
    dataset: str
    seed: int
    batch_size: int
    n_examples: int | None
    distributed: bool
    progress: Progress
    folders: dict[str, Path | None] = field(default_factory=dict)

    @classmethod
    def open(
        cls,
        command: str,
        *,
        model: ModelArg,
        checkpoint: Path | None = None,
        dataset: str | None = None,
        weights_dir: Path | None = None,
        n_steps: int | None = None,
        normalize: tuple[Sequence[float], Sequence[float]] | None = None,
        threat: str = "corruptions",
        model_dir: Path | None = None,
        device: str = "auto",
        precision: str = "fp32",
        seed: int = 0,
        n_examples: int | None = None,
        batch_size: int | None = None,
        default_batch_size: int | None = None,
        compile: bool = False,
        distributed: bool = False,
        data_dir: Path | None = None,
        cache_dir: Path | None = None,
        cifar_c_dir: Path | None = None,
        progress: Progress | None = None,
    ) -> Session:
        """Check the numbers, refuse torchrun unless the job splits its work (``distributed``), create the
        runtime (``batch_size`` defaults to ``default_batch_size``, else the runtime's), load and prepare the model."""
        from .. import distributed as dist
        from ..forecast import Forecasting
        from ..runtime import Runtime

        at_least_one(n_examples, "n_examples")
        at_least_one(batch_size, "batch_size")
        check_seed(seed)
        if not distributed:
            single_process(command)
        runtime = Runtime.create(dist.init(device) if distributed else device, precision, compile)
        loaded = resolve_model(
            model, checkpoint=checkpoint, dataset=dataset, weights_dir=weights_dir, n_steps=n_steps,
            normalize=normalize, threat=threat, model_dir=model_dir,
        )  # fmt: skip
        runtime.prepare(loaded.classifier)
        size = batch_size or default_batch_size or runtime.eval_batch_size
        folders = {"data_dir": data_dir, "cache_dir": cache_dir, "cifar_c_dir": cifar_c_dir}
        told = Silent() if progress is None else Forecasting(progress, str(runtime.device), hint=n_examples is None)
        return cls(
            command, runtime, loaded, loaded.info.dataset, seed, size, n_examples, distributed, told, folders,
        )  # fmt: skip

    @property
    def classifier(self) -> Classifier:
        return self.model.classifier

    @property
    def info(self) -> ModelInfo:
        return self.model.info

    def require_lambda(self) -> None:
        """Lambda sweeps, rules and hold-outs need a model with CSC layers (an SDNet)."""
        from ..models.csc import require_csc

        require_csc(self.classifier, "it has no lambda to sweep or choose", "model", self.info.name)

    def cells(self, names: Sequence[str], prepare: bool = True) -> CellSource:
        """The cell images of ``names``: every file checked before the first forward; with ``prepare``,
        the corrupted images the cache lacks generated (once, cached)."""
        from ..data.cells import CellSource

        folders = self.folders
        source = CellSource(
            folders["data_dir"],
            folders["cifar_c_dir"],
            folders["cache_dir"],
            seed=self.seed,
            n_examples=self.n_examples,
            dataset=self.dataset,
        )
        source.validate(names)
        if prepare:
            self.prepare_cells(source, names)
        return source

    def prepare_cells(self, source: CellSource, names: Sequence[str]) -> None:
        from .. import distributed

        missing = source.missing_images(names)
        title = f"generating {source.spec.corrupted.title} (seed {source.seed})"
        advance = self.progress.task(title, missing) if missing else None
        distributed.in_turn(lambda: source.prepare(names, advance))

    def task(self, description: str, source: CellSource, passes: int) -> Callable[[int], None]:
        """A progress task over ``passes`` passes of this process's share of the cell images."""
        from .. import distributed

        return self.progress.task(description, distributed.shard_size(source.n, self.batch_size) * passes)

    def base(self, **extra: Any) -> dict[str, Any]:
        """The columns every row of this job starts with."""
        return {"model": self.info.name, "dataset": self.dataset, **extra}

    def meta(self, source: CellSource | dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
        """Report meta: what was evaluated (model, checkpoint or state-dict sha256), on what, how."""
        from .. import distributed

        data: dict[str, Any] = {}
        if isinstance(source, dict):
            data = {"data_source": source, "n_examples": source["first_n"]}
        elif source is not None:
            data = {"data_source": source.describe(), "n_examples": source.n}
        spread = {"distributed": distributed.describe()} if self.distributed else {}
        return base_meta(
            self.command,
            self.seed,
            model=self.info.as_meta(),
            checkpoint_sha256=self.info.sha256,
            **data,
            batch_size=self.batch_size,
            **extra,
            **spread,
            **self.runtime.describe(),
        )
