"""Accuracy under corruptions, and the seeded corruption benchmark itself."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..report import Report
from ._session import ModelArg, Progress, Session, Silent, at_least_one, check_seed, shared, single_process, strings


def evaluate_corruptions(
    *,
    model: ModelArg = "sdnet18",
    checkpoint: Path | None = None,
    dataset: str | None = None,
    normalize: tuple[Sequence[float], Sequence[float]] | None = None,
    corruptions: str | Sequence[str] = ("none",),
    severities: str | int | Sequence[str | int] = ("all",),
    lam: float | str | None = None,
    calibration: Path | None = None,
    sweep: Path | None = None,
    cifar_c_dir: Path | None = None,
    n_examples: int | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    precision: str = "fp32",
    seed: int = 0,
    data_dir: Path | None = None,
    cache_dir: Path | None = None,
    weights_dir: Path | None = None,
    n_steps: int | None = None,
    compile: bool = False,
    adapt: str = "none",
    threat: str = "corruptions",
    model_dir: Path | None = None,
    progress: Progress | None = None,
) -> Report:
    """Accuracy on the clean test split and on every (corruption, severity) cell, plus their mean.

    ``model``: a name, ``load_model(...)``'s result, or any ``torch.nn.Module`` mapping [0, 1] images to
    logits (``normalize=(mean, std)`` normalises its input first). ``lam``: the test-time lambda of every
    CSC layer (a number; ``"recon"``/``"noise"``, the per-input rules calibrated by ``sweep_lambda(fit=True)``,
    or ``"auto"``, the one the calibration recommends; ``"oracle"``, the best lambda of each cell from the
    sweep report ``sweep``, which uses labels). Corrupted images come from ``cifar_c_dir`` (an official
    release) or are generated with ``seed`` and cached in ``cache_dir``. ImageNet also gets mCE.
    ``n_steps``: FISTA steps of the CSC layers, overriding the checkpoint's. ``compile``: run inference
    through ``torch.compile`` (a one-off compile, then faster forwards; see ``Runtime``). ``adapt``: ``bn``
    or ``tent``, test-time adaptation to each cell's batches of ``batch_size`` (default 200) test images
    (see ``sdnet_cli.adapt``); the rows say so. ``threat``/``model_dir``: for ``model="robustbench:<name>"``.
    """
    from ..adapt import make_adaptation
    from ..data.cells import expand_cells, parse_corruptions, parse_severities
    from ..evaluate import evaluate_cells
    from ..lam import ORACLE
    from ..metrics import corruption_errors

    names = parse_corruptions(strings(corruptions))
    cells = expand_cells(names, parse_severities(strings(severities)))
    if lam == ORACLE and sweep is None:
        raise UsageError("lam='oracle' needs sweep, a sweep-lambda JSON report of this checkpoint", parameter="sweep")
    adaptation = make_adaptation(adapt, batch_size, compile)
    batch_size = adaptation.batch_size if adaptation is not None else batch_size
    session = Session.open("eval", distributed=True, **shared(locals()))
    if adaptation is not None:
        adaptation.check(session.classifier)
    policy, cell_policy, base = _lambda_policies(session, lam, calibration, sweep, cells)
    source = session.cells(names)
    advance = session.task(f"evaluating {session.info.name}", source, len(cells))
    with session.classifier.using(policy):
        rows = evaluate_cells(
            session.classifier, cells, source, session.runtime, base, session.batch_size, advance, cell_policy,
            adaptation,
        )  # fmt: skip
    meta = session.meta(
        source,
        lam_policy=f"best lambda per cell from {sweep}" if cell_policy else repr(policy or "training lambda"),
        oracle=cell_policy is not None,
        adaptation=adaptation.describe() if adaptation is not None else None,
        corruption_errors=corruption_errors(rows, source.spec.ce_baseline, source.spec.ce_baseline_clean),
    )
    return Report(rows, meta, name=f"eval-{session.info.name}", title=f"sdnet eval: {session.info.name}")


def _lambda_policies(
    session: Session, lam: float | str | None, calibration: Path | None, sweep: Path | None, cells: Sequence[Any]
) -> tuple[Any, Any, dict[str, Any]]:
    """(policy for every cell, per-cell oracle policy or None, the rows' base columns): ``lam='oracle'`` takes
    each cell's best lambda from the ``sweep`` report (labels used), any other ``lam`` one policy for all."""
    from ..lam import ORACLE, lambda_label, oracle_lambdas, resolve_policy

    classifier, info = session.classifier, session.info
    if lam == ORACLE:
        return None, oracle_lambdas(sweep, info, cells), session.base(lam=ORACLE)  # type: ignore[arg-type]
    policy = resolve_policy(lam, classifier, info, calibration)
    with classifier.using(policy):
        return policy, None, session.base(lam=lambda_label(classifier))


def generate_corruptions(
    *,
    out_dir: Path,
    dataset: str = "cifar10",
    corruptions: str | Sequence[str] = ("all", "extra"),
    n_examples: int | None = None,
    seed: int = 0,
    workers: int | None = None,
    data_dir: Path | None = None,
    progress: Progress | None = None,
) -> Path:
    """Write a seeded corruption benchmark of the test split in the official release layout
    (CIFAR-10-C / CIFAR-100-C ``.npy`` files, ImageNet-C folders) to ``out_dir``."""
    from ..data.cells import parse_corruptions
    from ..data.datasets import dataset_spec
    from ..rows import CLEAN

    progress = progress or Silent()
    single_process("make-c")
    at_least_one(n_examples, "n_examples")
    at_least_one(workers, "workers")
    check_seed(seed)
    spec = dataset_spec(dataset)
    names = [c for c in parse_corruptions(strings(corruptions)) if c != CLEAN]
    if not names:
        raise UsageError("nothing to generate: give at least one corruption", parameter="corruptions")
    images, labels = spec.load(data_dir, "test")
    n = min(n_examples or len(images), len(images))
    advance = progress.task(f"generating {len(names)} corruptions (seed {seed})", len(names) * 5 * n)
    spec.corrupted.generate(Path(out_dir), names, images, labels, n, seed, workers or os.cpu_count() or 1, advance)
    return Path(out_dir)
