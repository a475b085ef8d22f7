"""Lambda policies: what sparsity weight each input's CSC layers use at test time.

A policy maps (model, normalised batch) to a float or a per-sample [B] tensor; the
``Classifier`` applies it on every forward, so eval, sweeps and attacks all see the same
deployed pipeline. Label-free per-input rules (``AutoLambda``, ``NoiseLevelLambda``) read a
scalar feature of each input off a line fitted on corrupted training images (``Calibration``,
written by ``sdnet sweep-lambda --fit``).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .data.cells import Cell
from .models.classifier import Classifier, LambdaPolicy
from .models.registry import ModelInfo

AUTO, NOISE, ORACLE = "auto", "noise", "oracle"
CALIBRATION_SUFFIX = ".lambda.json"


@dataclass(frozen=True)
class FixedLambda:
    """The same lambda for every input (the reference behaviour); ``label`` tags where it came from."""

    value: float
    label: str = ""

    @property
    def name(self) -> str:
        return f"{self.label}:{self.value:g}" if self.label else f"{self.value:g}"

    def __call__(self, model: Classifier, x_normalized: torch.Tensor) -> float:
        return self.value


# -- label-free per-input features ---------------------------------------------------------------
def stem_error(model: Classifier, x_normalized: torch.Tensor) -> torch.Tensor:
    """[B] stem reconstruction error ||x - A^T z||^2 at the training lambda; keeps the graph for attacks."""
    stem = model.stem_csc
    if stem is None:
        raise ValueError("this model has no CSC layer, so it has no reconstruction error to read lambda from")
    _, error = stem.solve(x_normalized, stem.lam)
    assert error is not None
    return error


# Immerkaer's noise-estimation kernel: the difference of two Laplacians. It is zero on every image
# that is a sum of one-variable functions of x and y (ramps, smooth shading), and its response to white
# noise of standard deviation sigma has standard deviation 6 * sigma (the kernel's L2 norm).
_NOISE_KERNEL = torch.tensor([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])
_MAD_TO_SIGMA = 0.6745  # median |N(0, 1)|


def estimate_noise_sigma(images: torch.Tensor) -> torch.Tensor:
    """[B] noise standard deviation of [B,C,H,W] images, in their own units.

    The median absolute high-pass response (robust to edges, unlike a mean) over all channels
    and valid pixels, rescaled so white gaussian noise of std sigma gives sigma.
    """
    channels = images.shape[1]
    kernel = _NOISE_KERNEL.to(images.device, images.dtype).expand(channels, 1, 3, 3)
    response = F.conv2d(images, kernel, groups=channels).flatten(1)
    scale = float(_NOISE_KERNEL.norm()) * _MAD_TO_SIGMA
    return response.abs().median(dim=1).values / scale


def noise_sigma(model: Classifier, x_normalized: torch.Tensor) -> torch.Tensor:
    """[B] estimated noise level of the input in [0,1] pixel units (undoes the normalisation)."""
    with torch.autocast(device_type=x_normalized.device.type, enabled=False):
        x = x_normalized.float() * model.std + model.mean
        return estimate_noise_sigma(x)


@dataclass(frozen=True)
class LineRule:
    """lambda(x) = clamp(a * feature(x) + b, lo, hi), one lambda per input in one batched forward."""

    a: float
    b: float
    lo: float
    hi: float
    name: ClassVar[str]
    feature: ClassVar[Callable[[Classifier, torch.Tensor], torch.Tensor]]

    def __call__(self, model: Classifier, x_normalized: torch.Tensor) -> torch.Tensor:
        values = type(self).feature(model, x_normalized)
        return (self.a * values + self.b).clamp(self.lo, self.hi)


@dataclass(frozen=True)
class AutoLambda(LineRule):
    """Per-input lambda read off the stem's reconstruction error at the training lambda (SPEC section 2)."""

    name: ClassVar[str] = AUTO
    feature: ClassVar = staticmethod(stem_error)


@dataclass(frozen=True)
class NoiseLevelLambda(LineRule):
    """Per-input lambda read off an estimate of the input's pixel noise level (a model-free feature)."""

    name: ClassVar[str] = NOISE
    feature: ClassVar = staticmethod(noise_sigma)


RULES: dict[str, type[LineRule]] = {AUTO: AutoLambda, NOISE: NoiseLevelLambda}


