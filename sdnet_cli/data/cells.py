"""Evaluation cells: (corruption, severity) pairs, and where their images come from.

A ``CellSource`` hands out uint8 images for any cell of any dataset, from the clean test split, an
official corrupted release (CIFAR-10-C, CIFAR-100-C, ImageNet-C), or the seeded generated cache,
so callers never care which.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .._io import check_writable_dir
from ..errors import UsageError
from ..forecast import Progress
from ..rows import CLEAN
from ..schemas import EXAMPLES_MAX, SEVERITIES, WORKERS_MAX, check_count
from .corruptions import ALL_CORRUPTIONS, BENCHMARK_CORRUPTIONS, EXTRA_CORRUPTIONS
from .datasets import dataset_spec


@dataclass(frozen=True)
class Cell:
    corruption: str  # "clean" or one of ALL_CORRUPTIONS
    severity: int  # 0 for clean, else 1..5


class CellImages(Protocol):
    """What the evaluation loop reads cells through: ``CellSource``, or calibration's corrupted training subsets."""

    def load(self, cell: Cell) -> tuple[np.ndarray, np.ndarray]: ...


def parse_corruptions(values: Iterable[str]) -> list[str]:
    """Expand ``all`` (the 15 benchmark corruptions), ``extra`` (the 4 extras), ``none`` (clean)."""
    names: list[str] = []
    for value in values:
        expanded = {
            "all": BENCHMARK_CORRUPTIONS,
            "extra": EXTRA_CORRUPTIONS,
            "none": (CLEAN,),
            CLEAN: (CLEAN,),
        }.get(value, (value,))
        for name in expanded:
            if name != CLEAN and name not in ALL_CORRUPTIONS:
                raise UsageError(
                    f"unknown corruption {name!r}; choose from all, extra, none, {', '.join(ALL_CORRUPTIONS)}",
                    parameter="corruptions",
                )
            if name not in names:
                names.append(name)
    return names


def parse_severities(values: Iterable[str]) -> list[int]:
    severities: list[int] = []
    for value in values:
        if value == "all":
            chosen: Sequence[int] = SEVERITIES
        else:
            try:
                chosen = [int(value)]
            except ValueError:
                chosen = [-1]
            if chosen[0] not in SEVERITIES:
                raise UsageError(f"severity must be 1..5 or 'all', got {value!r}", parameter="severities")
        severities += [s for s in chosen if s not in severities]
    return sorted(severities)


def expand_cells(corruptions: Sequence[str], severities: Sequence[int]) -> list[Cell]:
    """Clean first (always included as the reference), then every corruption x severity."""
    cells = [Cell(CLEAN, 0)]
    cells += [Cell(c, s) for c in corruptions if c != CLEAN for s in severities]
    return cells


def default_cache_dir() -> Path:
    return Path(os.environ.get("SDNET_CACHE", Path.home() / ".cache" / "sdnet-cli"))


class CellSource:
    """Images of a dataset's cells: clean test split, an official corrupted release, or the generated cache.

    What differs between datasets (reader, release layout, generator) comes from its ``DatasetSpec``.
    """

    def __init__(
        self,
        data_dir: Path | None,
        c_dir: Path | None = None,
        cache_dir: Path | None = None,
        seed: int = 0,
        n_examples: int | None = None,
        workers: int | None = None,
        dataset: str = "cifar10",
    ) -> None:
        if n_examples is not None:
            check_count(n_examples, "n_examples", EXAMPLES_MAX)
        if workers is not None:
            check_count(workers, "workers", WORKERS_MAX)
        self.spec = dataset_spec(dataset)
        self.images, self.labels = self.spec.load(data_dir, "test")
        self.c_dir = Path(c_dir) if c_dir is not None else None
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.seed = seed
        self.n = len(self.images) if n_examples is None else min(n_examples, len(self.images))
        self.workers = workers or os.cpu_count() or 1
        self.c_root: Path | None = self.c_dir

    def validate(self, corruptions: Sequence[str]) -> None:
        """Check every corrupted file a run over ``corruptions`` will read, before any work starts.

        The clean split was checked when it was loaded (constructor). An official folder must hold
        every file, whole and of the right shape, row count and label range; in the generated cache,
        files already there are checked and absent ones are left for ``prepare`` to generate.
        Raises ``UsageError`` (``DataError`` / ``CifarCError``) naming the first bad file.
        """
        needed = [c for c in corruptions if c != CLEAN]
        if not needed:
            return
        store = self.spec.corrupted
        if self.c_dir is not None:
            store.validate(self.c_dir, needed, self.images, self.labels, self.n)
        else:
            store.validate_cache(self.cache_dir, needed, self.images, self.labels, self.n, self.seed)
            if self.missing_images(needed):  # generation will write into the cache: probe with its longest name
                check_writable_dir(self.cache_dir, "cache_dir", [f"{c}.npy" for c in needed])

    def prepare(self, corruptions: Sequence[str], progress: Callable[[int], None] | None = None) -> None:
        """Check the files (``validate``), then generate (once, cached) what an official folder would provide."""
        self.validate(corruptions)
        needed = [c for c in corruptions if c != CLEAN]
        if self.c_dir is None and needed:
            self.c_root = self.spec.corrupted.ensure_generated(
                self.cache_dir, needed, self.images, self.labels, self.n, self.seed, self.workers, progress
            )

    def prepare_told(self, corruptions: Sequence[str], progress: Progress) -> None:
        """``prepare``, with a progress task of its own when there is anything to generate (so the work that
        follows does not count the generation's minutes as its own, nor sit at 0% meanwhile)."""
        missing = self.missing_images(corruptions)
        title = f"generating {self.spec.corrupted.title} (seed {self.seed})"
        self.prepare(corruptions, progress.task(title, missing) if missing else None)

    def missing_images(self, corruptions: Sequence[str]) -> int:
        """How many images ``prepare`` would have to generate (for a progress bar)."""
        if self.c_dir is not None:
            return 0
        needed = [c for c in corruptions if c != CLEAN]
        return self.spec.corrupted.missing_images(self.cache_dir, needed, self.images, self.n, self.seed)

    def load(self, cell: Cell) -> tuple[np.ndarray, np.ndarray]:
        if cell.corruption == CLEAN:
            return self.images[: self.n], self.labels[: self.n]
        if self.c_root is None:
            raise RuntimeError("call prepare() with the corruptions before loading corrupted cells")
        return self.spec.corrupted.read_cell(
            self.c_root, cell.corruption, cell.severity, self.images, self.labels, self.n
        )

    def describe(self) -> dict[str, Any]:
        if self.c_root is None:
            return {"source": "clean test split only"}
        return self.spec.corrupted.describe(self.c_root)
