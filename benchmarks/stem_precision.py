"""What the CSC stem's precision costs and changes under bf16 autocast: the library keeps the whole CSC solve
in float32 (``CSCLayer.solve``); the "bf16 stem" variant, a what-if, runs the solve's convolutions in bf16.

    python benchmarks/stem_precision.py --width 32 --batch-size 256 --repeats 5
    python benchmarks/stem_precision.py --agreement-n 10000 --noise-severity 5

Throughput: resnet18, sdnet18 and sdnet18 with a bf16 stem, in fp32 and bf16 autocast, the models'
forwards interleaved, random inputs and untrained weights. ``--agreement-n N``: on the shipped sdnet18,
the per-image predictions (argmax) of the bf16 forward with the bf16 stem vs with the fp32 stem (and each
vs the fp32 forward, ``--with-fp32``) on the first N clean CIFAR-10 test images ($SDNET_DATA) and, with
``--noise-severity``, on the same images under generated gaussian_noise at that severity (seed 0).
"""

from __future__ import annotations

import argparse
import resource
import time
import types
from collections.abc import Callable

import numpy as np
import torch
from bench import print_table
from throughput import images_per_second

from sdnet_cli.data.cells import Cell, CellSource
from sdnet_cli.models import create_model, load_model
from sdnet_cli.runtime import Runtime, iter_batches


def with_bf16_stem(model: torch.nn.Module) -> torch.nn.Module:
    """The same model whose CSC solves run their convolutions (analysis, synthesis) in bf16, which accumulates
    in float32 and rounds their outputs; iterates and thresholds stay float32, and so does the step size when
    a forward has cached it before (``agreement`` runs one)."""
    for layer in model.csc_layers:
        analysis, synthesis = layer.analysis, layer.synthesis

        def bf16_analysis(self, r, atoms, analysis=analysis):  # type: ignore[no-untyped-def]
            return analysis(r.bfloat16(), atoms.bfloat16()).float()

        def bf16_synthesis(self, z, atoms, hw, synthesis=synthesis):  # type: ignore[no-untyped-def]
            return synthesis(z.bfloat16(), atoms.bfloat16(), hw).float()

        layer.analysis = types.MethodType(bf16_analysis, layer)
        layer.synthesis = types.MethodType(bf16_synthesis, layer)
    return model


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def predictions(
    forward: Callable[[torch.Tensor], torch.Tensor], images: np.ndarray, runtime: Runtime, batch_size: int
) -> np.ndarray:
    labels = np.zeros(len(images), dtype=np.int64)
    return np.concatenate(
        [forward(batch.x).argmax(dim=1).numpy() for batch in iter_batches(images, labels, runtime, batch_size)]
    )


def agreement(n: int, severity: int | None, batch_size: int, with_fp32: bool) -> None:
    """Per-image agreement of the predictions of the three forwards on the clean (and one noise) cell."""
    fp32, bf16 = Runtime.create("cpu", "fp32"), Runtime.create("cpu", "bf16")
    source = CellSource(None, seed=0, n_examples=n)
    ours, _ = load_model("sdnet18")
    bf16_stem, _ = load_model("sdnet18")
    for model in (ours, bf16_stem):
        bf16.prepare(model)
    with torch.no_grad():  # caches the float32 step size at the input size before the convolutions change
        bf16_stem(bf16.to_input(source.images[:1]))
    with_bf16_stem(bf16_stem)
    cells = [Cell("clean", 0)] + ([Cell("gaussian_noise", severity)] if severity else [])
    if severity:
        source.prepare(["gaussian_noise"])
    for cell in cells:
        rows = []
        images, labels = source.load(cell)
        seen, cpu = {}, {}
        forwards = [("bf16, bf16 stem", bf16_stem, bf16), ("bf16, fp32 stem", ours, bf16)]
        for name, model, runtime in forwards + ([("fp32", ours, fp32)] if with_fp32 else []):
            start = cpu_seconds()
            with torch.no_grad(), runtime.autocast():
                seen[name] = predictions(model, images, runtime, batch_size)
            cpu[name] = cpu_seconds() - start
        pairs = [("bf16, bf16 stem", "bf16, fp32 stem")]
        for a, b in pairs + ([("bf16, bf16 stem", "fp32"), ("bf16, fp32 stem", "fp32")] if with_fp32 else []):
            rows.append(
                {
                    "cell": f"{cell.corruption} s{cell.severity}" if cell.severity else "clean",
                    "compared": f"{a} vs {b}",
                    "same prediction": f"{int((seen[a] == seen[b]).sum())}/{len(images)}",
                    "accuracy (first, second) %": f"{100 * (seen[a] == labels).mean():.2f}, "
                    f"{100 * (seen[b] == labels).mean():.2f}",
                    "cpu s (first, second)": f"{cpu[a]:.1f}, {cpu[b]:.1f}",
                }
            )
        print_table(
            f"CSC stem precision: per-image agreement (shipped sdnet18, first {n} test images)",
            rows,
            "Predicted class (argmax) of each image under each forward; CPU seconds of this process per pass.",
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--agreement-n", type=int, help="measure per-image agreement on this many test images")
    parser.add_argument("--noise-severity", type=int, help="with --agreement-n: also gaussian_noise at this severity")
    parser.add_argument("--with-fp32", action="store_true", help="with --agreement-n: also compare with fp32")
    parser.add_argument("--no-throughput", action="store_true", help="skip the throughput table")
    parser.add_argument(
        "--cpu-time", action="store_true", help="best round in CPU seconds (use with OMP_NUM_THREADS=1 when shared)"
    )
    args = parser.parse_args()
    if not args.no_throughput:
        throughput(args.width, args.batch_size, args.repeats, args.device, args.cpu_time)
    if args.agreement_n:
        agreement(args.agreement_n, args.noise_severity, args.batch_size, args.with_fp32)


def throughput(width: int, batch_size: int, repeats: int, device: str, cpu_time: bool) -> None:
    torch.manual_seed(0)
    rows = []
    for precision in ("fp32", "bf16"):
        runtime = Runtime.create(device, precision)
        batch = torch.rand(batch_size, 3, 32, 32, device=runtime.device).contiguous(memory_format=torch.channels_last)
        models = {
            "resnet18": runtime.prepare(create_model("resnet18", width=width)),
            "sdnet18": runtime.prepare(create_model("sdnet18", width=width)),
            "sdnet18, bf16 stem": runtime.prepare(with_bf16_stem(create_model("sdnet18", width=width))),
        }
        runtimes = {precision: runtime}
        timed = (
            images_per_second(models, runtimes, batch, repeats, min, time.process_time)
            if cpu_time
            else images_per_second(models, runtimes, batch, repeats)
        )
        speeds = {name: speed for (_, name), speed in timed.items()}
        for name, speed in speeds.items():
            rows.append(
                {
                    "precision": precision,
                    "model": name,
                    "images_per_s": round(speed, 1),
                    "vs resnet18": round(speed / speeds["resnet18"], 3),
                }
            )
    print_table(
        f"CSC stem precision: eval throughput (width {width}, batch {batch_size}, "
        f"{Runtime.create(device).describe()['device_name']})",
        rows,
        f"{'Best (CPU seconds)' if cpu_time else 'Median (wall seconds)'} of {repeats} timed batches after a "
        "warm-up, the three models interleaved.",
    )


if __name__ == "__main__":
    main()
