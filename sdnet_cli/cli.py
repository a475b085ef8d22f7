"""The ``sdnet`` command line: parse options, call ``sdnet_cli.api``, print. No logic of its own.

torch and the API are imported inside the commands, so ``--help``, ``--version`` and shell
completion start in a fraction of a second.
"""

from __future__ import annotations

import functools
import os
import re
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import __version__
from .errors import Interrupted, UsageError

if TYPE_CHECKING:
    from .reports import Report

app = typer.Typer(
    name="sdnet",
    help="Robustness of sparse-coding networks (SDNet) and ResNet baselines: CIFAR-10-C, attacks, test-time lambda.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: flags shown as flags, not as '<bool>' values
)
console = Console(stderr=True)
out = Console()
F = TypeVar("F", bound=Callable[..., None])

FLAGS = {
    "corruptions": "--corruption",
    "severities": "--severity",
    "fit_corruptions": "--fit-corruption",
    "rules": "--rule",
    "out_dir": "--out",
    "save_adversarials": "--save-adv",
    "cifar_c_dir": "--cifar-c-dir",
}
"""API parameter -> CLI option where the option is not simply ``--`` + the parameter with dashes."""


def flag_message(exc: UsageError | Interrupted) -> str:
    """The API's message, speaking of the CLI option instead of the Python parameter."""
    if exc.parameter is None:
        return str(exc)
    flag = FLAGS.get(exc.parameter, "--" + exc.parameter.replace("_", "-"))
    name = re.escape(exc.parameter)
    return re.sub(rf"(?<![\w-]){name}(=True)?(?![\w-])", flag, str(exc), count=1)


def main_process() -> bool:
    """Rank 0 under torchrun (or the only process): the one that prints and writes reports."""
    return os.environ.get("RANK", "0") == "0"


def user_errors(command: F) -> F:
    """Usage errors become one red line and exit 2; Ctrl-C and SIGTERM exit 130 / 143 with nothing
    half-written (every file is renamed into place only when complete). Anything else is a bug and
    keeps its traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        terminated = []

        def on_sigterm(signum: int, frame: Any) -> None:
            terminated.append(signum)
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGTERM, on_sigterm)
        try:
            return command(*args, **kwargs)
        except UsageError as exc:
            console.print(f"[bold red]error:[/] {escape(flag_message(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt as exc:
            saved = f": {escape(flag_message(exc))}" if isinstance(exc, Interrupted) else ""
            console.print(
                f"[yellow]{'terminated' if terminated else 'interrupted'}; no report was written{saved}[/]",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(143 if terminated else 130) from None
        finally:
            signal.signal(signal.SIGTERM, previous)

    return wrapper  # type: ignore[return-value]


class RichProgress:
    """``api.Progress`` on a rich progress bar (stderr), silent on torchrun's other ranks."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=not main_process(),
        )

    def __enter__(self) -> RichProgress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.__exit__(*exc)

    def task(self, description: str, total: int) -> Callable[[int], None]:
        task = self.bar.add_task(description, total=total)
        return lambda k: self.bar.advance(task, k)

    def note(self, text: str) -> None:
        self.bar.console.print(text)


def single_process(command: str) -> None:
    """Only eval and attack split their work over torchrun's processes; the others refuse rather than
    run N identical copies that race to write the same files."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UsageError(f"sdnet {command} runs in one process; under torchrun only eval and attack split their work")


def preflight(out_dir: Path, name: str | None = None, parameter: str = "out_dir") -> None:
    """Refuse, before any work, an output folder we cannot write or a report name that is not a plain stem."""
    from .reports import check_stem, check_writable_dir

    check_writable_dir(out_dir, parameter)
    if name is not None:
        check_stem(name)


def print_rows(title: str, rows: list[dict], columns: list[str]) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(
            column, justify="left" if column in ("corruption", "model", "attack", "metric", "status") else "right"
        )
    for row in rows:
        table.add_row(
            *(f"{row[c]:.2f}" if isinstance(row[c], float) and c.endswith("accuracy") else str(row[c]) for c in columns)
        )
    out.print(table)


def write(report: Report, out_dir: Path, name: str | None) -> list[Path]:
    paths = report.write(out_dir, name)
    for path in paths:
        out.print(f"wrote {path}")
    return paths


def version_callback(value: bool) -> None:
    if value:
        out.print(f"sdnet-cli {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool, typer.Option("--version", callback=version_callback, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Robustness of sparse-coding networks (SDNet) and ResNet baselines: CIFAR-10-C, attacks, test-time lambda."""


