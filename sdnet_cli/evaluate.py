"""The one cell evaluation loop: every cell's images through the model, one report row per cell.

``eval``, ``sweep-lambda`` and ``check`` count their cells here; the forwards themselves are
``runtime``'s (``Runtime``, ``predict``), shared with attacks and training.
"""

from __future__ import annotations

import base64
import time
import zlib
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
from torch import nn

from . import distributed
from .adapt import Adaptation
from .data.cells import Cell, CellImages
from .errors import UsageError
from .lam import FixedLambda, lambda_label
from .models.classifier import Classifier, LambdaPolicy
from .resume import ADVICE, ResumeFile
from .rows import ALL, MEAN
from .runtime import Counts, NonFiniteOutput, Runtime, count_correct, predict_correct
from .schemas import EvalState


def combined(counts: Counts) -> Counts:
    """Counts summed over torchrun's ranks (seconds: the slowest rank's); unchanged for one process."""
    n, correct = distributed.combine(np.array([counts.n, counts.correct], dtype=np.int64), "sum")
    return Counts(int(n), int(correct), float(distributed.combine(np.array(counts.seconds), "max")))


def cell_row(base: dict[str, Any], corruption: str, severity: int | str, counts: Counts) -> dict[str, Any]:
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

    def __call__(self, model: Classifier, x_normalized: torch.Tensor) -> Any:
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
    with model.using(noting):  # one forward per batch, so one noted lambda per image: fp32 under bf16-checked
        counts = combined(count_correct(forward, images[part], labels[part], runtime.exact, batch_size, progress))
    return counts, _gathered_lambdas(noting, len(images), part)


def _gathered_lambdas(noting: _NotingLambdas, n: int, part: slice) -> np.ndarray | None:
    """Every image's noted lambda, each rank's own rows merged (None when the policy gave one for all)."""
    # asked of every rank (a rank whose shard is empty noted nothing but must join the all-reduce)
    if not distributed.combine(np.array(bool(noting.noted)), "max"):
        return None
    lams = np.zeros(n, dtype=np.float64)
    if noting.noted:
        lams[part] = np.concatenate(noting.noted)
    return distributed.combine(lams, "sum")


def _correct_with_lambdas(
    model: Classifier,
    images: np.ndarray,
    labels: np.ndarray,
    runtime: Runtime,
    batch_size: int,
    progress: Callable[[int], None] | None,
    forward: nn.Module,
) -> tuple[np.ndarray, np.ndarray | None, float]:
    """Per image, whether it was classified correctly and (per-input policy) its lambda, merged over
    torchrun's ranks, and the seconds it took (the slowest rank's)."""
    part = distributed.shard(len(images), batch_size)
    policy = model.lam_policy
    noting = None if policy is None or isinstance(policy, FixedLambda) else _NotingLambdas(policy)
    correct = np.zeros(len(images), dtype=bool)
    start = time.perf_counter()
    with model.using(noting) if noting is not None else nullcontext(model):
        correct[part] = predict_correct(forward, images[part], labels[part], runtime, batch_size, progress)
    seconds = float(distributed.combine(np.array(time.perf_counter() - start), "max"))
    lams = _gathered_lambdas(noting, len(images), part) if noting is not None else None
    return distributed.combine(correct, "sum"), lams, seconds


def mean_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """``corruption: MEAN``: the plain mean over corrupted cells (the usual CIFAR-C summary)."""
    corrupted = [r for r in rows if r["severity"] != 0]
    if not corrupted:
        return None
    n, correct = sum(r["n"] for r in corrupted), sum(r["correct"] for r in corrupted)
    row = cell_row(corrupted[0], MEAN, ALL, Counts(n, correct, sum(r["seconds"] for r in corrupted)))
    row["accuracy"] = round(sum(r["accuracy"] for r in corrupted) / len(corrupted), 4)  # mean of cell accuracies
    return row


