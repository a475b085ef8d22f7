"""CIFAR-10-C / CIFAR-100-C on disk: reader and validator of a folder in the release layout.

The layout is that of the CIFAR-10-C release (Hendrycks & Dietterich, ICLR 2019):
``labels.npy`` holds the test labels repeated 5 times and each ``<corruption>.npy`` is
uint8 [5*N, 32, 32, 3] with severity 1 in the first N rows, severity 2 in the next N, and
so on (N = 10,000 in the release). A folder written by ``cifar_c_generate`` also
has ``metadata.json`` saying it was generated, with which seed and library versions,
so results on it are never mistaken for results on the official release.
Every file is checked (``validate_release``) before a run reads it, never unpickled.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from .._io import read_json
from ..errors import UsageError
from ..schemas import SEVERITIES

LABELS_FILE = "labels.npy"
METADATA_FILE = "metadata.json"
IMAGE_SHAPE: tuple[int, int, int] = (32, 32, 3)
NPY_MAGIC = b"\x93NUMPY"  # the first bytes of every .npy file
_LAYOUT = (
    "a CIFAR-10-C folder must contain labels.npy (N test labels repeated 5 times) and one "
    "<corruption>.npy per corruption, uint8 [5*N, 32, 32, 3], severity 1 in the first N rows"
)


class CifarCError(UsageError):
    """A CIFAR-10-C folder is missing, malformed, or inconsistent with a request."""


class CifarCMissingError(CifarCError, FileNotFoundError):
    """A file that a CIFAR-10-C folder should contain is not there."""


def _repair_advice(root: Path) -> str:
    """What to do about a damaged file: a generated folder can be regenerated, a release must be replaced."""
    if (Path(root) / METADATA_FILE).is_file():
        return "delete it and generate it again (a cache folder regenerates missing files on the next run)"
    return "replace it with the file from the official release"


def open_npy(path: Path) -> np.ndarray:
    """Memory-map one ``.npy`` file after checking that it is one, is whole, and holds no pickled objects.

    Left to ``np.load``, a cut-off or foreign file fails deep inside numpy, or, for object arrays,
    would need unpickling (which can run code); here each case is one line naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CifarCMissingError(f"{path} not found; {_LAYOUT}")
    advice = _repair_advice(path.parent)
    with open(path, "rb") as f:
        magic = f.read(len(NPY_MAGIC))
        if magic != NPY_MAGIC:
            if NPY_MAGIC.startswith(magic):
                raise CifarCError(f"{path} is empty or truncated ({len(magic)} bytes); {advice}")
            raise CifarCError(f"{path} is not a NumPy array file; {advice}")
        f.seek(0)
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
        except (ValueError, SyntaxError) as exc:
            detail = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
            raise CifarCError(f"{path} has a damaged .npy header ({detail}); {advice}") from exc
        offset = f.tell()
    if dtype.hasobject:
        raise CifarCError(f"{path} holds Python objects, which are never unpickled (that could run code); {advice}")
    size, expected = path.stat().st_size, offset + math.prod(shape) * dtype.itemsize
    if size != expected:
        state = "truncated" if size < expected else "longer than its header says"
        raise CifarCError(f"{path} is {state}: {size} bytes, but {dtype} {shape} needs {expected}; {advice}")
    if math.prod(shape) == 0:
        return cast(np.ndarray, np.load(path, allow_pickle=False))  # nothing to map
    return cast(np.ndarray, np.load(path, mmap_mode="r", allow_pickle=False))


def _open_labels(root: Path) -> np.ndarray:
    path = root / LABELS_FILE
    labels = open_npy(path)
    if labels.dtype.kind not in "iu" or labels.ndim != 1 or not len(labels) or len(labels) % len(SEVERITIES):
        raise CifarCError(
            f"{path} holds {labels.dtype} {labels.shape}, expected integer labels with a length divisible by 5; {_LAYOUT}"
        )
    return labels


def _check_label_range(path: Path, labels: np.ndarray, num_classes: int | None) -> None:
    if num_classes is None or not len(labels):
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise CifarCError(
            f"{path} has labels {low}..{high}, outside 0..{num_classes - 1} ({num_classes} classes); "
            f"{_repair_advice(path.parent)}"
        )


def _open_images(path: Path, rows: int | None) -> np.ndarray:
    """One corruption's images, uint8 [rows, 32, 32, 3] (any row count divisible by 5 when ``rows`` is None)."""
    data = open_npy(path)
    fits = (
        data.ndim == 4
        and data.shape[1:] == IMAGE_SHAPE
        and (data.shape[0] == rows if rows is not None else data.shape[0] % len(SEVERITIES) == 0)
    )
    if data.dtype != np.uint8 or not fits:
        expected = f"uint8 {(rows, *IMAGE_SHAPE) if rows is not None else '[5*N, 32, 32, 3]'}"
        raise CifarCError(f"{path} has dtype {data.dtype} and shape {data.shape}, expected {expected}; {_LAYOUT}")
    return data