# -- options shared by several commands ----------------------------------------------------------
ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="Architecture (resnet18, resnet34, sdnet18, sdnet34, sdnet18_all, sdnet34_all, tv_resnet18, tv_resnet50) or a "
        "shipped checkpoint name from the weights manifest. Without --checkpoint, an architecture name loads its default "
        "shipped checkpoint. Models from outside: robustbench:<name> (RobustBench's zoo, with --threat and --model-dir), "
        "timm:<name> (timm's architecture, with --checkpoint), or package.module:factory, a function of your own "
        "returning an nn.Module that takes [0,1] images: this imports and runs that code.",
    ),
]
ThreatOpt = Annotated[
    str,
    typer.Option("--threat", help="For --model robustbench:<name>: its leaderboard, corruptions, Linf or L2."),
]
ModelDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--model-dir",
        help="For --model robustbench:<name>: RobustBench's folder of weights, laid out as "
        "DIR/<dataset>/<threat>/<name>.pt (default ./models). Never downloads.",
    ),
]
CheckpointOpt = Annotated[
    Path | None,
    typer.Option(
        "--checkpoint",
        help="Weights to load into --model: our .safetensors, the authors' model_best.pth.tar / checkpoint.pth.tar, or your "
        "own state_dict. Never unpickles code.",
    ),
]
WeightsDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--weights-dir",
        help="Folder with manifest.json and the shipped checkpoints (default: $SDNET_WEIGHTS, else the ones installed with "
        "sdnet-cli).",
    ),
]
DatasetOpt = Annotated[
    str,
    typer.Option(
        "--dataset", help="Dataset the model was trained on (and is evaluated on): cifar10, cifar100 or imagenet."
    ),
]
DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Folder containing cifar-10-batches-py / cifar-100-python (default: $SDNET_DATA, else ./data); for imagenet, "
        "the folder with val/<wnid>/*.JPEG (default: $SDNET_DATA/imagenet).",
    ),
]
CDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--cifar-c-dir",
        "--imagenet-c-dir",
        help="Folder of the official corrupted release of --dataset: CIFAR-10-C / CIFAR-100-C (<corruption>.npy + "
        "labels.npy) or ImageNet-C (<corruption>/<severity>/<wnid>/*.JPEG). Without it, the needed corruptions are "
        "generated with --seed and cached.",
    ),
]
CacheDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir", help="Where generated CIFAR-10-C is cached (default: $SDNET_CACHE, else ~/.cache/sdnet-cli)."
    ),
]
SeedOpt = Annotated[
    int,
    typer.Option(
        "--seed", help="Seed (0 .. 2**32-1) for generated corruptions and every random choice; same seed, same numbers."
    ),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (GPU if present), cpu or cuda.")]
PrecisionOpt = Annotated[
    str,
    typer.Option(
        "--precision",
        help="fp32, or bf16 autocast: faster on GPUs and CPUs with AMX/AVX512-BF16, much slower on plain AVX2 CPUs "
        "(see benchmarks/throughput.py). CSC solves stay fp32.",
    ),
]
BatchOpt = Annotated[int, typer.Option("--batch-size", help="Images per forward.")]
EvalBatchOpt = Annotated[
    int | None,
    typer.Option(
        "--batch-size",
        help="Images per forward (default: 64 on CPU, the fastest in fp32 and within 5% of it in bf16 by "
        "benchmarks/eval_batch_size.py; 256 on GPU). Accuracy does not depend on it.",
    ),
]
NExamplesOpt = Annotated[
    int | None, typer.Option("--n-examples", "-n", help="Use only the first N test images (of each cell).")
]
OutOpt = Annotated[Path, typer.Option("--out", help="Folder for the JSON, CSV and Markdown reports.")]
NameOpt = Annotated[
    str | None, typer.Option("--name", help="Report file stem (a plain file name; default per command).")
]
CorruptionOpt = Annotated[
    list[str],
    typer.Option(
        "--corruption",
        "-c",
        help="Corruption name, repeatable; 'all' = the 15 benchmark corruptions, 'extra' = the 4 extras, 'none' = clean "
        "only. Clean accuracy is always reported alongside.",
    ),
]
SeverityOpt = Annotated[list[str], typer.Option("--severity", "-s", help="Severity 1..5, repeatable, or 'all'.")]
EpsOpt = Annotated[
    list[str],
    typer.Option(
        "--eps",
        help="Budget in [0,1] pixel units: a fraction (8/255) or a decimal; repeatable for a sweep, where a point fooled "
        "at a smaller eps counts as fooled at the larger ones.",
    ),
]
NormOpt = Annotated[str, typer.Option("--norm", help="Threat model: Linf or L2.")]
StepsOpt = Annotated[
    int | None,
    typer.Option(
        "--steps", help="Iterations of a single attack (square: queries); default pgd 20, apgd/fab 100, square 5000."
    ),
]
RestartsOpt = Annotated[int | None, typer.Option("--restarts", help="Random restarts of a single attack (default 1).")]
VersionOpt = Annotated[
    str,
    typer.Option(
        "--version",
        help="autoattack version: standard, or rand (randomised models: APGD-CE and APGD-DLR with 20 EOT iterations).",
    ),
]
ResumeOpt = Annotated[
    bool,
    typer.Option(
        "--resume", help="Continue an interrupted run from <out>/<name>*.state.json, skipping finished pools of images."
    ),
]
PoolOpt = Annotated[
    int | None,
    typer.Option(
        "--pool-batches",
        help="Attacks run on pools of this many batches (default 8): before each attack the points "
        "still standing in a pool are gathered into full batches. Results depend on it as on --batch-size; torchrun "
        "splits and --resume saves whole pools.",
    ),
]
CalibrationOpt = Annotated[
    Path | None,
    typer.Option("--calibration", help="Calibration JSON for --lam auto/recon/noise (default: the checkpoint's own)."),
]
CompileOpt = Annotated[
    bool,
    typer.Option(
        "--compile",
        help="Run inference through torch.compile: a one-off compile (about 3-16 s per model on a 2-core "
        "CPU), then about 1.2x faster; predictions equal eager ones up to float rounding. Pays off for long runs.",
    ),
]
NStepsOpt = Annotated[
    int | None,
    typer.Option(
        "--n-steps",
        help="FISTA steps of the CSC layers (SDNet only), for weights trained with another count than the "
        "checkpoint records (default: the checkpoint's; 2 for the authors' files).",
    ),
]


@app.command("eval")
@user_errors
def eval_command(
    model: ModelOpt = "sdnet18",
    checkpoint: CheckpointOpt = None,
    dataset: DatasetOpt = "cifar10",
    corruption: CorruptionOpt = ["none"],
    severity: SeverityOpt = ["all"],
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
    cifar_c_dir: CDirOpt = None,
    n_examples: NExamplesOpt = None,
    batch_size: EvalBatchOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    seed: SeedOpt = 0,
    data_dir: DataDirOpt = None,
    cache_dir: CacheDirOpt = None,
    weights_dir: WeightsDirOpt = None,
    n_steps: NStepsOpt = None,
    compile: CompileOpt = False,
    adapt: Annotated[
        str,
        typer.Option(
            "--adapt",
            help="Test-time adaptation baseline: none; bn (every BatchNorm layer uses the statistics of the current "
            "test batch; Schneider et al. 2020); tent (bn plus one Adam step, lr 1e-3, on the BatchNorm affine "
            "parameters per batch, minimising prediction entropy; Wang et al. 2021; reset every cell). Both see "
            "batches of --batch-size (default 200) images of one cell, and the rows say so. Combines with --lam.",
        ),
    ] = "none",
    threat: ThreatOpt = "corruptions",
    model_dir: ModelDirOpt = None,
    robustbench_json: Annotated[
        Path | None,
        typer.Option(
            "--robustbench-json",
            help="Also write the result as a RobustBench corruptions-leaderboard entry (JSON: clean_acc, "
            "corruptions_acc, ...), marking generated vs official CIFAR-10-C. Needs -c all -s all.",
        ),
    ] = None,
    out_dir: OutOpt = Path("reports"),
    name: NameOpt = None,
) -> None:
    """Accuracy on the clean test split and corrupted cells (CIFAR-10-C, CIFAR-100-C, ImageNet-C; ImageNet also
    gets mCE and relative mCE), written as JSON, CSV and Markdown."""
    from . import api
    from .robustbench_export import check_request, robustbench_entry, write_robustbench_entry

    preflight(out_dir, name)
    if robustbench_json is not None:
        check_request(robustbench_json, dataset, corruption, severity)
    with RichProgress() as progress:
        report = api.evaluate_corruptions(
            model=model,
            checkpoint=checkpoint,
            dataset=dataset,
            corruptions=corruption,
            severities=severity,
            lam=lam,
            calibration=calibration,
            sweep=sweep,
            cifar_c_dir=cifar_c_dir,
            n_examples=n_examples,
            batch_size=batch_size,
            device=device,
            precision=precision,
            seed=seed,
            data_dir=data_dir,
            cache_dir=cache_dir,
            weights_dir=weights_dir,
            n_steps=n_steps,
            compile=compile,
            adapt=adapt,
            threat=threat,
            model_dir=model_dir,
            progress=progress,
        )
    if not main_process():
        return
    print_rows(
        f"{report.meta['model']['name']} on {dataset}", report.rows, ["corruption", "severity", "lam", "n", "accuracy"]
    )
    summary = report.meta["corruption_errors"]
    if summary is not None:
        caveat = "" if summary["complete"] else " (not all 15 benchmark corruptions: not comparable with published mCE)"
        relative = f", relative mCE {summary['relative_mCE']:.2f}%" if summary["relative_mCE"] is not None else ""
        out.print(
            f"mCE {summary['mCE']:.2f}%{relative} over {len(summary['corruptions'])} corruptions, "
            f"AlexNet-normalised{caveat}"
        )
    write(report, out_dir, name)
    if robustbench_json is not None:
        out.print(f"wrote {write_robustbench_entry(robustbench_json, robustbench_entry(report.rows, report.meta))}")


@app.command("make-c")
@user_errors
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
    seed: SeedOpt = 0,
    corruption: Annotated[
        list[str], typer.Option("--corruption", "-c", help="Corruption(s) to generate, repeatable; 'all', 'extra'.")
    ] = ["all", "extra"],
    workers: Annotated[int | None, typer.Option("--workers", help="Worker processes (default: all cores).")] = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Generate a corruption benchmark (seeded) from the test split in the release layout: CIFAR-10-C / CIFAR-100-C
    at CIFAR strengths, ImageNet-C at ImageNet strengths (imagecorruptions)."""
    from . import api

    single_process("make-c")
    preflight(out_dir)
    with RichProgress() as progress:
        folder = api.generate_corruptions(
            out_dir=out_dir,
            dataset=dataset,
            corruptions=corruption,
            n_examples=n_examples,
            seed=seed,
            workers=workers,
            data_dir=data_dir,
            progress=progress,
        )
    out.print(f"wrote {folder}")


@app.command("train")
@user_errors
def train_command(
    model: Annotated[str, typer.Option("--model", "-m", help="Architecture to train, e.g. sdnet18 or resnet18.")],
    out_path: Annotated[
        Path,
        typer.Option(
            "--out", help="Where to write the trained weights (.safetensors); a manifest entry is added beside it."
        ),
    ],
    dataset: DatasetOpt = "cifar10",
    epochs: Annotated[int, typer.Option("--epochs", help="Epochs of the cosine schedule.")] = 30,
    width: Annotated[
        int, typer.Option("--width", help="Channels of the first stage (64 = the paper's ResNet-18).")
    ] = 32,
    batch_size: BatchOpt = 128,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate (cosine to 1e-6 per iteration).")] = 0.1,
    lam: Annotated[float, typer.Option("--lam", help="Training lambda of every CSC layer (SDNet only).")] = 0.1,
    sqrt_lasso: Annotated[
        bool, typer.Option("--sqrt-lasso", help="Train the square-root-lasso CSC variant (SDNet only).")
    ] = False,
    precision: PrecisionOpt = "fp32",
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    n_train: Annotated[int | None, typer.Option("--n-train", help="Use only the first N training images.")] = None,
    n_test: Annotated[
        int | None, typer.Option("--n-test", help="Per-epoch test accuracy on the first N test images.")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from <out>.resume.pt (written after every epoch).")
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
    data_dir: DataDirOpt = None,
    report_dir: Annotated[
        Path,
        typer.Option("--report-dir", help="Where the per-epoch history (JSON, CSV, Markdown) and its PNG curve go."),
    ] = Path("reports/training"),
) -> None:
    """Train a model with the reference CIFAR recipe (CIFAR-10 or CIFAR-100), save safetensors, and register it in the manifest."""
    from . import api

    single_process("train")
    preflight(out_path.parent, parameter="out")
    preflight(report_dir, parameter="report_dir")
    with RichProgress() as progress:
        report = api.train(
            model=model,
            out=out_path,
            dataset=dataset,
            epochs=epochs,
            width=width,
            batch_size=batch_size,
            lr=lr,
            lam=lam,
            sqrt_lasso=sqrt_lasso,
            precision=precision,
            device=device,
            seed=seed,
            n_train=n_train,
            n_test=n_test,
            resume=resume,
            default=default,
            half=half,
            data_dir=data_dir,
            progress=progress,
        )
    meta = report.meta
    shown = f"{meta['clean_accuracy']:.2f}% (fp32)" + (
        f", {meta['clean_accuracy_bf16']:.2f}% (bf16)" if "clean_accuracy_bf16" in meta else ""
    )
    out.print(f"clean test accuracy on {meta['n_test']} images: {shown}")
    out.print(f"wrote {out_path} (sha256 {meta['checkpoint_sha256'][:12]}...), {meta['manifest']}")
    write(report, report_dir, None)


@app.command("sweep-lambda")
@user_errors
def sweep_lambda_command(
    model: ModelOpt = "sdnet18",
    checkpoint: CheckpointOpt = None,
    dataset: DatasetOpt = "cifar10",
    corruption: Annotated[
        list[str],
        typer.Option(
            "--corruption", "-c", help="Corruption name, repeatable; 'all', 'extra', 'none'. Clean is always swept."
        ),
    ] = ["gaussian_noise"],
    severity: SeverityOpt = ["all"],
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
    fit_corruption: Annotated[
        list[str] | None,
        typer.Option(
            "--fit-corruption", help="Corruptions of the calibration groups, repeatable (default: --corruption)."
        ),
    ] = None,
    fit_n: Annotated[int, typer.Option("--fit-n", help="Training images per calibration group (>= 2).")] = 1000,
    calibration_out: Annotated[
        Path | None,
        typer.Option("--calibration-out", help="Write the calibration here instead of beside the checkpoint."),
    ] = None,
    cifar_c_dir: CDirOpt = None,
    n_examples: NExamplesOpt = None,
    batch_size: EvalBatchOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    seed: SeedOpt = 0,
    data_dir: DataDirOpt = None,
    cache_dir: CacheDirOpt = None,
    weights_dir: WeightsDirOpt = None,
    out_dir: OutOpt = Path("reports"),
    name: NameOpt = None,
    attack: Annotated[
        str | None,
        typer.Option(
            "--attack",
            "-a",
            help="Measure robust accuracy instead of corruptions: any attack of `sdnet attack` (pgd, apgd-ce, ..., "
            "autoattack), run on the first --n-examples clean test images at every lambda of --lams, the deployed "
            "model at that lambda attacked (corruption and --fit options are not used; --batch-size defaults to 128, "
            "as in `sdnet attack`).",
        ),
    ] = None,
    eps: EpsOpt = ["1/255"],
    norm: NormOpt = "Linf",
    steps: StepsOpt = None,
    restarts: RestartsOpt = None,
    version: VersionOpt = "standard",
    baseline_model: Annotated[
        str | None,
        typer.Option(
            "--baseline-model",
            help="With --attack: also attack this model (e.g. resnet18) at its own lambda; its numbers "
            "are drawn as horizontal reference lines.",
        ),
    ] = None,
    pool_batches: PoolOpt = None,
    resume: ResumeOpt = False,
    n_steps: NStepsOpt = None,
    compile: Annotated[
        bool,
        typer.Option(
            "--compile",
            help="Run the corruption sweep's inference through torch.compile (see `sdnet eval --help`; not "
            "used with --attack).",
        ),
    ] = False,
) -> None:
    """Accuracy and stem reconstruction error for each test lambda on each cell; --fit calibrates --lam auto/noise.
    With --attack: clean and robust accuracy for each test lambda (the paper's robustness vs lambda claim)."""
    from . import api

    single_process("sweep-lambda")
    preflight(out_dir, name)
    if attack is not None:
        if fit:
            raise UsageError("--fit calibrates on corruptions; it does not combine with --attack")
        with RichProgress() as progress:
            report = api.attack_vs_lambda(
                model=model,
                checkpoint=checkpoint,
                dataset=dataset,
                lams=lams,
                attack=attack,
                norm=norm,
                eps=eps,
                steps=steps,
                restarts=restarts,
                version=version,
                baseline_model=baseline_model,
                n_examples=n_examples,
                pool_batches=pool_batches,
                device=device,
                precision=precision,
                seed=seed,
                data_dir=data_dir,
                weights_dir=weights_dir,
                name=name,
                state_dir=out_dir,
                resume=resume,
                n_steps=n_steps,
                progress=progress,
                batch_size=batch_size,
            )
        print_rows(
            f"{report.meta['model']['name']}: accuracy vs lambda",
            report.rows,
            ["model", "attack", "eps_text", "lam", "n", "clean_accuracy", "robust_accuracy", "masking_warnings"],
        )
        write(report, out_dir, None)
        return
    with RichProgress() as progress:
        report = api.sweep_lambda(
            model=model,
            checkpoint=checkpoint,
            dataset=dataset,
            corruptions=corruption,
            severities=severity,
            lams=lams,
            fit=fit,
            fit_corruptions=fit_corruption,
            fit_n=fit_n,
            calibration_out=calibration_out,
            cifar_c_dir=cifar_c_dir,
            n_examples=n_examples,
            batch_size=batch_size,
            device=device,
            precision=precision,
            seed=seed,
            data_dir=data_dir,
            cache_dir=cache_dir,
            weights_dir=weights_dir,
            n_steps=n_steps,
            compile=compile,
            progress=progress,
        )
    best = [{**r, "mean_error": f"{r['mean_error']:.4g}"} for r in report.rows if r["oracle"]]
    print_rows(
        f"{report.meta['model']['name']}: best lambda per cell",
        best,
        ["corruption", "severity", "lam", "n", "accuracy", "mean_error"],
    )
    for rule, formula in (report.meta["calibration_formulas"] or {}).items():
        out.print(f"{rule}: lambda = {formula}")
    if report.meta.get("calibration_recommended"):
        out.print(
            f"auto: {report.meta['calibration_recommended']} (the higher mean accuracy on the calibration groups)"
        )
    if report.meta["calibration"]:
        out.print(f"wrote {report.meta['calibration']}")
    write(report, out_dir, name)


@app.command("lambda-rules")
@user_errors
def lambda_rules_command(
    model: ModelOpt = "sdnet18",
    checkpoint: CheckpointOpt = None,
    dataset: DatasetOpt = "cifar10",
    corruption: CorruptionOpt = ["gaussian_noise"],
    severity: SeverityOpt = ["all"],
    rule: Annotated[
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
    cifar_c_dir: CDirOpt = None,
    n_examples: NExamplesOpt = None,
    batch_size: EvalBatchOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    seed: SeedOpt = 0,
    data_dir: DataDirOpt = None,
    cache_dir: CacheDirOpt = None,
    weights_dir: WeightsDirOpt = None,
    out_dir: OutOpt = Path("reports"),
    name: NameOpt = None,
) -> None:
    """Label-free lambda rules side by side with the per-cell and per-input oracles (which use labels),
    with the chosen lambdas' mean and 10th/90th percentiles per cell."""
    from . import api

    single_process("lambda-rules")
    preflight(out_dir, name)
    with RichProgress() as progress:
        report = api.compare_lambda_rules(
            model=model,
            checkpoint=checkpoint,
            dataset=dataset,
            corruptions=corruption,
            severities=severity,
            rules=rule,
            lams=lams,
            calibration=calibration,
            cifar_c_dir=cifar_c_dir,
            n_examples=n_examples,
            batch_size=batch_size,
            device=device,
            precision=precision,
            seed=seed,
            data_dir=data_dir,
            cache_dir=cache_dir,
            weights_dir=weights_dir,
            progress=progress,
        )
    print_rows(
        f"{report.meta['model']['name']}: lambda rules (oracle rows use labels)",
        report.meta["summary"],
        ["lam", "uses_labels", "corrupted_mean", "gain", "clean", "clean_change", "lam_mean"],
    )
    write(report, out_dir, name)


@app.command("lambda-hold-out")
@user_errors
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
    severity: SeverityOpt = ["all"],
    calibration: Annotated[
        Path | None,
        typer.Option(
            "--calibration",
            help="A calibration JSON whose groups include every held-out corruption (skips the calibration sweep).",
        ),
    ] = None,
    fit_corruption: Annotated[
        list[str], typer.Option("--fit-corruption", help="Corruptions of the calibration groups, repeatable.")
    ] = ["all", "extra"],
    fit_n: Annotated[int, typer.Option("--fit-n", help="Training images per calibration group (>= 2).")] = 1000,
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
    cifar_c_dir: CDirOpt = None,
    n_examples: NExamplesOpt = None,
    batch_size: EvalBatchOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    seed: SeedOpt = 0,
    data_dir: DataDirOpt = None,
    cache_dir: CacheDirOpt = None,
    weights_dir: WeightsDirOpt = None,
    out_dir: OutOpt = Path("reports"),
    name: NameOpt = None,
) -> None:
    """Generalisation of the lambda rule: each corruption left out of the calibration in turn, evaluated on its
    test cells beside the rule fitted with it and a fixed lambda."""
    from . import api

    single_process("lambda-hold-out")
    preflight(out_dir, name)
    with RichProgress() as progress:
        report = api.lambda_hold_out(
            model=model,
            checkpoint=checkpoint,
            dataset=dataset,
            hold_out=hold_out,
            rule=rule,
            reference_lam=reference_lam,
            severities=severity,
            calibration=calibration,
            fit_corruptions=fit_corruption,
            fit_n=fit_n,
            fit_lams=fit_lams,
            calibration_out=calibration_out,
            cifar_c_dir=cifar_c_dir,
            n_examples=n_examples,
            batch_size=batch_size,
            device=device,
            precision=precision,
            seed=seed,
            data_dir=data_dir,
            cache_dir=cache_dir,
            weights_dir=weights_dir,
            progress=progress,
        )
    print_rows(
        f"{report.meta['model']['name']}: gain over lambda {reference_lam:g}, corruption held out",
        report.meta["summary"],
        ["held_out", "reference_accuracy", "gain_in_calibration", "rule_held_out", "gain_held_out", "kept"],
    )
    write(report, out_dir, name)


@app.command("attack")
@user_errors
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
    norm: NormOpt = "Linf",
    eps: EpsOpt = ["8/255"],
    steps: StepsOpt = None,
    restarts: RestartsOpt = None,
    version: VersionOpt = "standard",
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
    n_examples: Annotated[
        int | None, typer.Option("--n-examples", "-n", help="Attack only the first N test images (default: all).")
    ] = None,
    batch_size: BatchOpt = 128,
    pool_batches: PoolOpt = None,
    device: DeviceOpt = "auto",
    precision: Annotated[
        str,
        typer.Option(
            "--precision",
            help="fp32 (default: attacks take gradients in fp32), or bf16 autocast for forwards and gradients.",
        ),
    ] = "fp32",
    seed: SeedOpt = 0,
    data_dir: DataDirOpt = None,
    weights_dir: WeightsDirOpt = None,
    out_dir: OutOpt = Path("reports"),
    name: NameOpt = None,
    resume: ResumeOpt = False,
    save_adv: Annotated[
        Path | None,
        typer.Option(
            "--save-adv",
            help="Also write the adversarial examples (.npz: float32 NHWC in [0,1] per eps, labels, robust flags); robust "
            "accuracy after rounding them to uint8 goes into the report meta, separately.",
        ),
    ] = None,
    n_steps: NStepsOpt = None,
    adapt: Annotated[
        str, typer.Option("--adapt", help="Not supported: attacks on test-time-adapted models are out of scope.")
    ] = "none",
    threat: ThreatOpt = "corruptions",
    model_dir: ModelDirOpt = None,
) -> None:
    """Robust accuracy under white-box and black-box attacks (torchattacks), written as JSON, CSV and Markdown."""
    from . import api

    preflight(out_dir, name)
    if save_adv is not None:
        preflight(save_adv.parent, parameter="save_adversarials")
    with RichProgress() as progress:
        report = api.attack(
            model=model,
            checkpoint=checkpoint,
            dataset=dataset,
            attack=attack,
            norm=norm,
            eps=eps,
            steps=steps,
            restarts=restarts,
            version=version,
            lam=lam,
            calibration=calibration,
            n_examples=n_examples,
            batch_size=batch_size,
            pool_batches=pool_batches,
            device=device,
            precision=precision,
            seed=seed,
            data_dir=data_dir,
            weights_dir=weights_dir,
            name=name,
            state_dir=out_dir,
            resume=resume,
            save_adversarials=save_adv,
            n_steps=n_steps,
            adapt=adapt,
            threat=threat,
            model_dir=model_dir,
            progress=progress,
        )
    if not main_process():
        return
    for warning in report.meta["diagnostics"]["warnings"]:
        console.print(f"[bold yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    print_rows(
        f"{report.meta['model']['name']} on {dataset}",
        report.rows,
        ["attack", "norm", "eps_text", "lam", "n", "clean_accuracy", "robust_accuracy", "seconds"],
    )
    write(report, out_dir, None)
    if save_adv is not None:
        out.print(f"wrote {save_adv}")


@app.command("check")
@user_errors
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
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    data_dir: DataDirOpt = None,
    cache_dir: CacheDirOpt = None,
    weights_dir: WeightsDirOpt = None,
) -> None:
    """Regression gate: re-run a fixed, seeded suite and compare each metric with the baseline; exit 1 on a regression."""
    from . import api

    single_process("check")
    if update:
        preflight(baseline.parent, parameter="baseline")
    with RichProgress() as progress:
        report = api.check(
            baseline=baseline,
            suite=suite,
            update=update,
            tolerance=tolerance,
            device=device,
            precision=precision,
            data_dir=data_dir,
            cache_dir=cache_dir,
            weights_dir=weights_dir,
            progress=progress,
        )
    if update:
        write(report, baseline.parent, baseline.stem)
        return
    tolerance = report.meta["tolerance"]
    moved = [r for r in report.rows if r["status"] != "ok"]
    print_rows(
        f"sdnet check vs {baseline} (tolerance {tolerance:g} points)",
        moved or report.rows,
        ["model", "metric", "baseline", "now", "change", "status"],
    )
    if not report.meta["passed"]:
        console.print("[bold red]check failed:[/] a metric fell below its baseline (or is no longer measured)")
        raise typer.Exit(1)
    out.print(f"check passed: {len(report.rows)} metrics within {tolerance:g} points of {baseline}")