class CellState(ResumeFile):
    """Finished cells of a long evaluation in ``<name>.state.json``: each cell's row and, under a per-input
    policy, the lambda of every image (the mean row's percentiles need them), so ``resume`` skips them.
    A cell is independent of the others in a ``cells`` stream (an adaptation restarts every cell), so a
    resumed run gives the rows of an uninterrupted one."""

    SCHEMA = EvalState
    PARTS = "cells"

    @staticmethod
    def key(cell: Cell) -> str:
        return f"{cell.corruption}/{cell.severity}"

    def __contains__(self, cell: Cell) -> bool:
        return self.key(cell) in self.parts

    def get(self, cell: Cell) -> tuple[dict[str, Any], np.ndarray | None] | None:
        saved = self.parts.get(self.key(cell))
        if saved is None:
            return None
        if saved["lams"] is None:
            return saved["row"], None
        lams = np.frombuffer(base64.b64decode(saved["lams"]), dtype=np.float64)
        if len(lams) != saved["row"]["n"] or not np.isfinite(lams).all():
            raise UsageError(
                f"the resume state {self.path} is damaged (cells.{self.key(cell)}.lams must hold "
                f"{saved['row']['n']} finite lambdas); {ADVICE}",
                parameter="resume",
            )
        return saved["row"], lams

    def keep_common(self, cells: Sequence[Cell]) -> None:
        """Under torchrun every rank keeps its own file, and a run killed between two ranks' writes leaves a
        cell saved on some ranks only. The ranks' counts of a cell meet in an all-reduce, so every rank must
        run the same cells: of ``cells``, only those saved on every rank stay saved (the others run again,
        to the same rows). One process keeps all its cells."""
        here = np.array([cell in self for cell in cells], dtype=np.int64)
        everywhere = distributed.combine(here, "sum") == distributed.world_size()
        for cell, common in zip(cells, everywhere, strict=True):
            if not common:
                self.parts.pop(self.key(cell), None)

    def put_cell(self, cell: Cell, row: dict[str, Any], lams: np.ndarray | None) -> None:
        encoded = None if lams is None else base64.b64encode(np.asarray(lams, dtype=np.float64).tobytes()).decode()
        self.put(self.key(cell), {"row": row, "lams": encoded})


STREAMS = ("cells", "mixed")
"""How test images reach the model: ``cells``, each cell on its own in order (an adaptation restarts every cell);
``mixed``, the images of every cell interleaved in one seeded random order, one adaptation over the whole stream,
so a batch mixes corruptions and severities (the "wild" setting of Niu et al., ICLR 2023)."""


def check_stream(stream: str) -> str:
    if stream not in STREAMS:
        raise UsageError(f"unknown stream {stream!r}; choose one of: {', '.join(STREAMS)}", parameter="stream")
    return stream


def refuse_mixed_resume() -> None:
    raise UsageError(
        "a mixed stream is one adaptation over all cells, so it cannot resume cell by cell", parameter="resume"
    )


def mixed_order(sizes: Sequence[int], seed: int) -> np.ndarray:
    """The seeded order of a mixed stream: a permutation of the concatenated cells' images."""
    return np.random.default_rng([seed, zlib.crc32(b"mixed stream")]).permutation(int(sum(sizes)))


def evaluate_cells(
    model: Classifier,
    cells: Sequence[Cell],
    source: CellImages,
    runtime: Runtime,
    row_base: dict[str, Any],
    batch_size: int = 256,
    progress: Callable[[int], None] | None = None,
    cell_policy: Callable[[Cell], LambdaPolicy] | None = None,
    adapt: Adaptation | None = None,
    stream: str = "cells",
    seed: int = 0,
    saved: CellState | None = None,
) -> list[dict[str, Any]]:
    """One row per cell plus the ``mean`` row; ``row_base`` gives model, dataset and lam.

    ``cell_policy`` (e.g. the oracle lambda of each cell) sets the model's lambda policy per cell;
    those rows name it, and the mean row keeps ``row_base``'s lam. Under torchrun each rank counts
    its own whole batches of every cell (``distributed.shard``) and the counts are summed, so every
    rank returns exactly the rows of a single-process run; ``progress`` sees this rank's images.
    Under a per-input policy each row also carries ``lambda_columns`` of the lambdas it chose (the
    mean row: over every corrupted image); rows of one lambda for all have no such columns.
    ``adapt`` (``adapt.make_adaptation``) adapts the model to each cell's test batches, of
    ``adapt.batch_size`` images (replacing ``batch_size``), from the original model every cell; every
    row then carries ``adapt.columns()`` (the method, ``uses_test_batches``, the batch size, the images
    behind each decision, gradient steps). ``stream="mixed"`` (``STREAMS``) runs every cell's images as one
    stream in the order ``mixed_order(seed)`` and counts each cell's images from it; its rows say
    ``stream: mixed`` and share the stream's seconds in proportion to their images.
    """
    if adapt is not None:
        adapt.check(model)
        if runtime.precision == "bf16-checked":
            raise UsageError(
                "precision bf16-checked re-runs single images, which would change a test-time adaptation's "
                "batches; adapt in fp32 (or bf16)",
                parameter="precision",
            )
        if adapt.stateful and distributed.world_size() > 1:
            raise UsageError(
                f"adapt={adapt.name!r} carries state from batch to batch, so one process must see a cell's "
                "batches in order; run it without torchrun",
                parameter="adapt",
            )
        batch_size = adapt.batch_size
    adapted = adapt.columns() if adapt is not None else {}
    if check_stream(stream) == "mixed":
        if cell_policy is not None:
            raise UsageError(
                "a per-cell lambda (the oracle) needs the cells apart; use stream='cells'", parameter="stream"
            )
        if saved is not None:
            refuse_mixed_resume()
        rows, corrupted_lams = _mixed_rows(model, cells, source, runtime, row_base, batch_size, progress, adapt, seed)
        return _with_mean(rows, corrupted_lams, row_base, {**adapted, "stream": "mixed"})
    rows, corrupted_lams = [], []
    for cell in cells:
        kept = saved.get(cell) if saved is not None else None
        if kept is not None:
            row, lams = kept
        else:
            row, lams = _cell_row(model, cell, source, runtime, row_base, batch_size, progress, cell_policy, adapt)
            if saved is not None:
                saved.put_cell(cell, row, lams)
        rows.append(row)
        if lams is not None and cell.severity != 0:
            corrupted_lams.append(lams)
    return _with_mean(rows, corrupted_lams, row_base, adapted)


