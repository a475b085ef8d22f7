"""Where the oracle sweep's time goes: the job of benchmarks/oracle_sweep.py (``api.compare_lambda_rules`` on the
shipped sdnet18: rules 0.1 and auto, then the sweep of the 27 lambdas 0.1:1.4:0.05 with the default ``SweepPlan``,
clean + the 20 noise cells, generated CIFAR-10-C, seed 0, fp32) on the first ``--n`` images of each cell, its
wall time broken down, measured in one run.

    OMP_NUM_THREADS=1 python benchmarks/sweep_profile.py --n 500 --compare-n 50

1. Phases: CPU and wall timers around the product's own functions, wrapped from outside for this run only (nothing in
   sdnet_cli changes): reading and checking the cells, each rule's evaluation, the sweep's phases as
   ``sweep.plan.sweep_images`` runs them (the coarse lambdas on every image, the refinement of the intervals
   whose ends disagree, the audit of inferred pairs, the stem-only reconstruction errors of the pairs not run,
   the conversion of each part to model input, the plan's bookkeeping), and writing the report. Each phase's
   seconds exclude the phases inside it, so they add up to the whole job. Per phase: the (image, lambda)
   forwards it ran, ms per forward, and the CSC stem's share of its time (timed around ``CSCLayer.forward``).
2. Within one forward: the network, the stem's solve (with and without the reconstruction error the sweep
   records), and the stem's first correlation A x, the only part of a forward that does not depend on lambda.
3. The projection to ``--project-n`` images per cell: phases whose work grows with the images scaled from
   this run, the rest (model, checks, report) as measured.
4. With ``--compare-n M``: the same job on M images per cell, each setting in a fresh process (malloc's setting
   is process-wide), the settings interleaved round by round: malloc as sdnet commands set it up
   (``runtime.keep_freed_memory``) vs ``SDNET_KEEP_FREED_MEMORY=0``, batch 64 vs 256, and this run's thread
   count vs the other of 1 and 2.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch
from bench import median_seconds, print_table

from sdnet_cli import api
from sdnet_cli.data.cells import CellSource
from sdnet_cli.models.csc import CSCLayer, normalize_atoms
from sdnet_cli.report import Report
from sdnet_cli.runtime import keep_freed_memory
from sdnet_cli.sweep import plan as sweep_plan
from sdnet_cli.sweep import runs as sweep_runs

NOISES = ["gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise"]
GRID = "0.1:1.4:0.05"
CELLS, LAMBDAS = 21, 27
FIXED = ("job: session, model, output check, meta", "cells: read clean split", "cells: check files", "report: write")
"""Phases whose work does not grow with the images per cell (the projection keeps their seconds)."""
ORACLE_RUN = {"minutes sweep": 50.9, "minutes job": 57.7, "pairs run": 0.450}
"""The full job as measured on 2026-12-02 (reports/benchmarks.md, oracle_sweep.py; AVX-512 machine)."""


@dataclass
class Phase:
    """One phase's CPU seconds of this process (``total``, phases inside it included; ``inner``: those) and wall
    seconds (likewise), calls, (image, lambda) forwards, images through the stem alone, forward batches and CPU
    seconds inside the CSC stem's forward."""

    total: float = 0.0
    inner: float = 0.0
    wall_total: float = 0.0
    wall_inner: float = 0.0
    calls: int = 0
    forwards: int = 0
    stem_only: int = 0
    batches: int = 0
    stem: float = 0.0

    @property
    def own(self) -> float:
        return self.total - self.inner

    @property
    def own_wall(self) -> float:
        return self.wall_total - self.wall_inner


@dataclass
class Profile:
    phases: dict[str, Phase] = field(default_factory=dict)
    stack: list[str] = field(default_factory=list)

    def at(self, name: str) -> Phase:
        return self.phases.setdefault(name, Phase())

    @contextmanager
    def phase(self, name: str) -> Iterator[Phase]:
        self.stack.append(name)
        start, wall = time.process_time(), time.perf_counter()
        try:
            yield self.at(name)
        finally:
            seconds, wall = time.process_time() - start, time.perf_counter() - wall
            self.stack.pop()
            found = self.at(name)
            found.total += seconds
            found.wall_total += wall
            found.calls += 1
            if self.stack:
                self.at(self.stack[-1]).inner += seconds
                self.at(self.stack[-1]).wall_inner += wall

    def timed(self, name: str | Callable[..., str], function: Callable[..., Any]) -> Callable[..., Any]:
        """``function`` run inside the phase ``name`` (or ``name(*args, **kwargs)``)."""

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self.phase(name(*args, **kwargs) if callable(name) else name):
                return function(*args, **kwargs)

        return wrapper

    def current(self) -> Phase:
        return self.at(self.stack[-1] if self.stack else "outside")


