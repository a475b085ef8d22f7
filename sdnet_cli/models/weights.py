"""Shipped checkpoints: where they are looked up, their manifest, and its sha256 check.

A checkout's top-level ``weights/`` folder holds the shipped ``.safetensors``, their lambda
calibrations (``.lambda.json``) and ``manifest.json``, which lists every checkpoint with its
sha256, accuracy and training command; ``sdnet train`` adds new ones there. A wheel carries the
same files as the package data ``sdnet_cli/shipped_weights/`` (pyproject.toml maps that package
onto ``weights/``), so ``pip install`` without a checkout still finds them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from .._io import read_json
from ..schemas import Manifest, ManifestEntry, load
from .checkpoints import CheckpointError, sha256_of

ENV_VAR = "SDNET_WEIGHTS"
MANIFEST = "manifest.json"


def packaged_weights_dir() -> Path:
    """The weights that came with this copy of ``sdnet_cli``.

    An installed wheel has them inside the package; a source tree or an editable install has no
    such folder, and its package sits beside the checkout's ``weights/``. Found beside this file
    rather than by importing ``sdnet_cli.shipped_weights``: that import fails in an editable install
    (``weights/`` has no ``__init__.py``) and whenever ``sdnet_cli`` comes from a source tree.
    """
    package = Path(__file__).resolve().parents[1]
    installed = package / "shipped_weights"
    return installed if installed.is_dir() else package.parent / "weights"


def resolve_weights_dir(weights_dir: Path | str | None = None) -> Path:
    """Where shipped checkpoints are looked up: ``weights_dir``, else ``$SDNET_WEIGHTS``, else the packaged ones.

    Evaluated at every call, so a changed environment takes effect without re-importing.
    """
    if weights_dir is not None:
        return Path(weights_dir)
    from_env = os.environ.get(ENV_VAR)
    return Path(from_env) if from_env else packaged_weights_dir()


def read_manifest(weights_dir: Path | str | None = None) -> list[dict[str, Any]]:
    """The manifest's entries, each validated as a ``schemas.ManifestEntry`` (a sha256, a file inside the
    folder, a valid lambda...); none where the folder has no manifest."""
    path = resolve_weights_dir(weights_dir) / MANIFEST
    if not path.exists():
        return []
    data = read_json(path, "manifest", "weights_dir", error=CheckpointError)
    load(Manifest, data, "manifest", path, parameter="weights_dir", error=CheckpointError)
    return cast("list[dict[str, Any]]", data["models"])


def find_shipped(model: str, dataset: str, weights_dir: Path | str | None = None) -> dict[str, Any] | None:
    """The manifest entry named ``model``, else the default entry for architecture ``model``."""
    entries = [e for e in read_manifest(weights_dir) if e["dataset"] == dataset]
    for entry in entries:
        if entry["name"] == model:
            return entry
    defaults = [e for e in entries if e["architecture"] == model and e.get("default")]
    return defaults[0] if defaults else None


def verified_checkpoint(entry: dict[str, Any], weights_dir: Path | str | None = None) -> tuple[Path, str]:
    """The file of manifest ``entry`` and its sha256, refused unless that is the manifest's sha256.

    Applies wherever the folder came from, so a truncated download, a damaged install or a
    replaced file never loads silently.
    """
    manifest = resolve_weights_dir(weights_dir) / MANIFEST
    path = manifest.parent / entry["file"]
    if not path.is_file():
        raise CheckpointError(f"{path} is missing but {manifest} lists it; restore the file", parameter="weights_dir")
    digest = sha256_of(path)
    if digest != entry["sha256"]:
        raise CheckpointError(
            f"{path} does not match {manifest} (sha256 {digest} != {entry['sha256']}); the file is corrupted or was replaced",
            parameter="weights_dir",
        )
    return path, digest


def update_manifest(entry: dict[str, Any], weights_dir: Path | str) -> Path:
    """Add or replace (by name) one entry of the manifest in ``weights_dir``, atomically; a new default
    demotes the old one. The folder is explicit: writes never go to a looked-up (maybe installed) one."""
    from .._io import atomic_write_text

    path = Path(weights_dir) / MANIFEST
    load(ManifestEntry, entry, "manifest entry for", path, parameter="weights_dir", error=CheckpointError)
    with manifest_lock(path):  # trainings finishing at the same time must not drop each other's entry
        models = [e for e in read_manifest(weights_dir) if e["name"] != entry["name"]]
        if entry.get("default"):
            for other in models:
                if other["architecture"] == entry["architecture"] and other["dataset"] == entry["dataset"]:
                    other["default"] = False
        models.append(entry)
        atomic_write_text(path, json.dumps({"models": models}, indent=2) + "\n")
    return path


@contextmanager
def manifest_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``<manifest>.lock`` for a read-modify-write (POSIX; no-op where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
