"""Time of one PGD step (forward + backward of the deployed model, as ``sdnet attack`` runs it) for
resnet18, sdnet18 with a fixed lambda and sdnet18 with the per-input ``recon`` lambda (it re-solves
the stem, the costlier rule), in one run.

    python benchmarks/pgd_step.py --width 16 --batch-size 64 --steps 5

Each configuration runs torchattacks' PGD through ``AttackedModel`` (fp32 gradients, the BPDA
view of a clamped lambda rule) and divides by the steps; ``step / forward`` compares a step with
one inference forward of the same batch, measured alongside. Random inputs, untrained weights:
the cost does not depend on them.
"""

from __future__ import annotations

import argparse
from contextlib import ExitStack

import torch
from bench import median_seconds, print_table

from sdnet_cli.attacks import AttackedModel, registry
from sdnet_cli.lam import FixedLambda, ReconErrorLambda
from sdnet_cli.models import create_model
from sdnet_cli.runtime import Runtime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5, help="PGD steps per timed attack")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    torch.manual_seed(0)
    runtime = Runtime.create(args.device, args.precision)
    x = torch.rand(args.batch_size, 3, 32, 32, device=runtime.device)
    y = torch.randint(0, 10, (args.batch_size,), device=runtime.device)
    configs = [
        ("resnet18", "-", None),
        ("sdnet18", "fixed 0.1", FixedLambda(0.1)),
        ("sdnet18", "recon", ReconErrorLambda(a=1e-3, b=0.1, lo=0.1, hi=1.4)),
    ]
    attacked, pgd = {}, {}
    with ExitStack() as policies:  # each model runs with its lambda policy for the whole benchmark
        for name, label, policy in configs:
            model = runtime.prepare(create_model(name, width=args.width))
            policies.enter_context(model.using(policy))
            attacked[label] = AttackedModel(model, runtime).eval()
            setting = registry.AttackSetting(norm="Linf", eps=8 / 255, steps=args.steps)
            pgd[label] = registry.build(attacked[label], "pgd", setting).attack
        steps = median_seconds({k: (lambda k=k: pgd[k](x, y)) for k in pgd}, args.repeats, runtime.device)
        with torch.inference_mode():
            forwards = median_seconds(
                {k: (lambda k=k: attacked[k].predict(x)) for k in attacked}, args.repeats, runtime.device
            )
    rows = []
    for name, label, _ in configs:
        step = steps[label] / args.steps
        rows.append(
            {
                "model": name,
                "lambda": label,
                "ms per step": round(1000 * step, 1),
                "image-steps/s": round(args.batch_size / step, 1),
                "vs resnet18": round(steps["-"] / steps[label], 3),
                "step / forward": round(step / forwards[label], 2),
            }
        )
    print_table(
        f"PGD step time (width {args.width}, batch {args.batch_size}, {args.precision}, "
        f"{runtime.describe()['device_name']})",
        rows,
        f"Median of {args.repeats} PGD-{args.steps} runs after a warm-up run, divided by {args.steps}, the "
        "configurations interleaved; "
        "`vs resnet18` is the speed relative to resnet18 (higher is faster).",
    )


if __name__ == "__main__":
    main()