def _cell_row(
    model: Classifier,
    cell: Cell,
    source: CellImages,
    runtime: Runtime,
    row_base: dict[str, Any],
    batch_size: int,
    progress: Callable[[int], None] | None,
    cell_policy: Callable[[Cell], LambdaPolicy] | None,
    adapt: Adaptation | None,
) -> tuple[dict[str, Any], np.ndarray | None]:
    """One cell's row and (per-input policy) the lambda of each of its images (``evaluate_cells``)."""
    images, labels = source.load(cell)
    policy = cell_policy(cell) if cell_policy is not None else model.lam_policy
    adapting = adapt.cell(model) if adapt is not None else nullcontext(model)
    with model.using(policy), adapting as forward:
        base = {**row_base, "lam": lambda_label(model)} if cell_policy is not None else row_base
        try:
            counts, lams = _count_with_lambdas(model, images, labels, runtime, batch_size, progress, forward)
        except NonFiniteOutput as exc:
            raise NonFiniteOutput(f"{cell.corruption} severity {cell.severity}: {exc}") from None
    row = {
        **cell_row(base, cell.corruption, cell.severity, counts),
        **(lambda_columns(lams) if lams is not None else {}),
        **(adapt.columns() if adapt is not None else {}),
    }
    return row, lams


def _with_mean(
    rows: list[dict[str, Any]], corrupted_lams: list[np.ndarray], row_base: dict[str, Any], extra: dict[str, Any]
) -> list[dict[str, Any]]:
    """The cells' rows and their ``mean`` row (with ``extra``: the adaptation's columns, the stream)."""
    summary = mean_row(rows)
    if summary:
        summary["lam"] = row_base["lam"]
        if corrupted_lams:  # over every corrupted image, as the mean row's accuracy is
            summary.update(lambda_columns(np.concatenate(corrupted_lams)))
        summary.update(extra)
    return rows + ([summary] if summary else [])


def _mixed_rows(
    model: Classifier,
    cells: Sequence[Cell],
    source: CellImages,
    runtime: Runtime,
    row_base: dict[str, Any],
    batch_size: int,
    progress: Callable[[int], None] | None,
    adapt: Adaptation | None,
    seed: int,
) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
    """One row per cell, counted from one mixed stream of all cells' images (``evaluate_cells``)."""
    loaded = [source.load(cell) for cell in cells]
    sizes = [len(labels) for _, labels in loaded]
    order = mixed_order(sizes, seed)
    images = np.concatenate([np.asarray(images) for images, _ in loaded])[order]
    labels = np.concatenate([np.asarray(labels) for _, labels in loaded])[order]
    owner = np.repeat(np.arange(len(cells)), sizes)[order]
    adapting = adapt.cell(model) if adapt is not None else nullcontext(model)
    with adapting as forward:
        try:
            correct, lams, seconds = _correct_with_lambdas(
                model, images, labels, runtime, batch_size, progress, forward
            )
        except NonFiniteOutput as exc:
            raise NonFiniteOutput(f"mixed stream: {exc}") from None
    total = len(labels)
    rows, corrupted_lams = [], []
    for k, cell in enumerate(cells):
        mine = owner == k
        counts = Counts(int(mine.sum()), int(correct[mine].sum()), seconds * int(mine.sum()) / max(total, 1))
        cell_lams = lams[mine] if lams is not None else None
        rows.append(
            {
                **cell_row(row_base, cell.corruption, cell.severity, counts),
                **(lambda_columns(cell_lams) if cell_lams is not None else {}),
                **(adapt.columns() if adapt is not None else {}),
                "stream": "mixed",
            }
        )
        if cell_lams is not None and cell.severity != 0:
            corrupted_lams.append(cell_lams)
    return rows, corrupted_lams
