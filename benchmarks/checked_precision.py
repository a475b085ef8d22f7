"""``--precision bf16-checked`` against fp32, image by image, its time, and how its margin was chosen,
measured in one run.

    python benchmarks/checked_precision.py --n 10000

For the shipped sdnet18 and resnet18, on the clean CIFAR-10 test set and the 20 noise cells (gaussian,
shot, impulse and speckle noise at severities 5, 4, 3, 2, 1, in that order; generated with seed 0 into
$SDNET_CACHE like ``sdnet eval``'s): per cell and model, one fp32 pass and one bf16-checked pass of
``runtime.predict`` (the forward every decision-only job uses), batch 64 (eval's CPU default). A row
counts the images whose two decisions differ, the re-run and audit counts, and the wall and CPU seconds
of each pass; rows print as they finish (``--cells K`` stops after K cells).

After every cell, the margin table so far: the checked pass also keeps each image's bf16 logits, so for
each threshold on the bf16 top-1 minus top-2 logit (and on the softmax margin) it shows the share of
images a checked run would re-run, and how many decisions (fp32 where re-run, bf16 elsewhere) would
differ from the fp32 pass. ``largest flipped margin``: the largest bf16 margin of an image whose bf16
decision differs from fp32's (any threshold above it catches them all).
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch
from bench import print_table, set_up_allocator

from sdnet_cli.data.cells import Cell, CellSource
from sdnet_cli.models import load_model
from sdnet_cli.runtime import CHECK_MARGIN, Checked, Runtime, hardware, iter_batches, predict, predict_logits

NOISES = ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise")
MODELS = ("sdnet18", "resnet18")
THRESHOLDS = {"logit": (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0), "softmax": (0.0, 0.01, 0.02, 0.05, 0.1, 0.2)}


class Keeping(Checked):
    """``Checked`` that also keeps the bf16 logits it judged (for the margin table)."""

    def __init__(self, margin: float) -> None:
        super().__init__(margin=margin)
        self.low: list[np.ndarray] = []

    def decide(self, model: torch.nn.Module, x: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        self.low.append(low.float().numpy())
        return super().decide(model, x, low)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run(model: torch.nn.Module, images: np.ndarray, runtime: Runtime, batch_size: int) -> np.ndarray:
    """Decisions of ``runtime.predict`` (fp32 logits: ``predict_logits``, to keep them for the table)."""
    labels = np.zeros(len(images), dtype=np.int64)
    out = []
    for b in iter_batches(images, labels, runtime, batch_size):
        out.append((predict_logits if runtime.precision == "fp32" else predict)(model, b.x, runtime).numpy())
    return np.concatenate(out)


def margin_tables(seen: dict[str, list[tuple[np.ndarray, np.ndarray]]], cells: int, n: int) -> None:
    for kind, thresholds in THRESHOLDS.items():
        rows = []
        for name, pairs in seen.items():
            ref, low = np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])
            truth, decided = ref.argmax(1), low.argmax(1)
            top = np.sort(low if kind == "logit" else torch.from_numpy(low).softmax(1).numpy(), axis=1)
            margin = top[:, -1] - top[:, -2]
            flipped = decided != truth
            for t in thresholds:
                rerun = ~(margin >= t)
                rows.append(
                    {
                        "model": name,
                        f"{kind} threshold": t,
                        "re-run %": round(100 * rerun.mean(), 2),
                        "differ from fp32": int((np.where(rerun, truth, decided) != truth).sum()),
                        "images": len(truth),
                        "largest flipped margin": round(float(margin[flipped].max()), 4) if flipped.any() else "-",
                    }
                )
        print_table(
            f"bf16-checked: re-run share vs agreement by {kind} margin ({cells} cells so far, {n} images each)",
            rows,
            "bf16 logits of the checked pass vs the fp32 pass; differ: decisions (fp32 where re-run) unlike fp32's.",
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--cells", type=int, default=21)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--margin", type=float, default=CHECK_MARGIN)
    args = parser.parse_args()
    set_up_allocator(False)
    source = CellSource(None, seed=0, n_examples=args.n)
    cells = ([Cell("clean", 0)] + [Cell(c, s) for s in (5, 4, 3, 2, 1) for c in NOISES])[: args.cells]
    source.prepare(sorted({c.corruption for c in cells if c.severity}))
    fp32 = Runtime.create("cpu", "fp32")
    models = {name: fp32.prepare(load_model(name)[0]) for name in MODELS}
    print(f"{hardware()}, torch {torch.__version__}; columns: cell | model | images | differ | re-run % | "
          "audit same | accuracy fp32 / checked | wall s fp32 / checked | checked/fp32 wall | checked/fp32 cpu",
          flush=True)  # fmt: skip
    rows, seen = [], {name: [] for name in MODELS}
    totals = {(m, k): 0.0 for m in MODELS for k in ("fp32 wall", "checked wall", "fp32 cpu", "checked cpu")}
    for done, cell in enumerate(cells, 1):
        images, labels = source.load(cell)
        for name, model in models.items():
            keeping = Keeping(args.margin)
            checked = Runtime(fp32.device, "bf16-checked", checked=keeping)
            out, wall, cpu = {}, {}, {}
            for kind, runtime in (("fp32", fp32), ("checked", checked)):
                start, start_cpu = time.perf_counter(), cpu_seconds()
                out[kind] = run(model, images, runtime, args.batch_size)
                wall[kind], cpu[kind] = time.perf_counter() - start, cpu_seconds() - start_cpu
                totals[(name, f"{kind} wall")] += wall[kind]
                totals[(name, f"{kind} cpu")] += cpu[kind]
            seen[name].append((out["fp32"], np.concatenate(keeping.low)))
            exact = out["fp32"].argmax(1)
            counts = keeping.describe()
            row = {
                "cell": f"{cell.corruption} s{cell.severity}" if cell.severity else "clean",
                "model": name,
                "images": len(images),
                "differ": int((exact != out["checked"]).sum()),
                "re-run %": round(100 * counts["rerun"] / counts["images"], 2),
                "audit same": f"{counts['audit_same']}/{counts['audited']}",
                "accuracy fp32 / checked": f"{100 * (exact == labels).mean():.2f} / "
                f"{100 * (out['checked'] == labels).mean():.2f}",
                "wall s fp32 / checked": f"{wall['fp32']:.1f} / {wall['checked']:.1f}",
                "checked / fp32 (wall)": round(wall["checked"] / wall["fp32"], 3),
                "checked / fp32 (cpu)": round(cpu["checked"] / cpu["fp32"], 3),
            }
            rows.append(row)
            print(" | ".join(str(v) for v in row.values()), flush=True)
        margin_tables(seen, done, args.n)
    print_table(
        f"bf16-checked vs fp32, image by image ({args.n} images per cell, batch {args.batch_size}, margin {args.margin})",
        rows,
        "Per cell and model one fp32 and one bf16-checked pass of runtime.predict, back to back; differ: images "
        "whose two decisions differ; audit same: audited bf16 decisions that equal fp32's.",
    )
    summary = [
        {
            "model": name,
            "cells": len(cells),
            "differ": sum(r["differ"] for r in rows if r["model"] == name),
            "fp32 wall s": round(totals[(name, "fp32 wall")], 1),
            "checked wall s": round(totals[(name, "checked wall")], 1),
            "checked / fp32 (wall)": round(totals[(name, "checked wall")] / totals[(name, "fp32 wall")], 3),
            "checked / fp32 (cpu)": round(totals[(name, "checked cpu")] / totals[(name, "fp32 cpu")], 3),
            "sdnet18 / resnet18 speed (wall)": "-",
        }
        for name in MODELS
    ]
    for kind in ("fp32", "checked"):
        summary[0 if kind == "fp32" else 1]["sdnet18 / resnet18 speed (wall)"] = (
            f"{kind}: {totals[('resnet18', f'{kind} wall')] / totals[('sdnet18', f'{kind} wall')]:.3f}"
        )
    print_table("bf16-checked vs fp32: totals", summary, "Sums over the cells above; ratios of those sums.")


if __name__ == "__main__":
    main()
