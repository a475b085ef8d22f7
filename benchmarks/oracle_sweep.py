"""The oracle sweep as `sdnet lambda-rules` runs it, timed on this machine: the shipped sdnet18, clean + the 20
noise cells (gaussian, shot, impulse and speckle noise, severities 1-5), the 27 lambdas of 0.1:1.4:0.05, the first
``--n`` test images of each cell (generated CIFAR-10-C, seed 0), fp32.

    python benchmarks/oracle_sweep.py --n 10000 --compare-n 200 --out reports/lambda/full

1. The report itself (``api.compare_lambda_rules``: rules 0.1 and auto, then the sweep with the default
   ``SweepPlan``), written to ``--out`` as lambda-rules-noise; wall time of the sweep and of the whole job.
2. With ``--compare-n M``: the same sweep on the first M images of each cell by the default plan and by running
   every pair, the two interleaved cell by cell, with their per-(lambda, image) correctness agreement.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from bench import print_table

from sdnet_cli import api
from sdnet_cli.data.cells import Cell, CellSource
from sdnet_cli.models import load_model
from sdnet_cli.runtime import Runtime
from sdnet_cli.sweep.plan import EVERY_PAIR, SweepPlan
from sdnet_cli.sweep.runs import sweep_cells

NOISES = ["gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise"]
GRID = "0.1:1.4:0.05"


def full_report(n: int, out: Path, batch_size: int) -> dict:
    start = time.perf_counter()
    report = api.compare_lambda_rules(
        model="sdnet18", data=api.DataSpec(n_examples=n), run=api.RunSpec(device="cpu", batch_size=batch_size),
        corruptions=NOISES, rules=[0.1, "auto"], lams=GRID,
    )  # fmt: skip
    total = time.perf_counter() - start
    report.write(out, "lambda-rules-noise")
    swept = report.meta["sweep"]
    return {
        "job": f"lambda-rules, {n:,} images per cell",
        "cells": 21,
        "pairs": swept["pairs"],
        "pairs run": f"{swept['pairs_run'] / swept['pairs']:.1%}",
        "audit agreement": f"{swept['audit_same']:,}/{swept['audited']:,} ({swept['audit_agreement']:.4%})",
        "sweep wall (min)": round(swept["wall_seconds"] / 60, 1),
        "whole job wall (min)": round(total / 60, 1),
    }


def compare(m: int, batch_size: int) -> list[dict]:
    model, _ = load_model("sdnet18")
    runtime = Runtime.create("cpu")
    source = CellSource(None, seed=0, n_examples=m)
    source.prepare(NOISES)
    grid = [round(0.1 + 0.05 * i, 2) for i in range(27)]
    cells = [Cell("clean", 0)] + [Cell(c, s) for c in NOISES for s in range(1, 6)]
    seconds = {"plan": 0.0, "every": 0.0}
    same = pairs = oracle_changes = 0
    for cell in cells:
        found = {}
        for name, plan in (("plan", SweepPlan()), ("every", EVERY_PAIR)):
            start = time.perf_counter()
            (found[name],) = sweep_cells(model, [cell], source, runtime, grid, batch_size, plan=plan)
            seconds[name] += time.perf_counter() - start
        same += int((found["plan"].correct == found["every"].correct).sum())
        pairs += found["plan"].correct.size
        oracle_changes += int(
            found["plan"].correct.any(axis=0).sum() != found["every"].correct.any(axis=0).sum()
            or found["plan"].correct.sum(axis=1).max() != found["every"].correct.sum(axis=1).max()
        )
    return [
        {
            "images per cell": m,
            "cells": len(cells),
            "plan s": round(seconds["plan"], 1),
            "every pair s": round(seconds["every"], 1),
            "speed-up": round(seconds["every"] / seconds["plan"], 2),
            "same correctness": f"{same:,}/{pairs:,} ({same / pairs:.4%})",
            "cells with an oracle changed": oracle_changes,
        }
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000, help="test images per cell of the timed report")
    parser.add_argument("--compare-n", type=int, default=0, help="also compare with every pair on this many")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("reports/lambda/full"))
    args = parser.parse_args()
    threads = torch.get_num_threads()
    print_table(
        "Oracle sweep, wall time (shipped sdnet18, clean + 20 noise cells, 27 lambdas, fp32)",
        [full_report(args.n, args.out, args.batch_size)],
        f"{threads} threads, {os.cpu_count()} cores, batch {args.batch_size}; one run, nothing else running. "
        "Sweep wall: the sweep alone (default SweepPlan: span 0.2, margin 0.2, 2% audit); whole job: also the two "
        "rules' evaluations and loading.",
    )
    if args.compare_n:
        print_table(
            f"Default plan vs every pair (first {args.compare_n} images of the same 21 cells)",
            compare(args.compare_n, args.batch_size),
            "Wall seconds of each way, interleaved cell by cell; same correctness: per (lambda, image) pair. An "
            "oracle changed: the per-cell or per-input oracle's count differs between the two ways.",
        )


if __name__ == "__main__":
    main()
