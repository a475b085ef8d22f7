"""Which (lambda, image) pairs of a lambda sweep run the network, and the loop that runs them.

A sweep's prediction for one image rarely changes between neighbouring grid lambdas, so the
default plan runs grid lambdas at most ``span`` apart (and the last, and the training lambda) on every
image, then halves each interval between two run lambdas, per image, until its two ends predict the same
class with a softmax margin (top-1 minus top-2 probability) of at least ``margin`` at both; the
lambdas inside such an interval take that class without a forward of their own. ``span=0`` runs
every pair. Measured on the shipped sdnet18 (1,000 images each of clean and five corrupted cells,
all 27 lambdas of 0.1:1.4:0.05, every pair run as the reference), span 0.2 (every fourth lambda) with
margin 0.2 ran 45% of the pairs and gave the same per-pair correctness on 99.996% of them (99.989% in the worst cell),
with no change to either oracle; margin 0 (agreement of the ends alone) gave 99.90-99.97%.

Every sweep also measures its own agreement: a seeded random ``audit`` share of the pairs that were
not run is run anyway, and the result records how many of those kept the inferred correctness (the
run result replaces the inferred one). The stem's reconstruction error is computed for every pair
(for a pair that was not run, by the stem alone on the stem's recorded input), so ``mean_error`` is
exact whatever the plan.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..lam import FixedLambda
from ..models.classifier import Classifier
from ..models.csc import CSCLayer, ErrorRecord
from ..runtime import Runtime, iter_batches, predict_logits
from ..schemas import check, fraction_rule, lam_rule

PART_BATCHES, PART_VALUES = 16, 2**25
"""Images converted to model input at once (the refinement gathers its sub-batches from them): this many
batches, but no more than this many input values (128 MB in float32; about 220 ImageNet images), and at least
one batch."""


@dataclass(frozen=True)
class SweepPlan:
    """How a sweep visits its grid (see the module docstring). ``span``: the largest lambda gap the sweep
    infers across (0: every (lambda, image) pair runs); ``margin``: the softmax margin both ends of an
    interval need; ``audit``: the share of inferred pairs run anyway to measure the agreement."""

    span: float = 0.2
    margin: float = 0.2
    audit: float = 0.02

    def __post_init__(self) -> None:
        object.__setattr__(self, "span", check(lam_rule, self.span, "sweep_span"))
        object.__setattr__(self, "margin", check(fraction_rule, self.margin, "sweep_margin"))
        object.__setattr__(self, "audit", check(fraction_rule, self.audit, "sweep_audit"))

    def coarse(self, grid: Sequence[float], always: int | None) -> list[int]:
        """Grid indices run on every image: from the first, each next one the farthest within ``span``
        (or the neighbour, when it is farther), the last, and ``always`` (the training lambda)."""
        found, j = {0, len(grid) - 1}, 0
        while j < len(grid) - 1:
            reach = [k for k in range(j + 1, len(grid)) if grid[k] - grid[j] <= self.span + 1e-9]
            j = reach[-1] if reach else j + 1
            found.add(j)
        return sorted(found | ({always} if always is not None else set()))

    def describe(self) -> dict[str, float]:
        return {"span": self.span, "margin": self.margin, "audit": self.audit}


EVERY_PAIR = SweepPlan(span=0.0, margin=0.0, audit=0.0)


@dataclass
class PairResults:
    """One cell's sweep, per grid lambda j and image i: predicted class ``pred[j, i]``, its softmax margin,
    the stem's reconstruction error, whether the network ran on the pair (``ran``), the seconds the
    forwards at each lambda took, and top-2 correctness at the training lambda (when it is on the grid).
    ``in_eval_batches``: the grid lambdas at which every image ran in the batches an evaluation of the
    cell at ``batch_size`` runs (the same forwards, so ``lambda-rules`` reads a fixed rule's counts there)."""

    pred: np.ndarray
    margin: np.ndarray
    errors: np.ndarray
    ran: np.ndarray
    seconds: np.ndarray
    top2: np.ndarray | None
    audited: int = 0
    audit_same: int = 0
    in_eval_batches: tuple[int, ...] = ()

    @classmethod
    def empty(cls, n_lams: int, n: int, with_top2: bool) -> PairResults:
        pairs = (n_lams, n)
        return cls(
            np.zeros(pairs, dtype=np.int64), np.zeros(pairs, dtype=np.float32), np.zeros(pairs),
            np.zeros(pairs, dtype=bool), np.zeros(n_lams), np.zeros(n, dtype=bool) if with_top2 else None,
        )  # fmt: skip


def sweep_images(
    model: Classifier,
    stem: CSCLayer,
    grid: Sequence[float],
    images: np.ndarray,
    labels: np.ndarray,
    runtime: Runtime,
    batch_size: int,
    plan: SweepPlan,
    audit_rng: np.random.Generator,
    progress: Callable[[int], None] | None = None,
) -> PairResults:
    """Every (lambda, image) pair of one cell by ``plan``; ``progress`` advances by every pair of each part,
    a share after each coarse lambda's forwards (so a sweep's first forecast comes within its first part)."""
    n_lams, n = len(grid), len(images)
    audit_mask = audit_rng.random((n_lams, n)) < plan.audit  # drawn per cell: the same whatever the batch size
    training = next((j for j, lam in enumerate(grid) if lam == stem.lam), None)
    found = PairResults.empty(n_lams, n, with_top2=training is not None)
    coarse = plan.coarse(grid, training)
    policies = [FixedLambda(lam) for lam in grid]
    y_all = np.asarray(labels)
    values = int(np.prod(images.shape[1:]))
    part_size = max(batch_size, min(batch_size * PART_BATCHES, PART_VALUES // values))
    if part_size % batch_size == 0 or part_size >= n:  # each part's batches start where an evaluation's do
        found.in_eval_batches = tuple(coarse)
    with stem.recording_error() as record:
        for part in iter_batches(images, labels, runtime, part_size):
            runner = _PartRunner(model, stem, record, runtime, policies, part.x, part.y, part.rows.start, batch_size)
            everyone = np.arange(len(part.x))
            share = _Shares(progress, n_lams * len(everyone), len(coarse) + 1)  # each coarse lambda, then the rest
            for j in coarse:
                runner.run(found, j, everyone, top2=j == training, share=share)
                share.next()
            _refine(runner, found, coarse, everyone, plan.margin)
            y = y_all[part.rows]
            for j in range(n_lams):
                rest = everyone[~found.ran[j, part.rows]]
                checked = rest[audit_mask[j, part.rows][rest]]
                inferred = found.pred[j, part.rows][checked] == y[checked]
                runner.run(found, j, checked)
                found.audited += len(checked)
                found.audit_same += int((inferred == (found.pred[j, part.rows][checked] == y[checked])).sum())
                runner.stem_only(found, j, np.setdiff1d(rest, checked))
            share.next()
    return found


class _Shares:
    """``total`` progress units handed out in ``parts`` nearly equal whole shares, one per ``next()``."""

    def __init__(self, progress: Callable[[int], None] | None, total: int, parts: int) -> None:
        self.progress, self.total, self.parts, self.given, self.done = progress, total, parts, 0, 0

    def next(self) -> None:
        self.done += 1
        self.within(0.0)

    def within(self, fraction: float) -> None:
        """Credit ``fraction`` (0..1) of the share after those ``next()`` closed."""
        target = int(self.total * (self.done + fraction) // self.parts)
        if self.progress is not None and target > self.given:
            self.progress(target - self.given)
            self.given = target


class _PartRunner:
    """Forwards of one converted part of a cell (``x``, rows from ``offset``) at one grid lambda, in
    sub-batches, written into a ``PairResults``; keeps the stem's input from the first full forward,
    which does not depend on lambda, for ``stem_only``."""

    def __init__(
        self,
        model: Classifier,
        stem: CSCLayer,
        record: ErrorRecord,
        runtime: Runtime,
        policies: Sequence[FixedLambda],
        x: torch.Tensor,
        y: torch.Tensor,
        offset: int,
        batch_size: int,
    ) -> None:
        self.model, self.stem, self.record, self.runtime = model, stem, record, runtime
        self.policies = policies
        self.x, self.y, self.offset, self.batch_size = x, y, offset, batch_size
        self.stem_input: torch.Tensor | None = None

    def _batches(self, local: np.ndarray) -> Iterator[np.ndarray]:
        for start in range(0, len(local), self.batch_size):
            yield local[start : start + self.batch_size]

    def _rows(self, source: torch.Tensor, sel: np.ndarray) -> torch.Tensor:
        """Rows ``sel`` of ``source``: a view when they are contiguous (every pair of a full batch)."""
        if sel[-1] - sel[0] == len(sel) - 1:
            return source[int(sel[0]) : int(sel[-1]) + 1]
        return source[torch.from_numpy(sel).to(source.device)]

    def run(
        self, found: PairResults, j: int, local: np.ndarray, top2: bool = False, share: _Shares | None = None
    ) -> None:
        """The network at grid lambda j on the pairs ``local``; ``share`` is told the fraction done per batch."""
        if not len(local):
            return
        inputs: list[torch.Tensor] = []
        errors: list[torch.Tensor] = []
        made, keep = 0, self.stem_input is None
        # the stem's input and error of each batch's first forward: a bf16-checked forward re-runs some rows
        hooks = [self.stem.register_forward_hook(lambda _m, _a, _o: errors.append(self.record.error))]  # type: ignore[arg-type]
        if keep:
            hooks.append(self.stem.register_forward_pre_hook(lambda _m, args: inputs.append(args[0])))
        try:
            for sel in self._batches(local):
                start = time.perf_counter()
                calls = len(errors)
                with self.model.using(self.policies[j]):
                    logits = predict_logits(self.model, self._rows(self.x, sel), self.runtime)
                del inputs[calls + 1 :], errors[calls + 1 :]
                top = logits.float().softmax(dim=1).topk(2, dim=1)
                cols = sel + self.offset
                found.pred[j, cols] = top.indices[:, 0].cpu().numpy()
                found.margin[j, cols] = (top.values[:, 0] - top.values[:, 1]).cpu().numpy()
                found.errors[j, cols] = errors[calls].cpu().numpy()
                if top2 and found.top2 is not None:
                    hit = top.indices == self._rows(self.y, sel)[:, None]
                    found.top2[cols] = hit.any(dim=1).cpu().numpy()
                found.ran[j, cols] = True
                found.seconds[j] += time.perf_counter() - start
                made += len(sel)
                if share is not None:
                    share.within(made / len(local))
        finally:
            for hook in hooks:
                hook.remove()
        if keep:
            self.stem_input = torch.cat(inputs)

    def stem_only(self, found: PairResults, j: int, local: np.ndarray) -> None:
        """The reconstruction error at grid lambda j of pairs the network did not run on."""
        assert self.stem_input is not None, "run every image once before stem_only"
        for sel in self._batches(local):
            with torch.no_grad():
                _, error = self.stem.solve(self._rows(self.stem_input, sel), self.policies[j].value)
            found.errors[j, sel + self.offset] = error.cpu().numpy()  # type: ignore[union-attr]


def _refine(runner: _PartRunner, found: PairResults, coarse: list[int], everyone: np.ndarray, margin: float) -> None:
    """Halve each interval between run lambdas, per image, until its ends agree (class, and margin at both),
    then give the lambdas inside that class."""
    pending = [(a, b, everyone) for a, b in zip(coarse[:-1], coarse[1:]) if b - a > 1]
    while pending:
        a, b, local = pending.pop()
        cols = local + runner.offset
        settled = (
            (found.pred[a, cols] == found.pred[b, cols])
            & (found.margin[a, cols] >= margin)
            & (found.margin[b, cols] >= margin)
        )
        filled = cols[settled]
        found.pred[a + 1 : b, filled] = found.pred[a, filled]
        rest = local[~settled]
        if len(rest):
            middle = (a + b) // 2
            runner.run(found, middle, rest)
            pending += [(lo, hi, rest) for lo, hi in ((a, middle), (middle, b)) if hi - lo > 1]
