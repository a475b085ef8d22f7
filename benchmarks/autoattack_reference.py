"""Standard AutoAttack: our pooled runner vs the reference implementation, same model, images and eps.

    OMP_NUM_THREADS=1 python benchmarks/autoattack_reference.py --reference-src ../auto-attack --n-images 100

``--reference-src`` is a checkout of the reference AutoAttack (github.com/fra31/auto-attack, Croce & Hein,
ICML 2020; the folder holding its ``autoattack`` package); without it the script says so and exits 0. It is
imported from there, outside this repository, and none of it is copied here. Both attack the same
function: the shipped sdnet18 as ``sdnet attack`` deploys it (``AttackedModel``: [0,1] input, normalisation,
lambda policy, network, fp32), over the first ``--n-images`` CIFAR-10 test images with seed 0, at each
``--batch-size`` (default 128 and 32). The reference pools the still-robust points of its whole input before
each attack; ours pools within pools of ``--pool-batches`` batches (``run_attack``), and ``--pool-batches 1``
shows the batch-by-batch run.

Each side runs in a fresh process of its own, ``--rounds`` times with the order alternating: run one after
the other in one process, the second inherits the first's allocator state, and the page faults and system
time follow the order, not the implementation. Printed per batch size, the best round of each side: CPU
seconds per attack (``time.process_time`` around each call, so background load on a shared machine shifts
them less than wall time), the whole run's user and system seconds and page faults, peak memory, and the
ratios ours / reference; then the per-image agreement of the robust flags. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import collections
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench import add_allocator_option, print_table, set_up_allocator

from sdnet_cli.attacks import AttackConfig, run_attack, runner
from sdnet_cli.attacks.runner import AttackedModel
from sdnet_cli.data.datasets import dataset_spec
from sdnet_cli.models import load_model
from sdnet_cli.runtime import Runtime

REFERENCE_PARTS = {"apgd-ce": "apgd", "apgd-t": "apgd_targeted", "fab-t": "fab", "square": "square"}
"""Our component name -> the reference ``AutoAttack`` attribute that runs it."""


def timed(method: Callable[..., Any], seconds: dict[str, float], name: str) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        start = time.process_time()
        try:
            return method(*args, **kwargs)
        finally:
            seconds[name] += time.process_time() - start

    return call


def usage() -> dict[str, float]:
    found = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "user": found.ru_utime,
        "sys": found.ru_stime,
        "major faults": found.ru_majflt,
        "minor faults": found.ru_minflt,
    }


def whole(run: Callable[[], tuple[dict[str, float], np.ndarray]]) -> tuple[dict[str, float], np.ndarray]:
    """``run``'s per-attack CPU seconds plus the whole call's user and system seconds and page faults
    (everything the run does: clean pass, checks, judging, bookkeeping)."""
    before = usage()
    seconds, robust = run()
    after = usage()
    return {**seconds, **{f"whole run: {key}": after[key] - before[key] for key in before}}, robust


def ours(
    model: torch.nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    eps: str,
    pool_batches: int,
    runtime: Runtime,
    batch_size: int,
) -> tuple[dict[str, float], np.ndarray]:
    """CPU seconds per attack and robust flags of our runner (its per-batch attack call timed)."""
    seconds: dict[str, float] = collections.defaultdict(float)
    attack_one = runner.SampleWise._attack

    def timed_attack(self: runner.SampleWise, component: Any, *args: Any) -> Any:
        return timed(attack_one, seconds, component.name)(self, component, *args)

    runner.SampleWise._attack = timed_attack  # type: ignore[method-assign,assignment]
    try:
        results = run_attack(
            model,
            images,
            labels,
            AttackConfig.create(attack="autoattack", norm="Linf", eps=[eps]),
            seed=0,
            runtime=runtime,
            batch_size=batch_size,
            pool_batches=pool_batches,
        )
    finally:
        runner.SampleWise._attack = attack_one  # type: ignore[method-assign]
    return dict(seconds), results.clean & ~results.fooled[0].any(axis=0)


def reference(
    source: Path,
    model: torch.nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    eps: str,
    runtime: Runtime,
    batch_size: int,
) -> tuple[dict[str, float], np.ndarray]:
    """CPU seconds per attack and robust flags of the reference implementation on the same function."""
    sys.path.insert(0, str(source.resolve()))
    from autoattack import AutoAttack  # the reference checkout, outside this repository

    forward = AttackedModel(runtime.prepare(model), runtime).eval()
    x = runtime.to_input(images).contiguous()
    y = torch.from_numpy(labels.astype(np.int64))
    adversary = AutoAttack(
        forward, norm="Linf", eps=float(Fraction(eps)), version="standard", device="cpu", seed=0, verbose=False
    )
    seconds: dict[str, float] = collections.defaultdict(float)
    for name, attribute in REFERENCE_PARTS.items():
        part = getattr(adversary, attribute)
        part.perturb = timed(part.perturb, seconds, name)
    _, y_adv = adversary.run_standard_evaluation(x, y, bs=batch_size, return_labels=True)
    return dict(seconds), (y_adv == y).numpy()


def side(args: argparse.Namespace) -> dict[str, Any]:
    """One side in this (fresh) process: per-attack CPU seconds, whole-run usage, peak memory and robust flags.
    The process's allocator is set up as ``sdnet attack`` sets up its own, unless ``--glibc-default``."""
    set_up_allocator(args.glibc_default)
    runtime = Runtime.create("cpu")
    model, _ = load_model(args.model)
    images, labels = dataset_spec("cifar10").load(None, "test")
    images, labels = images[: args.n_images], labels[: args.n_images]
    if args.side == "reference":
        run = whole(lambda: reference(args.reference_src, model, images, labels, args.eps, runtime, args.batch_size))
    else:
        pool = int(args.side.split(":")[1])
        run = whole(lambda: ours(model, images, labels, args.eps, pool, runtime, args.batch_size))
    seconds, robust = run
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "peak_mb": peak_mb, "robust": robust.astype(int).tolist()}


