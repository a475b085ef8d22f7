"""Options of several commands, declared once: flag and help. Each command lists the ones it has, with
their defaults, and builds the API's records (``ModelSpec``, ``DataSpec``, ``RunSpec``) from them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

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
AttackSeedOpt = Annotated[
    int,
    typer.Option(
        "--seed", help="Seed (0 .. 2**32-1) of the attacks' random starts and draws; same seed, same numbers."
    ),
]
TrainDatasetOpt = Annotated[
    str, typer.Option("--dataset", help="Dataset to train on: cifar10 or cifar100 (its training split).")
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (GPU if present), cpu or cuda.")]
PrecisionOpt = Annotated[
    str,
    typer.Option(
        "--precision",
        help="fp32; bf16 autocast: faster on GPUs and CPUs with AMX/AVX512-BF16, much slower on plain AVX2 CPUs "
        "(see benchmarks/throughput.py), CSC solves stay fp32; or bf16-checked (not for training): bf16, with every "
        "image whose top-two logits are closer than 0.5 re-run in fp32, and a seeded 2% of the rest re-run to audit "
        "that the decisions equal fp32's (counts in the report's meta).",
    ),
]
EvalBatchOpt = Annotated[
    int | None,
    typer.Option(
        "--batch-size",
        help="Images per forward (default: 64 on CPU, 256 on GPU; benchmarks/eval_batch_size.py measures the choice). "
        "Accuracy does not depend on it.",
    ),
]
AttackBatchOpt = Annotated[
    int | None,
    typer.Option(
        "--batch-size",
        help="Images per attacked batch (default: 128). Results depend on it, as on --pool-batches.",
    ),
]
NExamplesOpt = Annotated[
    int | None, typer.Option("--n-examples", "-n", help="Use only the first N test images (of each cell).")
]
AttackNExamplesOpt = Annotated[
    int | None, typer.Option("--n-examples", "-n", help="Attack only the first N test images (default: all).")
]
OutOpt = Annotated[
    Path,
    typer.Option(
        "--out",
        help="Folder for the JSON, CSV and Markdown reports (default: runs/ in the current folder; a checkout's .gitignore leaves it out of git).",
    ),
]
NameOpt = Annotated[
    str | None, typer.Option("--name", help="Report file stem (a plain file name; default per command).")
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
        "--resume",
        help="Continue an interrupted run from <out>/<name>*.state.json (saved as it goes, removed when it "
        "finishes), skipping the work it finished: an attack's pools of images, an evaluation's cells, a "
        "lambda sweep's cells and calibration groups.",
    ),
]
PoolOpt = Annotated[
    int | None,
    typer.Option(
        "--pool-batches",
        help="Attacks run on pools of this many batches (default: 8): before each "
        "attack the points still standing in a pool are gathered into full batches. Results depend on it as on "
        "--batch-size; torchrun splits and --resume saves whole pools.",
    ),
]
AttackPrecisionOpt = Annotated[
    str,
    typer.Option(
        "--precision",
        help="fp32 (default: attacks take gradients in fp32), or bf16 autocast for forwards and gradients.",
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
        help="Run inference through torch.compile: a one-off compile, then faster forwards; predictions equal eager "
        "ones up to float rounding. Pays off for long runs.",
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
FitNOpt = Annotated[int, typer.Option("--fit-n", help="Training images per calibration group (>= 2).")]
SweepSpanOpt = Annotated[
    float,
    typer.Option(
        "--sweep-span",
        help="Largest lambda gap the sweep infers a prediction across: grid lambdas at most this far apart run on "
        "every image, those between them only for images whose predicted class (or a softmax margin of 0.2) "
        "differs at the two ends; the rest take the class of the ends. 0 runs every (lambda, image) pair. A "
        "random 2% of the inferred pairs run anyway, and the report states how many of them agreed.",
    ),
]
CalibrationOutOpt = Annotated[
    Path | None,
    typer.Option(
        "--calibration-out",
        help="Write the calibration here (default: beside the checkpoint; required for a checkpoint that came with "
        "sdnet-cli, whose shipped calibration the default would replace).",
    ),
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
PriorStrengthOpt = Annotated[
    float | None,
    typer.Option(
        "--prior-strength",
        help="N of --adapt bn-prior, from 0 (the image's own statistics) to 1e6 (the stored ones). Default 16, the "
        "single-image prior of MEMO's released code (Zhang et al. 2022), after Schneider et al. 2020.",
    ),
]
MemoCopiesOpt = Annotated[
    int | None,
    typer.Option(
        "--memo-copies",
        help="Augmented copies per image of --adapt memo, 1 to 256 (each is a forward and a backward). Default 32, "
        "MEMO's CIFAR-10 setting (Zhang et al. 2022).",
    ),
]
MemoLrOpt = Annotated[
    float | None,
    typer.Option(
        "--memo-lr",
        help="SGD learning rate of --adapt memo's one step, in (0, 1]. Default 0.005, MEMO's CIFAR-10 setting.",
    ),
]
