"""Commands for test-time lambda: the sweep (and calibration), robust accuracy per lambda, rules, hold-outs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ._app import RichProgress, command, console, labelled, preflight, print_rows, refuse_given, stdout, write
from .options import (
    AttackBatchOpt,
    AttackNExamplesOpt,
    AttackPrecisionOpt,
    AttackSeedOpt,
    CacheDirOpt,
    CalibrationOpt,
    CalibrationOutOpt,
    CDirOpt,
    CheckpointOpt,
    CompileOpt,
    CorruptionOpt,
    DataDirOpt,
    DatasetOpt,
    DeviceOpt,
    EpsOpt,
    EvalBatchOpt,
    FitNOpt,
    ModelDirOpt,
    ModelOpt,
    NameOpt,
    NExamplesOpt,
    NormOpt,
    NStepsOpt,
    OutOpt,
    PoolOpt,
    PrecisionOpt,
    PriorStrengthOpt,
    RestartsOpt,
    ResumeOpt,
    SeedOpt,
    SeverityOpt,
    StepsOpt,
    SweepSpanOpt,
    ThreatOpt,
    VersionOpt,
    WeightsDirOpt,
)

if TYPE_CHECKING:
    from ..specs import DataSpec, ModelSpec, RunSpec

SWEEP_ONLY = (
    "corruptions", "severities", "fit", "fit_corruptions", "fit_n", "calibration_out", "sweep_span", "cifar_c_dir",
    "cache_dir", "compile", "adapt", "prior_strength",
)  # fmt: skip
"""sweep-lambda's options that the corruption sweep uses and ``--attack`` (clean images, attacked) cannot."""
ATTACK_ONLY = ("eps", "norm", "steps", "restarts", "version", "baseline_model", "pool_batches")
"""sweep-lambda's hidden options, kept for its former ``--attack`` spelling: the corruption sweep cannot use them."""


@command("sweep-lambda")
def sweep_lambda_command(
    ctx: typer.Context,
    model: ModelOpt = "sdnet18",
    checkpoint: CheckpointOpt = None,
    dataset: DatasetOpt = "cifar10",
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
            "test set) and write <checkpoint stem>.lambda.json beside the checkpoint (for a shipped checkpoint: "
            "to --calibration-out).",
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
            "(per image, prior strength --prior-strength). A calibration fitted under bn or bn-prior records it and "
            "is written "
            "as <checkpoint stem>.lambda-<adapt>.json, which `sdnet eval --lam auto --adapt` with the same "
            "method uses.",
        ),
    ] = "none",
    prior_strength: PriorStrengthOpt = None,
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
    resume: ResumeOpt = False,
    threat: ThreatOpt = "corruptions",
    model_dir: ModelDirOpt = None,
    cifar_c_dir: CDirOpt = None,
    n_examples: NExamplesOpt = None,
    batch_size: EvalBatchOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    seed: SeedOpt = 0,
    data_dir: DataDirOpt = None,
    cache_dir: CacheDirOpt = None,
    weights_dir: WeightsDirOpt = None,
    out_dir: OutOpt = Path("runs"),
    name: NameOpt = None,
    n_steps: NStepsOpt = None,
    compile: CompileOpt = False,
) -> None:
    """Accuracy and stem reconstruction error for each test lambda on each cell; --fit calibrates --lam auto/noise."""
    from .. import api
    from ..adapt import AdaptSpec, check_adapt
    from ..specs import DataSpec, ModelSpec, RunSpec, check_precision

    if attack is not None:
        console.print(labelled("note:", "yellow", "`sdnet sweep-lambda --attack` is now `sdnet attack-vs-lambda`"))
        refuse_given(ctx, SWEEP_ONLY, "belongs to the corruption sweep; it does not combine with --attack")
    else:
        refuse_given(ctx, ATTACK_ONLY, "applies with --attack only (now `sdnet attack-vs-lambda`)")
    preflight(out_dir, name)
    spec = ModelSpec(
        model, checkpoint=checkpoint, weights_dir=weights_dir, n_steps=n_steps, threat=threat, model_dir=model_dir
    )
    data = DataSpec(
        dataset=dataset, data_dir=data_dir, cache_dir=cache_dir, cifar_c_dir=cifar_c_dir, seed=seed,
        n_examples=n_examples,
    )  # fmt: skip
    run = RunSpec(device=device, precision=check_precision(precision), batch_size=batch_size, compile=compile)
    if attack is not None:
        return attack_vs_lambda_report(
            spec, data, run, lams=lams, attack=attack, eps=eps, norm=norm, steps=steps, restarts=restarts,
            version=version, baseline_model=baseline_model, pool_batches=pool_batches, resume=resume, out_dir=out_dir,
            name=name,
        )  # fmt: skip
    adaptation = AdaptSpec(check_adapt(adapt), prior_strength=prior_strength)
    with RichProgress() as progress:
        report = api.sweep_lambda(
            model=spec, data=data, run=run, corruptions=corruptions, severities=severities, lams=lams, fit=fit,
            fit_corruptions=fit_corruptions, fit_n=fit_n, calibration_out=calibration_out, sweep_span=sweep_span,
            adapt=adaptation, name=name, state_dir=out_dir, resume=resume, progress=progress,
        )  # fmt: skip
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
    write(report, out_dir, name)