@contextmanager
def instrumented(profile: Profile) -> Iterator[None]:
    """The product's functions wrapped with the profile's timers for the block (restored on exit)."""
    original_run = sweep_plan._PartRunner.run
    original_stem_only = sweep_plan._PartRunner.stem_only
    original_forward = CSCLayer.forward
    original_iter = sweep_plan.iter_batches  # type: ignore[attr-defined]
    original_evaluate = sweep_runs.evaluate_cells  # type: ignore[attr-defined]

    def sweep_phase(share: Any) -> str:
        if share is not None:  # only the coarse lambdas report progress shares
            return "sweep: coarse lambdas (every image)"
        return "sweep: refinement forwards" if "sweep: refinement bookkeeping" in profile.stack else "sweep: audit"

    def run(self: Any, found: Any, j: int, local: np.ndarray, top2: bool = False, share: Any = None) -> None:
        with profile.phase(sweep_phase(share)):
            original_run(self, found, j, local, top2, share)

    def stem_only(self: Any, found: Any, j: int, local: np.ndarray) -> None:
        with profile.phase("sweep: stem-only errors of inferred pairs") as phase:
            phase.stem_only += len(local)
            original_stem_only(self, found, j, local)

    def forward(self: CSCLayer, x: torch.Tensor) -> torch.Tensor:
        """Every network forward passes the stem once: its batch counts the forwards of the phase."""
        start = time.process_time()
        try:
            return original_forward(self, x)
        finally:
            phase = profile.current()
            phase.stem += time.process_time() - start
            phase.forwards += x.shape[0]
            phase.batches += 1

    def iter_batches(*args: Any, **kwargs: Any) -> Iterator[Any]:
        parts = original_iter(*args, **kwargs)
        while True:
            with profile.phase("sweep: converting parts to input"):
                part = next(parts, None)
            if part is None:
                return
            yield part

    rules = iter(range(1, 100))

    def evaluate(model: Any, *args: Any, **kwargs: Any) -> Any:
        policy = model.lam_policy
        with profile.phase(f"rules: evaluation {next(rules)} (lambda {policy.name if policy else 'training'})"):
            return original_evaluate(model, *args, **kwargs)

    with ExitStack() as stack:
        patches = [
            (sweep_plan._PartRunner, "run", run),
            (sweep_plan._PartRunner, "stem_only", stem_only),
            (sweep_plan, "_refine", profile.timed("sweep: refinement bookkeeping", sweep_plan._refine)),
            (sweep_plan, "iter_batches", iter_batches),
            (sweep_runs, "sweep_images", profile.timed("sweep: plan bookkeeping", sweep_plan.sweep_images)),
            (sweep_runs, "evaluate_cells", evaluate),
            (CSCLayer, "forward", forward),
            (CellSource, "__init__", profile.timed("cells: read clean split", CellSource.__init__)),
            (CellSource, "validate", profile.timed("cells: check files", CellSource.validate)),
            (CellSource, "prepare", profile.timed("cells: check files", CellSource.prepare)),
            (CellSource, "load", profile.timed("cells: read cell", CellSource.load)),
            (Report, "write", profile.timed("report: write", Report.write)),
        ]
        for owner, name, replacement in patches:
            stack.enter_context(mock.patch.object(owner, name, replacement))
        yield


def job(n: int, batch_size: int) -> api.Report:
    return api.compare_lambda_rules(
        model="sdnet18", data=api.DataSpec(n_examples=n), run=api.RunSpec(device="cpu", batch_size=batch_size),
        corruptions=NOISES, rules=[0.1, "auto"], lams=GRID,
    )  # fmt: skip


def profiled(n: int, batch_size: int) -> tuple[Profile, dict[str, Any]]:
    profile = Profile()
    with instrumented(profile), tempfile.TemporaryDirectory() as out:
        with profile.phase("job: session, model, output check, meta"):
            report = job(n, batch_size)
            report.write(Path(out), "lambda-rules-noise")
    return profile, report.meta["sweep"]


