"""Commands for corruptions, attacks, models and the regression gate."""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Annotated

import typer

from ..errors import UsageError
from ._app import RichProgress, command, console, labelled, main_process, preflight, print_rows, stdout, write
from .options import (
    AttackBatchOpt,
    AttackNExamplesOpt,
    AttackPrecisionOpt,
    AttackSeedOpt,
    CacheDirOpt,
    CalibrationOpt,
    CDirOpt,
    CheckpointOpt,
    CompileOpt,
    CorruptionOpt,
    DataDirOpt,
    DatasetOpt,
    DeviceOpt,
    EpsOpt,
    EvalBatchOpt,
    MemoCopiesOpt,
    MemoLrOpt,
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
    ThreatOpt,
    TrainDatasetOpt,
    VersionOpt,
    WeightsDirOpt,
)


@command("eval")
def eval_command(
    model: ModelOpt = "sdnet18",
    checkpoint: CheckpointOpt = None,
    dataset: DatasetOpt = "cifar10",
    corruptions: CorruptionOpt = ["none"],
    severities: SeverityOpt = ["all"],
    lam: Annotated[
        str | None,
        typer.Option(
            "--lam",
            help="Test-time lambda of every CSC layer (SDNet only): a number; 'recon' (per input, from the stem's "
            "reconstruction error) or 'noise' (per input, from the estimated pixel noise: its noise sigma and its "
            "fraction of salt-and-pepper values), both calibrated by "
            "`sdnet sweep-lambda --fit`; 'auto' (the one of them the calibration recommends); or 'oracle' (best "
            "lambda per cell from --sweep: uses labels). "
            "Default: the training lambda.",
        ),
    ] = None,
    calibration: CalibrationOpt = None,
    sweep: Annotated[
        Path | None, typer.Option("--sweep", help="sweep-lambda JSON report whose best lambdas --lam oracle uses.")
    ] = None,
    adapt: Annotated[
        str,
        typer.Option(
            "--adapt",
            help="Test-time adaptation baseline: none; bn (every BatchNorm layer uses the statistics of the current "
            "test batch; Schneider et al. 2020); tent (bn plus one Adam step, lr 1e-3, on the BatchNorm affine "
            "parameters per batch, minimising prediction entropy; Wang et al. 2021; reset every cell). Both see "
            "batches of --batch-size (default 200) images of one cell, and the rows say so. Per image, no state "
            "between images: bn-prior (each image's BatchNorm statistics N/(N+1) * stored + 1/(N+1) * its own; "
            "Schneider et al. 2020; N from --prior-strength); memo (Zhang et al. 2022: --memo-copies augmented "
            "copies of the image, AugMix-style operations that are not benchmark corruptions, one SGD step of "
            "--memo-lr on all parameters minimising the entropy of their mean prediction, predict the original, "
            "restore; seeded by --seed; by default 33 forwards and 1 backward per image). Combines with --lam.",
        ),
    ] = "none",
    prior_strength: PriorStrengthOpt = None,
    memo_copies: MemoCopiesOpt = None,
    memo_lr: MemoLrOpt = None,
    stream: Annotated[
        str,
        typer.Option(
            "--stream",
            help="cells: each cell's images on their own, adaptation reset every cell. mixed: the images of all "
            "requested cells interleaved in one stream (seeded by --seed), so an adapted batch mixes corruptions "
            "and severities (Niu et al. 2023); one adaptation over the whole stream; per-cell accuracy still "
            "reported. --batch-size 1 gives batch-1 adaptation.",
        ),
    ] = "cells",
    robustbench_json: Annotated[
        Path | None,
        typer.Option(
            "--robustbench-json",
            help="Also write the result as a RobustBench corruptions-leaderboard entry (JSON: clean_acc, "
            "corruptions_acc, ...), marking generated vs official CIFAR-10-C. Needs -c all -s all.",
        ),
    ] = None,
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
    resume: ResumeOpt = False,
) -> None:
    """Accuracy on the clean test split and corrupted cells (CIFAR-10-C, CIFAR-100-C, ImageNet-C; ImageNet also
    gets mCE and relative mCE), written as JSON, CSV and Markdown."""
    from .. import api
    from ..adapt import AdaptSpec, check_adapt
    from ..robustbench_export import check_request, robustbench_entry, write_robustbench_entry
    from ..specs import DataSpec, ModelSpec, RunSpec, check_precision

    preflight(out_dir, name)
    if robustbench_json is not None:
        check_request(robustbench_json, dataset, corruptions, severities)
    spec = ModelSpec(
        model, checkpoint=checkpoint, weights_dir=weights_dir, n_steps=n_steps, threat=threat, model_dir=model_dir
    )
    data = DataSpec(
        dataset=dataset, data_dir=data_dir, cache_dir=cache_dir, cifar_c_dir=cifar_c_dir, seed=seed,
        n_examples=n_examples,
    )  # fmt: skip
    run = RunSpec(device=device, precision=check_precision(precision), batch_size=batch_size, compile=compile)
    adaptation = AdaptSpec(check_adapt(adapt), prior_strength=prior_strength, memo_copies=memo_copies, memo_lr=memo_lr)
    with RichProgress() as progress:
        report = api.evaluate_corruptions(
            model=spec, data=data, run=run, corruptions=corruptions, severities=severities, lam=lam,
            calibration=calibration, sweep=sweep, adapt=adaptation, stream=stream, name=name, state_dir=out_dir,
            resume=resume, progress=progress,
        )  # fmt: skip
    if not main_process():
        return
    title = f"{report.meta['model']['name']} on {report.meta['model']['dataset']}"
    print_rows(title, report.rows, ["corruption", "severity", "lam", "n", "accuracy"])
    if report.meta.get("calibration_mismatch"):
        console.print(labelled("note:", "bold yellow", report.meta["calibration_mismatch"]))
    summary = report.meta["corruption_errors"]
    if summary is not None:
        caveat = "" if summary["complete"] else " (not all 15 benchmark corruptions: not comparable with published mCE)"
        relative = f", relative mCE {summary['relative_mCE']:.2f}%" if summary["relative_mCE"] is not None else ""
        stdout.print(
            f"mCE {summary['mCE']:.2f}%{relative} over {len(summary['corruptions'])} corruptions, "
            f"AlexNet-normalised{caveat}"
        )
    write(report, out_dir, name)
    if robustbench_json is not None:
        stdout.print(f"wrote {write_robustbench_entry(robustbench_json, robustbench_entry(report.rows, report.meta))}")