@app.command("compare")
@user_errors
def compare_command(
    sources: Annotated[
        list[str],
        typer.Argument(
            help="Reports to put side by side, as LABEL=REPORT.json (eval reports, or attack reports); repeat a label to "
            "combine several reports (of different cells) into one column.",
            show_default=False,
        ),
    ],
    out_dir: OutOpt = Path("reports"),
    name: Annotated[str, typer.Option("--name", help="Report file stem.")] = "compare",
    title: Annotated[str | None, typer.Option("--title", help="Heading of the Markdown report.")] = None,
    note: Annotated[
        str, typer.Option("--note", help="A paragraph placed above the table (e.g. how the runs differ).")
    ] = "",
) -> None:
    """One table from several eval or attack reports (a row per cell, or attack and eps; a column per label), with
    plots: accuracy vs severity per corruption, robust accuracy vs eps."""
    from . import api

    preflight(out_dir, name)
    for path in api.compare(sources, out_dir=out_dir, name=name, title=title, note=note):
        out.print(f"wrote {path}")


@app.command("export")
@user_errors
def export_command(
    out_path: Annotated[Path, typer.Argument(help="File to write, e.g. model_best.pth.", show_default=False)],
    model: ModelOpt = "sdnet18",
    checkpoint: CheckpointOpt = None,
    dataset: DatasetOpt = "cifar10",
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
    from . import api

    single_process("export")
    preflight(out_path.parent, parameter="out")
    path = api.export_checkpoint(
        out=out_path, model=model, checkpoint=checkpoint, dataset=dataset, format=format, weights_dir=weights_dir
    )
    out.print(f"wrote {path}")


def main() -> None:
    app()
