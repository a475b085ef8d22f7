"""CIFAR-10 in the official python batch layout, read directly (no torchvision integrity check).

Images come back as uint8 NHWC arrays, the one in-memory format every data source uses.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))


class DataError(ValueError):
    """Data that is missing or malformed; the message says where it should be."""


def resolve_data_dir(data_dir: Path | None) -> Path:
    """``--data-dir``, else ``$SDNET_DATA``, else ``./data``."""
    if data_dir is not None:
        return Path(data_dir)
    return Path(os.environ.get("SDNET_DATA", "data"))


def download_cifar10(root: Path) -> None:
    """Fetch and unpack the official archive into ``root`` (its md5 is checked by torchvision)."""
    from torchvision.datasets.utils import download_and_extract_archive

    download_and_extract_archive(CIFAR10_URL, str(root), md5=CIFAR10_MD5)


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    images = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), np.asarray(batch[b"labels"], dtype=np.int64)


def load_cifar10(data_dir: Path | None, split: str = "test", download: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N,32,32,3], labels int64 [N]) of the ``train`` or ``test`` split.

    Downloads into ``data_dir`` when the folder is missing and the machine is online.
    """
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; use 'train' or 'test'")
    root = resolve_data_dir(data_dir)
    folder = root / CIFAR10_FOLDER
    if not folder.is_dir() and download:
        try:
            download_cifar10(root)
        except Exception as exc:  # offline, proxy, disk: all end in the same advice
            raise DataError(
                f"CIFAR-10 not found in {folder} and the download failed ({exc.__class__.__name__}). "
                f"Put the '{CIFAR10_FOLDER}' folder (from cifar-10-python.tar.gz) inside {root}, "
                "or point --data-dir / $SDNET_DATA at the folder that contains it."
            ) from exc
    names = TRAIN_BATCHES if split == "train" else ("test_batch",)
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise DataError(
            f"CIFAR-10 {split} split not found: {folder} lacks {', '.join(missing)}. Put the '{CIFAR10_FOLDER}' "
            f"folder inside {root}, or point --data-dir / $SDNET_DATA at the folder that contains it."
        )
    parts = [read_batch(folder / n) for n in names]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def label_names(data_dir: Path | None) -> list[str]:
    with open(resolve_data_dir(data_dir) / CIFAR10_FOLDER / "batches.meta", "rb") as f:
        return [n.decode() for n in pickle.load(f, encoding="bytes")[b"label_names"]]
