"""Shared by the benchmark scripts: timing with the same warm-up everywhere, and tables that say
what machine produced them (``run_all.py`` pastes them into reports/benchmarks.md as printed)."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeVar

import pandas as pd
import torch

from sdnet_cli.runtime import hardware, keep_freed_memory

K = TypeVar("K", bound=Hashable)


def median_seconds(
    works: dict[K, Callable[[], Any]],
    repeats: int,
    device: torch.device,
    warmup: int = 1,
    statistic: Callable[[list[float]], float] = statistics.median,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[K, float]:
    """Median (or ``statistic``, e.g. ``min``: the best round, least hit by load from elsewhere) wall time of
    each ``work()`` over ``repeats`` rounds that call every work once in turn, after ``warmup`` untimed rounds
    (kernel selection, step-size caches). Interleaving makes background load on a shared machine hit every
    work alike, so ratios between them hold; CUDA is synchronised so a time covers the whole computation.
    ``clock=time.process_time`` times CPU seconds of the process instead (with one thread, the least
    load-sensitive measure on a shared CPU)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times: dict[K, list[float]] = {name: [] for name in works}
    for round_ in range(warmup + repeats):
        for name, work in works.items():
            sync()
            start = clock()
            work()
            sync()
            if round_ >= warmup:
                times[name].append(clock() - start)
    return {name: statistic(t) for name, t in times.items()}


def print_table(title: str, rows: Sequence[dict[str, Any]], note: str) -> None:
    """A ``###`` title, the machine and method, and the rows as a Markdown table."""
    table = pd.DataFrame(rows).to_markdown(index=False, floatfmt="g")
    print(f"### {title}\n\n{hardware()}, torch {torch.__version__}. {note}\n\n{table}\n", flush=True)


def add_allocator_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--glibc-default",
        action="store_true",
        help="leave glibc's malloc as it starts (sdnet commands call runtime.keep_freed_memory first)",
    )


def set_up_allocator(glibc_default: bool) -> str:
    """The process's malloc as every sdnet command sets it up, unless ``glibc_default``; says which, for table notes."""
    if glibc_default:
        return "glibc malloc as it starts"
    keep_freed_memory()
    return "malloc set up as sdnet commands set it (runtime.keep_freed_memory)"
