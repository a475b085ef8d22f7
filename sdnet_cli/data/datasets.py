"""What the rest of the program needs to know about each dataset, in one table.

Commands never ask "is this CIFAR or ImageNet?": they read a split through ``DatasetSpec.load``,
corrupted cells through ``DatasetSpec.corrupted`` (a store with the same methods for the
CIFAR-C ``.npy`` release and the ImageNet-C folder release), and summarise with ``ce_baseline``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import UsageError
from .cifar import load_cifar10, load_cifar100
from .cifar_c_store import NpyStore
from .imagenet import FolderStore, load_imagenet

Split = tuple[Any, np.ndarray]
"""(uint8 NHWC images: an ndarray, or an ``ImageArray`` decoded on demand, labels int64)."""


class CorruptedStore(Protocol):
    """A corruption benchmark: official release folders and the seeded generated cache, read alike."""

    title: str

    def missing_images(self, cache_root: Path, corruptions: Sequence[str], images: Any, n: int, seed: int) -> int: ...

    def ensure_generated(
        self,
        cache_root: Path,
        corruptions: Sequence[str],
        images: Any,
        labels: np.ndarray,
        n: int,
        seed: int,
        workers: int,
        progress: Callable[[int], None] | None = None,
    ) -> Path: ...

    def generate(
        self,
        root: Path,
        corruptions: Sequence[str],
        images: Any,
        labels: np.ndarray,
        n: int,
        seed: int,
        workers: int,
        progress: Callable[[int], None] | None = None,
    ) -> Path: ...

    def validate(self, root: Path, corruptions: Sequence[str], images: Any, labels: np.ndarray, n: int) -> None:
        """Refuse (``UsageError`` naming the file) a folder that lacks or has damaged files for ``corruptions``."""
        ...

    def validate_cache(
        self, cache_root: Path, corruptions: Sequence[str], images: Any, labels: np.ndarray, n: int, seed: int
    ) -> None:
        """Like ``validate`` for the generated cache, where absent files are not errors (they get generated)."""
        ...

    def read_cell(
        self, root: Path, corruption: str, severity: int, images: Any, labels: np.ndarray, n: int
    ) -> Split: ...

    def describe(self, root: Path) -> dict[str, Any]: ...


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    title: str
    num_classes: int  # normalisation is the model's (models.inputs), not the images'
    stem: str  # the architecture stem the paper uses for it: "cifar" or "imagenet"
    image_size: int
    reader: Callable[[Path | None, str, bool], Split]  # (data_dir, "train" | "test", download) -> split
    corrupted: CorruptedStore
    strength: str  # corruption strengths of its -C benchmark: "cifar" or "imagenet" (see data/corruptions.py)
    ce_baseline: Mapping[str, float] = field(default_factory=dict)  # per-corruption error that mCE divides by
    ce_baseline_clean: float | None = None  # the baseline's clean error, for relative mCE

    def load(self, data_dir: Path | None, split: str = "test", download: bool = True) -> Split:
        """The ``train`` or ``test`` split (ImageNet: ``val``) as uint8 NHWC images and int64 labels."""
        return self.reader(data_dir, split, download)


# AlexNet's ImageNet-C errors, mean over the 5 severities (Hendrycks & Dietterich, ICLR 2019): mCE's normalisation.
ALEXNET_ERRORS: dict[str, float] = {
    "gaussian_noise": 0.886428,
    "shot_noise": 0.894468,
    "impulse_noise": 0.922640,
    "defocus_blur": 0.819880,
    "glass_blur": 0.826268,
    "motion_blur": 0.785948,
    "zoom_blur": 0.798360,
    "snow": 0.866816,
    "frost": 0.826572,
    "fog": 0.819324,
    "brightness": 0.564592,
    "contrast": 0.853204,
    "elastic_transform": 0.646056,
    "pixelate": 0.717840,
    "jpeg_compression": 0.606500,
}
# AlexNet's clean top-1 error for relative mCE. Second-hand: 43.45%, as
# public robustness code uses it beside the table above (Hendrycks & Dietterich round it to 43.5%).
ALEXNET_CLEAN_ERROR = 0.4345

CIFAR10 = DatasetSpec(
    "cifar10",
    "CIFAR-10",
    10,
    "cifar",
    32,
    load_cifar10,
    NpyStore("CIFAR-10-C", "cifar10-c", 10),
    "cifar",
)
CIFAR100 = DatasetSpec(
    "cifar100",
    "CIFAR-100",
    100,
    "cifar",
    32,
    load_cifar100,
    NpyStore("CIFAR-100-C", "cifar100-c", 100),
    "cifar",
)
IMAGENET = DatasetSpec(
    "imagenet",
    "ImageNet",
    1000,
    "imagenet",
    224,
    load_imagenet,
    FolderStore(),
    "imagenet",
    ALEXNET_ERRORS,
    ALEXNET_CLEAN_ERROR,
)

DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in (CIFAR10, CIFAR100, IMAGENET)}


def dataset_spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise UsageError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}") from None
