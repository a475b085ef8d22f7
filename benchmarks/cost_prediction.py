"""Predicted vs real attack time: the probe's forecast (``attacks.runner.predict_seconds``, the line
``sdnet attack`` prints before its work) beside the time the same run then took, for a few attacks.

    python benchmarks/cost_prediction.py --n-images 64 --autoattack-images 16

Each row runs ``run_attack`` on the shipped sdnet18 and the first N CIFAR-10 test images, as
``sdnet attack`` does (batch 128 capped at N, one pool): ``predicted`` is what the probe said before
the run, ``real`` the attack's own time (``AttackResults.seconds``) plus the clean forwards, without
the probe and the gradient-masking checks. ``real / predicted`` within 0.5 .. 2 is the target. The
machine's load at the start of each row is printed with it: the prediction measures the machine as
it is when the run starts.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
from bench import print_table

from sdnet_cli.attacks import AttackConfig, run_attack
from sdnet_cli.data.cifar import load_cifar10
from sdnet_cli.models import load_model
from sdnet_cli.runtime import Runtime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-images", type=int, default=64, help="images of the PGD and APGD-CE rows")
    parser.add_argument("--autoattack-images", type=int, default=16, help="images of the standard AutoAttack row")
    parser.add_argument("--robust-row", action="store_true", help="add AutoAttack at 1/255 (long: few images fall)")
    parser.add_argument("--model", default="sdnet18")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    images, labels = load_cifar10(None, "test")
    classifier, info = load_model(args.model)
    runtime = Runtime.create(args.device)
    cases = [
        ("pgd 10 steps, eps 8/255", AttackConfig.create(attack="pgd", eps=["8/255"], steps=10), args.n_images),
        ("apgd-ce 20 steps, eps 2/255", AttackConfig.create(attack="apgd-ce", eps=["2/255"], steps=20), args.n_images),
        ("standard AutoAttack, eps 8/255", AttackConfig.create(attack="autoattack", eps=["8/255"]), args.autoattack_images),
    ]  # fmt: skip
    if args.robust_row:  # most images resist at 1/255: APGD-T, FAB-T and Square's 5000 queries run on them
        cases.append(
            ("standard AutoAttack, eps 1/255", AttackConfig.create(attack="autoattack", eps=["1/255"]), args.autoattack_images)
        )  # fmt: skip
    rows = []
    for what, config, n in cases:
        load = os.getloadavg()[0]
        said: list[float] = []
        start = time.perf_counter()
        results = run_attack(
            classifier, images[:n], labels[:n], config, runtime=runtime, batch_size=min(128, n), pool_batches=1,
            estimate=said.append,
        )  # fmt: skip
        total = time.perf_counter() - start
        real = float(np.sum(results.seconds))
        rows.append(
            {
                "attack": what,
                "images": n,
                "load at start": round(load, 1),
                "predicted s": round(said[0], 1),
                "real s (attack)": round(real, 1),
                "real / predicted": round(real / said[0], 2),
                "whole run s (probe, checks)": round(total, 1),
            }
        )
        print(rows[-1], file=sys.stderr, flush=True)  # each row as it comes: a long run keeps what it measured
    print_table(
        f"Attack cost prediction vs real time ({info.name})",
        rows,
        "The forecast comes from a 16-image probe (a forward, a 3-step PGD whose steps time the gradient) "
        "and each attack's call count; the real time excludes the probe and the gradient-masking checks.",
    )


if __name__ == "__main__":
    main()
