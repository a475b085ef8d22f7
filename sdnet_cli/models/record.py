"""What every loaded model carries into reports, whichever way it was loaded (registry, zoo, a module)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import UsageError


class ModelError(UsageError):
    """The user asked for a model that does not exist or cannot be loaded."""


@dataclass
class ModelInfo:
    """Where a loaded model came from; goes into every report's ``meta``."""

    name: str
    architecture: str
    dataset: str
    width: int
    num_classes: int
    lam: float | None
    n_steps: int
    square_noise: bool
    stem: str
    checkpoint: str | None = None
    sha256: str | None = None
    manifest_entry: dict[str, Any] = field(default_factory=dict)

    def as_meta(self) -> dict[str, Any]:
        meta = asdict(self)
        meta.pop("manifest_entry")
        return meta
