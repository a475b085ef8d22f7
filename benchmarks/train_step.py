"""Training throughput (images/s of ``sdnet train``'s SGD step) of resnet18 vs sdnet18, fp32 vs bf16
autocast, measured in one run.

    python benchmarks/train_step.py --width 32 --batch-size 128 --repeats 5

Times ``sdnet_cli.train.train_step`` (forward, cross-entropy, backward, Nesterov SGD step, with the
step-size power iteration that SDNet's CSC stem runs in every training forward) on random inputs,
all four configurations interleaved. Which precision wins depends on the CPU: bf16 autocast is
faster with AMX or AVX-512 BF16, and several times slower with AVX2 only.
"""

from __future__ import annotations

import argparse

import torch
from bench import median_seconds, print_table

from sdnet_cli.models import create_model
from sdnet_cli.runtime import Runtime
from sdnet_cli.train import TrainConfig, make_optimizer, train_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    torch.manual_seed(0)
    works = {}
    for precision in ("fp32", "bf16"):
        runtime = Runtime.create(args.device, precision)
        x = torch.rand(args.batch_size, 3, 32, 32, device=runtime.device).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (args.batch_size,), device=runtime.device)
        for name in ("resnet18", "sdnet18"):
            model = runtime.prepare(create_model(name, width=args.width)).train()
            optimizer = make_optimizer(model, TrainConfig(model=name, width=args.width))
            works[(name, precision)] = lambda m=model, o=optimizer, x=x, y=y, r=runtime: train_step(m, o, x, y, r)
    host = Runtime.create(args.device)
    seconds = median_seconds(works, args.repeats, host.device)
    rows = []
    for (name, precision), t in seconds.items():
        speed = args.batch_size / t
        rows.append(
            {
                "width": args.width,
                "precision": precision,
                "model": name,
                "images_per_s": round(speed, 1),
                "vs resnet18": round(seconds[("resnet18", precision)] / t, 3),
                "vs fp32": round(seconds[(name, "fp32")] / t, 3),
            }
        )
    title = f"Training step throughput, fp32 vs bf16 (batch {args.batch_size}, {host.describe()['device_name']})"
    print_table(
        title,
        rows,
        f"One `train_step` (forward, loss, backward, SGD) per configuration per round, median of "
        f"{args.repeats} interleaved rounds after a warm-up round; random inputs, untrained weights.",
    )


if __name__ == "__main__":
    main()
