"""Test-time lambda: the sweep over lambdas (and the rules' calibration), rules beside oracles, hold-outs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from ..forecast import Progress
from ..report import Report, check_stem
from ..resume import interrupted_saying
from ..specs import DataSpec, ModelArg, ModelSpec, RunSpec
from ._session import Session, strings

if TYPE_CHECKING:
    import numpy as np

    from ..adapt import Adaptation, AdaptSpec
    from ..lam import Calibration
    from ..sweep.plan import SweepPlan
    from ..sweep.runs import SweptCells

Training = tuple["np.ndarray", "np.ndarray"]


def sweep_lambda(
    *,
    model: ModelSpec | ModelArg = "sdnet18",
    data: DataSpec = DataSpec(),
    run: RunSpec = RunSpec(),
    corruptions: str | Sequence[str] = ("gaussian_noise",),
    severities: str | int | Sequence[str | int] = ("all",),
    lams: str | Sequence[float] = "0.1:1.4:0.1",
    fit: bool = False,
    fit_corruptions: str | Sequence[str] | None = None,
    fit_n: int = 1000,
    calibration_out: Path | None = None,
    sweep_span: float = 0.2,
    adapt: AdaptSpec | str = "none",
    name: str | None = None,
    state_dir: Path | None = None,
    resume: bool = False,
    progress: Progress | None = None,
) -> Report:
    """Accuracy and the stem's mean reconstruction error for every test lambda on every cell.

    ``fit``: also calibrate the per-input rules of ``lam="recon"``/``"noise"`` on corrupted TRAINING images
    (never the test set), record which one ``lam="auto"`` runs (the higher mean accuracy on the calibration
    groups) and write the calibration beside the checkpoint (or ``calibration_out``).
    ``sweep_span``: the largest lambda gap across which the sweep infers a prediction instead of running it
    (``SweepPlan``; 0 runs every pair); the meta's ``sweep`` says how many pairs ran and the measured agreement.
    ``adapt`` (``none``, ``bn`` or ``bn-prior``, or an ``AdaptSpec`` with bn-prior's strength): the test-time
    adaptation every forward of the sweep and the
    calibration runs under (``sweep.runs.sweep_cells``), so ``lam="auto"`` is fitted for the regime it will run
    in; the calibration records it (and is written, by default, as ``<checkpoint stem>.lambda-<adapt>.json``,
    which ``eval`` with that ``adapt`` prefers); under ``bn`` every pair runs (``sweep_span`` is set aside).
    The report's extras are the accuracy-vs-lambda and best-lambda-vs-error plots. ``model``, ``data``,
    ``run``: as in ``evaluate_corruptions``. ``state_dir``: every finished test cell and calibration group is
    saved to ``<state_dir>/<name>.state.json``, so an interrupted run continues with ``resume`` (the file is
    removed once the run completes); ``name`` is the report's file stem (default ``sweep-lambda-<model>``).
    """
    from ..adapt import AdaptSpec, calibratable, make_adaptation
    from ..data.cells import expand_cells, parse_corruptions, parse_severities
    from ..lam import calibration_destination, lambda_grid, store_calibration
    from ..sweep import runs
    from ..sweep.plan import EVERY_PAIR, SweepPlan
    from ..sweep.report import save_sweep_plots

    _check_fit_n(fit_n)
    plan = SweepPlan(span=sweep_span)
    grid = lambda_grid(lams)
    names = parse_corruptions(strings(corruptions))
    severity_list = parse_severities(strings(severities))
    cells = expand_cells(names, severity_list)
    fit_names = parse_corruptions(strings(fit_corruptions)) if fit_corruptions else names
    adapt_spec = AdaptSpec.of(adapt)
    calibratable(adapt_spec.method)
    adaptation = make_adaptation(adapt_spec, run.batch_size if adapt_spec.method == "bn" else None, run.compile)
    if adaptation is not None and adaptation.columns()["uses_test_batches"]:
        plan = EVERY_PAIR  # a plan's subsets of a batch would change its statistics
    session = Session.open("sweep-lambda", model=ModelSpec.of(model), data=data, run=run, progress=progress)
    session.require_lambda()
    method = adapt_spec.method if adaptation is not None else None
    # found before the work, so a fit whose calibration would have nowhere to go is refused at once
    destination = calibration_destination(session.info, calibration_out, method) if fit else None
    stem = check_stem(name or f"sweep-lambda-{session.info.name}")
    config: dict[str, Any] = {"grid": grid, "plan": plan.describe(), "fit_n": fit_n if fit else None}
    config["adaptation"] = adaptation.describe() if adaptation is not None else None
    saved = runs.SweptCells.at(state_dir, stem, session.resume_config(**config), resume)
    train = _training_images(session) if fit else None
    source = session.cells(names)
    resumed = len(saved.parts) if saved is not None else 0  # test cells and calibration groups of an earlier sitting
    pending = sum(saved is None or not saved.has("test", cell) for cell in cells)
    advance = session.task(f"sweeping {session.info.name}", source, pending * len(grid))
    args = (session.classifier, cells, source, session.runtime)
    groups = len(runs.calibration_groups(fit_names, severity_list)) if fit else 0
    with interrupted_saying(saved, len(cells) + groups):
        sweeps = runs.sweep_cells(*args, grid, session.batch_size, advance, plan, session.seed, adaptation, saved)
        rows = runs.sweep_rows(sweeps, session.base())
        points = runs.cell_points(*args, rows, session.batch_size)
        calibration = (
            None
            if train is None
            else _calibrate(session, train, grid, fit_names, severity_list, fit_n, plan, adaptation, saved)
        )
    path = store_calibration(calibration, session.info, destination) if calibration is not None else None
    if saved is not None:
        saved.path.unlink(missing_ok=True)
    summary = runs.plan_summary(sweeps, plan)
    adapted = {"adaptation": config["adaptation"]} if adaptation is not None else {}
    meta = session.meta(
        source,
        grid=grid,
        sweep=summary,
        points=points,
        **adapted,
        **_calibration_meta(calibration, path),
        **({"resumed_cells": resumed} if resumed else {}),
    )

    def plots(out_dir: Path, stem: str) -> list[Path]:
        return save_sweep_plots(rows, points, out_dir, stem, session.info.name, calibration)

    return Report(rows, meta, name=stem, title=f"sdnet sweep-lambda: {session.info.name}", extras=[plots])


def compare_lambda_rules(
    *,
    model: ModelSpec | ModelArg = "sdnet18",
    data: DataSpec = DataSpec(),
    run: RunSpec = RunSpec(),
    corruptions: str | Sequence[str] = ("gaussian_noise",),
    severities: str | int | Sequence[str | int] = ("all",),
    rules: Sequence[float | str] = (0.1, "recon", "noise", "auto"),
    lams: str | Sequence[float] = "0.1:1.4:0.05",
    calibration: Path | None = None,
    sweep_span: float = 0.2,
    progress: Progress | None = None,
) -> Report:
    """Every lambda of ``rules`` (numbers, ``"recon"``, ``"noise"``, ``"auto"``) on the same cells, beside
    the per-cell and per-input oracles computed from one sweep of ``lams`` over the same images.

    The oracles use the test labels (rows say ``uses_labels``): they are the ceilings of one lambda per
    cell and of one grid lambda per input. Per-input rules' rows carry the chosen lambda's mean and
    10th/90th percentiles. The Markdown leads with each method's gain over the first of ``rules``.
    ``sweep_span``: as in ``sweep_lambda``. With the training lambda on the grid, the oracle rows also hold
    the two-guesses reference (top-2 accuracy at the training lambda).
    """
    from ..data.cells import expand_cells, parse_corruptions, parse_severities
    from ..lam import lambda_grid, resolve_policy
    from ..sweep.plan import SweepPlan
    from ..sweep.report import ORACLE_NOTE, render_rules
    from ..sweep.runs import compare_rules, plan_summary, rule_summary

    if not rules:
        raise UsageError("rules needs at least one lambda or rule name", parameter="rules")
    plan = SweepPlan(span=sweep_span)
    grid = lambda_grid(lams)
    names = parse_corruptions(strings(corruptions))
    cells = expand_cells(names, parse_severities(strings(severities)))
    session = Session.open("lambda-rules", model=ModelSpec.of(model), data=data, run=run, progress=progress)
    session.require_lambda()
    policies = [resolve_policy(rule, session.classifier, session.info, calibration) for rule in rules]
    source = session.cells(names)
    title = f"{len(rules)} rules and a {len(grid)}-lambda sweep on {session.info.name}"
    advance = session.task(title, source, len(cells) * (len(rules) + len(grid)))
    rows, sweeps = compare_rules(
        session.classifier, cells, source, session.runtime, policies, grid, session.base(), session.batch_size,
        advance, plan, session.seed,
    )  # fmt: skip
    summary = rule_summary(rows, rows[0]["lam"])
    described = {"rules": [str(rule) for rule in rules], "policies": [repr(p) for p in policies]}
    swept = plan_summary(sweeps, plan)
    meta = session.meta(source, grid=grid, **described, summary=summary, sweep=swept, oracle_note=ORACLE_NOTE)
    title = f"sdnet lambda rules: {session.info.name}"
    markdown = render_rules(title, rows, summary, meta)
    return Report(rows, meta, name=f"lambda-rules-{session.info.name}", title=title, markdown=markdown)


def lambda_hold_out(
    *,
    model: ModelSpec | ModelArg = "sdnet18",
    data: DataSpec = DataSpec(),
    run: RunSpec = RunSpec(),
    hold_out: str | Sequence[str] = ("all", "extra"),
    rule: str = "auto",
    reference_lam: float = 0.1,
    severities: str | int | Sequence[str | int] = ("all",),
    calibration: Path | None = None,
    fit_corruptions: str | Sequence[str] = ("all", "extra"),
    fit_n: int = 1000,
    fit_lams: str | Sequence[float] = "0.1,0.2,0.3,0.4,0.6,0.8,1.0,1.2,1.4",
    calibration_out: Path | None = None,
    sweep_span: float = 0.2,
    progress: Progress | None = None,
) -> Report:
    """Does the label-free rule work on corruptions it was not calibrated on? For each corruption of
    ``hold_out`` in turn, ``rule`` refitted without that corruption's training groups (clean and the other
    groups stay) is evaluated on its test cells, beside the same rule fitted with it and ``reference_lam``.

    The calibration sweep over the groups runs once (on ``fit_n`` corrupted TRAINING images per group of
    ``fit_corruptions``, at ``fit_lams``; written to ``calibration_out`` when given), or is read from
    ``calibration`` (a file whose groups include every held-out corruption); each held-out line is refitted
    from the stored group curves. ``sweep_span``: of the calibration sweep, as in ``sweep_lambda``. The Markdown leads with one row per held-out corruption.
    """
    from ..data.cells import parse_severities
    from ..schemas import check_lam
    from ..sweep import runs
    from ..sweep.plan import SweepPlan
    from ..sweep.report import render_hold_out

    check_lam(reference_lam, "reference_lam")
    _check_rule(rule)
    _check_fit_n(fit_n)
    plan = SweepPlan(span=sweep_span)
    held = _held_out(hold_out)
    severity_list = parse_severities(strings(severities))
    session = Session.open("lambda-hold-out", model=ModelSpec.of(model), data=data, run=run, progress=progress)
    session.require_lambda()
    source = session.cells(held, prepare=False)
    full = _hold_out_calibration(session, held, calibration, fit_corruptions, fit_n, fit_lams, calibration_out, plan)
    session.prepare_cells(source, held)
    advance = session.task(f"held-out evaluation on {session.info.name}", source, len(held) * len(severity_list) * 3)
    rows = runs.hold_out(
        session.classifier, full, held, source, session.runtime, severity_list, session.base(), rule, reference_lam,
        session.batch_size, advance,
    )  # fmt: skip
    summary = runs.hold_out_summary(rows)
    used = {"calibration": full.to_json(), "calibration_file": str(calibration or calibration_out or "")}
    meta = session.meta(source, rule=rule, reference_lam=reference_lam, **used, summary=summary)
    title = f"sdnet lambda hold-out: {session.info.name}, rule {rule}"
    markdown = render_hold_out(title, rows, summary, meta, severity_list)
    return Report(rows, meta, name=f"lambda-hold-out-{session.info.name}", title=title, markdown=markdown)


def _held_out(hold_out: str | Sequence[str]) -> list[str]:
    from ..data.cells import parse_corruptions
    from ..rows import CLEAN

    held = [c for c in parse_corruptions(strings(hold_out)) if c != CLEAN]
    if not held:
        raise UsageError("hold_out needs at least one corruption", parameter="hold_out")
    return held


def _check_fit_n(fit_n: int) -> None:
    from ..schemas import EXAMPLES_MAX, check_count

    check_count(fit_n, "fit_n", EXAMPLES_MAX, lower=2)


def _check_rule(rule: str) -> None:
    from ..lam import AUTO, RULES

    if rule != AUTO and rule not in RULES:
        raise UsageError(f"rule must be {AUTO!r} or one of {', '.join(RULES)}, got {rule!r}", parameter="rule")


def _check_groups(calibration: Calibration, held: Sequence[str]) -> None:
    missing = [c for c in held if c not in calibration.corruptions]
    if missing:
        raise UsageError(
            f"the calibration has no training groups of {', '.join(missing)} to hold out; include them "
            "in fit_corruptions",
            parameter="hold_out",
        )


def _training_images(session: Session) -> Training:
    from ..data.datasets import dataset_spec

    return dataset_spec(session.dataset).load(session.data.data_dir, "train")


def _calibrate(
    session: Session,
    train: Training,
    grid: Sequence[float],
    corruptions: Sequence[str],
    severities: Sequence[int],
    fit_n: int,
    plan: SweepPlan,
    adaptation: Adaptation | None = None,
    saved: SweptCells | None = None,
) -> Calibration:
    """The per-input rules fitted on ``fit_n`` corrupted training images per (corruption, severity) group,
    under ``adaptation`` (None: stored BatchNorm statistics); ``saved`` keeps the finished groups."""
    from ..data.datasets import dataset_spec
    from ..sweep.runs import calibrate, calibration_groups

    cells = calibration_groups(corruptions, severities)
    pending = sum(saved is None or not saved.has("train", cell) for cell in cells)
    total = min(fit_n, len(train[0])) * pending * len(grid)
    advance = session.progress.task("calibrating on training images", total)
    return calibrate(
        session.classifier, *train, session.runtime, grid, corruptions, severities, fit_n, session.seed, advance,
        session.batch_size, session.info.sha256 or "", dataset_spec(session.dataset).strength, plan, adaptation,
        saved,
    )  # fmt: skip


def _hold_out_calibration(
    session: Session,
    held: Sequence[str],
    calibration: Path | None,
    fit_corruptions: str | Sequence[str],
    fit_n: int,
    fit_lams: str | Sequence[float],
    calibration_out: Path | None,
    plan: SweepPlan,
) -> Calibration:
    """The calibration on every group: read from ``calibration``, else fitted (and written to ``calibration_out``);
    it must hold the training groups of every ``held`` corruption."""
    from ..data.cells import parse_corruptions
    from ..lam import lambda_grid, load_calibration
    from ..rows import CLEAN

    if calibration is not None:
        full = load_calibration(session.info, Path(calibration))
    else:
        names = [c for c in parse_corruptions(strings(fit_corruptions)) if c != CLEAN]
        full = _calibrate(
            session, _training_images(session), lambda_grid(fit_lams), names, [1, 2, 3, 4, 5], fit_n, plan
        )
        if calibration_out is not None:
            full.save(Path(calibration_out))
    _check_groups(full, held)
    return full


def _calibration_meta(calibration: Calibration | None, path: Path | None) -> dict[str, Any]:
    if calibration is None:
        keys = ("calibration", "calibration_rules", "calibration_formulas", "calibration_recommended")
        return dict.fromkeys(keys)
    return {
        "calibration": str(path) if path else None,
        "calibration_rules": calibration.to_json().get("rules"),
        "calibration_formulas": {name: rule.formula for name, rule in calibration.rules.items()},
        "calibration_recommended": calibration.recommended,
    }
