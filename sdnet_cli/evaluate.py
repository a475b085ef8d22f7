"""The one evaluation loop: uint8 images in, per-sample correctness out.

``eval``, ``sweep-lambda``, ``check`` and ``attack`` all run their forwards through
``Runtime`` and ``predict_correct``, so device, precision and batching behave the same everywhere.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from . import distributed
from .adapt import BatchNormAdaptation
from .data.cells import Cell, CellSource
from .errors import UsageError
from .lam import FixedLambda, lambda_label
from .metrics import percent
from .models.classifier import Classifier, LambdaPolicy

Precision = Literal["fp32", "bf16"]


class NonFiniteOutput(UsageError):
    """The model's outputs are not numbers for these inputs and settings: no accuracy can be reported."""


@dataclass(frozen=True)
class Runtime:
    """Where and how forwards run. bf16 autocast + channels_last is faster than fp32 on GPUs and on
    CPUs with AMX or AVX-512 BF16, several times slower on AVX2-only CPUs (benchmarks/); CSC solves
    stay float32 regardless (see ``CSCLayer.solve``). ``compile`` runs a classifier's no-grad
    inference through ``torch.compile`` (``Classifier.compile_inference``; attacks' gradient passes
    stay eager, compiled ones were slower on CPU): faster evaluation after a one-off compile of
    seconds to a minute, logits equal to eager up to float rounding (benchmarks/compile_speed.py)."""

    device: torch.device
    precision: Precision = "fp32"
    compile: bool = False

    @classmethod
    def create(cls, device: str = "auto", precision: str = "fp32", compile: bool = False) -> Runtime:
        if precision not in ("fp32", "bf16"):
            raise UsageError(f"unknown precision {precision!r}; use fp32 or bf16", parameter="precision")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
            raise UsageError(f"unknown device {device!r}; use auto, cpu or cuda", parameter="device")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise UsageError(
                "device cuda was asked for, but torch sees no CUDA GPU on this machine", parameter="device"
            )
        return cls(torch.device(device), precision, compile)  # type: ignore[arg-type]

    @property
    def eval_batch_size(self) -> int:
        """Images per forward when a caller does not say. Measured on a 2-core AVX-512 CPU
        (benchmarks/eval_batch_size.py, two runs): 64 was the fastest for both models in fp32 and
        within 3.5-5% of the fastest (64 or 128) in bf16, while 256 ran at 0.64-0.86 of the fastest.
        GPUs: 256, not yet measured."""
        return 64 if self.device.type == "cpu" else 256

    def autocast(self) -> AbstractContextManager:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def prepare(self, model: nn.Module) -> nn.Module:
        """Move a model to the device in channels_last layout, in eval mode, and (``compile``) compile
        its inference path. In place: returns the same model, so ``using`` and attacks work as before."""
        model = model.to(self.device, memory_format=torch.channels_last).eval()
        if self.compile:
            if not isinstance(model, Classifier):
                raise UsageError("compile applies to classifiers (models.load_model) only", parameter="compile")
            model.compile_inference()
        return model

    def to_input(self, images: np.ndarray) -> torch.Tensor:
        """uint8 NHWC -> float [0,1] NCHW (channels_last) on the device."""
        x = torch.from_numpy(np.array(images)).to(self.device)  # a copy: cells may be read-only memmaps
        return x.permute(0, 3, 1, 2).float().div_(255.0).contiguous(memory_format=torch.channels_last)

    def describe(self) -> dict[str, Any]:
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        return {"device": str(self.device), "device_name": name, "precision": self.precision, "compiled": self.compile}


@dataclass
class Counts:
    n: int
    correct: int
    seconds: float

    @property
    def accuracy(self) -> float:
        return percent(self.correct, self.n)


@dataclass(frozen=True)
class Batch:
    rows: slice  # which images of the array this batch holds
    x: torch.Tensor  # float [0,1] NCHW (channels_last) on the runtime's device
    y: torch.Tensor  # int64 labels on the same device


def iter_batches(images: np.ndarray, labels: np.ndarray, runtime: Runtime, batch_size: int) -> Iterator[Batch]:
    """The one way uint8 NHWC images become model inputs, ``batch_size`` at a time, in order."""
    for start in range(0, len(images), batch_size):
        rows = slice(start, min(start + batch_size, len(images)))
        y = torch.from_numpy(np.asarray(labels[rows], dtype=np.int64)).to(runtime.device)
        yield Batch(rows, runtime.to_input(images[rows]), y)


