"""Evaluation throughput (images/s) of sdnet18 under a fixed lambda vs the per-input rules, in one run.

    python benchmarks/lambda_throughput.py --width 16 --batch-size 256

``recon`` re-solves the stem once at the training lambda to read each input's reconstruction
error, ``noise`` with only its sigma term (a calibration without the impulse term) runs a 3x3
high-pass and a per-image median, ``noise+impulse`` (what ``lam="auto"`` runs for the shipped
checkpoints) also counts the isolated extreme values (salt and pepper); all then run the network
with a [B] lambda. The issue's bar: a per-input rule
at >= 0.8x the fixed-lambda throughput. The policies are timed interleaved (one forward of each per round, median over
rounds) so background load hits them alike. Inputs are random with 10% of their values set to 0 or 1
(impulse_noise at severity 5 salts about 9%: the impulse count looks only at extreme values, so this
is its costly case) and weights untrained; nothing else depends on the values.
"""

from __future__ import annotations

import argparse

import torch
from bench import median_seconds, print_table

from sdnet_cli.lam import FixedLambda, NoiseLevelLambda, ReconErrorLambda
from sdnet_cli.models import LambdaPolicy, create_model
from sdnet_cli.runtime import Runtime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    torch.manual_seed(0)
    runtime = Runtime.create(args.device, args.precision)
    model = runtime.prepare(create_model("sdnet18", width=args.width))
    policies = {
        "fixed 0.1": FixedLambda(0.1),
        "recon": ReconErrorLambda(a=1e-3, b=0.1, lo=0.1, hi=1.4),
        "noise": NoiseLevelLambda(a=10.0, b=0.1, lo=0.1, hi=1.4),
        "noise+impulse": NoiseLevelLambda(a=10.0, b=0.1, lo=0.1, hi=1.4, c=8.0),
    }
    batch = torch.rand(args.batch_size, 3, 32, 32, device=runtime.device)
    salted = torch.rand(batch.shape, device=runtime.device) < 0.1
    batch = torch.where(salted, (torch.rand(batch.shape, device=runtime.device) < 0.5).float(), batch)
    batch = batch.contiguous(memory_format=torch.channels_last)

    def forward(policy: LambdaPolicy) -> None:
        with model.using(policy):
            model(batch)

    with torch.no_grad(), runtime.autocast():  # as evaluation runs (``runtime.predict``)
        works = {name: (lambda policy=policy: forward(policy)) for name, policy in policies.items()}
        speeds = {name: args.batch_size / t for name, t in median_seconds(works, args.rounds, runtime.device).items()}
    rows = [
        {"lambda": name, "images_per_s": round(s, 1), "ratio to fixed": round(s / speeds["fixed 0.1"], 3)}
        for name, s in speeds.items()
    ]
    print_table(
        f"Fixed lambda vs the per-input rules (sdnet18 width {args.width}, batch {args.batch_size}, {args.precision}, "
        f"{runtime.describe()['device_name']})",
        rows,
        f"Forward of one batch per policy per round, median of {args.rounds} interleaved rounds after a warm-up "
        "round; random inputs with 10% salt-and-pepper values, untrained weights.",
    )


if __name__ == "__main__":
    main()
