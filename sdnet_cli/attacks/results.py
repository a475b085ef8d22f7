"""What a run found, per sample, and the report rows and files made from it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_path
from ..errors import UsageError
from ..metrics import percent
from ..rows import WORST
from .checks import Diagnostics
from .config import Eps
from .registry import AUTOATTACK


@dataclass
class AttackResults:
    """Per-sample outcome of one run: ``fooled[e, k, i]`` = component k's example fooled image i at eps e.

    Over an eps sweep (ascending), a point fooled at a smaller eps counts as fooled at every larger
    one (its example lies inside the larger ball) and is not attacked again.
    """

    attack: str
    norm: str
    eps: list[Eps]
    components: list[str]
    clean: np.ndarray  # [N] bool
    fooled: np.ndarray  # [E, K, N] bool
    seconds: np.ndarray  # [E, K]
    diagnostics: Diagnostics
    settings: list[dict[str, Any]]
    adv: np.ndarray | None = None  # [E, N, H, W, C] float32 in [0,1]

    def robust(self, e: int, through: int | None = None) -> np.ndarray:
        """[N] bool: correct and not fooled at eps index ``e`` by components 0..through (all by default)."""
        stop = len(self.components) if through is None else through + 1
        return self.clean & ~self.fooled[:e].any(axis=(0, 1)) & ~self.fooled[e, :stop].any(axis=0)

    def rows(self, base: dict[str, Any]) -> list[dict[str, Any]]:
        """One row per eps (autoattack: per component, robust accuracy after it, then ``worst``);
        ``base`` gives model, dataset and lam."""
        n = len(self.clean)

        def row(attack: str, e: int, robust: np.ndarray, seconds: float) -> dict[str, Any]:
            return {
                "model": base["model"],
                "dataset": base["dataset"],
                "attack": attack,
                "norm": self.norm,
                "eps": self.eps[e].value,
                "eps_text": self.eps[e].text,
                "lam": base["lam"],
                "n": n,
                "clean_accuracy": round(percent(self.clean.sum(), n), 4),
                "robust_accuracy": round(percent(robust.sum(), n), 4),
                "seconds": round(float(seconds), 3),
            }

        rows = []
        for e in range(len(self.eps)):
            if self.attack == AUTOATTACK:
                rows += [row(name, e, self.robust(e, k), self.seconds[e, k]) for k, name in enumerate(self.components)]
                rows.append(row(WORST, e, self.robust(e), self.seconds[e].sum()))
            else:
                rows.append(row(self.attack, e, self.robust(e), self.seconds[e].sum()))
        return rows

    def square_gain(self) -> dict[str, float]:
        """Points fooled by Square after all white-box attacks had failed, per eps."""
        if "square" not in self.components or len(self.components) < 2:
            return {}
        k = self.components.index("square")
        return {eps.text: percent(self.fooled[e, k].sum(), len(self.clean)) for e, eps in enumerate(self.eps)}

    def kept_adversarials(self) -> np.ndarray:
        if self.adv is None:
            raise UsageError("these results kept no adversarial examples; run with keep_adv=True", parameter="keep_adv")
        return self.adv


def save_adversarials(path: Path, results: AttackResults, labels: np.ndarray) -> Path:
    """``.npz`` with float32 NHWC examples in [0,1] per eps (rounding to uint8 could undo them), labels,
    eps and per-sample robust flags; written atomically."""
    path = Path(path)
    images = results.kept_adversarials()
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(
            f,
            images=images,
            labels=np.asarray(labels),
            eps=np.array([e.value for e in results.eps]),
            eps_text=np.array([e.text for e in results.eps]),
            clean=results.clean,
            robust=np.stack([results.robust(e) for e in range(len(results.eps))]),
        )
    return path
