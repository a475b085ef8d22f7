"""Resumable state of a long attack run: finished pools of images on disk, so an interrupted run continues."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from .._io import atomic_path, atomic_write_text, read_json
from ..errors import UsageError
from ..schemas import AttackState, load


@dataclass
class PoolResult:
    """One pool's outcome (``runner.attack_pool``): what the state stores and the runner merges."""

    clean: np.ndarray  # [P] bool
    fooled: np.ndarray  # [E, K, P] bool
    seconds: np.ndarray  # [E, K]
    adv: np.ndarray | None  # [E, P, H, W, C] float32


def _bits(flags: np.ndarray) -> str:
    return "".join("1" if f else "0" for f in flags)


def _unbits(text: str) -> np.ndarray:
    return cast(np.ndarray, np.frombuffer(text.encode(), dtype=np.uint8) == ord("1"))


def images_dir(state_path: Path) -> Path:
    """``<name>.state.adv/`` beside ``<name>.state.json``: per-pool adversarial images of a run that keeps them."""
    return state_path.with_name(state_path.name.removesuffix(".json") + ".adv")


class RunState:
    """Finished pools of a long run in ``<name>.state.json`` (rewritten atomically after each pool;
    adversarial images, when kept, in ``<name>.state.adv/``), so ``resume`` skips them.

    ``config`` is everything the pools depend on (attack, seed, data, model fingerprint); a state
    written under another config is refused rather than mixed in.
    """

    def __init__(self, path: Path, config: dict[str, Any], resume: bool) -> None:
        self.path, self.config = Path(path), config
        self.adv_dir = images_dir(self.path)
        self.pools: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            if not resume:
                raise UsageError(
                    f"{self.path} holds an unfinished run; pass resume=True to continue it, or delete it",
                    parameter="resume",
                )
            saved = read_state(self.path)
            changed = sorted(k for k in set(config) | set(saved["config"]) if saved["config"].get(k) != config.get(k))
            if changed:
                raise UsageError(
                    f"cannot resume {self.path}: it was started with different settings ({', '.join(changed)})",
                    parameter="resume",
                )
            self.pools = saved["pools"]

    def get(self, index: int) -> PoolResult | None:
        saved = self.pools.get(str(index))
        if saved is None:
            return None
        adv_file = self.adv_dir / f"pool-{index:05d}.npy"
        return PoolResult(
            clean=_unbits(saved["clean"]),
            fooled=np.array([[_unbits(f) for f in per_eps] for per_eps in saved["fooled"]]),
            seconds=np.array(saved["seconds"], dtype=float),
            adv=np.load(adv_file) if adv_file.is_file() else None,
        )

    def put(self, index: int, result: PoolResult) -> None:
        if result.adv is not None:
            self.adv_dir.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.adv_dir / f"pool-{index:05d}.npy") as tmp, open(tmp, "wb") as f:
                np.save(f, result.adv)
        self.pools[str(index)] = {
            "clean": _bits(result.clean),
            "fooled": [[_bits(f) for f in per_eps] for per_eps in result.fooled],
            "seconds": result.seconds.tolist(),
        }
        atomic_write_text(self.path, json.dumps({"config": self.config, "pools": self.pools}) + "\n")


def read_state(path: Path) -> dict[str, Any]:
    """A state file's contents, validated (``schemas.AttackState``); a damaged one is named, with what to do."""
    advice = "delete it to start the run afresh"
    try:
        saved = read_json(path, "resume state", "resume")
    except UsageError as exc:
        raise UsageError(f"the resume state {path} is damaged ({exc}); {advice}", parameter="resume") from None
    if isinstance(saved, dict) and isinstance(saved.get("batches"), dict) and "pools" not in saved:
        raise UsageError(
            f"the resume state {path} was written by an earlier sdnet-cli that saved batches, not pools; {advice}",
            parameter="resume",
        )
    try:
        load(AttackState, saved, "resume state", path, parameter="resume")
    except UsageError as exc:
        raise UsageError(f"{exc} (the file is damaged; {advice})", parameter="resume") from None
    return cast("dict[str, Any]", saved)


def saved_pools(path: Path) -> int:
    """How many finished pools a state file holds (0 when there is none or it is unreadable)."""
    try:
        return len(read_state(path)["pools"])
    except UsageError:
        return 0


def remove_state(path: Path) -> None:
    """Delete a finished run's state file and its kept images."""
    path = Path(path)
    path.unlink(missing_ok=True)
    shutil.rmtree(images_dir(path), ignore_errors=True)
