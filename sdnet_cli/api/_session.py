"""What every API function opens first: the runtime, the model, cells and meta, from the caller's records.

``Session.open`` turns the records each job takes (``ModelSpec``, ``DataSpec``, ``RunSpec``; their values
checked when they were made) into a runtime and a prepared classifier, once, in one order: the torchrun
rule, then the device, then the model. Its helpers give the jobs their validated and prepared cells,
progress totals and report meta.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from ..forecast import Progress, Silent
from ..report import base_meta
from ..specs import DataSpec, LoadedModel, ModelSpec, Normalize, RunSpec

if TYPE_CHECKING:
    from torch import nn

    from ..data.cells import CellSource
    from ..models import Classifier, ModelInfo
    from ..runtime import Runtime


def job_progress(progress: Progress | None, runtime: Runtime, hint: bool = False) -> Progress:
    """The progress a job reports to: ``progress`` with a forecast line for every task (``Forecasting``; none
    when there is no ``progress``), told first when the runtime's precision runs emulated on this CPU."""
    from ..forecast import Forecasting
    from ..runtime import emulated_bf16_note

    told: Progress = Silent() if progress is None else Forecasting(progress, str(runtime.device), hint)
    slow = emulated_bf16_note(runtime)
    if slow is not None:
        told.note(slow)
    return told


def strings(values: str | int | Sequence[str | int]) -> list[str]:
    return [str(values)] if isinstance(values, (str, int)) else [str(v) for v in values]


def single_process(command: str) -> None:
    """Only eval and attack split their work over torchrun's processes; the others refuse rather than
    run N identical copies that race to write the same files."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UsageError(f"{command} runs in one process; under torchrun only eval and attack split their work")


def load_named(spec: ModelSpec, name: str, dataset: str) -> LoadedModel:
    """The model the user named; the dataset and checkpoint path are checked first, so a typo is reported
    as itself, not as a missing checkpoint."""
    from ..data.datasets import dataset_spec
    from ..models import load_model

    dataset_spec(dataset)
    checkpoint = spec.checkpoint
    if checkpoint is not None and checkpoint.is_dir():
        raise UsageError(f"checkpoint {checkpoint} is a directory; give the checkpoint file", parameter="checkpoint")
    return LoadedModel(
        *load_model(
            name, checkpoint, dataset, spec.weights_dir, n_steps=spec.n_steps, threat=spec.threat,
            model_dir=spec.model_dir,
        )
    )  # fmt: skip


def wrap_module(module: nn.Module, dataset: str, normalize: Normalize | None) -> LoadedModel:
    """A user's module as a ``Classifier`` (normalising first when ``normalize=(mean, std)`` is given) and
    a ``ModelInfo`` naming its class and the sha256 of its state dict, so reports say what was evaluated."""
    from ..data.datasets import dataset_spec
    from ..models import Classifier, ModelInfo, state_dict_sha256

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


def resolve_model(spec: ModelSpec, dataset: str | None = None) -> LoadedModel:
    """``spec``'s model as a ``LoadedModel``: a name loaded for ``dataset``, a module wrapped; ``dataset``
    defaults to a loaded model's own, else cifar10."""
    from torch import nn

    model = spec.model
    if isinstance(model, str):
        return load_named(spec, model, dataset or "cifar10")
    if isinstance(model, LoadedModel):
        if dataset not in (None, model.info.dataset) or spec.normalize is not None:
            raise UsageError(
                f"{model.name} was loaded for {model.info.dataset}; dataset and normalize come with it",
                parameter="dataset" if spec.normalize is None else "normalize",
            )
        return model
    if isinstance(model, nn.Module):
        return wrap_module(model, dataset or "cifar10", spec.normalize)
    raise UsageError(
        f"model must be a name, api.load_model(...) or a torch.nn.Module, got {type(model).__name__}",
        parameter="model",
    )


@dataclass
class Session:
    """The opened common parameters of one job: runtime, prepared classifier and what reports record."""

    command: str
    runtime: Runtime
    model: LoadedModel
    dataset: str
    batch_size: int
    data: DataSpec
    distributed: bool
    progress: Progress

    @property
    def seed(self) -> int:
        return self.data.seed

    @property
    def n_examples(self) -> int | None:
        return self.data.n_examples

    @classmethod
    def open(
        cls,
        command: str,
        *,
        model: ModelSpec,
        data: DataSpec,
        run: RunSpec,
        progress: Progress | None = None,
        default_batch_size: int | None = None,
        distributed: bool = False,
    ) -> Session:
        """Refuse torchrun unless the job splits its work (``distributed``), create the runtime (the batch
        size defaults to ``default_batch_size``, else the runtime's), load and prepare the model. The records
        checked their own values when they were made."""
        from .. import distributed as dist
        from ..runtime import Runtime

        if not distributed:
            single_process(command)
        runtime = Runtime.create(dist.init(run.device) if distributed else run.device, run.precision, run.compile)
        loaded = resolve_model(model, data.dataset)
        runtime.prepare_checked(loaded.classifier, loaded.info.name, loaded.info.dataset)
        size = run.batch_size or default_batch_size or runtime.eval_batch_size
        told = job_progress(progress, runtime, data.n_examples is None)
        return cls(command, runtime, loaded, loaded.info.dataset, size, data, distributed, told)

    @property
    def classifier(self) -> Classifier:
        return self.model.classifier

    @property
    def info(self) -> ModelInfo:
        return self.model.info

    def fingerprint(self) -> dict[str, Any]:
        """The model a resumable job's saved parts came from: its name, its weights' sha256 and the FISTA steps
        it runs (a setting of the run, which the weights' digest does not cover)."""
        info = self.info
        return {"model": info.name, "checkpoint_sha256": info.sha256, "n_steps": info.n_steps, "dataset": self.dataset}

    def resume_config(self, **settings: Any) -> dict[str, Any]:
        """What every saved part of a resumable job depends on besides its own ``settings``: the command, the
        model (``fingerprint``), the images and how they run. A resume file written under another config is
        refused (``resume.ResumeFile``)."""
        data = self.data
        return {
            "command": self.command,
            **self.fingerprint(),
            "seed": self.seed,
            "n_examples": data.n_examples,
            "cifar_c_dir": None if data.cifar_c_dir is None else str(Path(data.cifar_c_dir).resolve()),
            "batch_size": self.batch_size,
            "precision": self.runtime.precision,
            **settings,
        }

    def require_lambda(self) -> None:
        """Lambda sweeps, rules and hold-outs need a model with CSC layers (an SDNet)."""
        from ..models.csc import require_csc

        require_csc(self.classifier, "it has no lambda to sweep or choose", "model", self.info.name)

    def cells(self, names: Sequence[str], prepare: bool = True) -> CellSource:
        """The cell images of ``names``: every file checked before the first forward; with ``prepare``,
        the corrupted images the cache lacks generated (once, cached)."""
        from ..data.cells import CellSource

        data = self.data
        source = CellSource(
            data.data_dir,
            data.cifar_c_dir,
            data.cache_dir,
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

        distributed.in_turn(lambda: source.prepare_told(names, self.progress))

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
