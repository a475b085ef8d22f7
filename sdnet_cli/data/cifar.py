"""CIFAR-10 and CIFAR-100 in their official python batch layouts, read directly (no torchvision integrity check).

Images come back as uint8 NHWC arrays, the one in-memory format every data source uses. The two
datasets differ only in file names and label keys, which ``CifarLayout`` records.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class CifarLayout:
    """Where one CIFAR variant keeps its batches, labels and class names."""

    title: str
    folder: str
    url: str
    md5: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    label_key: bytes
    meta_file: str
    names_key: bytes


CIFAR10 = CifarLayout(
    "CIFAR-10", "cifar-10-batches-py", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "c58f30108f718f92721af3b95e74349a", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
    b"labels", "batches.meta", b"label_names",
)
CIFAR100 = CifarLayout(
    "CIFAR-100", "cifar-100-python", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    "eb9058c3a382ffc7106e4002c42a8d85", ("train",), ("test",), b"fine_labels", "meta", b"fine_label_names",
)


class DataError(ValueError):
    """Data that is missing or malformed; the message says where it should be."""


def resolve_data_dir(data_dir: Path | None) -> Path:
    """``--data-dir``, else ``$SDNET_DATA``, else ``./data``."""
    if data_dir is not None:
        return Path(data_dir)
    return Path(os.environ.get("SDNET_DATA", "data"))


def download(layout: CifarLayout, root: Path) -> None:
    """Fetch and unpack the official archive into ``root`` (its md5 is checked by torchvision)."""
    from torchvision.datasets.utils import download_and_extract_archive

    download_and_extract_archive(layout.url, str(root), md5=layout.md5)


def read_batch(path: Path, label_key: bytes = b"labels") -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    images = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), np.asarray(batch[label_key], dtype=np.int64)


def load_cifar(
    layout: CifarLayout, data_dir: Path | None, split: str = "test", download_missing: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N,32,32,3], labels int64 [N]) of the ``train`` or ``test`` split.

    Downloads into ``data_dir`` when the folder is missing and the machine is online.
    """
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; use 'train' or 'test'")
    root = resolve_data_dir(data_dir)
    folder = root / layout.folder
    if not folder.is_dir() and download_missing:
        try:
            download(layout, root)
        except Exception as exc:  # offline, proxy, disk: all end in the same advice
            raise DataError(
                f"{layout.title} not found in {folder} and the download failed ({exc.__class__.__name__}). "
                f"Put the '{layout.folder}' folder (from {layout.url.rsplit('/', 1)[-1]}) inside {root}, "
                "or point --data-dir / $SDNET_DATA at the folder that contains it."
            ) from exc
    names = layout.train if split == "train" else layout.test
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise DataError(
            f"{layout.title} {split} split not found: {folder} lacks {', '.join(missing)}. Put the '{layout.folder}' "
            f"folder inside {root}, or point --data-dir / $SDNET_DATA at the folder that contains it."
        )
    parts = [read_batch(folder / n, layout.label_key) for n in names]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def load_cifar10(data_dir: Path | None, split: str = "test", download: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10's ``train`` or ``test`` split (see ``load_cifar``)."""
    return load_cifar(CIFAR10, data_dir, split, download)


def load_cifar100(data_dir: Path | None, split: str = "test", download: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-100's ``train`` or ``test`` split with its 100 fine labels (see ``load_cifar``)."""
    return load_cifar(CIFAR100, data_dir, split, download)


def label_names(data_dir: Path | None, layout: CifarLayout = CIFAR10) -> list[str]:
    with open(resolve_data_dir(data_dir) / layout.folder / layout.meta_file, "rb") as f:
        return [n.decode() for n in pickle.load(f, encoding="bytes")[layout.names_key]]
