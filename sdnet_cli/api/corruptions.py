"""Accuracy under corruptions, and the seeded corruption benchmark itself."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from ..forecast import Progress, Silent
from ..report import Report, check_stem
from ..resume import interrupted_saying
from ..schemas import WORKERS_MAX
from ..specs import DataSpec, ModelArg, ModelSpec, RunSpec, count_or_none, unused
from ._session import Session, single_process, strings

if TYPE_CHECKING:
    from ..adapt import Adapt, AdaptSpec
    from ..evaluate import CellState


def evaluate_corruptions(
    *,
    model: ModelSpec | ModelArg = "sdnet18",
    data: DataSpec = DataSpec(),
    run: RunSpec = RunSpec(),
    corruptions: str | Sequence[str] = ("none",),
    severities: str | int | Sequence[str | int] = ("all",),
    lam: float | str | None = None,
    calibration: Path | None = None,
    sweep: Path | None = None,
    adapt: AdaptSpec | Adapt = "none",
    stream: str = "cells",
    name: str | None = None,
    state_dir: Path | None = None,
    resume: bool = False,
    progress: Progress | None = None,
) -> Report:
    """Accuracy on the clean test split and on every (corruption, severity) cell, plus their mean.

    ``model``: a name, ``load_model(...)``'s result, any ``torch.nn.Module`` mapping [0, 1] images to
    logits, or a ``ModelSpec`` saying more (checkpoint, n_steps, a module's normalisation...). ``data``: the
    images (dataset, folders, seed, n_examples); corrupted images come from ``data.cifar_c_dir`` (an official
    release) or are generated with ``data.seed`` and cached in ``data.cache_dir``. ``run``: device,
    precision, batch size, compile. ``lam``: the test-time lambda of every CSC layer (a number;
    ``"recon"``/``"noise"``, the per-input rules calibrated by ``sweep_lambda(fit=True)``, or ``"auto"``, the
    one the calibration recommends; ``"oracle"``, the best lambda of each cell from the sweep report
    ``sweep``, which uses labels). ImageNet also gets mCE. ``adapt``: ``bn`` or ``tent``, test-time
    adaptation to each cell's batches of ``run.batch_size`` (default 200) test images; ``bn-prior``, per
    image, BatchNorm statistics mixed from the stored ones and the image's; ``memo``, per image, one entropy
    step on augmented copies, then reset; an ``AdaptSpec`` sets a method's own settings (prior strength, MEMO's
    copies and learning rate; see ``sdnet_cli.adapt``); the rows say so. ``stream``: ``cells`` (each cell on its own) or ``mixed`` (all
    cells' images interleaved in one ``data.seed``-ed stream, one adaptation throughout; ``evaluate.STREAMS``).
    ``state_dir``: every finished cell is saved to ``<state_dir>/<name>.state.json``, so an interrupted run
    continues with ``resume``, skipping the cells it finished (the file is removed once the run completes;
    ``stream="cells"`` only); ``name`` is the report's file stem (default ``eval-<model>``).
    """
    from ..adapt import AdaptSpec, make_adaptation
    from ..data.cells import expand_cells, parse_corruptions, parse_severities
    from ..evaluate import check_stream, evaluate_cells
    from ..lam import ORACLE
    from ..metrics import corruption_errors

    names = parse_corruptions(strings(corruptions))
    cells = expand_cells(names, parse_severities(strings(severities)))
    if check_stream(stream) == "mixed" and lam == ORACLE:
        raise UsageError("lam='oracle' picks a lambda per cell, which a mixed stream does not have", parameter="lam")
    if lam == ORACLE and sweep is None:
        raise UsageError("lam='oracle' needs sweep, a sweep-lambda JSON report of this checkpoint", parameter="sweep")
    adapt_spec = AdaptSpec.of(adapt)
    adaptation = make_adaptation(adapt_spec, run.batch_size, run.compile, data.seed)
    if adaptation is not None:
        run = replace(run, batch_size=adaptation.batch_size)
    session = Session.open("eval", model=ModelSpec.of(model), data=data, run=run, progress=progress, distributed=True)
    if adaptation is not None:
        adaptation.check(session.classifier)
    policy, cell_policy, base = _lambda_policies(session, lam, calibration, sweep, cells, adapt_spec.method)
    mismatch = _calibration_mismatch(session, lam, calibration, adaptation)
    stem = check_stem(name or f"eval-{session.info.name}")
    with session.classifier.using(policy):
        saved = _saved_cells(session, state_dir, stem, resume, stream, base, policy, adaptation)
        if saved is not None:
            saved.keep_common(cells)
        source = session.cells(names)
        pending = sum(saved is None or cell not in saved for cell in cells)
        advance = session.task(f"evaluating {session.info.name}", source, pending)
        with interrupted_saying(saved, len(cells)):
            rows = evaluate_cells(
                session.classifier, cells, source, session.runtime, base, session.batch_size, advance, cell_policy,
                adaptation, stream, session.seed, saved,
            )  # fmt: skip
    if saved is not None:
        saved.path.unlink(missing_ok=True)
    meta = session.meta(
        source,
        lam_policy=f"best lambda per cell from {sweep}" if cell_policy else repr(policy or "training lambda"),
        oracle=cell_policy is not None,
        adaptation=adaptation.describe() if adaptation is not None else None,
        **({"stream": {"kind": stream, "seed": session.seed}} if stream == "mixed" else {}),
        **({"calibration_mismatch": mismatch} if mismatch else {}),
        **({"resumed_cells": len(cells) - pending} if pending < len(cells) else {}),  # rows of an earlier sitting
        corruption_errors=corruption_errors(rows, source.spec.ce_baseline, source.spec.ce_baseline_clean),
    )
    return Report(rows, meta, name=stem, title=f"sdnet eval: {session.info.name}")


def _saved_cells(
    session: Session,
    state_dir: Path | None,
    stem: str,
    resume: bool,
    stream: str,
    base: dict[str, Any],
    policy: Any,
    adaptation: Any,
) -> CellState | None:
    """The run's resume file (None without ``state_dir``, or for a mixed stream, which is one run over all
    cells). Its config is everything a cell's row depends on, so a file from other settings is refused."""
    from .. import distributed
    from ..evaluate import CellState, refuse_mixed_resume

    if stream != "cells":
        if resume:
            refuse_mixed_resume()
        return None
    config = session.resume_config(
        **base,
        lam_policy=repr(policy or "training lambda"),
        adaptation=adaptation.describe() if adaptation is not None else None,
    )
    return CellState.at(state_dir, f"{stem}{distributed.rank_suffix()}", config, resume)


