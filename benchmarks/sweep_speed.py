"""How fast the lambda sweep runs, and what bf16 changes in it: ``sweep.sweep_cells`` on a slice of the clean
test split and one noise cell, fp32 vs bf16 (and, for reference, one ``predict_correct`` pass per lambda, the
loop before each batch was converted once), timed interleaved in CPU seconds of this process.

    python benchmarks/sweep_speed.py --n-images 256 --lams 0.1,0.7,1.4 --rounds 3 --agreement-n 2000

Prints images per CPU second of each way (best of ``--rounds`` interleaved rounds) and the wall time the
oracle sweep (27 lambdas x 21 cells x 10,000 images) would take at that rate on this machine when idle,
every core busy (CPU seconds / cores: the best case). On a shared machine run it with OMP_NUM_THREADS=1:
waiting threads of a multi-threaded run spin, which counts as CPU time when cores are contended.
``--agreement-n N``: per (lambda, image) correctness of the bf16 sweep vs the fp32 sweep on the first N
images of clean and gaussian_noise severity 5 (generated, seed 0), at every lambda of ``--lams``. The shipped sdnet18, CIFAR-10 ($SDNET_DATA).
"""

from __future__ import annotations

import argparse
import os
import resource
from collections.abc import Callable

import torch
from bench import print_table

from sdnet_cli.data.cells import Cell, CellSource
from sdnet_cli.lam import FixedLambda, lambda_grid
from sdnet_cli.models import load_model
from sdnet_cli.runtime import Runtime, predict_correct
from sdnet_cli.sweep.plan import EVERY_PAIR
from sdnet_cli.sweep.runs import sweep_cells

ORACLE_SWEEP = 27 * 21 * 10_000
"""Forwards of the oracle sweep: the 0.1:1.4:0.05 grid, clean + the 20 noise cells, 10,000 images each."""


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def per_lambda_passes(model: torch.nn.Module, source: CellSource, runtime: Runtime, grid: list[float]) -> None:
    """The sweep as one evaluation pass per lambda (each batch converted again for every lambda)."""
    images, labels = source.load(Cell("clean", 0))
    for lam in grid:
        with model.using(FixedLambda(lam)), model.stem_csc.recording_error():
            predict_correct(model, images, labels, runtime, 64)


def agreement(model: torch.nn.Module, n: int, grid: list[float], batch_size: int) -> list[dict]:
    source = CellSource(None, seed=0, n_examples=n)
    source.prepare(["gaussian_noise"])
    rows = []
    for cell in (Cell("clean", 0), Cell("gaussian_noise", 5)):
        flags = {}
        for precision in ("fp32", "bf16"):
            runtime = Runtime.create("cpu", precision)
            flags[precision] = sweep_cells(model, [cell], source, runtime, grid, batch_size, plan=EVERY_PAIR)[0].correct
        same = flags["fp32"] == flags["bf16"]
        rows.append(
            {
                "cell": f"{cell.corruption} s{cell.severity}" if cell.severity else "clean",
                "images": n,
                "lambdas": len(grid),
                "same correctness": f"{int(same.sum())}/{same.size}",
                "share": round(float(same.mean()), 5),
                "correct fp32 / bf16": f"{int(flags['fp32'].sum())} / {int(flags['bf16'].sum())}",
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-images", type=int, default=256)
    parser.add_argument("--lams", default="0.1,0.7,1.4")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--agreement-n", type=int, help="also measure bf16 vs fp32 agreement on this many images")
    args = parser.parse_args()
    grid = lambda_grid([float(v) for v in args.lams.split(",")])
    model, _ = load_model("sdnet18")
    source = CellSource(None, n_examples=args.n_images)
    cells = [Cell("clean", 0)]
    fp32, bf16 = Runtime.create("cpu", "fp32"), Runtime.create("cpu", "bf16")
    fp32.prepare(model)
    ways: dict[str, Callable[[], object]] = {
        "fp32, one pass per lambda": lambda: per_lambda_passes(model, source, fp32, grid),
        "fp32": lambda: sweep_cells(model, cells, source, fp32, grid, args.batch_size, plan=EVERY_PAIR),
        "bf16": lambda: sweep_cells(model, cells, source, bf16, grid, args.batch_size, plan=EVERY_PAIR),
    }
    best = dict.fromkeys(ways, float("inf"))
    for round_ in range(args.rounds + 1):  # round 0 warms up (kernel selection, step sizes)
        for name, work in ways.items():
            start = cpu_seconds()
            work()
            if round_:
                best[name] = min(best[name], cpu_seconds() - start)
    forwards = args.n_images * len(grid)
    cores = os.cpu_count() or 1
    rows = [
        {
            "sweep": name,
            "cpu s": round(seconds, 2),
            "images per cpu s": round(forwards / seconds, 1),
            "vs fp32": round(best["fp32"] / seconds, 3),
            "oracle sweep, idle machine (min)": round(ORACLE_SWEEP * seconds / forwards / cores / 60, 1),
        }
        for name, seconds in best.items()
    ]
    print_table(
        f"Lambda sweep speed (shipped sdnet18, {args.n_images} clean images x {len(grid)} lambdas, "
        f"batch {args.batch_size})",
        rows,
        f"CPU seconds of this process ({torch.get_num_threads()} threads), best of {args.rounds} interleaved rounds "
        f"after a warm-up round; the oracle sweep's time assumes all {cores} cores busy at this rate (CPU seconds / "
        f"{cores}).",
    )
    if args.agreement_n:
        print_table(
            f"bf16 vs fp32 sweep: per (lambda, image) correctness (lambdas {', '.join(map(str, grid))})",
            agreement(model, args.agreement_n, grid, args.batch_size),
            "Same correctness: the pair is classified correctly by both or by neither.",
        )


if __name__ == "__main__":
    main()
