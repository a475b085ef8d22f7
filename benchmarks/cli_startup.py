"""How fast the ``sdnet`` command answers ``--help``, ``CMD --help`` and ``--version``: wall time
and peak memory of a fresh process, beside a process that only imports torch (the cost the CLI
avoids by importing torch inside its commands).

    python benchmarks/cli_startup.py --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

CASES = {
    "sdnet --help": ["-m", "sdnet_cli", "--help"],
    "sdnet eval --help": ["-m", "sdnet_cli", "eval", "--help"],
    "sdnet attack --help": ["-m", "sdnet_cli", "attack", "--help"],
    "sdnet --version": ["-m", "sdnet_cli", "--version"],
    "python -c 'import torch' (reference)": ["-c", "import torch"],
}


def measure(args: list[str]) -> tuple[float, float]:
    """(wall seconds, peak resident MB) of one fresh interpreter running ``args``. The caller must be a
    small process (no torch imported): a child's peak can include what it shared with its parent."""
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, *args], stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise SystemExit(f"{args} failed with exit code {child.returncode}")
    return seconds, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rows = []
    for name, command in CASES.items():
        times, peaks = zip(*(measure(command) for _ in range(args.repeats)))
        rows.append(
            {"command": name, "wall s (median)": round(statistics.median(times), 3), "peak MB": round(max(peaks))}
        )
    from bench import print_table  # imports torch: only after the measurements

    reference = rows[-1]["wall s (median)"]
    for row in rows:
        row["x import torch"] = round(row["wall s (median)"] / reference, 2)
    print_table(
        "CLI start-up",
        rows,
        f"Fresh interpreter per run, median of {args.repeats} runs; peak resident memory "
        "of the process. Target: help and version within 0.5 s and 150 MB.",
    )


if __name__ == "__main__":
    main()