def _lambda_policies(
    session: Session,
    lam: float | str | None,
    calibration: Path | None,
    sweep: Path | None,
    cells: Sequence[Any],
    adapt: str = "none",
) -> tuple[Any, Any, dict[str, Any]]:
    """(policy for every cell, per-cell oracle policy or None, the rows' base columns): ``lam='oracle'`` takes
    each cell's best lambda from the ``sweep`` report (labels used), any other ``lam`` one policy for all (a
    rule from the calibration fitted under ``adapt`` when the checkpoint has one)."""
    from ..lam import ORACLE, lambda_label, oracle_lambdas, resolve_policy

    classifier, info = session.classifier, session.info
    if lam == ORACLE:
        return None, oracle_lambdas(sweep, info, cells), session.base(lam=ORACLE)  # type: ignore[arg-type]
    policy = resolve_policy(lam, classifier, info, calibration, adapt)
    with classifier.using(policy):
        return policy, None, session.base(lam=lambda_label(classifier))


def _calibration_mismatch(
    session: Session, lam: float | str | None, calibration: Path | None, adaptation: Any
) -> str | None:
    """For a calibrated rule (``recon``/``noise``/``auto``), a note when it runs under another adaptation than
    it was fitted under (``lam.calibration_mismatch``); None otherwise."""
    from ..adapt import calibration_record
    from ..lam import AUTO, RULES, calibration_mismatch, load_calibration

    if lam != AUTO and lam not in RULES:
        return None
    method = adaptation.name if adaptation is not None else None
    fitted = load_calibration(session.info, calibration, method)
    return calibration_mismatch(fitted, calibration_record(adaptation))


def generate_corruptions(
    *,
    out_dir: Path,
    data: DataSpec = DataSpec(),
    corruptions: str | Sequence[str] = ("all", "extra"),
    workers: int | None = None,
    progress: Progress | None = None,
) -> Path:
    """Write a seeded corruption benchmark of the test split in the official release layout
    (CIFAR-10-C / CIFAR-100-C ``.npy`` files, ImageNet-C folders) to ``out_dir``: of ``data.dataset``
    (default cifar10) read from ``data.data_dir``, its first ``data.n_examples`` images, with ``data.seed``."""
    from ..data.cells import parse_corruptions
    from ..data.datasets import dataset_spec
    from ..forecast import Forecasting
    from ..rows import CLEAN

    progress = Silent() if progress is None else Forecasting(progress, "cpu", hint=data.n_examples is None)
    single_process("make-c")
    unused(data, ("cache_dir", "cifar_c_dir"), "make-c", "it writes a corrupted release from the clean test split")
    count_or_none(workers, "workers", WORKERS_MAX)
    seed = data.seed
    spec = dataset_spec(data.dataset or "cifar10")
    names = [c for c in parse_corruptions(strings(corruptions)) if c != CLEAN]
    if not names:
        raise UsageError("nothing to generate: give at least one corruption", parameter="corruptions")
    images, labels = spec.load(data.data_dir, "test")
    n = min(data.n_examples or len(images), len(images))
    advance = progress.task(f"generating {len(names)} corruptions (seed {seed})", len(names) * 5 * n)
    spec.corrupted.generate(Path(out_dir), names, images, labels, n, seed, workers or os.cpu_count() or 1, advance)
    return Path(out_dir)