@command("make-c")
def make_c_command(
    out_dir: Annotated[
        Path, typer.Option("--out", help="Folder to write (the official release layout of --dataset + metadata.json).")
    ],
    dataset: Annotated[
        str, typer.Option("--dataset", help="cifar10 (CIFAR-10-C), cifar100 (CIFAR-100-C) or imagenet (ImageNet-C).")
    ] = "cifar10",
    n_examples: Annotated[
        int | None, typer.Option("--n-examples", "-n", help="Only the first N test images (default: all).")
    ] = None,
    corruptions: Annotated[
        list[str], typer.Option("--corruption", "-c", help="Corruption(s) to generate, repeatable; 'all', 'extra'.")
    ] = ["all", "extra"],
    workers: Annotated[int | None, typer.Option("--workers", help="Worker processes (default: all cores).")] = None,
    seed: SeedOpt = 0,
    data_dir: DataDirOpt = None,
) -> None:
    """Generate a corruption benchmark (seeded) from the test split in the release layout: CIFAR-10-C / CIFAR-100-C
    at CIFAR strengths, ImageNet-C at ImageNet strengths (imagecorruptions)."""
    from .. import api
    from ..specs import DataSpec

    preflight(out_dir)
    data = DataSpec(dataset=dataset, data_dir=data_dir, seed=seed, n_examples=n_examples)
    with RichProgress() as progress:
        written = api.generate_corruptions(
            out_dir=out_dir, data=data, corruptions=corruptions, workers=workers, progress=progress
        )
    stdout.print(f"wrote {written}")


