"""Evaluation throughput (images/s) of resnet18 vs sdnet18, fp32 and bf16, measured in one run.

    python benchmarks/throughput.py --width 32 --width 64 --batch-size 256

Prints one row per (width, precision, model) and the sdnet18/resnet18 ratio. Uses the same
``Runtime`` (channels_last, autocast) as ``sdnet eval``; inputs are random, weights untrained
(throughput does not depend on them).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import pandas as pd
import torch

from sdnet_cli.evaluate import Runtime
from sdnet_cli.models import create_model


def images_per_second(model: torch.nn.Module, runtime: Runtime, batch: torch.Tensor, repeats: int) -> float:
    with torch.inference_mode(), runtime.autocast():
        model(batch)  # warm-up: kernel selection, step-size cache
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(batch)
            times.append(time.perf_counter() - start)
    return len(batch) / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, action="append", help="model width(s); default 32")
    parser.add_argument("--precision", action="append", choices=["fp32", "bf16"], help="default: both")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    for width in args.width or [32]:
        for precision in args.precision or ["fp32", "bf16"]:
            runtime = Runtime.create(args.device, precision)
            batch = torch.rand(args.batch_size, 3, 32, 32, device=runtime.device).contiguous(
                memory_format=torch.channels_last
            )
            speeds = {}
            for name in ("resnet18", "sdnet18"):
                model = runtime.prepare(create_model(name, width=width))
                speeds[name] = images_per_second(model, runtime, batch, args.repeats)
                rows.append({"width": width, "precision": precision, "model": name, "images_per_s": round(speeds[name], 1)})
            rows[-1]["sdnet18 / resnet18"] = round(speeds["sdnet18"] / speeds["resnet18"], 3)
    print(f"# eval throughput, batch {args.batch_size}, {Runtime.create(args.device).describe()['device_name']}, "
          f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(pd.DataFrame(rows).to_markdown(index=False, missingval=""))


if __name__ == "__main__":
    main()
