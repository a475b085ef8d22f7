"""Peak memory of ``sdnet eval`` with malloc as sdnet commands set it up (``runtime.keep_freed_memory``)
and with its off-switch (``SDNET_KEEP_FREED_MEMORY=0``), measured in one run.

    python benchmarks/eval_memory.py --n 2000 --batch-size 64 --batch-size 256

Each configuration is a fresh ``python -m sdnet_cli eval`` process (shipped sdnet18, clean test set, fp32,
reports into a temporary folder); its peak resident memory and wall time come from ``os.wait4``. The
two settings alternate, ``--rounds`` times; the table gives the largest peak and the median wall time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from bench import print_table


def measure(n: int, batch_size: int, switch: str) -> tuple[float, float]:
    """(peak RSS MB, wall s) of one ``sdnet eval`` process."""
    with tempfile.TemporaryDirectory() as out:
        argv = [sys.executable, "-m", "sdnet_cli", "eval", "--model", "sdnet18", "--corruption", "none", "-n", str(n)]
        argv += ["--batch-size", str(batch_size), "--device", "cpu", "--precision", "fp32", "--out", out]
        start = time.perf_counter()
        env = {**os.environ, "SDNET_KEEP_FREED_MEMORY": switch}
        child = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - start
        if status != 0:
            raise SystemExit(f"sdnet eval failed: {child.stderr.read().decode() if child.stderr else status}")
    return usage.ru_maxrss / 1024, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, action="append")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    rows = []
    for batch_size in args.batch_size or [64, 256]:
        found: dict[str, list[tuple[float, float]]] = {"1": [], "0": []}
        for _ in range(args.rounds):
            for switch in found:
                found[switch].append(measure(args.n, batch_size, switch))
        peak = {s: max(m for m, _ in runs) for s, runs in found.items()}
        wall = {s: statistics.median(w for _, w in runs) for s, runs in found.items()}
        for switch, label in (("1", "kept (default)"), ("0", "SDNET_KEEP_FREED_MEMORY=0")):
            rows.append(
                {
                    "batch": batch_size,
                    "malloc": label,
                    "peak RSS MB": round(peak[switch]),
                    "vs off": f"{peak[switch] - peak['0']:+.0f} MB",
                    "wall s (median)": round(wall[switch], 1),
                }
            )
    print_table(
        f"Peak memory of sdnet eval (sdnet18, {args.n} clean images, fp32, cpu)",
        rows,
        f"Fresh process per run, settings alternating, {args.rounds} rounds; peak RSS from os.wait4 (whole process, "
        "imports and model included); wall time includes start-up.",
    )


if __name__ == "__main__":
    main()
