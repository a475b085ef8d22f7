"""Standard AutoAttack: our pooled runner vs the reference implementation, same model, images and eps.

    python benchmarks/autoattack_reference.py --reference-src ../auto-attack --n-images 300 --eps 2/255

``--reference-src`` is a checkout of the reference AutoAttack (github.com/fra31/auto-attack, Croce & Hein,
ICML 2020; the folder holding its ``autoattack`` package); without it the script says so and exits 0. It is
imported from there, outside this repository, and none of it is copied here. Both attack the same
function: the shipped sdnet18 as ``sdnet attack`` deploys it (``AttackedModel``: [0,1] input, normalisation,
lambda policy, network, fp32), over the first ``--n-images`` CIFAR-10 test images with ``--batch-size`` (128) and seed 0.
The reference pools the still-robust points of its whole input before each attack; ours pools within
pools of ``--pool-batches`` batches (``run_attack``), and ``--pool-batches 1`` shows the batch-by-batch run.

Printed: per attack, CPU seconds of the process (``time.process_time`` around each call, so background
load on a shared machine shifts them less than wall time), and for the whole run user and system seconds
and page faults, with the ratio ours / reference; then the per-image agreement of the robust flags. Runs one after another (an AutoAttack run cannot be interleaved
with another), so run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import collections
import resource
import sys
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench import print_table

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

    runner.SampleWise._attack = timed_attack  # type: ignore[method-assign]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference-src", type=Path, help="checkout of github.com/fra31/auto-attack")
    parser.add_argument("--n-images", type=int, default=300)
    parser.add_argument("--eps", default="2/255")
    parser.add_argument("--pool-batches", type=int, action="append", help="ours, repeatable (default: 8)")
    parser.add_argument("--model", default="sdnet18")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    if args.reference_src is None:
        print(
            "autoattack_reference.py: pass --reference-src DIR, a checkout of github.com/fra31/auto-attack, to "
            "compare standard AutoAttack with the reference implementation"
        )
        return
    runtime = Runtime.create("cpu")
    model, _ = load_model(args.model)
    images, labels = dataset_spec("cifar10").load(None, "test")
    images, labels = images[: args.n_images], labels[: args.n_images]
    runs = {
        f"ours, pool_batches {p}": whole(lambda p=p: ours(model, images, labels, args.eps, p, runtime, args.batch_size))
        for p in args.pool_batches or [8]
    }
    ref_seconds, ref_robust = whole(
        lambda: reference(args.reference_src, model, images, labels, args.eps, runtime, args.batch_size)
    )
    rows = [
        {
            "attack": name,
            "reference": round(ref_seconds.get(name, 0.0), 1),
            **{label: round(seconds.get(name, 0.0), 1) for label, (seconds, _) in runs.items()},
            **{
                f"{label} / reference": round(seconds.get(name, 0.0) / ref_seconds[name], 3)
                if ref_seconds.get(name)
                else None
                for label, (seconds, _) in runs.items()
            },
        }
        for name in [*REFERENCE_PARTS, *(key for key in ref_seconds if key.startswith("whole run"))]
    ]
    print_table(
        f"Standard AutoAttack vs the reference implementation ({args.model}, Linf {args.eps}, "
        f"{args.n_images} images, batch {args.batch_size})",
        rows,
        "CPU seconds of each attack's calls (ours: attack, projection and judging of each batch; the reference: "
        "its perturb calls), then the whole run's user and system CPU seconds and page faults (getrusage), one "
        "run after another in one process.",
    )
    agreement = [
        {
            "run": label,
            "robust (ours)": int(robust.sum()),
            "robust (reference)": int(ref_robust.sum()),
            "same flag": f"{int((robust == ref_robust).sum())}/{len(robust)}",
        }
        for label, (_, robust) in runs.items()
    ]
    print_table("Per-image agreement of the robust flags", agreement, "")


if __name__ == "__main__":
    main()