def in_own_process(args: argparse.Namespace, name: str, batch_size: int) -> dict[str, Any]:
    """``side`` in a child process of its own, so neither side inherits the other's allocator state
    (glibc's mmap threshold grows with what a process has freed, and page faults follow it)."""
    command = [
        sys.executable,
        __file__,
        "--side",
        name,
        "--reference-src",
        str(args.reference_src),
        "--n-images",
        str(args.n_images),
        "--eps",
        args.eps,
        "--model",
        args.model,
        "--batch-size",
        str(batch_size),
        *(["--glibc-default"] if args.glibc_default else []),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode:
        sys.exit(f"{name} (batch {batch_size}) failed:\n{result.stderr}")
    found: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return found


def compare(args: argparse.Namespace, batch_size: int) -> None:
    """Every side ``--rounds`` times, order alternating between rounds; the best round of each, and the ratios."""
    names = ["reference", *(f"ours:{p}" for p in args.pool_batches or [8])]
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for round_ in range(args.rounds):
        for name in names if round_ % 2 == 0 else names[::-1]:
            results[name].append(in_own_process(args, name, batch_size))
    label = {name: "reference" if name == "reference" else f"ours, pool_batches {name[5:]}" for name in names}
    best = {
        name: {key: min(r["seconds"][key] for r in runs) for key in runs[0]["seconds"]}
        for name, runs in results.items()
    }
    for name, runs in results.items():
        best[name]["whole run: user + sys"] = min(
            r["seconds"]["whole run: user"] + r["seconds"]["whole run: sys"] for r in runs
        )
        best[name]["peak RSS MB"] = min(r["peak_mb"] for r in runs)
    keys = [
        *REFERENCE_PARTS,
        "whole run: user + sys",
        "whole run: sys",
        "whole run: minor faults",
        "whole run: major faults",
        "peak RSS MB",
    ]
    ref = best["reference"]
    rows = [
        {
            "measure": key,
            **{label[name]: round(best[name].get(key, 0.0), 1) for name in names},
            **{
                f"{label[name]} / reference": round(best[name].get(key, 0.0) / ref[key], 3) if ref.get(key) else None
                for name in names[1:]
            },
        }
        for key in keys
    ]
    print_table(
        f"Standard AutoAttack vs the reference implementation ({args.model}, Linf {args.eps}, "
        f"{args.n_images} images, batch {batch_size}"
        f"{', glibc malloc as it starts' if args.glibc_default else ''})",
        rows,
        f"Each side in a fresh process of its own, {args.rounds} rounds with "
        "the order alternating; the best round of each. Per attack: CPU seconds of its calls (ours: attack, "
        "projection and judging of each batch; the reference: its perturb calls); whole run: user and system CPU "
        "seconds and page faults (getrusage) around the whole call (clean pass, checks, attacks, bookkeeping); "
        "peak RSS of the process (model and data loading included).",
    )
    reference_flags = [np.array(r["robust"]) for r in results["reference"]]
    agreement = [
        {
            "run": label[name],
            "robust (ours)": int(np.array(runs[0]["robust"]).sum()),
            "robust (reference)": int(reference_flags[0].sum()),
            "same flag, every round": f"{int(min((np.array(r['robust']) == f).sum() for r in runs for f in reference_flags))}/{args.n_images}",
        }
        for name, runs in results.items()
        if name != "reference"
    ]
    print_table(f"Per-image agreement of the robust flags (batch {batch_size})", agreement, "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference-src", type=Path, help="checkout of github.com/fra31/auto-attack")
    parser.add_argument("--n-images", type=int, default=100)
    parser.add_argument("--eps", default="2/255")
    parser.add_argument("--pool-batches", type=int, action="append", help="ours, repeatable (default: 8)")
    parser.add_argument("--model", default="sdnet18")
    parser.add_argument("--batch-size", type=int, action="append", help="repeatable (default: 128 and 32)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each side per batch size, order alternating")
    add_allocator_option(parser)
    parser.add_argument("--side", help=argparse.SUPPRESS)  # internal: run one side in this process
    args = parser.parse_args()
    if args.reference_src is None:
        print(
            "autoattack_reference.py: pass --reference-src DIR, a checkout of github.com/fra31/auto-attack, to "
            "compare standard AutoAttack with the reference implementation"
        )
        return
    if args.side:
        args.batch_size = args.batch_size[0]
        print(json.dumps(side(args)))
        return
    for batch_size in args.batch_size or [128, 32]:
        compare(args, batch_size)


if __name__ == "__main__":
    main()