def predict(model: nn.Module, x: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    """Predicted labels of [0,1] inputs: the judge of every accuracy the tool reports.

    Runs under ``no_grad``, never ``inference_mode``: a model whose forward optimises its input
    (test-time optimisation) switches gradients back on inside, which inference mode forbids.
    """
    with torch.no_grad(), runtime.autocast():
        logits = model(x)
    if not torch.isfinite(logits).all():  # argmax would still pick a class: a silent wrong number
        raise NonFiniteOutput(
            "the model returned NaN or infinite logits (e.g. a test-time lambda at which the "
            "sparse-coding solve diverges)"
        )
    return logits.argmax(dim=1)


def predict_correct(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    runtime: Runtime,
    batch_size: int = 256,
    progress: Callable[[int], None] | None = None,
    observe: Callable[[Batch], None] | None = None,
) -> np.ndarray:
    """Boolean [N]: whether the model classifies each image correctly.

    ``observe(batch)`` runs after each batch's prediction, so callers can compute per-sample
    quantities on the same inputs without a loop of their own.
    """
    correct = np.zeros(len(images), dtype=bool)
    for batch in iter_batches(images, labels, runtime, batch_size):
        correct[batch.rows] = (predict(model, batch.x, runtime) == batch.y).cpu().numpy()
        if observe is not None:
            observe(batch)
        if progress is not None:
            progress(batch.rows.stop - batch.rows.start)
    return correct


def count_correct(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    runtime: Runtime,
    batch_size: int = 256,
    progress: Callable[[int], None] | None = None,
    observe: Callable[[Batch], None] | None = None,
) -> Counts:
    start = time.perf_counter()
    correct = predict_correct(model, images, labels, runtime, batch_size, progress, observe)
    return Counts(len(correct), int(correct.sum()), time.perf_counter() - start)


def combined(counts: Counts) -> Counts:
    """Counts summed over torchrun's ranks (seconds: the slowest rank's); unchanged for one process."""
    n, correct = distributed.combine(np.array([counts.n, counts.correct], dtype=np.int64), "sum")
    return Counts(int(n), int(correct), float(distributed.combine(np.array(counts.seconds), "max")))


def cell_row(base: dict, corruption: str, severity: int | str, counts: Counts) -> dict:
    """One report row, keys in the documented order."""
    return {
        "model": base["model"],
        "dataset": base["dataset"],
        "corruption": corruption,
        "severity": severity,
        "lam": base["lam"],
        "n": counts.n,
        "correct": counts.correct,
        "accuracy": round(counts.accuracy, 4),
        "seconds": round(counts.seconds, 3),
    }


def lambda_columns(lams: np.ndarray) -> dict[str, float]:
    """The chosen lambdas of a per-input policy over a cell's images: mean and 10th/90th percentiles."""
    return {
        "lam_mean": round(float(np.mean(lams)), 4),
        "lam_p10": round(float(np.percentile(lams, 10)), 4),
        "lam_p90": round(float(np.percentile(lams, 90)), 4),
    }


class _NotingLambdas:
    """The policy in force, unchanged, plus a note of every per-input lambda it returns, in batch order
    (a float lambda is the same for every input: nothing to note). Lives for one cell of one call."""

    def __init__(self, policy: LambdaPolicy) -> None:
        self.policy = policy
        self.name = policy.name
        self.noted: list[np.ndarray] = []

    def __call__(self, model: Classifier, x_normalized: torch.Tensor):  # type: ignore[no-untyped-def]
        lam = self.policy(model, x_normalized)
        if isinstance(lam, torch.Tensor) and lam.ndim == 1:
            self.noted.append(lam.detach().float().cpu().numpy())
        return lam


def _count_with_lambdas(
    model: Classifier,
    images: np.ndarray,
    labels: np.ndarray,
    runtime: Runtime,
    batch_size: int,
    progress: Callable[[int], None] | None,
    forward: nn.Module | None = None,
) -> tuple[Counts, np.ndarray | None]:
    """Counts of one cell (summed over torchrun's ranks) and, for a per-input policy, the lambda it chose
    for each image (None for one lambda for all). ``forward``: what runs the batches (an adaptation's
    module around ``model``; default ``model``)."""
    part = distributed.shard(len(images), batch_size)
    policy = model.lam_policy
    forward = forward if forward is not None else model
    if policy is None or isinstance(policy, FixedLambda):
        return combined(count_correct(forward, images[part], labels[part], runtime, batch_size, progress)), None
    noting = _NotingLambdas(policy)
    with model.using(noting):
        counts = combined(count_correct(forward, images[part], labels[part], runtime, batch_size, progress))
    # asked of every rank (a rank whose shard is empty noted nothing but must join the all-reduce)
    if not distributed.combine(np.array(bool(noting.noted)), "max"):
        return counts, None
    lams = np.zeros(len(images), dtype=np.float64)
    if noting.noted:
        lams[part] = np.concatenate(noting.noted)
    return counts, distributed.combine(lams, "sum")


def mean_row(rows: list[dict]) -> dict | None:
    """``corruption: "mean"``: the plain mean over corrupted cells (the usual CIFAR-C summary)."""
    corrupted = [r for r in rows if r["severity"] != 0]
    if not corrupted:
        return None
    n, correct = sum(r["n"] for r in corrupted), sum(r["correct"] for r in corrupted)
    row = cell_row(corrupted[0], "mean", "all", Counts(n, correct, sum(r["seconds"] for r in corrupted)))
    row["accuracy"] = round(sum(r["accuracy"] for r in corrupted) / len(corrupted), 4)  # mean of cell accuracies
    return row


def evaluate_cells(
    model: Classifier,
    cells: Sequence[Cell],
    source: CellSource,
    runtime: Runtime,
    row_base: dict,
    batch_size: int = 256,
    progress: Callable[[int], None] | None = None,
    cell_policy: Callable[[Cell], LambdaPolicy] | None = None,
    adapt: BatchNormAdaptation | None = None,
) -> list[dict]:
    """One row per cell plus the ``mean`` row; ``row_base`` gives model, dataset and lam.

    ``cell_policy`` (e.g. the oracle lambda of each cell) sets the model's lambda policy per cell;
    those rows name it, and the mean row keeps ``row_base``'s lam. Under torchrun each rank counts
    its own whole batches of every cell (``distributed.shard``) and the counts are summed, so every
    rank returns exactly the rows of a single-process run; ``progress`` sees this rank's images.
    Under a per-input policy each row also carries ``lambda_columns`` of the lambdas it chose (the
    mean row: over every corrupted image); rows of one lambda for all have no such columns.
    ``adapt`` (``adapt.make_adaptation``) adapts the model to each cell's test batches, of
    ``adapt.batch_size`` images (replacing ``batch_size``), from the original model every cell; every
    row then carries ``adapt.columns()`` (the method, ``uses_test_batches``, the batch size).
    """
    if adapt is not None:
        adapt.check(model)
        if adapt.stateful and distributed.world_size() > 1:
            raise UsageError(
                f"adapt={adapt.name!r} carries state from batch to batch, so one process must see a cell's "
                "batches in order; run it without torchrun",
                parameter="adapt",
            )
        batch_size = adapt.batch_size
    adapted = adapt.columns() if adapt is not None else {}
    rows, corrupted_lams = [], []
    for cell in cells:
        images, labels = source.load(cell)
        policy = cell_policy(cell) if cell_policy is not None else model.lam_policy
        adapting = adapt.cell(model) if adapt is not None else nullcontext(model)
        with model.using(policy), adapting as forward:
            base = {**row_base, "lam": lambda_label(model)} if cell_policy is not None else row_base
            try:
                counts, lams = _count_with_lambdas(model, images, labels, runtime, batch_size, progress, forward)
            except NonFiniteOutput as exc:
                raise NonFiniteOutput(f"{cell.corruption} severity {cell.severity}: {exc}") from None
        rows.append(
            {
                **cell_row(base, cell.corruption, cell.severity, counts),
                **(lambda_columns(lams) if lams is not None else {}),
                **adapted,
            }
        )
        if lams is not None and cell.severity != 0:
            corrupted_lams.append(lams)
    summary = mean_row(rows)
    if summary:
        summary["lam"] = row_base["lam"]
        if corrupted_lams:  # over every corrupted image, as the mean row's accuracy is
            summary.update(lambda_columns(np.concatenate(corrupted_lams)))
        summary.update(adapted)
    return rows + ([summary] if summary else [])
