"""What the CSC stem's precision costs: eval throughput of resnet18, sdnet18 (CSC solve in fp32, as shipped)
and sdnet18 with the stem's two convolutions (analysis, synthesis) in bf16, in fp32 and bf16 autocast, one run.

    python benchmarks/stem_precision.py --width 32 --batch-size 256 --repeats 5

The bf16-stem row is a what-if (the library keeps the solve in fp32): on the shipped sdnet18 and 2,000 test
images it moved clean and gaussian-noise (severity 3, 5) accuracy by at most 2 images. Random inputs,
untrained weights; the models' forwards interleaved.
"""

from __future__ import annotations

import argparse
import types

import torch
from bench import print_table
from throughput import images_per_second

from sdnet_cli.models import create_model
from sdnet_cli.runtime import Runtime


def with_bf16_stem(model: torch.nn.Module) -> torch.nn.Module:
    """The same model whose stem CSC layer runs its convolutions in bf16 (iterates and thresholds stay fp32)."""
    stem = model.csc_layers[0]
    analysis, synthesis = stem.analysis, stem.synthesis
    stem.analysis = types.MethodType(lambda self, r, atoms: analysis(r.bfloat16(), atoms.bfloat16()).float(), stem)
    stem.synthesis = types.MethodType(
        lambda self, z, atoms, hw: synthesis(z.bfloat16(), atoms.bfloat16(), hw).float(), stem
    )
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    for precision in ("fp32", "bf16"):
        runtime = Runtime.create(args.device, precision)
        batch = torch.rand(args.batch_size, 3, 32, 32, device=runtime.device).contiguous(
            memory_format=torch.channels_last
        )
        models = {
            "resnet18": runtime.prepare(create_model("resnet18", width=args.width)),
            "sdnet18": runtime.prepare(create_model("sdnet18", width=args.width)),
            "sdnet18, bf16 stem": runtime.prepare(with_bf16_stem(create_model("sdnet18", width=args.width))),
        }
        speeds = images_per_second(models, runtime, batch, args.repeats)
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
        f"CSC stem precision: eval throughput (width {args.width}, batch {args.batch_size}, "
        f"{Runtime.create(args.device).describe()['device_name']})",
        rows,
        f"Median of {args.repeats} timed batches after a warm-up, the three models interleaved.",
    )


if __name__ == "__main__":
    main()
