"""Commands for test-time lambda: the sweep (and calibration), robust accuracy per lambda, rules, hold-outs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import UsageError
from ._app import call, command, console, preflight, print_rows, stdout, write
from .options import (
    ATTACK_OPTIONS,
    ATTACK_SHARED,
    EVAL_OPTIONS,
    CalibrationOpt,
    CalibrationOutOpt,
    CorruptionOpt,
    EpsOpt,
    FitNOpt,
    SeverityOpt,
    SweepSpanOpt,
)


@command("sweep-lambda", (*EVAL_OPTIONS, "n_steps", "compile"))
def sweep_lambda_command(
    corruptions: Annotated[
        list[str],
        typer.Option(
            "--corruption", "-c", help="Corruption name, repeatable; 'all', 'extra', 'none'. Clean is always swept."
        ),
    ] = ["gaussian_noise"],
    severities: SeverityOpt = ["all"],
    lams: Annotated[
        str,
        typer.Option(
            "--lams",
            help="Test lambdas of the CSC layers (SDNet-18: the stem): START:STOP:STEP (stop included) or a "
            "comma list.",
        ),
    ] = "0.1:1.4:0.1",
    fit: Annotated[
        bool,
        typer.Option(
            "--fit",
            help="Also calibrate the per-input rules of --lam recon/noise/auto on corrupted TRAINING images (never the "
            "test set) and write <checkpoint stem>.lambda.json beside the checkpoint.",
        ),
    ] = False,
    fit_corruptions: Annotated[
        list[str] | None,
        typer.Option(
            "--fit-corruption", help="Corruptions of the calibration groups, repeatable (default: --corruption)."
        ),
    ] = None,
    fit_n: FitNOpt = 1000,
    calibration_out: CalibrationOutOpt = None,
    sweep_span: SweepSpanOpt = 0.2,
    adapt: Annotated[
        str,
        typer.Option(
            "--adapt",
            help="Test-time adaptation the sweep and the calibration run under: none; bn (statistics of batches "
            "of --batch-size, default 200, of one cell or group; every lambda runs on every image); bn-prior "
            "(per image, prior strength 16). A calibration fitted under bn or bn-prior records it and is written "
            "as <checkpoint stem>.lambda-<adapt>.json, which `sdnet eval --lam auto --adapt` with the same "
            "method uses.",
        ),
    ] = "none",
    attack: Annotated[
        str | None,
        typer.Option(
            "--attack",
            "-a",
            help="Former spelling of `sdnet attack-vs-lambda --attack` (its options are accepted here too); "
            "prints a notice and runs that command.",
        ),
    ] = None,
    eps: Annotated[list[str], typer.Option("--eps", hidden=True)] = ["1/255"],
    norm: Annotated[str, typer.Option("--norm", hidden=True)] = "Linf",
    steps: Annotated[int | None, typer.Option("--steps", hidden=True)] = None,
    restarts: Annotated[int | None, typer.Option("--restarts", hidden=True)] = None,
    version: Annotated[str, typer.Option("--version", hidden=True)] = "standard",
    baseline_model: Annotated[str | None, typer.Option("--baseline-model", hidden=True)] = None,
    pool_batches: Annotated[int | None, typer.Option("--pool-batches", hidden=True)] = None,
    resume: Annotated[bool, typer.Option("--resume", hidden=True)] = False,
    **common: Any,
) -> None:
    """Accuracy and stem reconstruction error for each test lambda on each cell; --fit calibrates --lam auto/noise."""
    from .. import api

    if attack is not None:
        console.print("[yellow]note:[/] `sdnet sweep-lambda --attack` is now `sdnet attack-vs-lambda`", highlight=False)
        if fit:
            raise UsageError("--fit calibrates on corruptions; it does not combine with --attack")
        return attack_vs_lambda_report(locals())
    preflight(common["out_dir"], common["name"])
    report = call(api.sweep_lambda, locals())
    best = [{**r, "mean_error": f"{r['mean_error']:.4g}"} for r in report.rows if r["oracle"]]
    columns = ["corruption", "severity", "lam", "n", "accuracy", "mean_error"]
    print_rows(f"{report.meta['model']['name']}: best lambda per cell", best, columns)
    for rule, formula in (report.meta["calibration_formulas"] or {}).items():
        stdout.print(f"{rule}: lambda = {formula}")
    if report.meta.get("calibration_recommended"):
        recommended = report.meta["calibration_recommended"]
        stdout.print(f"auto: {recommended} (the higher mean accuracy on the calibration groups)")
    if report.meta["calibration"]:
        stdout.print(f"wrote {report.meta['calibration']}")
    write(report, common["out_dir"], common["name"])


@command("attack-vs-lambda", ATTACK_OPTIONS, ATTACK_SHARED)
def attack_vs_lambda_command(
    attack: Annotated[
        str, typer.Option("--attack", "-a", help="Any attack of `sdnet attack` (pgd, apgd-ce, ..., autoattack).")
    ] = "pgd",
    lams: Annotated[
        str,
        typer.Option("--lams", help="Test lambdas of the CSC layers: START:STOP:STEP (stop included) or a comma list."),
    ] = "0.1:1.0:0.1",
    eps: EpsOpt = ["1/255"],
    baseline_model: Annotated[
        str | None,
        typer.Option(
            "--baseline-model",
            help="Also attack this model (e.g. resnet18) at its own lambda; its numbers are drawn as horizontal "
            "reference lines.",
        ),
    ] = None,
    **common: Any,
) -> None:
    """Clean and robust accuracy for each test lambda, the deployed model attacked at that lambda on the first
    --n-examples clean test images (the paper's robustness vs lambda claim)."""
    attack_vs_lambda_report(locals())


def attack_vs_lambda_report(options: dict[str, Any]) -> None:
    """Run ``api.attack_vs_lambda`` with a command's options, print its rows and write the report."""
    from .. import api

    out_dir, name = options["common"]["out_dir"], options["common"]["name"]
    preflight(out_dir, name)
    report = call(api.attack_vs_lambda, options, state_dir=out_dir)
    columns = ["model", "attack", "eps_text", "lam", "n", "clean_accuracy", "robust_accuracy", "masking_warnings"]
    print_rows(f"{report.meta['model']['name']}: accuracy vs lambda", report.rows, columns)
    write(report, out_dir, None)


@command("lambda-rules", EVAL_OPTIONS)
def lambda_rules_command(
    corruptions: CorruptionOpt = ["gaussian_noise"],
    severities: SeverityOpt = ["all"],
    rules: Annotated[
        list[str],
        typer.Option(
            "--rule",
            "-r",
            help="A --lam value to compare, repeatable: a number, recon, noise or auto (the first is the "
            "reference the gains are measured against).",
        ),
    ] = ["0.1", "recon", "noise", "auto"],
    lams: Annotated[
        str,
        typer.Option(
            "--lams",
            help="Grid of the per-cell and per-input oracles (they use labels): START:STOP:STEP or a comma list.",
        ),
    ] = "0.1:1.4:0.05",
    calibration: CalibrationOpt = None,
    sweep_span: SweepSpanOpt = 0.2,
    **common: Any,
) -> None:
    """Label-free lambda rules side by side with the per-cell and per-input oracles (which use labels),
    with the chosen lambdas' mean and 10th/90th percentiles per cell."""
    from .. import api

    preflight(common["out_dir"], common["name"])
    report = call(api.compare_lambda_rules, locals())
    columns = ["lam", "uses_labels", "corrupted_mean", "gain", "clean", "clean_change", "lam_mean"]
    print_rows(
        f"{report.meta['model']['name']}: lambda rules (oracle rows use labels)", report.meta["summary"], columns
    )
    write(report, common["out_dir"], common["name"])


@command("lambda-hold-out", EVAL_OPTIONS)
def lambda_hold_out_command(
    hold_out: Annotated[
        list[str],
        typer.Option(
            "--hold-out",
            help="Corruption to leave out of the calibration and evaluate, repeatable; 'all' and 'extra' "
            "(each in turn).",
        ),
    ] = ["all", "extra"],
    rule: Annotated[str, typer.Option("--rule", help="auto, recon or noise.")] = "auto",
    reference_lam: Annotated[
        float, typer.Option("--reference-lam", help="The fixed lambda gains are measured against.")
    ] = 0.1,
    severities: SeverityOpt = ["all"],
    calibration: Annotated[
        Path | None,
        typer.Option(
            "--calibration",
            help="A calibration JSON whose groups include every held-out corruption (skips the calibration sweep).",
        ),
    ] = None,
    fit_corruptions: Annotated[
        list[str], typer.Option("--fit-corruption", help="Corruptions of the calibration groups, repeatable.")
    ] = ["all", "extra"],
    fit_n: FitNOpt = 1000,
    fit_lams: Annotated[
        str, typer.Option("--fit-lams", help="Calibration grid.")
    ] = "0.1,0.2,0.3,0.4,0.6,0.8,1.0,1.2,1.4",
    calibration_out: Annotated[
        Path | None,
        typer.Option(
            "--calibration-out",
            help="Also write the calibration fitted on every group here (to reuse with --calibration).",
        ),
    ] = None,
    sweep_span: SweepSpanOpt = 0.2,
    **common: Any,
) -> None:
    """Generalisation of the lambda rule: each corruption left out of the calibration in turn, evaluated on its
    test cells beside the rule fitted with it and a fixed lambda."""
    from .. import api

    preflight(common["out_dir"], common["name"])
    report = call(api.lambda_hold_out, locals())
    columns = ["held_out", "reference_accuracy", "gain_in_calibration", "rule_held_out", "gain_held_out", "kept"]
    title = f"{report.meta['model']['name']}: gain over lambda {reference_lam:g}, corruption held out"
    print_rows(title, report.meta["summary"], columns)
    write(report, common["out_dir"], common["name"])