def phase_rows(profile: Profile) -> list[dict[str, Any]]:
    whole = sum(p.own for p in profile.phases.values())
    rows = []
    for name, p in sorted(profile.phases.items(), key=lambda item: -item[1].own):
        stem = 1.0 if name.startswith("sweep: stem-only") else (p.stem / p.own if p.own else 0.0)
        rows.append(
            {
                "phase": name,
                "CPU s": round(p.own, 1),
                "share": f"{p.own / whole:.1%}",
                "wall s": round(p.own_wall, 1),
                "calls": p.calls,
                "forwards (image x lambda)": p.forwards,
                "mean batch": round(p.forwards / p.batches, 1) if p.batches else "",
                "CPU ms per forward": round(1e3 * p.own / p.forwards, 2) if p.forwards else "",
                "stem-only solves": p.stem_only or "",
                "in the CSC stem": f"{stem:.1%}",
            }
        )
    wall = sum(p.own_wall for p in profile.phases.values())
    rows.append({"phase": "whole job", "CPU s": round(whole, 1), "share": "100.0%", "wall s": round(wall, 1)})
    return [{key: row.get(key, "") for key in rows[0]} for row in rows]


def count_rows(profile: Profile, swept: dict[str, Any], n: int) -> list[dict[str, Any]]:
    sweep = {k: p for k, p in profile.phases.items() if k.startswith("sweep:")}
    network = sorted((k for k, p in sweep.items() if p.forwards), key=lambda k: -sweep[k].forwards)
    forwards = sum(sweep[k].forwards for k in network)
    assert forwards == swept["pairs_run"], (forwards, swept["pairs_run"])  # every forward of the sweep was seen
    assert swept["pairs"] == CELLS * LAMBDAS * n
    rules = [p for k, p in profile.phases.items() if k.startswith("rules:")]
    rule_forwards = max(1, sum(p.forwards for p in rules))

    def share(count: int) -> str:
        return f"{count / swept['pairs']:.1%}"

    rows: list[dict[str, Any]] = [
        {"count": "(image, lambda) pairs of the sweep", "value": f"{swept['pairs']:,}", "of pairs": "100.0%"},
        {"count": "pairs the network ran (meta pairs_run)", "value": f"{forwards:,}", "of pairs": share(forwards)},
        *(
            {"count": f"- {k[7:]}", "value": f"{sweep[k].forwards:,}", "of pairs": share(sweep[k].forwards)}
            for k in network
        ),
        {
            "count": "pairs inferred (their error: the stem alone)",
            "value": f"{sum(p.stem_only for p in sweep.values()):,}",
            "of pairs": share(sum(p.stem_only for p in sweep.values())),
        },
        {"count": "audit: inferred pairs re-run, kept", "value": f"{swept['audited']:,}, {swept['audit_same']:,}"},
        {"count": "rule evaluations' forwards (2 rules x cells x images)", "value": f"{rule_forwards:,}"},
        {
            "count": "sweep: CPU ms per forward in its network phases",
            "value": round(1e3 * sum(sweep[k].own for k in network) / forwards, 2),
        },
        {"count": "rules: CPU ms per forward", "value": round(1e3 * sum(p.own for p in rules) / rule_forwards, 2)},
        {"count": "sweep wall (meta) per pair run, ms", "value": round(1e3 * swept["wall_seconds"] / forwards, 2)},
    ]
    return [{**row, "of pairs": row.get("of pairs", "")} for row in rows]


