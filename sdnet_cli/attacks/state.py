"""Resumable state of a long attack run: finished pools of images on disk, so an interrupted run continues."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from .._io import atomic_path
from ..errors import UsageError
from ..resume import ADVICE, ResumeFile
from ..schemas import AttackState


@dataclass
class PoolResult:
    """One pool's outcome (``runner.attack_pool``): what the state stores and the runner merges."""

    clean: np.ndarray  # [P] bool
    fooled: np.ndarray  # [E, K, P] bool
    seconds: np.ndarray  # [E, K]
    adv: np.ndarray | None  # [E, P, H, W, C] float32
    max_excess: float  # largest raw overshoot of the threat set by an attack in this pool


def _bits(flags: np.ndarray) -> str:
    return "".join("1" if f else "0" for f in flags)


def _unbits(text: str) -> np.ndarray:
    return cast(np.ndarray, np.frombuffer(text.encode(), dtype=np.uint8) == ord("1"))


def images_dir(state_path: Path) -> Path:
    """``<name>.state.adv/`` beside ``<name>.state.json``: per-pool adversarial images of a run that keeps them."""
    return state_path.with_name(state_path.name.removesuffix(".json") + ".adv")


class RunState(ResumeFile):
    """Finished pools of a long attack in ``<name>.state.json`` (adversarial images, when kept, in
    ``<name>.state.adv/``), so ``resume`` skips them. ``config``: the attack, seed, data, model fingerprint."""

    SCHEMA = AttackState
    PARTS = "pools"

    def __init__(self, path: Path, config: dict[str, Any], resume: bool) -> None:
        super().__init__(path, config, resume)
        self.adv_dir = images_dir(self.path)

    @classmethod
    def refuse_outdated(cls, path: Path, saved: Any) -> None:
        """Two layouts of earlier versions: batches instead of pools, and pools without their ``max_excess``."""
        if not isinstance(saved, dict):
            return
        if isinstance(saved.get("batches"), dict) and "pools" not in saved:
            lacks = "saved batches, not pools"
        elif isinstance(pools := saved.get("pools"), dict) and any(
            isinstance(p, dict) and "max_excess" not in p for p in pools.values()
        ):
            lacks = "did not save how far each pool's attacks overshot the threat set"
        else:
            return
        raise UsageError(
            f"the resume state {path} was written by an earlier sdnet-cli that {lacks}; {ADVICE}", parameter="resume"
        )

    def get(self, index: int) -> PoolResult | None:
        saved = self.parts.get(str(index))
        if saved is None:
            return None
        adv_file = self.adv_dir / f"pool-{index:05d}.npy"
        return PoolResult(
            clean=_unbits(saved["clean"]),
            fooled=np.array([[_unbits(f) for f in per_eps] for per_eps in saved["fooled"]]),
            seconds=np.array(saved["seconds"], dtype=float),
            adv=np.load(adv_file) if adv_file.is_file() else None,
            max_excess=saved["max_excess"],
        )

    def put_pool(self, index: int, result: PoolResult) -> None:
        if result.adv is not None:
            self.adv_dir.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.adv_dir / f"pool-{index:05d}.npy") as tmp, open(tmp, "wb") as f:
                np.save(f, result.adv)
        self.put(
            str(index),
            {
                "clean": _bits(result.clean),
                "fooled": [[_bits(f) for f in per_eps] for per_eps in result.fooled],
                "seconds": result.seconds.tolist(),
                "max_excess": result.max_excess,
            },
        )


def read_state(path: Path) -> dict[str, Any]:
    """A state file's contents, validated (``schemas.AttackState``); a damaged one is named, with what to do."""
    return RunState.read(path)


def saved_pools(path: Path) -> int:
    """How many finished pools a state file holds (0 when there is none or it is unreadable)."""
    return RunState.saved(path)


def remove_state(path: Path) -> None:
    """Delete a finished run's state file and its kept images."""
    path = Path(path)
    path.unlink(missing_ok=True)
    shutil.rmtree(images_dir(path), ignore_errors=True)
