"""CIFAR-10-C generation rate per corruption (images/s on one core) and the time for the full
19 x 5 x 10,000 images on 2 cores, extrapolated from a slice, plus a run of the real pipeline.

    OMP_NUM_THREADS=1 python benchmarks/cifar_c_rate.py --images 200 --pipeline-images 1000

Per corruption: ``corrupt`` on the first ``--images`` CIFAR-10 test images at each severity 1..5,
in this process with one OpenCV thread (as each generator worker runs). The 2-core estimate is the
one-core total halved (workers share nothing). ``--pipeline-images N`` also times
``generate_cifar_c`` itself (spawned pool of 2 workers, all 19 corruptions, N images per severity,
files written) and scales it by 10,000 / N, pool start-up included. Images from $SDNET_DATA.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from bench import print_table

from sdnet_cli.data.cifar import load_cifar10
from sdnet_cli.data.cifar_c_generate import generate_cifar_c
from sdnet_cli.data.corruptions import ALL_CORRUPTIONS, corrupt
from sdnet_cli.schemas import SEVERITIES

FULL = 10_000  # CIFAR-10 test images per severity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200, help="images per severity for the per-corruption rates")
    parser.add_argument(
        "--pipeline-images", type=int, default=1000, help="images per severity for the pipeline run; 0 skips it"
    )
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    images, labels = load_cifar10(None, "test", download=False)
    rows, one_core = [], 0.0
    for index, name in enumerate(ALL_CORRUPTIONS):
        start = time.perf_counter()
        for severity in SEVERITIES:
            corrupt(images[: args.images], name, severity, np.random.default_rng([0, index, severity]))
        rate = args.images * len(SEVERITIES) / (time.perf_counter() - start)
        seconds = FULL * len(SEVERITIES) / rate
        one_core += seconds
        rows.append(
            {
                "corruption": name,
                "images/s (1 core)": round(rate, 1),
                "full 5 x 10,000 on 1 core (s)": round(seconds, 1),
            }
        )
    rows.append(
        {
            "corruption": "all 19, 1 core",
            "images/s (1 core)": round(len(rows) * FULL * len(SEVERITIES) / one_core, 1),
            "full 5 x 10,000 on 1 core (s)": round(one_core, 1),
        }
    )
    print_table(
        f"CIFAR-10-C generation rate per corruption ({args.images} images x 5 severities each)",
        rows,
        f"Sum over corruptions: {one_core:.0f} s on one core, so about {one_core / args.workers:.0f} s "
        f"({one_core / args.workers / 60:.1f} min) for all 19 x 5 x 10,000 images on {args.workers} cores "
        "(target: under 20 min).",
    )
    if args.pipeline_images:
        n = args.pipeline_images
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            generate_cifar_c(images[:n], labels[:n], Path(out), ALL_CORRUPTIONS, seed=0, workers=args.workers)
            seconds = time.perf_counter() - start
        total = len(ALL_CORRUPTIONS) * len(SEVERITIES) * n
        print_table(
            "CIFAR-10-C generation pipeline (generate_cifar_c, all 19 corruptions)",
            [
                {
                    "workers": args.workers,
                    "images per severity": n,
                    "images": total,
                    "seconds": round(seconds, 1),
                    "images/s": round(total / seconds, 1),
                    "extrapolated to 10,000 per severity (s)": round(seconds * FULL / n, 1),
                }
            ],
            "Measured end to end (spawned pool, files written); extrapolation scales linearly by 10,000 / images per "
            "severity.",
        )


if __name__ == "__main__":
    main()