def within_forward(batch_size: int, repeats: int) -> list[dict[str, Any]]:
    """Seconds per image of one forward and of its CSC stem's parts, interleaved (``median_seconds``)."""
    from sdnet_cli.data.cifar import load_cifar10
    from sdnet_cli.lam import FixedLambda
    from sdnet_cli.models import load_model
    from sdnet_cli.runtime import Runtime

    model, _ = load_model("sdnet18")
    runtime = Runtime.create("cpu")
    runtime.prepare(model)
    stem = model.stem_csc
    assert stem is not None
    images, _ = load_cifar10(None, "test", download=False)
    x = runtime.to_input(images[:batch_size])
    xn = model.normalize(x)
    atoms = normalize_atoms(stem.weight)
    lam = 0.7
    with torch.no_grad(), model.using(FixedLambda(lam)):
        works = {
            "network forward (stem included)": lambda: model(x),
            "stem: solve + reconstruction error (sweep)": lambda: stem.solve(xn, lam),
            "stem: solve alone (eval)": lambda: stem.solve(xn, lam, with_error=False),
            "stem: first correlation A x (same at every lambda)": lambda: stem.analysis(xn, atoms),
        }
        seconds = median_seconds(works, repeats, runtime.device)
    full = seconds["network forward (stem included)"]
    return [
        {"part": name, "ms per image": round(1e3 * s / len(x), 3), "of the forward": f"{s / full:.1%}"}
        for name, s in seconds.items()
    ]


def projection(profile: Profile, swept: dict[str, Any], n: int, target: int) -> tuple[list[dict[str, Any]], str]:
    scale = target / n
    rows: list[dict[str, Any]] = []
    total = 0.0
    for name, p in sorted(profile.phases.items(), key=lambda item: -item[1].own):
        fixed = name in FIXED
        minutes = p.own * (1 if fixed else scale) / 60
        total += minutes
        rows.append(
            {"phase": name, "grows with images": "no" if fixed else "yes", "projected CPU min": round(minutes, 1)}
        )
    for row in rows:
        row["share"] = f"{row['projected CPU min'] / total:.1%}"
    sweep = sum(r["projected CPU min"] for r in rows if r["phase"].startswith("sweep:"))
    rows.append(
        {"phase": "whole job", "grows with images": "", "projected CPU min": round(total, 1), "share": "100.0%"}
    )
    rows.append(
        {
            "phase": "of which the sweep",
            "grows with images": "",
            "projected CPU min": round(sweep, 1),
            "share": f"{sweep / total:.1%}",
        }
    )
    then = ORACLE_RUN["minutes sweep"] * 60e3 / (CELLS * LAMBDAS * 10_000 * ORACLE_RUN["pairs run"])
    here = 1e3 * sum(p.own for k, p in profile.phases.items() if k.startswith("sweep:")) / swept["pairs_run"]
    note = (
        f"CPU minutes of this process (one thread: the work, whatever else shares the cores); phases that grow "
        f"with the images scaled by {target:,}/{n:,}, the sweep's share of pairs run as in this run "
        f"({swept['pairs_run'] / swept['pairs']:.1%}; the full job's measured share was {ORACLE_RUN['pairs run']:.1%}). "
        f"The 2026-12-02 full job (AVX-512 machine, idle, 2 threads): {ORACLE_RUN['minutes sweep']} min sweep, "
        f"{ORACLE_RUN['minutes job']} min job, {then:.2f} ms of sweep wall per pair run (at most {2 * then:.2f} ms "
        f"of CPU on 2 threads); here {here:.2f} ms of sweep CPU per pair run."
    )
    return rows, note


@dataclass(frozen=True)
class Setting:
    name: str
    batch_size: int
    threads: int
    keep_freed: bool


def worker(n: int, batch_size: int) -> None:
    """One timed job in this process (the ``--compare-n`` settings), its numbers as one JSON line."""
    kept = keep_freed_memory()  # as sdnet commands do; SDNET_KEEP_FREED_MEMORY=0 turns it off
    start, cpu = time.perf_counter(), time.process_time()
    report = job(n, batch_size)
    whole, cpu = time.perf_counter() - start, time.process_time() - cpu
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    swept = report.meta["sweep"]
    found = {
        "whole": whole,
        "cpu": cpu,
        "sweep": swept["wall_seconds"],
        "kept": kept,
        "rss": rss,
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(found))


