"""CIFAR-10 and CIFAR-100 in their official python batch layouts, read directly (no torchvision integrity check).

Images come back as uint8 NHWC arrays, the one in-memory format every data source uses. The two
datasets differ only in file names and label keys, which ``CifarLayout`` records. The batches are
pickles, so they are read with an unpickler that can rebuild numpy arrays and nothing else: a
crafted file is refused before any of its code runs.
"""

from __future__ import annotations

import os
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..errors import UsageError


@dataclass(frozen=True)
class CifarLayout:
    """Where one CIFAR variant keeps its batches, labels and class names."""

    title: str
    num_classes: int
    folder: str
    url: str
    md5: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    label_key: bytes
    meta_file: str
    names_key: bytes


CIFAR10 = CifarLayout(
    "CIFAR-10",
    10,
    "cifar-10-batches-py",
    "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "c58f30108f718f92721af3b95e74349a",
    tuple(f"data_batch_{i}" for i in range(1, 6)),
    ("test_batch",),
    b"labels",
    "batches.meta",
    b"label_names",
)
CIFAR100 = CifarLayout(
    "CIFAR-100",
    100,
    "cifar-100-python",
    "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    "eb9058c3a382ffc7106e4002c42a8d85",
    ("train",),
    ("test",),
    b"fine_labels",
    "meta",
    b"fine_label_names",
)


class DataError(UsageError):
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


PICKLE_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),  # how the official batches (numpy 1.x) name it
        ("numpy._core.multiarray", "_reconstruct"),  # the same function as numpy 2 writes it
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }
)
"""The only globals an official CIFAR python batch refers to: what numpy needs to rebuild an array."""


class _BatchUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild dicts, lists, strings, numbers and numpy arrays, and nothing else.

    Unpickling calls whatever global a file names, so a crafted batch could run any code; refusing
    every global outside ``PICKLE_GLOBALS`` stops that before anything is called.
    """

    def __init__(self, file: BinaryIO, path: Path) -> None:
        super().__init__(file, encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in PICKLE_GLOBALS:
            raise DataError(
                f"refusing to read {self.path}: it asks to load {module}.{name}, which a CIFAR batch never does "
                "and which could run code; replace it with the file from the official archive"
            )
        return super().find_class(module, name)


def _damaged(path: Path, layout: CifarLayout, problem: str) -> DataError:
    return DataError(
        f"{path} {problem}; delete the '{layout.folder}' folder and download or unpack "
        f"{layout.url.rsplit('/', 1)[-1]} again"
    )


def _unpickle(path: Path, layout: CifarLayout) -> Any:
    """The object in a CIFAR pickle file, read without ever running code from it."""
    try:
        with open(path, "rb") as f:
            return _BatchUnpickler(f, path).load()
    except DataError:
        raise
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except Exception as exc:  # EOFError, UnpicklingError, numpy's errors on a cut-off array, ...
        detail = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise _damaged(path, layout, f"is empty, truncated or not a CIFAR python batch ({detail})") from exc


def read_batch(path: Path, layout: CifarLayout = CIFAR10) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N,32,32,3], labels int64 [N]) of one batch file, checked before it is used."""
    path = Path(path)
    batch = _unpickle(path, layout)
    data = batch.get(b"data") if isinstance(batch, dict) else None
    labels = batch.get(layout.label_key) if isinstance(batch, dict) else None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        found = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise _damaged(path, layout, f"should hold b'data', uint8 [N, 3072] images, but holds {found}")
    try:
        labels = np.asarray(labels)
    except ValueError:  # ragged nesting
        labels = np.asarray(None)
    if labels.dtype.kind not in "iu" or labels.shape != (len(data),):
        found = f"{labels.dtype} {labels.shape}"
        raise _damaged(path, layout, f"should hold {layout.label_key!r}, {len(data)} integer labels, but holds {found}")
    if len(labels) and not 0 <= labels.min() <= labels.max() < layout.num_classes:
        found = f"{labels.min()}..{labels.max()}"
        raise _damaged(path, layout, f"has labels {found}, outside {layout.title}'s 0..{layout.num_classes - 1}")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int64)


def load_cifar(
    layout: CifarLayout, data_dir: Path | None, split: str = "test", download_missing: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N,32,32,3], labels int64 [N]) of the ``train`` or ``test`` split.

    Downloads into ``data_dir`` when the folder is missing and the machine is online.
    """
    if split not in ("train", "test"):
        raise UsageError(f"unknown split {split!r}; use 'train' or 'test'", parameter="split")
    root = resolve_data_dir(data_dir)
    folder = root / layout.folder
    if not folder.is_dir() and download_missing:
        created = not root.exists()
        try:
            download(layout, root)
        except Exception as exc:  # offline, proxy, disk: all end in the same advice
            if created:  # no empty (or half-downloaded) data folder left behind
                shutil.rmtree(root, ignore_errors=True)
            raise DataError(
                f"{layout.title} not found in {folder} and the download failed ({exc.__class__.__name__}). "
                f"Put the '{layout.folder}' folder (from {layout.url.rsplit('/', 1)[-1]}) inside {root}, "
                "or point --data-dir / $SDNET_DATA at the folder that contains it."
            ) from None
    names = layout.train if split == "train" else layout.test
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise DataError(
            f"{layout.title} {split} split not found: {folder} lacks {', '.join(missing)}. Put the '{layout.folder}' "
            f"folder inside {root}, or point --data-dir / $SDNET_DATA at the folder that contains it."
        )
    parts = [read_batch(folder / n, layout) for n in names]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def load_cifar10(data_dir: Path | None, split: str = "test", download: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10's ``train`` or ``test`` split (see ``load_cifar``)."""
    return load_cifar(CIFAR10, data_dir, split, download)


def load_cifar100(data_dir: Path | None, split: str = "test", download: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-100's ``train`` or ``test`` split with its 100 fine labels (see ``load_cifar``)."""
    return load_cifar(CIFAR100, data_dir, split, download)


def label_names(data_dir: Path | None, layout: CifarLayout = CIFAR10) -> list[str]:
    """The class names, in label order, from the dataset's meta file."""
    path = resolve_data_dir(data_dir) / layout.folder / layout.meta_file
    if not path.is_file():
        raise DataError(f"{path} not found; it is part of {layout.url.rsplit('/', 1)[-1]}")
    meta = _unpickle(path, layout)
    names = meta.get(layout.names_key) if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) != layout.num_classes or not all(isinstance(n, bytes) for n in names):
        raise _damaged(path, layout, f"should hold {layout.names_key!r}, {layout.num_classes} class names")
    return [n.decode() for n in names]