@command("attack-vs-lambda")
def attack_vs_lambda_command(
    model: ModelOpt = "sdnet18",
    checkpoint: CheckpointOpt = None,
    dataset: DatasetOpt = "cifar10",
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
    threat: ThreatOpt = "corruptions",
    model_dir: ModelDirOpt = None,
    norm: NormOpt = "Linf",
    steps: StepsOpt = None,
    restarts: RestartsOpt = None,
    version: VersionOpt = "standard",
    n_examples: AttackNExamplesOpt = None,
    batch_size: AttackBatchOpt = None,
    pool_batches: PoolOpt = None,
    device: DeviceOpt = "auto",
    precision: AttackPrecisionOpt = "fp32",
    seed: AttackSeedOpt = 0,
    data_dir: DataDirOpt = None,
    weights_dir: WeightsDirOpt = None,
    n_steps: NStepsOpt = None,
    resume: ResumeOpt = False,
    out_dir: OutOpt = Path("runs"),
    name: NameOpt = None,
) -> None:
    """Clean and robust accuracy for each test lambda, the deployed model attacked at that lambda on the first
    --n-examples clean test images (the paper's robustness vs lambda claim)."""
    from ..specs import DataSpec, ModelSpec, RunSpec, check_precision

    preflight(out_dir, name)
    spec = ModelSpec(
        model, checkpoint=checkpoint, weights_dir=weights_dir, n_steps=n_steps, threat=threat, model_dir=model_dir
    )
    data = DataSpec(dataset=dataset, data_dir=data_dir, seed=seed, n_examples=n_examples)
    run = RunSpec(device=device, precision=check_precision(precision), batch_size=batch_size)
    attack_vs_lambda_report(
        spec, data, run, lams=lams, attack=attack, eps=eps, norm=norm, steps=steps, restarts=restarts,
        version=version, baseline_model=baseline_model, pool_batches=pool_batches, resume=resume, out_dir=out_dir,
        name=name,
    )  # fmt: skip


def attack_vs_lambda_report(
    spec: ModelSpec,
    data: DataSpec,
    run: RunSpec,
    *,
    lams: str,
    attack: str,
    eps: Sequence[str],
    norm: str,
    steps: int | None,
    restarts: int | None,
    version: str,
    baseline_model: str | None,
    pool_batches: int | None,
    resume: bool,
    out_dir: Path,
    name: str | None,
) -> None:
    """Run ``api.attack_vs_lambda`` (its state saved in ``out_dir``), print its rows and write the report."""
    from .. import api
    from ..attacks import check_norm

    with RichProgress() as progress:
        report = api.attack_vs_lambda(
            model=spec, data=data, run=run, lams=lams, attack=attack, norm=check_norm(norm), eps=eps, steps=steps,
            restarts=restarts, version=version, baseline_model=baseline_model, pool_batches=pool_batches, name=name,
            state_dir=out_dir, resume=resume, progress=progress,
        )  # fmt: skip
    columns = ["model", "attack", "eps_text", "lam", "n", "clean_accuracy", "robust_accuracy", "masking_warnings"]
    print_rows(f"{report.meta['model']['name']}: accuracy vs lambda", report.rows, columns)
    write(report, out_dir, None)