def compare(m: int, rounds: int, batch_size: int) -> list[dict[str, Any]]:
    here = torch.get_num_threads()
    other = 2 if here == 1 else 1
    other_batch = 256 if batch_size != 256 else 64
    settings = [
        Setting(f"malloc as sdnet sets it, batch {batch_size}, {here} thread(s)", batch_size, here, True),
        Setting("SDNET_KEEP_FREED_MEMORY=0 (glibc malloc)", batch_size, here, False),
        Setting(f"batch {other_batch}", other_batch, here, True),
        Setting(f"{other} thread(s)", batch_size, other, True),
    ]
    found: dict[str, list[dict[str, Any]]] = {s.name: [] for s in settings}
    for _ in range(rounds):
        for s in settings:
            env = {
                **os.environ,
                "OMP_NUM_THREADS": str(s.threads),
                "SDNET_KEEP_FREED_MEMORY": "1" if s.keep_freed else "0",
            }
            command = [sys.executable, __file__, "--worker", "--n", str(m), "--batch-size", str(s.batch_size)]
            load = os.getloadavg()[0]
            result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
            found[s.name].append({**json.loads(result.stdout.strip().splitlines()[-1]), "load": load})
    base = float(np.median([r["whole"] for r in found[settings[0].name]]))
    rows = []
    for s in settings:
        runs = found[s.name]
        assert all(r["kept"] == s.keep_freed and r["threads"] == s.threads for r in runs), runs
        whole = float(np.median([r["whole"] for r in runs]))
        rows.append(
            {
                "setting": s.name,
                "rounds": len(runs),
                "whole job s (median)": round(whole, 1),
                "sweep s (median)": round(float(np.median([r["sweep"] for r in runs])), 1),
                "CPU s (median)": round(float(np.median([r["cpu"] for r in runs])), 1),
                "vs first": round(whole / base, 2),
                "every round's job s": ", ".join(f"{r['whole']:.0f}" for r in runs),
                "load at starts": ", ".join(f"{r['load']:.1f}" for r in runs),
                "max RSS MB": round(max(r["rss"] for r in runs)),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=500, help="test images per cell of the profiled job")
    parser.add_argument("--batch-size", type=int, default=64, help="as oracle_sweep.py and eval's CPU default")
    parser.add_argument("--project-n", type=int, default=10_000, help="images per cell the projection is for")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds of the within-a-forward table")
    parser.add_argument("--compare-n", type=int, default=0, help="also time the settings' jobs on this many")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of --compare-n's settings")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    for name in ("n", "batch_size", "project_n", "repeats", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.worker:
        worker(args.n, args.batch_size)
        return
    threads = torch.get_num_threads()
    load = os.getloadavg()
    profile, swept = profiled(args.n, args.batch_size)
    how = (
        f"{threads} thread(s), {os.cpu_count()} cores, batch {args.batch_size}, {args.n:,} images per cell, glibc "
        f"malloc as it starts (as oracle_sweep.py runs); load average {load[0]:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end."
    )
    print_table(
        "Sweep profile: where the oracle sweep's time goes (shipped sdnet18, 21 cells, 27 lambdas, rules 0.1 and auto)",
        phase_rows(profile),
        f"{how} Each phase's own CPU and wall seconds (phases inside it excluded), timed by wrapping the product's "
        "functions from outside; share: of the CPU seconds (with one thread the process's work, which load from "
        "other processes stretches in wall time but hardly in CPU time); forwards: images through the network "
        "(the CSC stem's forward counts them); in the CSC stem: CPU seconds inside the stem's forward (its whole "
        "solve for the stem-only phase).",
    )
    print_table(
        "Sweep profile: counts",
        count_rows(profile, swept, args.n),
        f"{how} The coarse lambdas run every image; the refinement runs the middle lambda of the intervals whose "
        "ends disagree; the audit re-runs a seeded 2% of the inferred pairs; the stem alone gives the inferred "
        "pairs' reconstruction errors.",
    )
    print_table(
        f"Sweep profile: within one forward (batch {args.batch_size}, lambda 0.7)",
        within_forward(args.batch_size, args.repeats),
        f"{threads} thread(s); first {args.batch_size} clean test images; median of {args.repeats} interleaved "
        "rounds after one warm-up.",
    )
    rows, note = projection(profile, swept, args.n, args.project_n)
    print_table(f"Sweep profile: the job projected to {args.project_n:,} images per cell on this machine", rows, note)
    if args.compare_n:
        print_table(
            f"Sweep profile: settings of the same job on {args.compare_n} images per cell",
            compare(args.compare_n, args.rounds, args.batch_size),
            f"Each job in a fresh process (threads by OMP_NUM_THREADS), the settings interleaved over {args.rounds} "
            "round(s); the first row sets malloc up as sdnet commands do (runtime.keep_freed_memory); "
            "vs first: median whole-job seconds over the first row's.",
        )


if __name__ == "__main__":
    main()