@command("train")
def train_command(
    dataset: TrainDatasetOpt = "cifar10",
    *,
    model: Annotated[str, typer.Option("--model", "-m", help="Architecture to train, e.g. sdnet18 or resnet18.")],
    out: Annotated[
        Path,
        typer.Option(
            "--out", help="Where to write the trained weights (.safetensors); a manifest entry is added beside it."
        ),
    ],
    epochs: Annotated[int, typer.Option("--epochs", help="Epochs of the cosine schedule.")] = 30,
    width: Annotated[
        int, typer.Option("--width", help="Channels of the first stage (64 = the paper's ResNet-18).")
    ] = 32,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per training step.")] = 128,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate (cosine to 1e-6 per iteration).")] = 0.1,
    lam: Annotated[float, typer.Option("--lam", help="Training lambda of every CSC layer (SDNet only).")] = 0.1,
    sqrt_lasso: Annotated[
        bool, typer.Option("--sqrt-lasso", help="Train the square-root-lasso CSC variant (SDNet only).")
    ] = False,
    n_train: Annotated[int | None, typer.Option("--n-train", help="Use only the first N training images.")] = None,
    n_test: Annotated[
        int | None, typer.Option("--n-test", help="Per-epoch test accuracy on the first N test images.")
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume", help="Continue from <out>.resume.pt (written after every epoch) with the same settings."
        ),
    ] = False,
    default: Annotated[
        bool, typer.Option("--default/--no-default", help="Make this the default checkpoint of its architecture.")
    ] = False,
    half: Annotated[
        bool,
        typer.Option(
            "--half",
            help="Store the weights as fp16 (half the file; BatchNorm statistics stay fp32). The manifest's "
            "accuracy is measured with the stored weights.",
        ),
    ] = False,
    report_dir: Annotated[
        Path,
        typer.Option("--report-dir", help="Where the per-epoch history (JSON, CSV, Markdown) and its PNG curve go."),
    ] = Path("runs/training"),
    precision: PrecisionOpt = "fp32",
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    data_dir: DataDirOpt = None,
) -> None:
    """Train a model with the reference CIFAR recipe (CIFAR-10 or CIFAR-100), save safetensors, and register it in the manifest."""
    from .. import api
    from ..specs import DataSpec, RunSpec, check_precision

    preflight(out.parent, parameter="out")
    preflight(report_dir, parameter="report_dir")
    data = DataSpec(dataset=dataset, data_dir=data_dir, seed=seed)
    run = RunSpec(device=device, precision=check_precision(precision))
    with RichProgress() as progress:
        report = api.train(
            model=model, out=out, data=data, run=run, epochs=epochs, width=width, batch_size=batch_size, lr=lr,
            lam=lam, sqrt_lasso=sqrt_lasso, n_train=n_train, n_test=n_test, resume=resume, default=default,
            half=half, progress=progress,
        )  # fmt: skip
    meta = report.meta
    shown = f"{meta['clean_accuracy']:.2f}% (fp32)" + (
        f", {meta['clean_accuracy_bf16']:.2f}% (bf16)" if "clean_accuracy_bf16" in meta else ""
    )
    stdout.print(f"clean test accuracy on {meta['n_test']} images: {shown}")
    stdout.print(f"wrote {out} (sha256 {meta['checkpoint_sha256'][:12]}...), {meta['manifest']}")
    write(report, report_dir, None)


