"""The calibration file of one checkpoint: the fitted per-input rules and the evidence behind them.

File layout (``schema`` 2)::

    {"rules": {"auto": {"a", "b", "lo", "hi"}, "noise": {"a", "b", "lo", "hi"}},
     "grid": [...], "points": [...], "corruptions": [...], "severities": [...], "n", "seed",
     "training_lam", "checkpoint_sha256", "split", "schema": 2}

Files written before schema 2 hold the ``auto`` rule's ``a, b, lo, hi`` at the top level and the
``noise`` rule under ``"noise"``; they still load (the shipped checkpoints' calibrations are such
files).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ..data.cells import Cell
from ..errors import UsageError
from ..models.classifier import LambdaPolicy
from ..models.registry import ModelInfo
from ..models.weights import update_manifest
from .policies import AUTO, NOISE, ORACLE, RULES, AutoLambda, FixedLambda, LineRule, NoiseLevelLambda

CALIBRATION_SUFFIX = ".lambda.json"
SCHEMA = 2
_LINE_KEYS = ("a", "b", "lo", "hi")


@dataclass(frozen=True)
class Calibration:
    """The fitted per-input rules of one checkpoint and the training-set evidence behind them.

    ``points`` has one dict per (corruption, severity) group: its accuracy-optimal lambda on
    ``grid``, its accuracy at every grid lambda (``curve``) and the group means of each rule's
    feature (``error`` for auto, ``noise`` for noise).
    """

    auto: AutoLambda
    noise: NoiseLevelLambda
    grid: list[float]
    points: list[dict[str, Any]]
    corruptions: list[str]
    severities: list[int]
    n: int
    seed: int
    training_lam: float
    checkpoint_sha256: str
    split: str = "train"

    def policy(self, name: str) -> LambdaPolicy:
        """The fitted rule called ``name`` (a key of ``RULES``)."""
        return {AUTO: self.auto, NOISE: self.noise}[name]

    def to_json(self) -> dict[str, Any]:
        body = {key: value for key, value in asdict(self).items() if key not in RULES}
        return {"rules": {name: asdict(self.policy(name)) for name in RULES}, **body, "schema": SCHEMA}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Calibration":
        """Either layout: ``rules`` (schema 2), or ``auto`` at the top level and ``noise`` nested."""
        lines = data["rules"] if "rules" in data else {AUTO: data, NOISE: data[NOISE]}

        def rule(name: str) -> LineRule:
            return RULES[name](*(float(lines[name][key]) for key in _LINE_KEYS))

        return cls(
            auto=rule(AUTO),  # type: ignore[arg-type]
            noise=rule(NOISE),  # type: ignore[arg-type]
            grid=[float(v) for v in data["grid"]],
            points=list(data["points"]),
            corruptions=list(data["corruptions"]),
            severities=[int(s) for s in data["severities"]],
            n=int(data["n"]),
            seed=int(data["seed"]),
            training_lam=float(data["training_lam"]),
            checkpoint_sha256=str(data["checkpoint_sha256"]),
            split=str(data["split"]),
        )

    def save(self, path: Path) -> Path:
        from ..reports import atomic_write_text

        atomic_write_text(Path(path), json.dumps(self.to_json(), indent=2) + "\n")
        return Path(path)

    @classmethod
    def load(cls, path: Path) -> "Calibration":
        try:
            return cls.from_json(json.loads(Path(path).read_text()))
        except (OSError, KeyError, TypeError, ValueError) as exc:
            raise UsageError(
                f"{path} is not a readable lambda calibration ({exc.__class__.__name__}: {exc})", parameter="calibration"
            ) from None


def default_calibration_path(checkpoint: Path) -> Path:
    """``<checkpoint stem>.lambda.json`` beside the checkpoint."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + CALIBRATION_SUFFIX)


def find_calibration(info: ModelInfo) -> Path:
    """Where this checkpoint's calibration lives: its manifest entry's ``calibration`` file, else beside it."""
    if info.checkpoint is None:
        raise UsageError(
            f"{info.name} was not loaded from a checkpoint file, so it has no calibration; pass calibration=PATH",
            parameter="calibration",
        )
    named = info.manifest_entry.get("calibration")
    checkpoint = Path(info.checkpoint)
    return checkpoint.with_name(named) if named else default_calibration_path(checkpoint)


def load_calibration(info: ModelInfo, path: Path | None = None) -> Calibration:
    """The calibration of the loaded checkpoint (``path`` overrides the lookup); it must be fitted for it."""
    path = Path(path) if path is not None else find_calibration(info)
    if not path.is_file():
        raise UsageError(
            f"no lambda calibration for {info.name} at {path}; fit one on training images first "
            "(sdnet_cli.sweep.calibrate; on the command line `sdnet sweep-lambda --fit`), or pass calibration=PATH",
            parameter="calibration",
        )
    calibration = Calibration.load(path)
    if info.sha256 and calibration.checkpoint_sha256 != info.sha256:
        raise UsageError(
            f"{path} was fitted for another checkpoint (sha256 {calibration.checkpoint_sha256[:12]}..., this one is "
            f"{info.sha256[:12]}...); fit a calibration for this checkpoint",
            parameter="calibration",
        )
    return calibration


def store_calibration(calibration: Calibration, info: ModelInfo, path: Path | None = None) -> Path:
    """Write the calibration (default: beside the checkpoint) and, for a shipped checkpoint whose folder
    receives the file, name it in the manifest entry so ``lam="auto"`` finds it."""
    if path is None:
        if info.checkpoint is None:
            raise UsageError(f"{info.name} was not loaded from a checkpoint file; pass path", parameter="path")
        path = default_calibration_path(Path(info.checkpoint))
    path = calibration.save(Path(path))
    weights_dir = Path(info.checkpoint).parent if info.checkpoint else None
    if info.manifest_entry and weights_dir is not None and path.resolve().parent == weights_dir.resolve():
        update_manifest({**info.manifest_entry, "calibration": path.name}, weights_dir)
    return path


def oracle_lambdas(sweep: Path, info: ModelInfo, cells: Sequence[Cell]) -> Callable[[Cell], FixedLambda]:
    """cell -> the best lambda of that cell in a ``sweep-lambda`` report of this checkpoint (uses labels)."""
    try:
        report = json.loads(Path(sweep).read_text())
        rows, meta = report["rows"], report["meta"]
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"sweep {sweep} is not a readable sweep-lambda report ({exc})", parameter="sweep") from None
    if meta.get("command") != "sweep-lambda":
        raise UsageError(f"sweep {sweep} is a {meta.get('command')!r} report, not a sweep-lambda report", parameter="sweep")
    if info.sha256 and meta.get("checkpoint_sha256") != info.sha256:
        raise UsageError(f"sweep {sweep} was measured on another checkpoint than {info.name}", parameter="sweep")
    best = {Cell(r["corruption"], int(r["severity"])): float(r["lam"]) for r in rows if r.get("oracle")}
    missing = [f"{c.corruption}/{c.severity}" for c in cells if c not in best]
    if missing:
        raise UsageError(f"sweep {sweep} has no row for {', '.join(missing)}; sweep those cells first", parameter="sweep")
    return lambda cell: FixedLambda(best[cell], label=ORACLE)
