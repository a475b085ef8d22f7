"""Evaluation throughput (images/s) of resnet18 vs sdnet18, fp32 and bf16, measured in one run;
with ``--scaling``, also how the real evaluation loop's time grows with n-examples and batch size.

    python benchmarks/throughput.py --width 32 --width 64 --batch-size 256
    python benchmarks/throughput.py --width 16 --bf16-repeats 1 --scaling

Prints one row per (width, precision, model) and the sdnet18/resnet18 ratio. Uses the same
``Runtime`` (channels_last, autocast) as ``sdnet eval``; inputs are random, weights untrained
(throughput does not depend on them). bf16 autocast is ~15x slower than fp32 on CPUs without
AMX/AVX512-BF16, so ``--bf16-repeats`` keeps its timed forwards few there. ``--scaling`` times
``count_correct`` (the loop of ``sdnet eval``) with the shipped sdnet18 checkpoint on CIFAR-10
test images ($SDNET_DATA).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from bench import add_allocator_option, median_seconds, print_table, set_up_allocator

from sdnet_cli.data.cifar import load_cifar10
from sdnet_cli.models import create_model, load_model
from sdnet_cli.runtime import Runtime, count_correct


def images_per_second(
    models: dict[str, torch.nn.Module],
    runtime: Runtime,
    batch: torch.Tensor,
    repeats: int,
    statistic: Callable[[list[float]], float] = statistics.median,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """Forwards of the models interleaved (``median_seconds``, median or ``statistic`` of the rounds, timed
    by ``clock``), as images per second."""
    with torch.inference_mode(), runtime.autocast():
        works = {name: (lambda model=model: model(batch)) for name, model in models.items()}
        seconds = median_seconds(works, repeats, runtime.device, statistic=statistic, clock=clock)
        return {name: len(batch) / t for name, t in seconds.items()}


def scaling(runtime: Runtime, n_examples: list[int], batch_sizes: list[int], batch_size: int) -> None:
    """Seconds of ``count_correct`` on the first n test images: over n at ``batch_size``, then over
    batch sizes at the largest n (median of 2 interleaved passes, after a warm-up batch of each size)."""
    model, info = load_model("sdnet18")
    runtime.prepare(model)
    images, labels = load_cifar10(None, "test", download=False)
    rows = []
    settings = [(n, batch_size) for n in n_examples] + [(max(n_examples), b) for b in batch_sizes if b != batch_size]
    for _, b in settings:
        count_correct(model, images[:b], labels[:b], runtime, b)  # warm-up at this batch shape
    works = {(n, b): (lambda n=n, b=b: count_correct(model, images[:n], labels[:n], runtime, b)) for n, b in settings}
    for (n, b), seconds in median_seconds(works, 2, runtime.device, warmup=0).items():
        rows.append(
            {"n_examples": n, "batch_size": b, "seconds": round(seconds, 2), "images_per_s": round(n / seconds, 1)}
        )
    print_table(
        f"Evaluation time vs n-examples and batch size ({info.name}, {runtime.precision})",
        rows,
        "The eval loop (count_correct) over the first n CIFAR-10 test images; median of 2 passes, the "
        "settings interleaved.",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, action="append", help="model width(s); default 32")
    parser.add_argument("--precision", action="append", choices=["fp32", "bf16"], help="default: both")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bf16-repeats", type=int, help="timed forwards for bf16 (default: --repeats)")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--best", action="store_true", help="the best (fastest) round of each model instead of the median"
    )
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="time CPU seconds of the process, not wall seconds (use with OMP_NUM_THREADS=1 on a shared machine)",
    )
    parser.add_argument("--scaling", action="store_true", help="also time the eval loop over n-examples and batch size")
    parser.add_argument("--n-examples", type=int, action="append", help="for --scaling; default 256, 512, 1024")
    parser.add_argument("--scaling-batch-size", type=int, action="append", help="for --scaling; default 32, 128, 512")
    add_allocator_option(parser)
    args = parser.parse_args()
    allocator = set_up_allocator(args.glibc_default)
    torch.manual_seed(0)
    rows = []
    for width in args.width or [32]:
        for precision in args.precision or ["fp32", "bf16"]:
            runtime = Runtime.create(args.device, precision)
            batch = torch.rand(args.batch_size, 3, 32, 32, device=runtime.device).contiguous(
                memory_format=torch.channels_last
            )
            repeats = args.bf16_repeats if precision == "bf16" and args.bf16_repeats else args.repeats
            models = {name: runtime.prepare(create_model(name, width=width)) for name in ("resnet18", "sdnet18")}
            speeds = images_per_second(
                models,
                runtime,
                batch,
                repeats,
                min if args.best else statistics.median,
                time.process_time if args.cpu_time else time.perf_counter,
            )
            for name in models:
                rows.append(
                    {
                        "width": width,
                        "precision": precision,
                        "model": name,
                        "timed batches": repeats,
                        "images_per_s": round(speeds[name], 1),
                        "vs resnet18": round(speeds[name] / speeds["resnet18"], 3),
                    }
                )
    for row in rows:  # same model and width in fp32, from this run
        fp32 = [r for r in rows if (r["width"], r["model"], r["precision"]) == (row["width"], row["model"], "fp32")]
        row["vs fp32"] = round(row["images_per_s"] / fp32[0]["images_per_s"], 3) if fp32 else ""
    device = Runtime.create(args.device).describe()["device_name"]
    print_table(
        f"Evaluation throughput, resnet18 vs sdnet18 (batch {args.batch_size}, {device})",
        rows,
        "Random inputs, untrained weights (throughput does not depend on them); "
        f"{'best' if args.best else 'median'} of the timed batches after one warm-up batch, the two models "
        f"interleaved; {'CPU' if args.cpu_time else 'wall'} seconds; {allocator}.",
    )
    if args.scaling:
        scaling(
            Runtime.create(args.device),
            args.n_examples or [256, 512, 1024],
            args.scaling_batch_size or [32, 128, 512],
            args.batch_size,
        )


if __name__ == "__main__":
    main()