@command("attack")
def attack_command(
    model: ModelOpt = "sdnet18",
    checkpoint: CheckpointOpt = None,
    dataset: DatasetOpt = "cifar10",
    attack: Annotated[
        str,
        typer.Option(
            "--attack",
            "-a",
            help="pgd, apgd-ce, apgd-dlr, apgd-t, fab-t, square, or autoattack: standard AutoAttack (APGD-CE, APGD-T, "
            "FAB-T, Square with the original settings), each attack only on points still correct, worst case per "
            "sample.",
        ),
    ] = "autoattack",
    eps: EpsOpt = ["8/255"],
    lam: Annotated[
        str | None,
        typer.Option(
            "--lam",
            help="Test-time lambda of the CSC layers (SDNet only): a number, or 'recon'/'noise'/'auto' (per input, "
            "calibrated by `sdnet sweep-lambda --fit`; auto: the recommended one). The attack differentiates the "
            "deployed pipeline, lambda(x) included (its clamp straight-through; the salt-and-pepper fraction of 'noise' "
            "is piecewise constant and passes no gradient). Default: the training lambda.",
        ),
    ] = None,
    calibration: CalibrationOpt = None,
    save_adversarials: Annotated[
        Path | None,
        typer.Option(
            "--save-adv",
            help="Also write the adversarial examples (.npz: float32 NHWC in [0,1] per eps, labels, robust flags); robust "
            "accuracy after rounding them to uint8 goes into the report meta, separately.",
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
    """Robust accuracy under white-box and black-box attacks (torchattacks), written as JSON, CSV and Markdown."""
    from .. import api
    from ..attacks import check_norm
    from ..specs import DataSpec, ModelSpec, RunSpec, check_precision

    preflight(out_dir, name)
    if save_adversarials is not None:
        from .._io import check_writable_dir

        check_writable_dir(save_adversarials.parent, "save_adversarials", [save_adversarials.name])
    spec = ModelSpec(
        model, checkpoint=checkpoint, weights_dir=weights_dir, n_steps=n_steps, threat=threat, model_dir=model_dir
    )
    data = DataSpec(dataset=dataset, data_dir=data_dir, seed=seed, n_examples=n_examples)
    run = RunSpec(device=device, precision=check_precision(precision), batch_size=batch_size)
    with RichProgress() as progress:
        report = api.attack(
            model=spec, data=data, run=run, attack=attack, norm=check_norm(norm), eps=eps, steps=steps,
            restarts=restarts, version=version, lam=lam, calibration=calibration, pool_batches=pool_batches,
            name=name, state_dir=out_dir, resume=resume, save_adversarials=save_adversarials,
            progress=progress,
        )  # fmt: skip
    if not main_process():
        return
    for warning in report.meta["diagnostics"]["warnings"]:
        console.print(labelled("warning:", "bold yellow", warning), soft_wrap=True)
    columns = ["attack", "norm", "eps_text", "lam", "n", "clean_accuracy", "robust_accuracy", "seconds"]
    print_rows(f"{report.meta['model']['name']} on {report.meta['model']['dataset']}", report.rows, columns)
    write(report, out_dir, None)
    if save_adversarials is not None:
        stdout.print(f"wrote {save_adversarials}")


@command("check")
def check_command(
    baseline: Annotated[
        Path, typer.Option("--baseline", help="Baseline JSON to compare with (written by --update).")
    ] = Path("reports/baseline.json"),
    suite: Annotated[
        Path | None,
        typer.Option(
            "--suite",
            help="Suite JSON: models (names or {model, checkpoint, lam}), n_examples, cells [[corruption, severity]], "
            "attack, eps, steps, tolerance, seed. Default: the suite stored in the baseline, else the shipped sdnet18 and "
            "resnet18 on 500 images.",
        ),
    ] = None,
    update: Annotated[
        bool, typer.Option("--update", help="Measure and (re)write the baseline instead of comparing.")
    ] = False,
    tolerance: Annotated[
        float | None, typer.Option("--tolerance", help="Accuracy points a metric may fall (default: the suite's, 1.0).")
    ] = None,
    allow_code_in_suite: Annotated[
        bool,
        typer.Option(
            "--allow-code-in-suite",
            help="Let the suite (or the baseline's stored suite) name package.module:factory models: this imports and "
            "runs the Python code the file names. Without it such a suite is refused; never use it on a suite you did "
            "not write (e.g. one from a pull request).",
        ),
    ] = False,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    data_dir: DataDirOpt = None,
    cache_dir: CacheDirOpt = None,
    weights_dir: WeightsDirOpt = None,
) -> None:
    """Regression gate: re-run a fixed, seeded suite and compare each metric with the baseline; exit 1 on a regression,
    2 on bad input (options, suite or baseline), 3 when the check itself failed (a bug: its traceback is printed)."""
    from .. import api
    from ..specs import DataSpec, RunSpec, check_precision

    if update:
        preflight(baseline.parent, parameter="baseline")
    data = DataSpec(data_dir=data_dir, cache_dir=cache_dir)
    run = RunSpec(device=device, precision=check_precision(precision))
    try:
        with RichProgress() as progress:
            report = api.check(
                baseline=baseline, suite=suite, update=update, tolerance=tolerance, data=data, run=run,
                weights_dir=weights_dir, allow_code_in_suite=allow_code_in_suite, progress=progress,
            )  # fmt: skip
    except (UsageError, KeyboardInterrupt):
        raise
    except Exception:  # a traceback's exit 1 would read as a regression
        traceback.print_exc()
        console.print("check could not run (the error above is a bug in sdnet, not a regression): exit 3")
        raise typer.Exit(3) from None
    if update:
        write(report, baseline.parent, baseline.stem)
        return
    tolerance = report.meta["tolerance"]
    moved = [r for r in report.rows if r["status"] != "ok"]
    columns = ["model", "metric", "baseline", "now", "change", "status"]
    print_rows(f"sdnet check vs {baseline} (tolerance {tolerance:g} points)", moved or report.rows, columns)
    if not report.meta["passed"]:
        console.print(labelled("check failed:", "bold red", "; ".join(report.meta["failures"])), soft_wrap=True)
        raise typer.Exit(1)
    stdout.print(f"check passed: {report.meta['compared']} baseline metrics within {tolerance:g} points of {baseline}")


@command("compare")
def compare_command(
    sources: Annotated[
        list[str],
        typer.Argument(
            help="Reports to put side by side, as LABEL=REPORT.json (eval reports, or attack reports); repeat a label to "
            "combine several reports (of different cells) into one column.",
            show_default=False,
        ),
    ],
    name: Annotated[str, typer.Option("--name", help="Report file stem.")] = "compare",
    title: Annotated[str | None, typer.Option("--title", help="Heading of the Markdown report.")] = None,
    note: Annotated[
        str, typer.Option("--note", help="A paragraph placed above the table (e.g. how the runs differ).")
    ] = "",
    out_dir: OutOpt = Path("runs"),
) -> None:
    """One table from several eval or attack reports (a row per cell, or attack and eps; a column per label), with
    plots: accuracy vs severity per corruption, robust accuracy vs eps."""
    from .. import api

    preflight(out_dir, name)
    for path in api.compare(sources, out_dir=out_dir, name=name, title=title, note=note):
        stdout.print(f"wrote {path}")


@command("export")
def export_command(
    model: ModelOpt = "sdnet18",
    checkpoint: CheckpointOpt = None,
    dataset: DatasetOpt = "cifar10",
    *,
    out: Annotated[Path, typer.Argument(help="File to write, e.g. model_best.pth.", show_default=False)],
    format: Annotated[
        str,
        typer.Option(
            "--format",
            help="official: the state_dict the authors' SDNet code loads and runs unchanged (their key names, "
            "unit-norm atoms); set their config's LAMBDA and NUM_LAYERS to the model's.",
        ),
    ] = "official",
    weights_dir: WeightsDirOpt = None,
) -> None:
    """Write a model's weights in another code base's format (the authors' SDNet code)."""
    from .. import api
    from ..specs import ModelSpec

    preflight(out.parent, parameter="out")
    spec = ModelSpec(model, checkpoint=checkpoint, weights_dir=weights_dir)
    stdout.print(f"wrote {api.export_checkpoint(out=out, model=spec, dataset=dataset, format=format)}")
