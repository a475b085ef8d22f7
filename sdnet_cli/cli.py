"""The ``sdnet`` command line: parses options, calls the Python API, prints. No logic of its own."""

from __future__ import annotations

import functools
import os
import shlex
import sys
from pathlib import Path
from typing import Annotated, Callable, Optional, TypeVar

import torch
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from . import distributed
from .data.cells import CLEAN, CellSource, expand_cells, parse_corruptions, parse_severities
from .data.cifar import DataError
from .data.cifar_c import CifarCError
from .evaluate import Runtime, evaluate_cells
from .lam import ORACLE, lambda_label, oracle_lambdas, parse_grid, parse_lambda, store_calibration
from .metrics import corruption_errors
from .models import CheckpointError, ModelError, load_model
from .reports import base_meta, write_report

app = typer.Typer(
    name="sdnet",
    help="Robustness of sparse-coding networks (SDNet) and ResNet baselines: CIFAR-10-C, attacks, test-time lambda.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
out = Console()

USER_ERRORS = (ModelError, CheckpointError, DataError, CifarCError, ValueError)
F = TypeVar("F", bound=Callable[..., None])


def user_errors(command: F) -> F:
    """Turn the API's user-facing errors into one red line and exit code 2 (usage error)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        try:
            return command(*args, **kwargs)
        except USER_ERRORS as exc:
            console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted; no report was written[/]")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        disable=not distributed.is_main(),
    )


def join_ranks(device: str) -> str:
    """Under torchrun, join the process group and silence every rank but 0, which prints and writes
    the reports; returns the device of this rank (see ``distributed.init``)."""
    device = distributed.init(device)
    if not distributed.is_main():
        console.quiet = out.quiet = True
    return device


def single_process(command: str) -> None:
    """Only eval and attack split their work over torchrun's processes; the other commands refuse
    rather than run N identical copies that race to write the same files."""
    if distributed.launched_by_torchrun() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError(f"sdnet {command} runs in one process; under torchrun only eval and attack split their work")


def prepare_cells(source: CellSource, corruptions: list[str], progress: Progress) -> None:
    """Generate (with a progress bar) the corrupted images the cache still lacks."""
    to_generate = source.missing_images(corruptions)
    title = source.spec.corrupted.title
    task = progress.add_task(f"generating {title} (seed {source.seed})", total=to_generate, visible=bool(to_generate))
    distributed.in_turn(lambda: source.prepare(corruptions, lambda k: progress.advance(task, k)))


# -- options shared by several commands ----------------------------------------------------------
ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="Architecture (resnet18, resnet34, sdnet18, sdnet34, sdnet18_all, sdnet34_all) or a shipped "
        "checkpoint name from weights/manifest.json. Without --checkpoint, an architecture name loads its "
        "default shipped checkpoint.",
    ),
]
CheckpointOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--checkpoint",
        help="Weights to load into --model: our .safetensors, the authors' model_best.pth.tar / "
        "checkpoint.pth.tar, or your own state_dict. Never unpickles code.",
    ),
]
DatasetOpt = Annotated[
    str, typer.Option("--dataset", help="Dataset the model was trained on (and is evaluated on): cifar10, cifar100 or imagenet.")
]
DataDirOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--data-dir",
        help="Folder containing cifar-10-batches-py / cifar-100-python (default: $SDNET_DATA, else ./data; downloaded "
        "there when online); for imagenet, the folder with val/<wnid>/*.JPEG (default: $SDNET_DATA/imagenet).",
    ),
]
CDirOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--cifar-c-dir",
        "--imagenet-c-dir",
        help="Folder of the official corrupted release of --dataset: CIFAR-10-C / CIFAR-100-C (<corruption>.npy + "
        "labels.npy) or ImageNet-C (<corruption>/<severity>/<wnid>/*.JPEG). Without it, the needed corruptions are "
        "generated with --seed and cached.",
    ),
]
CacheDirOpt = Annotated[
    Optional[Path],
    typer.Option("--cache-dir", help="Where generated CIFAR-10-C is cached (default: $SDNET_CACHE, else ~/.cache/sdnet-cli)."),
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for generated corruptions and every random choice; same seed, same numbers.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (GPU if present), cpu or cuda.")]
PrecisionOpt = Annotated[
    str, typer.Option(
        "--precision",
        help="fp32, or bf16 autocast: faster on GPUs and CPUs with AMX/AVX512-BF16, much slower on plain AVX2 CPUs "
        "(see benchmarks/throughput.py). CSC solves stay fp32.",
    )
]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward.")]
NExamplesOpt = Annotated[
    Optional[int], typer.Option("--n-examples", "-n", min=1, help="Evaluate only the first N test images of each cell.")
]
OutOpt = Annotated[Path, typer.Option("--out", help="Folder for the JSON, CSV and Markdown reports.")]


@app.command("eval")
@user_errors
def eval_command(
    model: ModelOpt = "sdnet18",
    checkpoint: CheckpointOpt = None,
    dataset: DatasetOpt = "cifar10",
    corruption: Annotated[
        list[str],
        typer.Option(
            "--corruption",
            "-c",
            help="Corruption name, repeatable; 'all' = the 15 benchmark corruptions, 'extra' = the 4 extras, "
            "'none' = clean only. Clean accuracy is always reported alongside.",
        ),
    ] = ["none"],
    severity: Annotated[
        list[str], typer.Option("--severity", "-s", help="Severity 1..5, repeatable, or 'all'.")
    ] = ["all"],
    lam: Annotated[
        Optional[str],
        typer.Option(
            "--lam",
            help="Test-time lambda of every CSC layer (SDNet only): a number; 'auto' (per input, from the stem's "
            "reconstruction error) or 'noise' (per input, from the estimated pixel noise), both calibrated by "
            "`sdnet sweep-lambda --fit`; or 'oracle' (best lambda per cell from --sweep: uses labels). "
            "Default: the training lambda.",
        ),
    ] = None,
    calibration: Annotated[
        Optional[Path],
        typer.Option("--calibration", help="Calibration JSON for --lam auto/noise (default: the checkpoint's own)."),
    ] = None,
    sweep: Annotated[
        Optional[Path], typer.Option("--sweep", help="sweep-lambda JSON report whose best lambdas --lam oracle uses.")
    ] = None,
    cifar_c_dir: CDirOpt = None,
    n_examples: NExamplesOpt = None,
    batch_size: BatchOpt = 256,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    seed: SeedOpt = 0,
    data_dir: DataDirOpt = None,
    cache_dir: CacheDirOpt = None,
    out_dir: OutOpt = Path("reports"),
    name: Annotated[Optional[str], typer.Option("--name", help="Report file stem (default: eval-<model>).")] = None,
) -> None:
    """Accuracy on the clean test split and corrupted cells (CIFAR-10-C, CIFAR-100-C, ImageNet-C; ImageNet also
    gets mCE and relative mCE), written as JSON, CSV and Markdown."""
    corruptions = parse_corruptions(corruption)
    cells = expand_cells(corruptions, parse_severities(severity))
    runtime = Runtime.create(join_ranks(device), precision)
    classifier, info = load_model(model, checkpoint, dataset)
    oracle, cell_policy = lam == ORACLE, None
    if oracle:
        if sweep is None:
            raise ValueError("--lam oracle needs --sweep PATH (a sweep-lambda JSON report of this checkpoint)")
        cell_policy = oracle_lambdas(sweep, info, cells)
    else:
        classifier.lam_policy = parse_lambda(lam, classifier, info, calibration)
    runtime.prepare(classifier)
    source = CellSource(data_dir, cifar_c_dir, cache_dir, seed=seed, n_examples=n_examples, dataset=dataset)
    torch.manual_seed(seed)
    with progress_bar() as progress:
        prepare_cells(source, corruptions, progress)
        task = progress.add_task(f"evaluating {info.name}", total=distributed.shard_size(source.n, batch_size) * len(cells))
        base = {"model": info.name, "dataset": dataset, "lam": ORACLE if oracle else lambda_label(classifier)}
        rows = evaluate_cells(
            classifier, cells, source, runtime, base, batch_size, lambda k: progress.advance(task, k), cell_policy
        )
    if not distributed.is_main():
        return
    summary = corruption_errors(rows, source.spec.ce_baseline, source.spec.ce_baseline_clean)
    meta = base_meta(
        "eval",
        seed,
        model=info.as_meta(),
        checkpoint_sha256=info.sha256,
        data_source=source.describe(),
        n_examples=source.n,
        batch_size=batch_size,
        lam_policy=f"best lambda per cell from {sweep}" if oracle else repr(classifier.lam_policy or "training lambda"),
        oracle=oracle,
        corruption_errors=summary,
        distributed=distributed.describe(),
        **runtime.describe(),
    )
    paths = write_report(rows, meta, out_dir, name or f"eval-{info.name}", title=f"sdnet eval: {info.name}")
    print_rows(f"{info.name} on {dataset}", rows, ["corruption", "severity", "lam", "n", "accuracy"])
    if summary is not None:
        caveat = "" if summary["complete"] else " (not all 15 benchmark corruptions: not comparable with published mCE)"
        relative = summary["relative_mCE"]
        out.print(f"mCE {summary['mCE']:.2f}%, relative mCE {relative:.2f}% over {len(summary['corruptions'])} corruptions, "
                  f"AlexNet-normalised{caveat}" if relative is not None else f"mCE {summary['mCE']:.2f}%{caveat}")
    for path in paths:
        out.print(f"wrote {path}")


def print_rows(title: str, rows: list[dict], columns: list[str]) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="right" if column not in ("corruption", "model", "attack") else "left")
    for row in rows:
        table.add_row(*(f"{row[c]:.2f}" if isinstance(row[c], float) and c == "accuracy" else str(row[c]) for c in columns))
    out.print(table)


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
        Optional[int], typer.Option("--n-examples", "-n", min=1, help="Only the first N test images (default: all).")
    ] = None,
    seed: SeedOpt = 0,
    corruption: Annotated[
        list[str], typer.Option("--corruption", "-c", help="Corruption(s) to generate, repeatable; 'all', 'extra'.")
    ] = ["all", "extra"],
    workers: Annotated[Optional[int], typer.Option("--workers", min=1, help="Worker processes (default: all cores).")] = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Generate a corruption benchmark (seeded) from the test split in the release layout: CIFAR-10-C / CIFAR-100-C
    at CIFAR strengths, ImageNet-C at ImageNet strengths (imagecorruptions)."""
    single_process("make-c")
    from .data.datasets import dataset_spec

    spec = dataset_spec(dataset)
    names = [c for c in parse_corruptions(corruption) if c != CLEAN]
    if not names:
        raise ValueError("nothing to generate: give at least one corruption")
    images, labels = spec.load(data_dir, "test")
    n = min(n_examples or len(images), len(images))
    with progress_bar() as progress:
        task = progress.add_task(f"generating {len(names)} corruptions (seed {seed})", total=len(names) * 5 * n)
        spec.corrupted.generate(out_dir, names, images, labels, n, seed, workers or os.cpu_count() or 1, lambda k: progress.advance(task, k))
    out.print(f"wrote {len(names)} {spec.corrupted.title} corruptions x 5 severities of {n} images to {out_dir}")


@app.command("train")
@user_errors
def train_command(
    model: Annotated[str, typer.Option("--model", "-m", help="Architecture to train, e.g. sdnet18 or resnet18.")],
    out_path: Annotated[
        Path, typer.Option("--out", help="Where to write the trained weights (.safetensors); a manifest entry is added beside it.")
    ],
    dataset: DatasetOpt = "cifar10",
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Epochs of the cosine schedule.")] = 30,
    width: Annotated[int, typer.Option("--width", min=1, help="Channels of the first stage (64 = the paper's ResNet-18).")] = 32,
    batch_size: BatchOpt = 128,
    lr: Annotated[float, typer.Option("--lr", min=0.0, help="Peak learning rate (cosine to 1e-6 per iteration).")] = 0.1,
    lam: Annotated[float, typer.Option("--lam", min=0.0, help="Training lambda of every CSC layer (SDNet only).")] = 0.1,
    sqrt_lasso: Annotated[
        bool, typer.Option("--sqrt-lasso", help="Train the square-root-lasso CSC variant (SDNet only).")
    ] = False,
    precision: PrecisionOpt = "fp32",
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    n_train: Annotated[Optional[int], typer.Option("--n-train", min=1, help="Use only the first N training images.")] = None,
    n_test: Annotated[Optional[int], typer.Option("--n-test", min=1, help="Per-epoch test accuracy on the first N test images.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from <out>.resume.pt (written after every epoch).")] = False,
    default: Annotated[bool, typer.Option("--default/--no-default", help="Make this the default checkpoint of its architecture.")] = False,
    half: Annotated[
        bool,
        typer.Option("--half", help="Store the weights as fp16 (half the file; BatchNorm statistics stay fp32). "
                     "The manifest's accuracy is measured with the stored weights."),
    ] = False,
    data_dir: DataDirOpt = None,
    report_dir: Annotated[Path, typer.Option("--report-dir", help="Where the per-epoch CSV and PNG curve go.")] = Path("reports/training"),
) -> None:
    """Train a model with the reference CIFAR recipe (CIFAR-10 or CIFAR-100), save safetensors, and register it in the manifest."""
    single_process("train")
    import pandas as pd

    from .data.datasets import dataset_spec
    from .models import create_model, save_checkpoint
    from .models.registry import ARCHITECTURES, update_manifest
    from .reports import atomic_write_text, save_line_plot
    from .train import TrainConfig, clean_accuracies, hardware, train

    if out_path.suffix != ".safetensors":
        raise ValueError(f"--out must end in .safetensors, got {out_path}")
    if model not in ARCHITECTURES:
        raise ModelError(f"unknown model {model!r}; choose one of: {', '.join(ARCHITECTURES)}")
    spec = dataset_spec(dataset)
    if spec.stem != "cifar":
        raise ValueError(f"sdnet train implements the CIFAR recipe only; for {spec.title}, load trained weights with --checkpoint")
    cfg = TrainConfig(
        model=model, dataset=dataset, epochs=epochs, width=width, batch_size=batch_size, lr=lr, lam=lam,
        square_noise=not sqrt_lasso, seed=seed, n_train=n_train, n_test=n_test,
    )
    runtime = Runtime.create(device, precision)
    torch.manual_seed(seed)
    classifier = create_model(model, dataset=dataset, width=width, lam=lam, square_noise=not sqrt_lasso)
    train_data, test_data = spec.load(data_dir, "train"), spec.load(data_dir, "test")
    resume_path = out_path.with_name(out_path.name + ".resume.pt")
    n_images = min(n_train or len(train_data[0]), len(train_data[0]))
    with progress_bar() as progress:
        task = progress.add_task(f"training {model} w{width}", total=n_images * epochs)

        def on_epoch(log) -> None:  # type: ignore[no-untyped-def]
            progress.update(task, completed=n_images * log.epoch)
            progress.console.print(
                f"epoch {log.epoch}/{epochs}: loss {log.train_loss:.4f}, train {log.train_accuracy:.2f}%, "
                f"test {log.test_accuracy:.2f}%, {log.images_per_second:.0f} img/s"
            )

        state = train(
            classifier, cfg, train_data, test_data, runtime, resume_path, resume=resume,
            on_batch=lambda k: progress.advance(task, k), on_epoch=on_epoch,
        )
    history = pd.DataFrame([vars(h) for h in state.history])
    name = out_path.stem
    report_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(report_dir / f"{name}.csv", history.to_csv(index=False))
    save_line_plot(history, "epoch", ["train_accuracy", "test_accuracy"], report_dir / f"{name}.png",
                   f"{model} width {width} on {dataset}", "accuracy (%)", secondary=["train_loss"])
    settings = {"architecture": model, "dataset": dataset, "width": width, "num_classes": classifier.network.linear.out_features,
                "lam": lam, "n_steps": 2, "square_noise": not sqrt_lasso}
    digest = save_checkpoint(classifier.network, out_path, settings, half=half)
    if half:  # measure what users will load: the rounded weights
        from safetensors.torch import load_file

        classifier.network.load_state_dict(load_file(str(out_path)))
    accuracies = clean_accuracies(classifier, test_data, runtime)
    entry = {
        "name": name, "file": out_path.name, **settings, "sha256": digest, "dtype": "float16" if half else "float32",
        **accuracies, "epochs": epochs, "seed": seed, "precision": precision,
        "train_seconds": round(sum(h.seconds for h in state.history), 1), "hardware": hardware(),
        "command": "sdnet train " + " ".join(shlex.quote(a) for a in sys.argv[2:]), "default": default,
    }
    manifest = update_manifest(entry, out_path.parent)
    resume_path.unlink(missing_ok=True)
    shown = f"{accuracies['clean_accuracy']:.2f}% (fp32)"
    if "clean_accuracy_bf16" in accuracies:
        shown += f", {accuracies['clean_accuracy_bf16']:.2f}% (bf16)"
    out.print(f"clean test accuracy on {len(test_data[0])} images: {shown}")
    out.print(f"wrote {out_path} (sha256 {digest[:12]}...), {manifest}, {report_dir / name}.csv/.png")


@app.command("sweep-lambda")
@user_errors
def sweep_lambda_command(
    model: ModelOpt = "sdnet18",
    checkpoint: CheckpointOpt = None,
    dataset: DatasetOpt = "cifar10",
    corruption: Annotated[
        list[str],
        typer.Option("--corruption", "-c", help="Corruption name, repeatable; 'all', 'extra', 'none'. Clean is always swept."),
    ] = ["gaussian_noise"],
    severity: Annotated[list[str], typer.Option("--severity", "-s", help="Severity 1..5, repeatable, or 'all'.")] = ["all"],
    lams: Annotated[
        str, typer.Option("--lams", help="Test lambdas of the CSC layers (SDNet-18: the stem): START:STOP:STEP (stop included) or a comma list.")
    ] = "0.1:1.4:0.1",
    fit: Annotated[
        bool,
        typer.Option(
            "--fit",
            help="Also calibrate the per-input rules of --lam auto/noise on corrupted TRAINING images (never the test "
            "set) and write <checkpoint stem>.lambda.json beside the checkpoint.",
        ),
    ] = False,
    fit_corruption: Annotated[
        Optional[list[str]],
        typer.Option("--fit-corruption", help="Corruptions of the calibration groups, repeatable (default: --corruption)."),
    ] = None,
    fit_n: Annotated[int, typer.Option("--fit-n", min=2, help="Training images per calibration group.")] = 1000,
    calibration_out: Annotated[
        Optional[Path], typer.Option("--calibration-out", help="Write the calibration here instead of beside the checkpoint.")
    ] = None,
    cifar_c_dir: CDirOpt = None,
    n_examples: NExamplesOpt = None,
    batch_size: BatchOpt = 256,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    seed: SeedOpt = 0,
    data_dir: DataDirOpt = None,
    cache_dir: CacheDirOpt = None,
    out_dir: OutOpt = Path("reports"),
    name: Annotated[Optional[str], typer.Option("--name", help="Report file stem (default: sweep-lambda-<model>).")] = None,
) -> None:
    """Accuracy and stem reconstruction error for each test lambda on each cell; --fit calibrates --lam auto/noise."""
    single_process("sweep-lambda")
    from .data.datasets import dataset_spec
    from .sweep import calibrate, cell_points, save_sweep_plots, sweep_lambda

    grid = parse_grid(lams)
    corruptions = parse_corruptions(corruption)
    severities = parse_severities(severity)
    cells = expand_cells(corruptions, severities)
    fit_corruptions = parse_corruptions(fit_corruption) if fit_corruption else corruptions
    runtime = Runtime.create(device, precision)
    classifier, info = load_model(model, checkpoint, dataset)
    if not classifier.csc_layers:
        raise ValueError(f"{info.name} has no CSC layers, so it has no lambda to sweep; use an SDNet model (e.g. sdnet18)")
    runtime.prepare(classifier)
    spec = dataset_spec(dataset)
    train = spec.load(data_dir, "train") if fit else None
    source = CellSource(data_dir, cifar_c_dir, cache_dir, seed=seed, n_examples=n_examples, dataset=dataset)
    torch.manual_seed(seed)
    calibration = None
    with progress_bar() as progress:
        prepare_cells(source, corruptions, progress)
        task = progress.add_task(f"sweeping {info.name}", total=source.n * len(cells) * len(grid))
        base = {"model": info.name, "dataset": dataset}
        rows = sweep_lambda(classifier, cells, source, runtime, grid, base, batch_size, lambda k: progress.advance(task, k))
        points = cell_points(classifier, cells, source, runtime, rows, batch_size)
        if train is not None:
            groups = len(expand_cells(fit_corruptions, severities))
            task = progress.add_task("calibrating on training images", total=min(fit_n, len(train[0])) * groups * len(grid))
            calibration = calibrate(
                classifier, *train, runtime, grid, fit_corruptions, severities, fit_n, seed,
                lambda k: progress.advance(task, k), batch_size, info.sha256 or "", spec.strength,
            )
    calibration_path = store_calibration(calibration, info, calibration_out) if calibration else None
    meta = base_meta(
        "sweep-lambda",
        seed,
        model=info.as_meta(),
        checkpoint_sha256=info.sha256,
        data_source=source.describe(),
        n_examples=source.n,
        batch_size=batch_size,
        grid=grid,
        points=points,
        calibration=str(calibration_path) if calibration_path else None,
        **runtime.describe(),
    )
    stem = name or f"sweep-lambda-{info.name}"
    paths = write_report(rows, meta, out_dir, stem, title=f"sdnet sweep-lambda: {info.name}")
    paths += save_sweep_plots(rows, points, out_dir, stem, info.name, calibration)
    best = [{**r, "mean_error": f"{r['mean_error']:.4g}"} for r in rows if r["oracle"]]
    print_rows(f"{info.name}: best lambda per cell", best, ["corruption", "severity", "lam", "n", "accuracy", "mean_error"])
    if calibration is not None:
        out.print(f"auto: lambda = clamp({calibration.auto.a:.4g} * error + {calibration.auto.b:.4g}, "
                  f"{calibration.auto.lo:g}, {calibration.auto.hi:g}); noise: lambda = clamp({calibration.noise.a:.4g} * "
                  f"sigma + {calibration.noise.b:.4g}, ...); wrote {calibration_path}")
    for path in paths:
        out.print(f"wrote {path}")


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
            "FAB-T, Square with the original settings), each attack only on points still correct, worst case per sample.",
        ),
    ] = "autoattack",
    norm: Annotated[str, typer.Option("--norm", help="Threat model: Linf or L2.")] = "Linf",
    eps: Annotated[
        list[str],
        typer.Option(
            "--eps",
            help="Budget in [0,1] pixel units: a fraction (8/255) or a decimal; repeatable for a sweep, where a point "
            "fooled at a smaller eps counts as fooled at the larger ones.",
        ),
    ] = ["8/255"],
    steps: Annotated[
        Optional[int],
        typer.Option("--steps", min=1, help="Iterations of a single attack (square: queries); default pgd 20, apgd/fab 100, square 5000."),
    ] = None,
    restarts: Annotated[Optional[int], typer.Option("--restarts", min=1, help="Random restarts of a single attack (default 1).")] = None,
    version: Annotated[
        str,
        typer.Option("--version", help="autoattack version: standard, or rand (randomised models: APGD-CE and APGD-DLR with 20 EOT iterations)."),
    ] = "standard",
    lam: Annotated[
        Optional[str],
        typer.Option(
            "--lam",
            help="Test-time lambda of the CSC layers (SDNet only): a number, or 'auto'/'noise' (per input, calibrated by "
            "`sdnet sweep-lambda --fit`). The attack differentiates the deployed pipeline, lambda(x) included "
            "(its clamp straight-through). Default: the training lambda.",
        ),
    ] = None,
    calibration: Annotated[
        Optional[Path],
        typer.Option("--calibration", help="Calibration JSON for --lam auto/noise (default: the checkpoint's own)."),
    ] = None,
    n_examples: Annotated[
        Optional[int], typer.Option("--n-examples", "-n", min=1, help="Attack only the first N test images (default: all).")
    ] = None,
    batch_size: BatchOpt = 128,
    device: DeviceOpt = "auto",
    precision: Annotated[
        str, typer.Option("--precision", help="fp32 (default: attacks take gradients in fp32), or bf16 autocast for forwards and gradients.")
    ] = "fp32",
    seed: SeedOpt = 0,
    data_dir: DataDirOpt = None,
    out_dir: OutOpt = Path("reports"),
    name: Annotated[Optional[str], typer.Option("--name", help="Report file stem (default: attack-<model>-<attack>).")] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted run from <out>/<name>.state.json, skipping finished batches.")
    ] = False,
    save_adv: Annotated[
        Optional[Path],
        typer.Option(
            "--save-adv",
            help="Also write the adversarial examples (.npz: float32 NHWC in [0,1] per eps, labels, robust flags); "
            "robust accuracy after rounding them to uint8 goes into the report meta, separately.",
        ),
    ] = None,
) -> None:
    """Robust accuracy under white-box and black-box attacks (torchattacks), written as JSON, CSV and Markdown."""
    from .attacks import (
        ATTACKS, NORMS, VERSIONS, check_settings, parse_choice, parse_eps, remove_state, requantized_robust_accuracy,
        run_attack, save_adversarials,
    )
    from .data.datasets import dataset_spec

    budgets = [parse_eps(e) for e in eps]
    attack = parse_choice(attack, ATTACKS, "attack")
    norm = parse_choice(norm, NORMS, "norm")
    version = parse_choice(version, VERSIONS, "version")
    check_settings(attack, steps, restarts, version)
    if save_adv is not None and save_adv.suffix != ".npz":
        raise ValueError(f"--save-adv must end in .npz, got {save_adv}")
    if lam == ORACLE:
        raise ValueError("--lam oracle picks lambda per corruption cell using labels; it is no deployed pipeline to attack")
    runtime = Runtime.create(join_ranks(device), precision)
    classifier, info = load_model(model, checkpoint, dataset)
    classifier.lam_policy = parse_lambda(lam, classifier, info, calibration)
    images, labels = dataset_spec(dataset).load(data_dir, "test")
    images, labels = images[:n_examples], labels[:n_examples]
    stem = name or f"attack-{info.name}-{attack}"
    state_path = out_dir / f"{stem}{distributed.rank_suffix()}.state.json"
    with progress_bar() as progress:
        task = progress.add_task(
            f"{attack} on {info.name}", total=distributed.shard_size(len(images), batch_size) * len(set(b.value for b in budgets))
        )
        results = run_attack(
            classifier, images, labels, attack, norm, budgets, steps, restarts, seed, runtime, batch_size,
            lambda k: progress.advance(task, k), version, state_path, resume, keep_adv=save_adv is not None,
            fingerprint={"model": info.name, "checkpoint_sha256": info.sha256, "dataset": dataset},
        )
    if not distributed.is_main():
        remove_state(state_path)
        return
    rows = results.rows({"model": info.name, "dataset": dataset, "lam": lambda_label(classifier)})
    saved = None
    if save_adv is not None:
        saved = {
            "path": str(save_adversarials(save_adv, results, labels)),
            "format": "float32 NHWC in [0,1], not rounded (rounding to uint8 can undo an attack)",
            "uint8_robust_accuracy": requantized_robust_accuracy(classifier, results, labels, runtime, batch_size),
        }
    meta = base_meta(
        "attack",
        seed,
        model=info.as_meta(),
        checkpoint_sha256=info.sha256,
        data_source={"dataset": dataset, "split": "test", "first_n": len(images)},
        n_examples=len(images),
        batch_size=batch_size,
        attack=attack,
        norm=norm,
        version=version if attack == "autoattack" else None,
        eps=[{"value": b.value, "text": b.text} for b in results.eps],
        components=results.settings,
        protocol="sample-wise: each attack runs only on points still classified correctly and each adversarial example "
        "is judged once by the deployed model; robust = correct and fooled by no attack; over an eps sweep a point "
        "fooled at a smaller eps counts as fooled at larger ones; eps 0 is the clean accuracy",
        lam_policy=repr(classifier.lam_policy or "training lambda"),
        lambda_gradient=results.diagnostics.lambda_gradient,
        diagnostics=results.diagnostics.as_meta(),
        saved_adversarials=saved,
        distributed=distributed.describe(),
        **runtime.describe(),
    )
    paths = write_report(rows, meta, out_dir, stem, title=f"sdnet attack: {info.name}, {attack} ({norm})")
    remove_state(state_path)
    for warning in results.diagnostics.warnings():
        console.print(f"[bold yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    shown = [{**r, "clean_accuracy": f"{r['clean_accuracy']:.2f}", "robust_accuracy": f"{r['robust_accuracy']:.2f}"} for r in rows]
    print_rows(f"{info.name} on {dataset}", shown, ["attack", "norm", "eps_text", "lam", "n", "clean_accuracy", "robust_accuracy", "seconds"])
    for path in paths + ([save_adv] if save_adv is not None else []):
        out.print(f"wrote {path}")


@app.command("check")
@user_errors
def check_command(
    baseline: Annotated[
        Path, typer.Option("--baseline", help="Baseline JSON to compare with (written by --update).")
    ] = Path("reports/baseline.json"),
    suite_path: Annotated[
        Optional[Path],
        typer.Option(
            "--suite",
            help="Suite JSON: models (names or {model, checkpoint, lam}), n_examples, cells [[corruption, severity]], "
            "attack, eps, steps, tolerance, seed. Default: the suite stored in the baseline, else the shipped "
            "sdnet18 and resnet18 on 500 images.",
        ),
    ] = None,
    update: Annotated[bool, typer.Option("--update", help="Measure and (re)write the baseline instead of comparing.")] = False,
    tolerance: Annotated[
        Optional[float], typer.Option("--tolerance", min=0.0, help="Accuracy points a metric may fall (default: the suite's, 1.0).")
    ] = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    data_dir: DataDirOpt = None,
    cache_dir: CacheDirOpt = None,
) -> None:
    """Regression gate: re-run a fixed, seeded suite and compare each metric with the baseline; exit 1 on a regression."""
    single_process("check")
    from .check import Suite, compare_with_baseline, failed, read_baseline, run_suite

    stored = read_baseline(baseline) if not update or baseline.is_file() else None
    if suite_path is not None:
        suite = Suite.load(suite_path)
    elif stored is not None and "suite" in stored[0]:
        suite = Suite.load_dict(stored[0]["suite"])
    else:
        suite = Suite()
    if tolerance is not None:
        suite.tolerance = tolerance
    runtime = Runtime.create(device, precision)
    with progress_bar() as progress:
        task = progress.add_task("checking", total=suite.n_examples * (len(suite.cells) + 2) * len(suite.models))
        rows = run_suite(suite, runtime, data_dir, cache_dir, lambda k: progress.advance(task, k))
    if update:
        meta = base_meta("check", suite.seed, suite=suite.as_meta(), **runtime.describe())
        for path in write_report(rows, meta, baseline.parent, baseline.stem, title="sdnet check baseline"):
            out.print(f"wrote {path}")
        return
    table = compare_with_baseline(rows, stored[1], suite.tolerance)  # type: ignore[index]
    moved = [r for r in table if r["status"] != "ok"]
    print_rows(f"sdnet check vs {baseline} (tolerance {suite.tolerance:g} points)", moved or table,
               ["model", "metric", "baseline", "now", "change", "status"])
    if failed(table):
        console.print("[bold red]check failed:[/] a metric fell below its baseline (or is no longer measured)")
        raise typer.Exit(1)
    out.print(f"check passed: {len(table)} metrics within {suite.tolerance:g} points of {baseline}")


@app.command("compare")
@user_errors
def compare_command(
    sources: Annotated[
        list[str],
        typer.Argument(
            help="Reports to put side by side, as LABEL=REPORT.json (eval reports, or attack reports); repeat a label "
            "to combine several reports into one column.",
            show_default=False,
        ),
    ],
    out_dir: OutOpt = Path("reports"),
    name: Annotated[str, typer.Option("--name", help="Report file stem.")] = "compare",
    title: Annotated[Optional[str], typer.Option("--title", help="Heading of the Markdown report.")] = None,
    note: Annotated[str, typer.Option("--note", help="A paragraph placed above the table (e.g. how the runs differ).")] = "",
) -> None:
    """One table from several eval or attack reports: a row per cell (or attack and eps), a column per label."""
    from .compare import compare, describe_sources, load_source, parse_source, render

    loaded = [load_source(*parse_source(text)) for text in sources]
    rows, value = compare(loaded)
    described = describe_sources(loaded)
    meta = base_meta("compare", seed=0, value=value, sources=described)
    paths = write_report(rows, meta, out_dir, name, markdown=render(title or name, rows, value, described, note))
    for path in paths:
        out.print(f"wrote {path}")


def main() -> None:
    app()
