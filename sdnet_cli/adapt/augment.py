"""MEMO's test-time augmentations: AugMix-style chains (Hendrycks et al., ICLR 2020) of operations that are NOT
the benchmark corruptions, after a random crop and flip.

MEMO (Zhang, Levine, Finn, NeurIPS 2022) augments each test image with AugMix and requires that no
augmentation overlaps the corruptions it is tested on; AugMix itself leaves out contrast, colour,
brightness and sharpness for that reason, and so does this list. Every draw comes from the generator
passed in, so one seed gives the same copies.

Per copy: random crop of the 4-pixel zero-padded image and a horizontal flip with probability 1/2; then
``WIDTH`` chains of 1 to ``MAX_DEPTH`` operations, each at a level drawn uniformly from [0.1, ``SEVERITY``]
(of 10), mixed with Dirichlet(1, ..., 1) weights, and that mix blended with the cropped image with a
Beta(1, 1) weight.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

WIDTH, MAX_DEPTH, SEVERITY = 3, 3, 3
"""AugMix's CIFAR settings: three chains, each one to three operations, severity 3."""
PAD = 4


def _signed(rng: np.random.Generator, value: float) -> float:
    return value if rng.random() < 0.5 else -value


def _autocontrast(img: torch.Tensor, level: float, rng: np.random.Generator) -> torch.Tensor:
    return cast(torch.Tensor, TF.autocontrast(img))


def _equalize(img: torch.Tensor, level: float, rng: np.random.Generator) -> torch.Tensor:
    return cast(torch.Tensor, TF.equalize(img))


def _posterize(img: torch.Tensor, level: float, rng: np.random.Generator) -> torch.Tensor:
    return cast(torch.Tensor, TF.posterize(img, bits=4 - int(level * 4 / 10)))


def _solarize(img: torch.Tensor, level: float, rng: np.random.Generator) -> torch.Tensor:
    return cast(torch.Tensor, TF.solarize(img, threshold=256 - int(level * 256 / 10)))


def _rotate(img: torch.Tensor, level: float, rng: np.random.Generator) -> torch.Tensor:
    return cast(torch.Tensor, TF.rotate(img, angle=_signed(rng, level * 30 / 10)))


def _shear(axis: int) -> Callable[[torch.Tensor, float, np.random.Generator], torch.Tensor]:
    def shear(img: torch.Tensor, level: float, rng: np.random.Generator) -> torch.Tensor:
        degrees = float(np.degrees(np.arctan(_signed(rng, level * 0.3 / 10))))
        amounts = [degrees, 0.0] if axis == 0 else [0.0, degrees]
        return cast(torch.Tensor, TF.affine(img, angle=0.0, translate=[0, 0], scale=1.0, shear=amounts))

    return shear


def _translate(axis: int) -> Callable[[torch.Tensor, float, np.random.Generator], torch.Tensor]:
    def translate(img: torch.Tensor, level: float, rng: np.random.Generator) -> torch.Tensor:
        pixels = int(_signed(rng, level * (img.shape[-1] / 3) / 10))
        shift = [pixels, 0] if axis == 0 else [0, pixels]
        return cast(torch.Tensor, TF.affine(img, angle=0.0, translate=shift, scale=1.0, shear=[0.0, 0.0]))

    return translate


OPERATIONS: dict[str, Callable[[torch.Tensor, float, np.random.Generator], torch.Tensor]] = {
    "autocontrast": _autocontrast,
    "equalize": _equalize,
    "posterize": _posterize,
    "solarize": _solarize,
    "rotate": _rotate,
    "shear_x": _shear(0),
    "shear_y": _shear(1),
    "translate_x": _translate(0),
    "translate_y": _translate(1),
}
"""AugMix's operations less the four that resemble benchmark corruptions (contrast, color, brightness, sharpness)."""


def crop_and_flip(img: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """A random ``PAD``-pixel-shifted crop of the zero-padded image, flipped left-right with probability 1/2."""
    height, width = img.shape[-2:]
    padded = TF.pad(img, [PAD, PAD, PAD, PAD])
    top, left = int(rng.integers(0, 2 * PAD + 1)), int(rng.integers(0, 2 * PAD + 1))
    out = TF.crop(padded, top, left, height, width)
    return cast(torch.Tensor, TF.horizontal_flip(out)) if rng.random() < 0.5 else cast(torch.Tensor, out)


def augmix(img: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """One augmented copy of a uint8 CHW image, as float [0, 1] CHW."""
    base = crop_and_flip(img, rng)
    weights = rng.dirichlet([1.0] * WIDTH)
    blend = float(rng.beta(1.0, 1.0))
    names = list(OPERATIONS)
    mixed = torch.zeros(base.shape, dtype=torch.float32)
    for weight in weights:
        chain = base
        for _ in range(int(rng.integers(1, MAX_DEPTH + 1))):
            name = names[int(rng.integers(len(names)))]
            chain = OPERATIONS[name](chain, float(rng.uniform(0.1, SEVERITY)), rng)
        mixed += float(weight) * chain.float()
    return (blend * base.float() + (1.0 - blend) * mixed) / 255.0


def augmented_copies(x: torch.Tensor, copies: int, rng: np.random.Generator) -> torch.Tensor:
    """``copies`` augmented versions [copies, C, H, W] of one float [0, 1] image [C, H, W] (quantised to 8 bits
    first, as the images the tool reads are)."""
    img = (x.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    return torch.stack([augmix(img, rng) for _ in range(copies)]).to(x.device, x.dtype)