def read_cifar_c_cell(
    root: Path, corruption: str, severity: int, n: int | None = None, num_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [n, 32, 32, 3] and labels int64 [n] of one (corruption, severity) cell.

    Memory-maps the files, so only the requested rows are read; ``n`` keeps the first
    n images of the cell (all of them when None). With ``num_classes``, labels outside
    0..num_classes-1 are refused.
    """
    root = Path(root)
    if severity not in SEVERITIES:
        raise CifarCError(f"severity must be one of {SEVERITIES}, got {severity!r}", parameter="severity")
    labels = _open_labels(root)
    data = _open_images(root / f"{corruption}.npy", len(labels))
    block = len(labels) // len(SEVERITIES)
    count = block if n is None else n
    if not 0 <= count <= block:
        raise CifarCError(f"n must be between 0 and {block} (images per severity), got {n}")
    start = (severity - 1) * block
    cell_labels = np.array(labels[start : start + count], dtype=np.int64)
    _check_label_range(root / LABELS_FILE, cell_labels, num_classes)
    return np.array(data[start : start + count]), cell_labels


def validate_release(
    root: Path,
    corruptions: Sequence[str],
    images_per_severity: int | None = None,
    num_classes: int | None = None,
    n: int | None = None,
    allow_missing: bool = False,
) -> None:
    """Check every file that reading ``corruptions`` from ``root`` needs, before any work starts.

    Each file must exist and be a whole ``.npy`` without pickled objects; ``labels.npy`` must hold
    integer labels in 0..num_classes-1, 5 x k of them for some k <= ``images_per_severity`` (the
    first k test images; a generated folder's ``metadata.json`` count is used instead); each ``<corruption>.npy`` must be
    uint8 [rows of labels.npy, 32, 32, 3]; ``n`` (images per severity a run reads) must fit.
    ``allow_missing``: a cache folder, whose absent files are generated later; only present ones are checked.
    """
    root = Path(root)
    files = [LABELS_FILE, *(f"{c}.npy" for c in dict.fromkeys(corruptions))]
    missing = [name for name in files if not (root / name).is_file()]
    if missing and not allow_missing:
        raise CifarCMissingError(f"{root} lacks {', '.join(missing)}; {_LAYOUT}")
    meta = read_metadata(root)
    if meta and meta.get("generated") and isinstance(meta.get("images_per_severity"), int):
        images_per_severity, counted_by = meta["images_per_severity"], f"its {METADATA_FILE} says"
    else:
        counted_by = "one per test image and severity"
    rows = None if images_per_severity is None else len(SEVERITIES) * images_per_severity
    if LABELS_FILE not in missing:
        labels = _open_labels(root)
        # a release may hold only the first k test images of each severity (k <= the test split)
        if rows is not None and (len(labels) % len(SEVERITIES) or not 0 < len(labels) <= rows):
            raise CifarCError(
                f"{root / LABELS_FILE} has {len(labels)} labels, expected {len(SEVERITIES)} x k for some k up to "
                f"{images_per_severity} ({counted_by}); {_repair_advice(root)}"
            )
        _check_label_range(root / LABELS_FILE, np.asarray(labels), num_classes)
        rows = len(labels)
    for name in files[1:]:
        if name not in missing:
            _open_images(root / name, rows)
    if n is not None and rows is not None and n > rows // len(SEVERITIES):
        raise CifarCError(
            f"n_examples is {n} but {root} holds {rows // len(SEVERITIES)} images per severity", parameter="n_examples"
        )


def read_metadata(root: Path) -> dict[str, Any] | None:
    """A folder's ``metadata.json`` (None when there is none); a damaged one is refused."""
    path = Path(root) / METADATA_FILE
    if not path.exists():
        return None
    try:
        meta = read_json(path, "generated-data record")
    except UsageError as exc:
        raise CifarCError(f"{exc}; delete the folder and generate it again") from None
    if not isinstance(meta, dict):
        raise CifarCError(f"{path} does not hold a JSON object; delete the folder and generate it again")
    return meta


def is_generated(root: Path) -> bool:
    """True when the folder was written by ``generate_cifar_c`` (not the official release)."""
    meta = read_metadata(Path(root))
    return bool(meta and meta.get("generated"))


def describe_source(root: Path) -> dict[str, Any]:
    """Where a CIFAR-10-C folder came from, for report metadata."""
    root = Path(root)
    meta = read_metadata(root)
    if meta and meta.get("generated"):
        return {
            "source": "generated",
            "seed": meta["seed"],
            "strengths": meta.get("strengths"),
            "path": str(root),
            "note": meta.get("note"),
        }
    return {"source": "official", "path": str(root)}
