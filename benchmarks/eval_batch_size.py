"""Which batch size makes ``sdnet eval`` fastest on this device: images/s of the shipped sdnet18 and resnet18
at each batch size, fp32 and bf16, all interleaved in one run.

    python benchmarks/eval_batch_size.py --n-images 1024 --repeats 3

Times ``predict_correct`` (the loop of ``sdnet eval``: uint8 images in, Runtime with channels_last and autocast)
over the first ``--n-images`` CIFAR-10 test images ($SDNET_DATA). Prints one row per (model, precision, batch
size) and, per (model, precision), the fastest batch size: the measurement behind eval's default batch size.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from bench import add_allocator_option, median_seconds, print_table, set_up_allocator

from sdnet_cli.data.cifar import load_cifar10
from sdnet_cli.models import load_model
from sdnet_cli.runtime import Runtime, predict_correct


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, action="append", help="repeatable; default 16, 32, ..., 512")
    parser.add_argument("--model", action="append", help="repeatable; default sdnet18 and resnet18")
    parser.add_argument("--precision", action="append", choices=["fp32", "bf16"], help="default: both")
    parser.add_argument("--n-images", type=int, default=1024, help="CIFAR-10 test images per timed pass")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    add_allocator_option(parser)
    args = parser.parse_args()
    allocator = set_up_allocator(args.glibc_default)
    images, labels = load_cifar10(None, "test", download=False)
    images, labels = np.ascontiguousarray(images[: args.n_images]), labels[: args.n_images]
    runtimes = {p: Runtime.create(args.device, p) for p in args.precision or ["fp32", "bf16"]}
    runtime = next(iter(runtimes.values()))  # prepare() is the same for every precision
    models = {name: runtime.prepare(load_model(name)[0]) for name in args.model or ["sdnet18", "resnet18"]}
    batch_sizes = args.batch_size or [16, 32, 64, 128, 256, 512]
    works = {
        (name, p, b): (lambda model=model, runtime=runtime, b=b: predict_correct(model, images, labels, runtime, b))
        for name, model in models.items()
        for p, runtime in runtimes.items()
        for b in batch_sizes
    }
    seconds = median_seconds(works, args.repeats, runtime.device)
    rows = []
    for name in models:
        for p in runtimes:
            best = min(batch_sizes, key=lambda b: seconds[(name, p, b)])
            for b in batch_sizes:
                rows.append(
                    {
                        "model": name,
                        "precision": p,
                        "batch_size": b,
                        "images_per_s": round(len(images) / seconds[(name, p, b)], 1),
                        "vs best": round(seconds[(name, p, best)] / seconds[(name, p, b)], 3),
                        "best": "yes" if b == best else "",
                    }
                )
    print_table(
        f"Eval throughput by batch size ({runtime.describe()['device_name']}, {torch.get_num_threads()} threads)",
        rows,
        f"predict_correct (the loop of sdnet eval) over the first {len(images)} CIFAR-10 test images with the "
        f"shipped weights; median of {args.repeats} passes after a warm-up pass, every row interleaved; {allocator}.",
    )


if __name__ == "__main__":
    main()
