"""Evaluation throughput of the shipped models, eager vs ``Runtime(compile=True)``, fp32 and bf16.

    python benchmarks/compile_speed.py                      # sdnet18 and resnet18, 250 images a batch
    python benchmarks/compile_speed.py --model sdnet18 --precision fp32 --repeats 2 --agree 0

Every (model, precision, eager|compiled) forward is timed interleaved in one run (``median_seconds``),
no-grad as ``sdnet eval`` runs it. Compile time is the first compiled forward minus a compiled forward's
median, into an empty inductor cache (what a first run pays; later runs of the same model reuse the
cache). Then the predictions of eager and compiled models on the first ``--agree`` CIFAR-10 test
images ($SDNET_DATA) are compared, in whole batches so that every compiled batch really runs compiled.
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="sdnet-inductor-"))

import argparse  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
from bench import median_seconds, print_table  # noqa: E402

from sdnet_cli.data.cifar import load_cifar10  # noqa: E402
from sdnet_cli.models import load_model  # noqa: E402
from sdnet_cli.runtime import Runtime, iter_batches, predict  # noqa: E402


def forward(model: torch.nn.Module, runtime: Runtime, batch: torch.Tensor):  # type: ignore[no-untyped-def]
    def work() -> torch.Tensor:
        with torch.no_grad(), runtime.autocast():
            return model(batch)

    return work


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", help="shipped model(s); default sdnet18 and resnet18")
    parser.add_argument("--precision", action="append", choices=["fp32", "bf16"], help="default: both")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--agree", type=int, default=1000, help="test images whose predictions are compared (0: skip)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    torch.manual_seed(0)
    models, precisions = args.model or ["sdnet18", "resnet18"], args.precision or ["fp32", "bf16"]
    batch = None
    works, compile_seconds, variants = {}, {}, {}
    for name in models:
        for precision in precisions:
            for compiled in (False, True):
                runtime = Runtime.create(args.device, precision, compile=compiled)
                model = runtime.prepare(load_model(name)[0])
                if batch is None:
                    batch = torch.rand(args.batch_size, 3, 32, 32, device=runtime.device).contiguous(
                        memory_format=torch.channels_last
                    )
                work = forward(model, runtime, batch)
                work()  # eager either way: fills the step-size caches, fixes the compiled shape
                if compiled:
                    start = time.perf_counter()
                    work()
                    compile_seconds[(name, precision)] = time.perf_counter() - start
                key = (name, precision, "compiled" if compiled else "eager")
                works[key], variants[key] = work, (model, runtime)
    seconds = median_seconds(works, args.repeats, batch.device)  # type: ignore[union-attr]
    rows = []
    for name in models:
        for precision in precisions:
            eager, compiled = seconds[(name, precision, "eager")], seconds[(name, precision, "compiled")]
            rows.append(
                {
                    "model": name,
                    "precision": precision,
                    "eager images/s": round(args.batch_size / eager, 1),
                    "compiled images/s": round(args.batch_size / compiled, 1),
                    "compiled / eager": round(eager / compiled, 3),
                    "compile s": round(compile_seconds[(name, precision)] - compiled, 1),
                }
            )
    print_table(
        "torch.compile vs eager evaluation",
        rows,
        f"No-grad forwards of the shipped width-32 checkpoints on batches of {args.batch_size} random "
        f"images, median of {args.repeats} interleaved rounds; compile s: one-off, into an empty cache.",
    )
    if args.agree:
        images, labels = load_cifar10(None, "test", download=False)
        images, labels = images[: args.agree], labels[: args.agree]
        rows = []
        for name in models:
            for precision in precisions:
                predictions, correct = {}, {}
                for kind in ("eager", "compiled"):
                    model, runtime = variants[(name, precision, kind)]
                    batches = list(iter_batches(images, labels, runtime, args.batch_size))
                    predictions[kind] = torch.cat([predict(model, b.x, runtime) for b in batches])
                    correct[kind] = int((predictions[kind] == torch.cat([b.y for b in batches])).sum())
                rows.append(
                    {
                        "model": name,
                        "precision": precision,
                        "images": len(images),
                        "predictions that differ": int((predictions["eager"] != predictions["compiled"]).sum()),
                        "eager correct": correct["eager"],
                        "compiled correct": correct["compiled"],
                    }
                )
        print_table(
            "torch.compile vs eager predictions",
            rows,
            f"The first {len(images)} CIFAR-10 test images, batches of {args.batch_size} (a last partial "
            "batch would run eagerly in the compiled model: use a batch size that divides the count).",
        )


if __name__ == "__main__":
    main()
