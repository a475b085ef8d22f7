"""Run every benchmark once, one after another, and write their tables to reports/benchmarks.md.

    OMP_NUM_THREADS=2 SDNET_DATA=../shared/data python benchmarks/run_all.py
    OMP_NUM_THREADS=2 SDNET_DATA=../shared/data python benchmarks/run_all.py --only cli_startup.py
    OMP_NUM_THREADS=2 SDNET_DATA=../shared/data python benchmarks/run_all.py --only authors_speed.py --authors-src ../SDNet
    OMP_NUM_THREADS=2 SDNET_DATA=../shared/data python benchmarks/run_all.py --only autoattack_reference.py \
        --reference-src ../auto-attack

Each script runs in its own process (never two at a time); its printed tables go into the report
as they are, so every ratio in it was measured within one run of one script. The report is
written atomically, and only when every script succeeded.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import subprocess
import sys
from pathlib import Path

from sdnet_cli._io import atomic_write_text

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# (script and arguments, extra environment): corruptions run one thread per worker, as the
# generator's pool does; the shipped models are width 32.
JOBS: list[tuple[list[str], dict[str, str]]] = [
    (
        [
            "throughput.py",
            "--shipped",
            "--precision",
            "fp32",
            "--precision",
            "bf16",
            "--precision",
            "bf16-checked",
            "--batch-size",
            "256",
            "--repeats",
            "9",
            "--best",
        ],
        {},
    ),
    (["train_step.py", "--width", "32", "--batch-size", "128", "--repeats", "3"], {}),
    (["lambda_throughput.py", "--width", "32", "--rounds", "3"], {}),
    (
        [
            "stem_precision.py",
            "--width",
            "32",
            "--batch-size",
            "256",
            "--repeats",
            "5",
            "--agreement-n",
            "10000",
            "--noise-severity",
            "5",
        ],
        {},
    ),
    (["checked_precision.py", "--n", "10000"], {}),
    (["sweep_speed.py", "--n-images", "256", "--lams", "0.1,0.7,1.4", "--rounds", "3", "--agreement-n", "1000"], {}),
    (["oracle_sweep.py", "--n", "10000", "--compare-n", "200", "--out", "reports/lambda/full"], {}),
    (["sweep_profile.py", "--n", "500", "--compare-n", "50", "--rounds", "2"], {"OMP_NUM_THREADS": "1"}),
    (["pgd_step.py", "--width", "32", "--batch-size", "64", "--steps", "5"], {}),
    (["cost_prediction.py", "--n-images", "64", "--autoattack-images", "16"], {}),
    (["cifar_c_rate.py", "--images", "200", "--pipeline-images", "1000"], {"OMP_NUM_THREADS": "1"}),
    (["cli_startup.py", "--repeats", "5"], {}),
    (["eval_batch_size.py", "--n-images", "1024", "--repeats", "3"], {}),
    (["eval_memory.py", "--n", "2000"], {}),
    (["compile_speed.py"], {}),
    (["authors_speed.py", "--n-images", "1024", "--repeats", "5"], {}),  # + --authors-src when run_all has it
    (
        ["autoattack_reference.py", "--n-images", "100", "--eps", "2/255", "--rounds", "2"],
        {"OMP_NUM_THREADS": "1"},
    ),  # + --reference-src likewise
]


def commit() -> str:
    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return result.stdout.strip() or "unknown"


def block(script: str, shown: str, output: str) -> str:
    """One script's tables between markers, so ``--only`` can replace them in place later."""
    stamp = f"_`{shown}`, measured {datetime.date.today().isoformat()} at commit {commit()}._"
    return f"<!-- run: {script} -->\n{stamp}\n\n{output.strip()}\n<!-- end: {script} -->"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "benchmarks.md")
    parser.add_argument(
        "--only",
        action="append",
        metavar="SCRIPT",
        help="Run only this script (repeatable, e.g. cli_startup.py) and replace its tables in --out, "
        "keeping the others (appended if it had none).",
    )
    parser.add_argument(
        "--authors-src",
        type=Path,
        help="A checkout of github.com/Delay-Xili/SDNet for authors_speed.py (without it, that script "
        "only says what to pass).",
    )
    parser.add_argument(
        "--reference-src",
        type=Path,
        help="A checkout of github.com/fra31/auto-attack for autoattack_reference.py (without it, that "
        "script only says what to pass).",
    )
    args = parser.parse_args()
    jobs = [(script, env) for script, env in JOBS if not args.only or script[0] in args.only]
    unknown = set(args.only or ()) - {script[0] for script, _ in JOBS}
    if unknown:
        sys.exit(f"unknown benchmark {', '.join(sorted(unknown))}; choose from {', '.join(s[0] for s, _ in JOBS)}")
    blocks = {}
    for script, env in jobs:
        if script[0] == "authors_speed.py" and args.authors_src:
            script = [*script, "--authors-src", str(args.authors_src.resolve())]
        if script[0] == "autoattack_reference.py" and args.reference_src:
            script = [*script, "--reference-src", str(args.reference_src.resolve())]
        command = [sys.executable, str(HERE / script[0]), *script[1:]]
        shown = " ".join([*(f"{k}={v}" for k, v in env.items()), "python", f"benchmarks/{script[0]}", *script[1:]])
        print(f"running {shown}", file=sys.stderr, flush=True)
        result = subprocess.run(command, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True)
        if result.returncode:
            sys.exit(f"{shown} failed:\n{result.stderr}")
        print(result.stdout, flush=True)
        blocks[script[0]] = block(script[0], shown, result.stdout)
    if args.only and args.out.is_file():
        text = args.out.read_text()
        for script, new in blocks.items():
            found = re.search(
                rf"<!-- run: {re.escape(script)} -->.*?<!-- end: {re.escape(script)} -->", text, flags=re.S
            )
            text = text[: found.start()] + new + text[found.end() :] if found else text.rstrip() + "\n\n" + new + "\n"
    else:
        threads = os.environ.get("OMP_NUM_THREADS", "unset")
        text = (
            "# Benchmarks\n\n"
            f"Written by `python benchmarks/run_all.py` (OMP_NUM_THREADS={threads} unless a command sets it); each "
            "script's tables say when and at which commit they were measured (`--only SCRIPT` re-measures one). The "
            "machine may have been shared with other work while these ran, so absolute numbers can be low; each ratio "
            "was computed within one run of one script. Numbers are measured, not extrapolated, except where a table "
            "says so.\n\n" + "\n\n".join(blocks.values()) + "\n"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, text)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
