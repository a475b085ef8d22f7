"""What a caller asks for, as three typed, frozen records built once at the door (CLI flags or API arguments).

``ModelSpec``: the model and where its weights come from. ``DataSpec``: the dataset, its folders, the seed and
how many images. ``RunSpec``: where and how forwards run. Every API function takes the ones it uses as
keyword arguments; each record checks its values when it is made, with the one validator of each value, so
a bad value is refused before any work whatever door it came through. A job that cannot use a field refuses
it (``unused``) instead of dropping it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union, cast, get_args

from .errors import UsageError
from .schemas import BATCH_MAX, EXAMPLES_MAX, FISTA_STEPS_MAX, check_count, check_seed

if TYPE_CHECKING:
    from torch import nn

    from .models import Classifier, ModelInfo

Precision = Literal["fp32", "bf16", "bf16-checked"]
"""fp32; bf16 autocast; or bf16-checked: bf16 autocast whose doubtful decisions are re-run in fp32
(``runtime.Checked``), for jobs where decisions are all that matters."""
PRECISIONS: tuple[str, ...] = get_args(Precision)
DeviceKind = Literal["auto", "cpu", "cuda"]
"""A device is one of these, or ``cuda:<index>``."""
Normalize = tuple[Sequence[float], Sequence[float]]
"""``(mean, std)`` per channel, applied to a module's [0, 1] input first."""


def count_or_none(value: int | None, parameter: str, upper: int) -> None:
    """None (the default applies), or a count in [1, ``upper``]: the rule, and bound, the same value meets in a
    file (``schemas.check_count``)."""
    if value is not None:
        check_count(value, parameter, upper)


def check_precision(precision: str) -> Precision:
    """``precision`` if it is one of ``PRECISIONS`` (typed as such), else a usage error."""
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}; use {', '.join(PRECISIONS)}", parameter="precision")
    return cast(Precision, precision)


def gradient_precision(precision: str, job: str) -> Precision:
    """A precision for work that follows gradients (``job``: attacks, training): fp32 or bf16, as
    bf16-checked checks only the decisions of forwards."""
    typed = check_precision(precision)
    if typed == "bf16-checked":
        raise UsageError(
            f"precision bf16-checked checks only decisions, not the gradients {job} follows; use fp32 (or bf16)",
            parameter="precision",
        )
    return typed


def check_device(device: str) -> None:
    """The device's spelling; whether a GPU is there is ``Runtime.create``'s question."""
    kinds: tuple[str, ...] = get_args(DeviceKind)
    if device not in kinds and not device.startswith("cuda:"):
        raise UsageError(f"unknown device {device!r}; use auto, cpu or cuda", parameter="device")


def _path(record: Any, name: str) -> None:
    """A folder or file given as text becomes a ``Path`` (frozen records set it once, here)."""
    value = getattr(record, name)
    if isinstance(value, str):
        object.__setattr__(record, name, Path(value))


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


@dataclass(frozen=True)
class ModelSpec:
    """The model and where its weights come from.

    ``model``: a name, a ``LoadedModel`` or a ``torch.nn.Module``. For a name: ``checkpoint`` (weights to load
    into that architecture), ``weights_dir`` (the shipped checkpoints' folder), ``n_steps`` (FISTA steps of the
    CSC layers, overriding the checkpoint's), ``threat`` and ``model_dir`` (a ``robustbench:<name>`` model's
    leaderboard, corruptions, Linf or L2, and folder). For a module: ``normalize=(mean, std)``, applied to its [0, 1] input first.
    """

    model: ModelArg = "sdnet18"
    checkpoint: Path | None = None
    weights_dir: Path | None = None
    n_steps: int | None = None
    normalize: Normalize | None = None
    threat: str = "corruptions"
    model_dir: Path | None = None

    def __post_init__(self) -> None:
        for name in ("checkpoint", "weights_dir", "model_dir"):
            _path(self, name)
        if isinstance(self.model, str):
            if self.normalize is not None:
                raise UsageError(
                    "normalize applies to a torch.nn.Module; a named model has its own", parameter="normalize"
                )
            count_or_none(self.n_steps, "n_steps", FISTA_STEPS_MAX)  # a checkpoint file's cap, too
            return
        named_only = (
            (self.checkpoint, "checkpoint"),
            (self.weights_dir, "weights_dir"),
            (self.n_steps, "n_steps"),
            (self.model_dir, "model_dir"),
        )
        for value, parameter in named_only:
            if value is not None:
                raise UsageError(f"{parameter} applies to a model name, not to a model object", parameter=parameter)

    @classmethod
    def of(cls, model: ModelSpec | ModelArg) -> ModelSpec:
        """``model=`` as API functions take it: a ``ModelSpec``, or a plain model (name, loaded, module)."""
        return model if isinstance(model, ModelSpec) else cls(model)


@dataclass(frozen=True)
class DataSpec:
    """The images: ``dataset`` (default: a loaded model's own, else cifar10), the folders they are read from
    (``data_dir``: the clean splits; ``cifar_c_dir``: an official corrupted release; ``cache_dir``: where
    generated corruptions are cached), ``seed`` (generated corruptions and every random choice) and
    ``n_examples`` (only the first N test images, of each cell)."""

    dataset: str | None = None
    data_dir: Path | None = None
    cache_dir: Path | None = None
    cifar_c_dir: Path | None = None
    seed: int = 0
    n_examples: int | None = None

    def __post_init__(self) -> None:
        for name in ("data_dir", "cache_dir", "cifar_c_dir"):
            _path(self, name)
        if self.dataset is not None:
            from .data.datasets import dataset_spec  # here: the default record is made when the API is imported

            dataset_spec(self.dataset)
        count_or_none(self.n_examples, "n_examples", EXAMPLES_MAX)
        check_seed(self.seed)


@dataclass(frozen=True)
class RunSpec:
    """Where and how forwards run: ``device`` (auto: a GPU if present; cpu; cuda or cuda:N), ``precision`` (fp32,
    bf16 autocast, or bf16-checked for decision-only jobs), ``batch_size`` (images per forward; default: the job's own) and ``compile`` (inference
    through ``torch.compile``)."""

    device: str = "auto"
    precision: Precision = "fp32"
    batch_size: int | None = None
    compile: bool = False

    def __post_init__(self) -> None:
        check_device(self.device)
        check_precision(self.precision)
        count_or_none(self.batch_size, "batch_size", BATCH_MAX)


def unused(record: ModelSpec | DataSpec | RunSpec, names: Sequence[str], job: str, why: str) -> None:
    """Refuse, never drop, a field of ``record`` that ``job`` cannot use, when it is set to other than its default."""
    for field in fields(record):
        if field.name in names and getattr(record, field.name) != field.default:
            raise UsageError(f"{field.name} does not apply to {job}: {why}", parameter=field.name)
