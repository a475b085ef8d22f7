"""The calibration file of one checkpoint: the fitted per-input rules and the evidence behind them.

File layout (``schema`` 4)::

    {"rules": {"recon": {"a", "b", "lo", "hi"}, "noise": {"a", "c", "b", "lo", "hi"}}, "recommended": "noise",
     "grid": [...], "points": [...], "corruptions": [...], "severities": [...], "n", "seed",
     "training_lam", "checkpoint_sha256", "split", "schema": 4}

Each rule holds its line's coefficients (``LineRule.terms``); each point holds its group's mean of
every feature in ``FEATURES`` that was measured. ``recommended`` is the rule ``lam="auto"`` runs: the
one with the higher mean accuracy over the calibration groups. Older files still load and give the
same lambdas: schema 3 has no impulse coefficient ``c`` (so it is 0) and no ``impulse`` means in its
points (so a refit leaves that term out); schema 2 also names the reconstruction-error rule ``auto``
under ``rules``; the first layout holds that rule at the top level and ``noise`` nested. Neither
records a recommendation, so it is computed from the file's own group curves by the same criterion.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Sequence
from dataclasses import MISSING, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from .._io import read_json
from ..data.cells import Cell
from ..errors import UsageError
from ..models.classifier import LambdaPolicy
from ..models.record import ModelInfo
from ..models.weights import packaged_weights_dir, update_manifest
from ..rows import CLEAN
from ..schemas import CalibrationFile, LegacyRules, check_lam, load
from .fit import fit_rule_for_accuracy, mean_group_accuracy
from .policies import AUTO, NOISE, ORACLE, RECON, RULES, FixedLambda, LineRule, NoiseLevelLambda, ReconErrorLambda

CALIBRATION_SUFFIX = ".lambda.json"
SCHEMA = 4
PREFERENCE = (NOISE, RECON)
"""Order in which a tie for the recommendation is broken: the model-free rule first (it is cheaper)."""


def fit_rules(points: Sequence[dict[str, Any]], grid: Sequence[float]) -> dict[str, LineRule]:
    """Each rule's line lambda = clamp(a * f1 + c * f2 + ... + b, min grid, max grid) maximising the
    groups' mean accuracy, each group's read off its ``curve`` over ``grid`` (``fit_rule_for_accuracy``).
    A further feature that some point lacks (measured before that feature existed) is left out: its
    coefficient stays 0."""
    curves = np.array([p["curve"] for p in points], dtype=np.float64)
    lo, hi = float(min(grid)), float(max(grid))
    rules: dict[str, LineRule] = {}
    for name, rule_type in RULES.items():
        first, *rest = rule_type.terms
        used = [first] + [(field, key) for field, key in rest if all(key in p for p in points)]
        features = np.array([[p[key] for _, key in used] for p in points], dtype=np.float64)
        try:
            coefficients, b = fit_rule_for_accuracy(features, curves, grid)
        except UsageError as exc:
            raise UsageError(
                f"calibration failed ({exc}): give more corruptions/severities so the groups differ",
                parameter="corruptions",
            ) from None
        terms: dict[str, Any] = {field: c for (field, _), c in zip(used, coefficients)}
        rules[name] = rule_type(**terms, b=b, lo=lo, hi=hi)
    return rules


def rule_accuracy(rule: LineRule, points: Sequence[dict[str, Any]], grid: Sequence[float]) -> float:
    """Mean calibration-group accuracy of ``rule``: each group's accuracy at the rule's lambda for the
    group's mean features, read off the group's curve."""
    lams = np.clip(rule.line_at(lambda key: np.array([p[key] for p in points], dtype=np.float64)), rule.lo, rule.hi)
    return mean_group_accuracy(lams, np.array([p["curve"] for p in points]), grid)


def recommend(rules: dict[str, LineRule], points: Sequence[dict[str, Any]], grid: Sequence[float]) -> str:
    """The rule ``lam="auto"`` runs: the higher mean calibration-group accuracy (ties: ``PREFERENCE``)."""
    if not points or any("curve" not in p for p in points):
        raise UsageError(
            "the calibration has no per-group accuracy curves to choose its recommended rule from; fit it again",
            parameter="calibration",
        )
    return max(PREFERENCE, key=lambda name: rule_accuracy(rules[name], points, grid))


@dataclass(frozen=True)
class Calibration:
    """The fitted per-input rules of one checkpoint and the training-set evidence behind them.

    ``points`` has one dict per (corruption, severity) group: its accuracy-optimal lambda on
    ``grid``, its accuracy at every grid lambda (``curve``) and the group means of each rule's
    feature (``FEATURES``). ``recommended`` names the rule ``lam="auto"`` runs. ``adaptation``: the test-time
    adaptation the groups ran under (``adapt.calibration_record``; None, absent from the file: stored BatchNorm
    statistics).
    """

    recon: ReconErrorLambda
    noise: NoiseLevelLambda
    recommended: str
    grid: list[float]
    points: list[dict[str, Any]]
    corruptions: list[str]
    severities: list[int]
    n: int
    seed: int
    training_lam: float
    checkpoint_sha256: str
    split: str = "train"
    adaptation: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.recommended not in RULES:
            raise UsageError(
                f"recommended must be one of {', '.join(RULES)}, got {self.recommended!r}", parameter="recommended"
            )

    def policy(self, name: str) -> LambdaPolicy:
        """The fitted rule called ``name`` (a key of ``RULES``), or for ``"auto"`` the recommended one,
        labelled so reports say which rule ran (``auto:noise``)."""
        if name == AUTO:
            return replace(self.rules[self.recommended], label=AUTO)
        return self.rules[name]

    @property
    def rules(self) -> dict[str, LineRule]:
        return {RECON: self.recon, NOISE: self.noise}

    def without(self, corruptions: Collection[str]) -> Calibration:
        """The calibration refitted from the stored group curves with every group of ``corruptions`` left
        out (clean always stays): what a fit that never saw those corruptions would give."""
        held_out = set(corruptions) - {CLEAN}
        unknown = held_out - set(self.corruptions)
        if unknown:
            raise UsageError(
                f"corruptions {sorted(unknown)} are not among the calibration's groups ({', '.join(self.corruptions)})",
                parameter="hold_out",
            )
        kept = [p for p in self.points if p["corruption"] not in held_out]
        assert not any(p["corruption"] in held_out for p in kept)  # the held-out groups never reach the fit
        rules = fit_rules(kept, self.grid)
        recon, noise = rules[RECON], rules[NOISE]
        assert isinstance(recon, ReconErrorLambda) and isinstance(noise, NoiseLevelLambda)
        return replace(
            self,
            recon=recon,
            noise=noise,
            recommended=recommend(rules, kept, self.grid),
            points=kept,
            corruptions=[c for c in self.corruptions if c not in held_out],
        )

    def to_json(self) -> dict[str, Any]:
        rules = {
            name: {f.name: getattr(rule, f.name) for f in fields(rule) if f.name != "label"}
            for name, rule in self.rules.items()
        }
        body = {
            key: getattr(self, key)
            for key in (
                "recommended",
                "grid",
                "points",
                "corruptions",
                "severities",
                "n",
                "seed",
                "training_lam",
                "checkpoint_sha256",
                "split",
            )
        }
        adapted = {"adaptation": self.adaptation} if self.adaptation is not None else {}
        return {"rules": rules, **body, **adapted, "schema": SCHEMA}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Calibration:
        """Any layout: ``rules`` with ``recon`` (schema 3) or ``auto`` (schema 2) for the
        reconstruction-error rule, or that rule at the top level and ``noise`` nested (schema 1)."""
        if "rules" in data:
            lines = data["rules"]
            recon_line = lines[RECON] if RECON in lines else lines[AUTO]
        else:
            lines, recon_line = data, data
        rules = {
            RECON: _rule_from_json(ReconErrorLambda, recon_line),
            NOISE: _rule_from_json(NoiseLevelLambda, lines[NOISE]),
        }
        grid = [float(v) for v in data["grid"]]
        points = list(data["points"])
        recommended = data["recommended"] if "recommended" in data else recommend(rules, points, grid)
        return cls(
            recon=rules[RECON],  # type: ignore[arg-type]
            noise=rules[NOISE],  # type: ignore[arg-type]
            recommended=str(recommended),
            grid=grid,
            points=points,
            corruptions=list(data["corruptions"]),
            severities=[int(s) for s in data["severities"]],
            n=int(data["n"]),
            seed=int(data["seed"]),
            training_lam=float(data["training_lam"]),
            checkpoint_sha256=str(data["checkpoint_sha256"]),
            split=str(data["split"]),
            adaptation=_adaptation_from_json(data.get("adaptation")),
        )

    def save(self, path: Path) -> Path:
        from .._io import atomic_write_text

        atomic_write_text(Path(path), json.dumps(self.to_json(), indent=2) + "\n")
        return Path(path)

    @classmethod
    def load(cls, path: Path) -> Calibration:
        """The calibration in ``path``, validated against its schema (``schemas.CalibrationFile``): a lambda
        bound, coefficient or count that is out of range is refused naming the file and the field."""
        data = read_json(path, "calibration", "calibration")
        validate_calibration(data, path)
        return cls.from_json(data)


def validate_calibration(data: Any, path: Path) -> None:
    """Every layout's fields (schema 1 to 4), each rule's line wherever its layout keeps it."""
    loaded = load(CalibrationFile, data, "calibration", path, parameter="calibration")
    if loaded.rules is None:
        load(LegacyRules, data, "calibration", path, parameter="calibration")
        return
    for name in (RECON, NOISE):
        if name not in loaded.rules and not (name == RECON and AUTO in loaded.rules):
            raise UsageError(f"calibration {path}: rules.{name} is missing", parameter="calibration")


def _adaptation_from_json(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("method"), str):
        raise UsageError(
            f"calibration: adaptation must be an object with a method, got {value!r}", parameter="calibration"
        )
    return dict(value)


def adaptation_label(record: dict[str, Any] | None) -> str:
    """``none`` or the method with its settings, e.g. ``bn (batches of 200)``."""
    if record is None:
        return "none (stored BatchNorm statistics)"
    settings = [f"batches of {record['batch_size']}"] if "batch_size" in record else []
    settings += [f"N={record['prior_strength']:g}"] if "prior_strength" in record else []
    return str(record["method"]) + (f" ({', '.join(settings)})" if settings else "")


def calibration_mismatch(calibration: Calibration, record: dict[str, Any] | None) -> str | None:
    """A one-line note when the rule runs under another adaptation than it was calibrated under, else None."""
    if calibration.adaptation == record:
        return None
    method = record["method"] if record is not None else "none"
    return (
        f"the lambda rule was calibrated under adapt {adaptation_label(calibration.adaptation)} but runs under adapt "
        f"{adaptation_label(record)}; `sdnet sweep-lambda --fit --adapt {method}` fits one for it (then pass it as "
        "--calibration)"
    )


def _rule_from_json(rule: type[LineRule], line: dict[str, Any]) -> LineRule:
    """The rule from its stored coefficients; one an older layout lacks (a further term's) keeps its default 0."""
    coefficients: dict[str, Any] = {
        f.name: float(line[f.name])
        for f in fields(rule)
        if f.name != "label" and (f.name in line or f.default is MISSING)
    }
    return rule(**coefficients)


def default_calibration_path(checkpoint: Path, adapt: str | None = None) -> Path:
    """``<checkpoint stem>.lambda.json`` beside the checkpoint; fitted under an adaptation,
    ``<checkpoint stem>.lambda-<adapt>.json``."""
    checkpoint = Path(checkpoint)
    tag = f"-{adapt}" if adapt not in (None, "none") else ""
    return checkpoint.with_name(checkpoint.stem + CALIBRATION_SUFFIX.replace(".json", f"{tag}.json"))


def find_calibration(info: ModelInfo, adapt: str | None = None) -> Path:
    """Where this checkpoint's calibration lives: its manifest entry's ``calibration`` file, else beside it.
    With ``adapt`` (a method name), the one fitted under it (``default_calibration_path``) when it exists."""
    if info.checkpoint is not None and adapt not in (None, "none"):
        adapted = default_calibration_path(Path(info.checkpoint), adapt)
        if adapted.is_file():
            return adapted
    if info.checkpoint is None:
        raise UsageError(
            f"{info.name} was not loaded from a checkpoint file, so it has no calibration; pass calibration=PATH",
            parameter="calibration",
        )
    named = info.manifest_entry.get("calibration")
    checkpoint = Path(info.checkpoint)
    return checkpoint.with_name(named) if named else default_calibration_path(checkpoint)


def load_calibration(info: ModelInfo, path: Path | None = None, adapt: str | None = None) -> Calibration:
    """The calibration of the loaded checkpoint (``path`` overrides the lookup; ``adapt`` prefers the one fitted
    under that adaptation, see ``find_calibration``); it must be fitted for it."""
    path = Path(path) if path is not None else find_calibration(info, adapt)
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


def calibration_destination(info: ModelInfo, path: Path | None = None, adapt: str | None = None) -> Path:
    """Where a calibration fitted under ``adapt`` goes: ``path``, else beside the checkpoint
    (``default_calibration_path``), but never by default into the weights that came with sdnet-cli, where it
    would silently replace the shipped calibration that every ``lam="auto"`` run reads. Called before the
    work, so a run that could not store its result does not start."""
    if path is not None:
        return Path(path)
    if info.checkpoint is None:
        raise UsageError(f"{info.name} was not loaded from a checkpoint file; pass calibration_out", "calibration_out")
    target = default_calibration_path(Path(info.checkpoint), adapt)
    if Path(info.checkpoint).resolve().parent == packaged_weights_dir().resolve():
        raise UsageError(
            f"{info.name} came with sdnet-cli, and its calibration would go into the shipped weights ({target}), "
            "replacing the one every lam='auto' run reads: pass calibration_out, a path of your own (and evaluate "
            "with that file as the calibration), or that path itself to replace it on purpose",
            parameter="calibration_out",
        )
    return target


def store_calibration(calibration: Calibration, info: ModelInfo, path: Path | None = None) -> Path:
    """Write the calibration (at ``calibration_destination``) and, for a checkpoint of a manifest whose folder
    receives the file, name a stored-statistics one in the manifest entry so ``lam="auto"`` finds it."""
    method = calibration.adaptation["method"] if calibration.adaptation is not None else None
    path = calibration.save(calibration_destination(info, path, method))
    if method is not None:
        return path
    weights_dir = Path(info.checkpoint).parent if info.checkpoint else None
    if info.manifest_entry and weights_dir is not None and path.resolve().parent == weights_dir.resolve():
        update_manifest({**info.manifest_entry, "calibration": path.name}, weights_dir)
    return path


def oracle_lambdas(sweep: Path, info: ModelInfo, cells: Sequence[Cell]) -> Callable[[Cell], FixedLambda]:
    """cell -> the best lambda of that cell in a ``sweep-lambda`` report of this checkpoint (uses labels)."""
    report = read_json(sweep, "sweep", "sweep")
    try:
        rows, meta = report["rows"], report["meta"]
    except (KeyError, TypeError) as exc:
        raise UsageError(f"sweep {sweep} is not a readable sweep-lambda report ({exc})", parameter="sweep") from None
    if meta.get("command") != "sweep-lambda":
        raise UsageError(
            f"sweep {sweep} is a {meta.get('command')!r} report, not a sweep-lambda report", parameter="sweep"
        )
    if info.sha256 and meta.get("checkpoint_sha256") != info.sha256:
        raise UsageError(f"sweep {sweep} was measured on another checkpoint than {info.name}", parameter="sweep")
    try:
        best = {
            Cell(str(r["corruption"]), int(r["severity"])): check_lam(r["lam"], f"rows[{i}].lam")
            for i, r in enumerate(rows)
            if r.get("oracle")
        }
    except KeyError as exc:
        raise UsageError(f"sweep {sweep}: an oracle row has no {exc}", parameter="sweep") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise UsageError(f"sweep {sweep}: {exc}", parameter="sweep") from None
    missing = [f"{c.corruption}/{c.severity}" for c in cells if c not in best]
    if missing:
        raise UsageError(
            f"sweep {sweep} has no row for {', '.join(missing)}; sweep those cells first", parameter="sweep"
        )
    return lambda cell: FixedLambda(best[cell], label=ORACLE)