@command("lambda-rules")
def lambda_rules_command(
    model: ModelOpt = "sdnet18",
    checkpoint: CheckpointOpt = None,
    dataset: DatasetOpt = "cifar10",
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
    threat: ThreatOpt = "corruptions",
    model_dir: ModelDirOpt = None,
    cifar_c_dir: CDirOpt = None,
    n_examples: NExamplesOpt = None,
    batch_size: EvalBatchOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    seed: SeedOpt = 0,
    data_dir: DataDirOpt = None,
    cache_dir: CacheDirOpt = None,
    weights_dir: WeightsDirOpt = None,
    out_dir: OutOpt = Path("runs"),
    name: NameOpt = None,
) -> None:
    """Label-free lambda rules side by side with the per-cell and per-input oracles (which use labels),
    with the chosen lambdas' mean and 10th/90th percentiles per cell."""
    from .. import api
    from ..specs import DataSpec, ModelSpec, RunSpec, check_precision

    preflight(out_dir, name)
    spec = ModelSpec(model, checkpoint=checkpoint, weights_dir=weights_dir, threat=threat, model_dir=model_dir)
    data = DataSpec(
        dataset=dataset, data_dir=data_dir, cache_dir=cache_dir, cifar_c_dir=cifar_c_dir, seed=seed,
        n_examples=n_examples,
    )  # fmt: skip
    run = RunSpec(device=device, precision=check_precision(precision), batch_size=batch_size)
    with RichProgress() as progress:
        report = api.compare_lambda_rules(
            model=spec, data=data, run=run, corruptions=corruptions, severities=severities, rules=rules, lams=lams,
            calibration=calibration, sweep_span=sweep_span, progress=progress,
        )  # fmt: skip
    columns = ["lam", "uses_labels", "corrupted_mean", "gain", "clean", "clean_change", "lam_mean"]
    print_rows(
        f"{report.meta['model']['name']}: lambda rules (oracle rows use labels)", report.meta["summary"], columns
    )
    write(report, out_dir, name)


@command("lambda-hold-out")
def lambda_hold_out_command(
    model: ModelOpt = "sdnet18",
    checkpoint: CheckpointOpt = None,
    dataset: DatasetOpt = "cifar10",
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
    threat: ThreatOpt = "corruptions",
    model_dir: ModelDirOpt = None,
    cifar_c_dir: CDirOpt = None,
    n_examples: NExamplesOpt = None,
    batch_size: EvalBatchOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    seed: SeedOpt = 0,
    data_dir: DataDirOpt = None,
    cache_dir: CacheDirOpt = None,
    weights_dir: WeightsDirOpt = None,
    out_dir: OutOpt = Path("runs"),
    name: NameOpt = None,
) -> None:
    """Generalisation of the lambda rule: each corruption left out of the calibration in turn, evaluated on its
    test cells beside the rule fitted with it and a fixed lambda."""
    from .. import api
    from ..specs import DataSpec, ModelSpec, RunSpec, check_precision

    preflight(out_dir, name)
    spec = ModelSpec(model, checkpoint=checkpoint, weights_dir=weights_dir, threat=threat, model_dir=model_dir)
    data = DataSpec(
        dataset=dataset, data_dir=data_dir, cache_dir=cache_dir, cifar_c_dir=cifar_c_dir, seed=seed,
        n_examples=n_examples,
    )  # fmt: skip
    run = RunSpec(device=device, precision=check_precision(precision), batch_size=batch_size)
    with RichProgress() as progress:
        report = api.lambda_hold_out(
            model=spec, data=data, run=run, hold_out=hold_out, rule=rule, reference_lam=reference_lam,
            severities=severities, calibration=calibration, fit_corruptions=fit_corruptions, fit_n=fit_n,
            fit_lams=fit_lams, calibration_out=calibration_out, sweep_span=sweep_span, progress=progress,
        )  # fmt: skip
    columns = ["held_out", "reference_accuracy", "gain_in_calibration", "rule_held_out", "gain_held_out", "kept"]
    title = f"{report.meta['model']['name']}: gain over lambda {reference_lam:g}, corruption held out"
    print_rows(title, report.meta["summary"], columns)
    write(report, out_dir, name)
