"""Eval speed of the authors' SDNet code vs ours on the same weights, side by side in one run.

    python benchmarks/authors_speed.py --authors-src ../SDNet --n-images 1024 --repeats 5

``--authors-src`` is a checkout of the authors' repository (github.com/Delay-Xili/SDNet, Dai et al., NeurIPS
2022); without it the script says so and exits 0. Their code runs from a temporary copy, outside this
repository, and none of it is copied here. The shipped sdnet18 is exported to their layout
(``api.export_checkpoint``) and loaded by their model; their loop is their own ``Lib.cls_function.validate``
(per batch: step-size power iteration, forward with the reconstruction and sparsity losses and weight
renormalisation, cross-entropy, top-1/top-5), timed against ours as ``sdnet eval`` runs it
(``predict_correct``: Runtime, channels_last, fp32 or bf16 autocast) and our resnet18 of the same width, all
interleaved over the same CIFAR-10 test images (median of ``--repeats`` passes).

What is patched, at run time and in the temporary copy only, so their code runs here:

1. Width: their ``ResNet`` hard-codes 64/128/256/512 channels; the literal channel counts in
   ``Lib/models/sdnet.py`` are replaced by those of our checkpoint's width (32/64/128/256 for width 32).
2. Config: their ``Lib/config/default.py`` needs ``yacs``; when it is not installed, a dict with attribute
   access stands in for ``yacs.config.CfgNode`` (their file only builds a tree of values with it). Their
   defaults are kept; ``MODEL.LAMBDA`` and ``MODEL.NUM_LAYERS`` are set to the checkpoint's, as their yaml does.
3. CUDA: ``validate`` moves targets with ``.cuda()``; ``Tensor.cuda`` returns the tensor itself while their
   loop runs.

Not timed on their side (which favours them): their DataLoader (per-image PIL transforms); they get the
images already normalised, in memory. Their model is built with ``SDNet18`` rather than ``build_model``
(which wraps it in ``DataParallel().cuda()``), followed by the dummy forward ``build_model`` runs.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import shutil
import sys
import tempfile
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench import median_seconds, print_table

from sdnet_cli import api
from sdnet_cli.data.cifar import load_cifar10
from sdnet_cli.models import load_model
from sdnet_cli.runtime import Runtime, iter_batches, predict, predict_correct


def width_patches(width: int) -> list[tuple[str, str]]:
    """(their text, ours) pairs of patch 1: their channel literals scaled to ``width``."""
    scaled = {c: c * width // 64 for c in (64, 128, 256, 512)}
    return [
        ("self.in_planes = 64", f"self.in_planes = {scaled[64]}"),
        ("DictConv2d(3, 64,", f"DictConv2d(3, {scaled[64]},"),
        ("nn.BatchNorm2d(64),", f"nn.BatchNorm2d({scaled[64]}),"),
        *((f"_make_layer(block, {c},", f"_make_layer(block, {scaled[c]},") for c in (64, 128, 256, 512)),
        ("nn.Linear(512*block.expansion", f"nn.Linear({scaled[512]}*block.expansion"),
    ]


def patched_copy(source: Path, into: Path, width: int) -> Path:
    """A copy of their ``Lib`` package with patch 1 applied; fails naming any text their code no longer has."""
    shutil.copytree(source / "Lib", into / "Lib")
    sdnet = into / "Lib" / "models" / "sdnet.py"
    text = sdnet.read_text()
    for old, new in width_patches(width):
        if old not in text:
            sys.exit(f"{source}/Lib/models/sdnet.py has no {old!r}: their code changed; update width_patches")
        text = text.replace(old, new)
    sdnet.write_text(text)
    return into


def install_cfgnode_stand_in() -> None:
    """Patch 2: a ``yacs.config.CfgNode`` stand-in, only when yacs itself is missing."""
    if importlib.util.find_spec("yacs") is not None:
        return

    class CfgNode(dict):
        __getattr__ = dict.__getitem__
        __setattr__ = dict.__setitem__

    yacs, config = types.ModuleType("yacs"), types.ModuleType("yacs.config")
    config.CfgNode = CfgNode  # type: ignore[attr-defined]
    yacs.config = config  # type: ignore[attr-defined]
    sys.modules.update({"yacs": yacs, "yacs.config": config})


@contextlib.contextmanager
def cuda_is_identity() -> Iterator[None]:
    """Patch 3: ``Tensor.cuda`` returns the tensor itself inside the block."""
    original = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.cuda = original  # type: ignore[method-assign]


class Authors:
    """Their SDNet18 with our exported weights, and their eval loop over in-memory batches."""

    def __init__(self, src: Path, workdir: Path, checkpoint: Path, width: int, lam: float, n_steps: int) -> None:
        sys.path.insert(0, str(patched_copy(src, workdir, width)))
        install_cfgnode_stand_in()
        from Lib.cls_function import validate
        from Lib.config import config
        from Lib.models.sdnet import SDNet18

        config.MODEL.LAMBDA = [lam]
        config.MODEL.NUM_LAYERS = n_steps
        self.config, self.validate = config, validate
        with contextlib.redirect_stdout(io.StringIO()):  # their layer prints its input size on the first forward
            self.model = SDNet18(num_classes=config.MODEL.NUM_CLASSES, cfg=config)
            with torch.no_grad():
                self.model(torch.zeros(32, 3, 32, 32))  # build_model's dummy forward (sets their layer's sizes)
        self.model.load_state_dict(torch.load(checkpoint, weights_only=True))
        self.model.eval()
        self.criterion = torch.nn.CrossEntropyLoss()

    def eval_loop(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        with cuda_is_identity():
            self.validate(self.config, batches, self.model, self.criterion, None, None, None, None)

    @torch.no_grad()
    def predictions(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> np.ndarray:
        """Their predicted labels, each batch after their per-batch step-size update (untimed)."""
        out = []
        for x, _ in batches:
            self.model.update_stepsize()
            out.append(self.model(x)[0].argmax(dim=1))
        return torch.cat(out).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--authors-src", type=Path, help="a checkout of github.com/Delay-Xili/SDNet")
    parser.add_argument(
        "--batch-size", type=int, action="append", help="repeatable; default 128 and sdnet eval's default"
    )
    parser.add_argument("--n-images", type=int, default=1024, help="CIFAR-10 test images per timed pass")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.authors_src is None:
        print(
            "authors_speed.py: pass --authors-src DIR, a checkout of github.com/Delay-Xili/SDNet, to compare with "
            "the authors' implementation; nothing measured."
        )
        return
    torch.set_num_threads(args.threads)
    ours, info = load_model("sdnet18")
    resnet, resnet_info = load_model("resnet18")
    if resnet_info.width != info.width:
        sys.exit(
            f"the shipped resnet18 has width {resnet_info.width}, sdnet18 {info.width}: no like-for-like reference"
        )
    fp32, bf16 = Runtime.create("cpu"), Runtime.create("cpu", "bf16")
    for model in (ours, resnet):
        fp32.prepare(model)  # the same preparation serves both precisions
    images, labels = load_cifar10(None, "test", download=False)
    images, labels = np.ascontiguousarray(images[: args.n_images]), labels[: args.n_images]
    batch_sizes = list(dict.fromkeys(args.batch_size or [128, fp32.eval_batch_size]))  # and the CLI default
    with tempfile.TemporaryDirectory(prefix="sdnet-authors-") as tmp:
        checkpoint = api.export_checkpoint(out=Path(tmp) / "sdnet18.pth", model="sdnet18")
        stem = ours.stem_csc
        authors = Authors(args.authors_src, Path(tmp), checkpoint, info.width, stem.lam, stem.n_steps)
        x = ours.normalize(fp32.to_input(images)).contiguous()  # their input: normalised, NCHW
        y = torch.from_numpy(labels.astype(np.int64))
        batches = {b: [(x[i : i + b], y[i : i + b]) for i in range(0, len(x), b)] for b in batch_sizes}

        def ours_eval(model: torch.nn.Module, runtime: Runtime, b: int) -> Callable[[], Any]:
            return lambda: predict_correct(model, images, labels, runtime, b)

        works: dict[tuple[int, str, str], Callable[[], Any]] = {}  # (batch, implementation, precision)
        for b in batch_sizes:
            works[(b, "authors sdnet18", "fp32")] = lambda b=b: authors.eval_loop(batches[b])
            for name, model in (("ours sdnet18", ours), ("ours resnet18", resnet)):
                for runtime in (fp32, bf16):
                    works[(b, name, runtime.precision)] = ours_eval(model, runtime, b)
        seconds = median_seconds(works, args.repeats, fp32.device)
        theirs = authors.predictions(batches[batch_sizes[0]])
    rows = [
        {
            "batch": b,
            "implementation": name,
            "precision": p,
            "images_per_s": round(len(images) / s, 1),
            "vs authors": round(seconds[(b, "authors sdnet18", "fp32")] / s, 3),
            "vs our resnet18 (same precision)": round(seconds[(b, "ours resnet18", p)] / s, 3),
        }
        for (b, name, p), s in seconds.items()
    ]
    print_table(
        f"sdnet18 eval: the authors' code vs ours (width {info.width}, {args.threads} threads)",
        rows,
        f"{len(images)} CIFAR-10 test images per pass, same weights (ours exported to their layout); median of "
        f"{args.repeats} passes after a warm-up, all rows interleaved. Authors: their validate() loop on "
        "normalised in-memory batches (their data loading untimed); ours: predict_correct as sdnet eval runs "
        "it, from uint8 images.",
    )
    agree = []
    for runtime in (fp32, bf16):
        batches_ours = iter_batches(images, labels, runtime, batch_sizes[0])
        mine = np.concatenate([predict(ours, b.x, runtime).cpu().numpy() for b in batches_ours])
        agree.append(
            {
                "ours": f"sdnet18, {runtime.precision}",
                "same prediction as authors": f"{(mine == theirs).sum()}/{len(mine)}",
                "accuracy ours (%)": round(100 * float((mine == labels).mean()), 2),
                "accuracy authors (%)": round(100 * float((theirs == labels).mean()), 2),
            }
        )
    print_table(
        "sdnet18 predictions: the authors' code vs ours",
        agree,
        f"The timed images, batch {batch_sizes[0]}; their step size re-estimated per batch as in their loop.",
    )


if __name__ == "__main__":
    main()