def fit_line(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Least-squares (slope, intercept) of y on x."""
    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if xs.shape != ys.shape or len(xs) < 2:
        raise ValueError("a line fit needs at least two points")
    dx = xs - xs.mean()
    spread = float((dx * dx).sum())
    if spread <= 1e-12 * max(1.0, float((xs * xs).sum())):
        raise ValueError("a line fit needs points with different x values")
    slope = float((dx * (ys - ys.mean())).sum()) / spread
    return slope, float(ys.mean() - slope * xs.mean())


def fit_line_for_accuracy(features: Sequence[float], curves: np.ndarray, grid: Sequence[float]) -> tuple[float, float]:
    """(slope, intercept) of the clamped line lambda = clamp(a * feature + b) that maximises the mean group accuracy.

    ``curves[g, j]`` is group g's accuracy at ``grid[j]``; a group's accuracy at the line's lambda is
    read off its curve (linear between grid points). Unlike a least-squares line through each group's
    best lambda, this weighs a miss by what it costs: a group whose accuracy barely depends on
    lambda cannot drag the line away from one whose accuracy falls steeply. The line is searched
    through its values at the smallest and largest feature, in steps of a quarter of the grid's
    smallest spacing, reaching one grid span beyond either end (the clamp cuts those back);
    ties go to the line closest to the groups' best lambdas, then to the flattest.
    """
    xs = np.asarray(features, dtype=np.float64)
    curves = np.asarray(curves, dtype=np.float64)
    grid_values = np.asarray(grid, dtype=np.float64)
    if curves.shape != (len(xs), len(grid_values)) or len(xs) < 2:
        raise ValueError("an accuracy fit needs at least two groups, each with an accuracy per grid lambda")
    x_lo, x_hi = float(xs.min()), float(xs.max())
    if x_hi - x_lo <= 1e-12 * max(1.0, abs(x_hi)):
        raise ValueError("a line fit needs points with different x values")
    order = np.argsort(grid_values)
    grid_values, curves = grid_values[order], curves[:, order]
    lo, hi = float(grid_values[0]), float(grid_values[-1])
    best = grid_values[curves.argmax(axis=1)]
    step = float(np.diff(grid_values).min()) / 4
    candidates = np.arange(lo - (hi - lo), hi + (hi - lo) + step / 2, step)
    start, end = (c.ravel() for c in np.meshgrid(candidates, candidates, indexing="ij"))
    t = (xs - x_lo) / (x_hi - x_lo)
    lams = np.clip(start[:, None] + t[None, :] * (end - start)[:, None], lo, hi)  # [lines, groups]
    accuracy = np.stack([np.interp(lams[:, g], grid_values, curves[g]) for g in range(len(xs))], axis=1).mean(axis=1)
    distance = np.abs(lams - best[None, :]).mean(axis=1)
    chosen = np.lexsort((np.abs(end - start), distance, -np.round(accuracy, 9)))[0]
    slope = (end[chosen] - start[chosen]) / (x_hi - x_lo)
    return float(slope), float(start[chosen] - slope * x_lo)


# -- calibration file ----------------------------------------------------------------------------
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
        return {AUTO: self.auto, NOISE: self.noise}[name]

    def to_json(self) -> dict[str, Any]:
        auto = asdict(self.auto)
        body = {key: value for key, value in asdict(self).items() if key not in ("auto", "noise")}
        return {**auto, "noise": asdict(self.noise), **body}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Calibration":
        return cls(
            auto=AutoLambda(*(float(data[k]) for k in ("a", "b", "lo", "hi"))),
            noise=NoiseLevelLambda(*(float(data["noise"][k]) for k in ("a", "b", "lo", "hi"))),
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
        from .reports import atomic_write_text

        atomic_write_text(Path(path), json.dumps(self.to_json(), indent=2) + "\n")
        return Path(path)

    @classmethod
    def load(cls, path: Path) -> "Calibration":
        try:
            return cls.from_json(json.loads(Path(path).read_text()))
        except (OSError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path} is not a readable lambda calibration ({exc.__class__.__name__}: {exc})") from None


def default_calibration_path(checkpoint: Path) -> Path:
    """``<checkpoint stem>.lambda.json`` beside the checkpoint."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + CALIBRATION_SUFFIX)


def find_calibration(info: ModelInfo) -> Path:
    """Where this checkpoint's calibration lives: its manifest entry's ``calibration`` file, else beside it."""
    if info.checkpoint is None:
        raise ValueError("this model was not loaded from a checkpoint file, so it has no calibration")
    named = info.manifest_entry.get("calibration")
    checkpoint = Path(info.checkpoint)
    return checkpoint.with_name(named) if named else default_calibration_path(checkpoint)


def load_calibration(info: ModelInfo, path: Path | None = None) -> Calibration:
    """The calibration of the loaded checkpoint (``path`` overrides the lookup); it must be fitted for it."""
    path = Path(path) if path is not None else find_calibration(info)
    if not path.is_file():
        raise ValueError(
            f"no lambda calibration for {info.name} at {path}; run `sdnet sweep-lambda --model {info.name} "
            f"{'--checkpoint ' + str(info.checkpoint) + ' ' if not info.manifest_entry else ''}--fit` first, "
            "or pass --calibration PATH"
        )
    calibration = Calibration.load(path)
    if info.sha256 and calibration.checkpoint_sha256 != info.sha256:
        raise ValueError(
            f"{path} was fitted for another checkpoint (sha256 {calibration.checkpoint_sha256[:12]}..., this one is "
            f"{info.sha256[:12]}...); run `sdnet sweep-lambda --fit` for this checkpoint"
        )
    return calibration


def store_calibration(calibration: Calibration, info: ModelInfo, path: Path | None = None) -> Path:
    """Write the calibration (default: beside the checkpoint) and, for a shipped checkpoint whose folder
    receives the file, name it in the manifest entry so ``--lam auto`` finds it."""
    from .models.registry import update_manifest

    if path is None:
        if info.checkpoint is None:
            raise ValueError("pass --calibration-out: this model was not loaded from a checkpoint file")
        path = default_calibration_path(Path(info.checkpoint))
    path = calibration.save(Path(path))
    weights_dir = Path(info.checkpoint).parent if info.checkpoint else None
    if info.manifest_entry and weights_dir is not None and path.resolve().parent == weights_dir.resolve():
        update_manifest({**info.manifest_entry, "calibration": path.name}, weights_dir)
    return path


# -- parsing -------------------------------------------------------------------------------------
def parse_lambda(
    text: str | None, model: Classifier, info: ModelInfo | None = None, calibration: Path | None = None
) -> LambdaPolicy | None:
    """``--lam`` -> policy: a number, ``auto`` or ``noise`` (from the checkpoint's calibration, or
    ``calibration``). None keeps each CSC layer's training lambda. ``oracle`` is per cell, see
    ``oracle_lambdas``."""
    if text is None:
        return None
    if not model.csc_layers:
        raise ValueError("--lam was given, but this model has no CSC layers (only SDNet models have a lambda)")
    if text in RULES:
        if info is None:
            raise ValueError(f"--lam {text} needs the checkpoint's ModelInfo to find and check its calibration")
        return load_calibration(info, calibration).policy(text)
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"--lam must be a number, {AUTO!r}, {NOISE!r} or {ORACLE!r}, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"--lam must be a finite number >= 0, got {text!r}")
    return FixedLambda(value)


def parse_grid(text: str) -> list[float]:
    """``start:stop:step`` (stop included) or a comma list -> sorted, distinct lambdas >= 0."""
    try:
        if ":" in text:
            start, stop, step = (float(p) for p in text.split(":"))
            if not step > 0 or stop < start:
                raise ValueError
            count = int(math.floor((stop - start) / step + 1e-9)) + 1
            values = [start + i * step for i in range(count)]
        else:
            values = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise ValueError(f"--lams must be START:STOP:STEP (e.g. 0.1:1.4:0.1) or a comma list, got {text!r}") from None
    grid = sorted({round(v, 10) for v in values})
    if not grid or any(not (math.isfinite(v) and v >= 0) for v in grid):
        raise ValueError(f"--lams needs at least one finite lambda >= 0, got {text!r}")
    return grid


def oracle_lambdas(sweep_report: Path, info: ModelInfo, cells: Sequence[Cell]) -> Callable[[Cell], FixedLambda]:
    """cell -> the best lambda of that cell in a ``sweep-lambda`` report of this checkpoint (uses labels)."""
    try:
        report = json.loads(Path(sweep_report).read_text())
        rows, meta = report["rows"], report["meta"]
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"--sweep {sweep_report} is not a readable sweep-lambda report ({exc})") from None
    if meta.get("command") != "sweep-lambda":
        raise ValueError(f"--sweep {sweep_report} is a {meta.get('command')!r} report, not a sweep-lambda report")
    if info.sha256 and meta.get("checkpoint_sha256") != info.sha256:
        raise ValueError(f"--sweep {sweep_report} was measured on another checkpoint than {info.name}")
    best = {Cell(r["corruption"], int(r["severity"])): float(r["lam"]) for r in rows if r.get("oracle")}
    missing = [f"{c.corruption}/{c.severity}" for c in cells if c not in best]
    if missing:
        raise ValueError(f"--sweep {sweep_report} has no row for {', '.join(missing)}; sweep those cells first")
    return lambda cell: FixedLambda(best[cell], label=ORACLE)


def lambda_label(model: Classifier) -> float | str | None:
    """What a report's ``lam`` column says for this model's current policy."""
    if model.lam_policy is not None:
        value = model.lam_policy.name
        try:
            return float(value)
        except ValueError:
            return value
    return model.training_lam
