"""Evaluation throughput (images/s) of resnet18 vs sdnet18, fp32, bf16 and bf16-checked, measured in one run;
with ``--scaling``, also how the real evaluation loop's time grows with n-examples and batch size.

    python benchmarks/throughput.py --width 32 --width 64 --batch-size 256
    python benchmarks/throughput.py --shipped --precision fp32 --precision bf16 --precision bf16-checked
    python benchmarks/throughput.py --width 16 --bf16-repeats 1 --scaling

Prints one row per (width, precision, model) and the sdnet18/resnet18 ratio. Every forward is
``runtime.predict_logits`` (the forward of every decision-only job: no_grad, autocast, channels_last), every
(precision, model) once per round, interleaved. Inputs are random and weights untrained (throughput does
not depend on them), or with ``--shipped`` the shipped width-32 checkpoints on the first clean CIFAR-10 test
images ($SDNET_DATA): bf16-checked needs them, as the share of images it re-runs in fp32 depends on the
decisions' margins (the rows say that share). bf16 autocast is ~15x slower than fp32 on CPUs without
AMX/AVX512-BF16, so ``--bf16-repeats`` keeps the timed rounds few there. ``--scaling`` times
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
from sdnet_cli.runtime import Runtime, count_correct, predict_logits
from sdnet_cli.specs import PRECISIONS

MODELS = ("resnet18", "sdnet18")


def images_per_second(
    models: dict[str, torch.nn.Module],
    runtimes: dict[str, Runtime],
    batch: torch.Tensor,
    repeats: int,
    statistic: Callable[[list[float]], float] = statistics.median,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[tuple[str, str], float]:
    """``predict_logits`` of every (precision, model) interleaved (``median_seconds``, median or ``statistic``
    of the rounds, timed by ``clock``), as images per second."""
    works = {
        (precision, name): (lambda model=model, runtime=runtime: predict_logits(model, batch, runtime))
        for precision, runtime in runtimes.items()
        for name, model in models.items()
    }
    device = next(iter(runtimes.values())).device
    seconds = median_seconds(works, repeats, device, statistic=statistic, clock=clock)
    return {key: len(batch) / t for key, t in seconds.items()}


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


def rerun_share(model: torch.nn.Module, batch: torch.Tensor, runtime: Runtime | None) -> str:
    """The share of the batch a bf16-checked forward re-runs in fp32 (one more forward, counted afresh)."""
    if runtime is None:
        return ""
    runtime.checked.images = runtime.checked.rerun = 0
    predict_logits(model, batch, runtime)
    return f"{runtime.checked.rerun / runtime.checked.images:.1%}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, action="append", help="model width(s); default 32")
    parser.add_argument("--precision", action="append", choices=PRECISIONS, help="default: fp32 and bf16")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--bf16-repeats",
        type=int,
        help="timed rounds when bf16 or bf16-checked is among the precisions (default: --repeats)",
    )
    parser.add_argument(
        "--shipped",
        action="store_true",
        help="the shipped width-32 checkpoints on the first --batch-size clean CIFAR-10 test images, instead of "
        "untrained models on random inputs (bf16-checked needs them)",
    )
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
    precisions = args.precision or ["fp32", "bf16"]
    if "bf16-checked" in precisions and not args.shipped:
        parser.error("--precision bf16-checked needs --shipped: its re-run share depends on trained decisions")
    if args.shipped and args.width not in (None, [32]):
        parser.error("--shipped times the shipped width-32 checkpoints; leave --width out")
    allocator = set_up_allocator(args.glibc_default)
    torch.manual_seed(0)
    runtimes = {precision: Runtime.create(args.device, precision) for precision in precisions}
    device = next(iter(runtimes.values())).device
    low = any(p != "fp32" for p in precisions)
    repeats = args.bf16_repeats if low and args.bf16_repeats else args.repeats
    rows = []
    for width in args.width or [32]:
        if args.shipped:
            images, _ = load_cifar10(None, "test", download=False)
            batch = runtimes[precisions[0]].to_input(images[: args.batch_size])
            models = {name: load_model(name)[0] for name in MODELS}
        else:
            batch = torch.rand(args.batch_size, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
            models = {name: create_model(name, width=width) for name in MODELS}
        for model in models.values():
            runtimes[precisions[0]].prepare(model)  # the same layout and mode for every precision
        speeds = images_per_second(
            models,
            runtimes,
            batch,
            repeats,
            min if args.best else statistics.median,
            time.process_time if args.cpu_time else time.perf_counter,
        )
        rerun = {name: rerun_share(model, batch, runtimes.get("bf16-checked")) for name, model in models.items()}
        for precision in runtimes:
            for name in models:
                rows.append(
                    {
                        "width": width,
                        "precision": precision,
                        "model": name,
                        "timed batches": repeats,
                        "images_per_s": round(speeds[(precision, name)], 1),
                        "vs resnet18": round(speeds[(precision, name)] / speeds[(precision, "resnet18")], 3),
                        "vs fp32": round(speeds[(precision, name)] / speeds[("fp32", name)], 3)
                        if "fp32" in runtimes
                        else "",
                        "re-run in fp32": rerun[name] if precision == "bf16-checked" else "",
                    }
                )
    name = Runtime.create(args.device).describe()["device_name"]
    inputs = (
        f"shipped checkpoints on the first {args.batch_size} clean CIFAR-10 test images"
        if args.shipped
        else "random inputs, untrained weights (throughput does not depend on them)"
    )
    print_table(
        f"Evaluation throughput, resnet18 vs sdnet18 (batch {args.batch_size}, {name})",
        rows,
        f"{inputs[0].upper()}{inputs[1:]}; CPU capability {torch.backends.cpu.get_cpu_capability()}; "
        f"{'best' if args.best else 'median'} of the timed batches after one warm-up batch, every (precision, "
        f"model) interleaved; {'CPU' if args.cpu_time else 'wall'} seconds; {allocator}.",
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
