"""Every value that reaches the library, judged by one set of rules whichever door it comes through.

Two parts:

- **Validators** (``check_lam``, ``check_count``, ...): plain functions that the lower-level code
  every flag and API argument goes through calls (``lambda_grid``, ``FixedLambda``,
  ``AttackConfig.create``, ``TrainConfig``, the check ``Suite``). They raise ``UsageError`` naming
  the parameter. The ``*_MAX`` bounds cap every value that multiplies the work, so a typo cannot
  start a run of days or allocate more memory than the machine has.
- **File schemas** (pydantic models, one per kind of file the tool reads back): checkpoint
  metadata, the weights manifest, lambda calibrations, check suites and baselines, attack, eval and sweep resume
  state, and the eval/attack reports ``compare`` reads. Their fields use the same validators, so a
  lambda in a calibration is held to the rule of ``--lam``. ``load`` validates and turns the first
  problem into one ``UsageError`` naming the file and the field.

pydantic is imported here, and this module only by modules that already import torch, so
``sdnet --help`` never pays for it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, cast

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .errors import UsageError

# -- bounds (documented in the README's "Safety and failure behaviour") -------------------------
LAM_MAX = 100.0
"""Largest lambda accepted anywhere: trained models use 0.1 and test-time grids stop near 1.4; far above,
the soft threshold zeroes every code and the model answers one class."""
GRID_MAX = 1_000
"""Most points of a lambda grid: each point is a full evaluation of every cell."""
EXAMPLES_MAX = 1_000_000
"""Most images per cell (CIFAR has 10,000 test images, ImageNet 50,000 validation images)."""
STEPS_MAX = 100_000
"""Most attack iterations (Square: queries) per image."""
RESTARTS_MAX = 100
FISTA_STEPS_MAX = 1_000
"""Most FISTA steps of a CSC layer (trained models use 2)."""
EPOCHS_MAX = 10_000
BATCH_MAX = 65_536
WORKERS_MAX = 1_024
POOL_BATCHES_MAX = 1_024
WIDTH_MAX = 4_096
CLASSES_MAX = 100_000
TOLERANCE_MAX = 100.0
"""A tolerance of 100 accuracy points already accepts anything."""
LR_MAX = 100.0
SEED_MAX = 2**32 - 1
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
"""Of every corruption benchmark (Hendrycks & Dietterich, ICLR 2019); a clean cell has severity 0."""


def _number(value: Any) -> float:
    """``value`` as a float if it is a real number (not a bool, not text); else ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"must be a number, got {value!r}")
    return float(value)


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"must be an integer, got {value!r}")
    return value


def lam_rule(value: Any) -> float:
    number = _number(value)
    if not (math.isfinite(number) and 0 <= number <= LAM_MAX):
        raise ValueError(f"must be a finite number in [0, {LAM_MAX:g}], got {value!r}")
    return number


def fraction_rule(value: Any) -> float:
    number = _number(value)
    if not (math.isfinite(number) and 0 <= number <= 1):
        raise ValueError(f"must be a number in [0, 1], got {value!r}")
    return number


def severity_rule(value: Any) -> int:
    if _integer(value) not in SEVERITIES:
        raise ValueError(f"must be a severity from 1 to 5, got {value!r}")
    return cast("int", value)


def tolerance_rule(value: Any) -> float:
    number = _number(value)
    if not (math.isfinite(number) and 0 <= number <= TOLERANCE_MAX):
        raise ValueError(f"must be a finite number of accuracy points in [0, {TOLERANCE_MAX:g}], got {value!r}")
    return number


def lr_rule(value: Any) -> float:
    number = _number(value)
    if not (math.isfinite(number) and 0 < number <= LR_MAX):
        raise ValueError(f"must be a finite number in (0, {LR_MAX:g}], got {value!r}")
    return number


def accuracy_rule(value: Any) -> float:
    number = _number(value)
    if not (math.isfinite(number) and 0 <= number <= 100):
        raise ValueError(f"must be an accuracy in percent, a finite number in [0, 100], got {value!r}")
    return number


def finite_rule(value: Any) -> float:
    number = _number(value)
    if not math.isfinite(number):
        raise ValueError(f"must be a finite number, got {value!r}")
    return number


def count_rule(upper: int, lower: int = 1) -> Callable[[Any], int]:
    """An integer in [lower, upper]: how many images, steps, restarts, workers..."""

    def rule(value: Any) -> int:
        if not lower <= _integer(value) <= upper:
            raise ValueError(f"must be an integer >= {lower} and <= {upper:,}, got {value!r}")
        return cast("int", value)

    return rule


T = TypeVar("T")


def check(rule: Callable[[Any], T], value: Any, parameter: str) -> T:
    """``rule(value)``, its ValueError turned into ``UsageError("<parameter> must ...")``."""
    try:
        return rule(value)
    except ValueError as exc:
        raise UsageError(f"{parameter} {exc}", parameter=parameter) from None


def check_lam(value: Any, parameter: str = "lam") -> float:
    return check(lam_rule, value, parameter)


def check_tolerance(value: Any, parameter: str = "tolerance") -> float:
    return check(tolerance_rule, value, parameter)


def check_lr(value: Any, parameter: str = "lr") -> float:
    return check(lr_rule, value, parameter)


def check_severity(value: Any, parameter: str = "severity") -> int:
    return check(severity_rule, value, parameter)


def check_count(value: Any, parameter: str, upper: int, lower: int = 1) -> int:
    return check(count_rule(upper, lower), value, parameter)


def check_seed(value: Any, parameter: str = "seed") -> int:
    return check_count(value, parameter, SEED_MAX, lower=0)


# -- annotated field types: the rules above, inside file schemas -----------------------------------
Lam = Annotated[Any, AfterValidator(lam_rule)]
Severity = Annotated[Any, AfterValidator(severity_rule)]
Tolerance = Annotated[Any, AfterValidator(tolerance_rule)]
Accuracy = Annotated[Any, AfterValidator(accuracy_rule)]
Finite = Annotated[Any, AfterValidator(finite_rule)]
Examples = Annotated[Any, AfterValidator(count_rule(EXAMPLES_MAX))]
Steps = Annotated[Any, AfterValidator(count_rule(STEPS_MAX))]
FistaSteps = Annotated[Any, AfterValidator(count_rule(FISTA_STEPS_MAX))]
Width = Annotated[Any, AfterValidator(count_rule(WIDTH_MAX))]
Classes = Annotated[Any, AfterValidator(count_rule(CLASSES_MAX))]
Seed = Annotated[Any, AfterValidator(count_rule(SEED_MAX, lower=0))]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Bits = Annotated[str, Field(pattern=r"^[01]*$")]


# -- model names ------------------------------------------------------------------------------------
ROBUSTBENCH = "robustbench:"
TIMM = "timm:"
FACTORY_NAME = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
"""``package.module:factory``: a function of the user's own that returns the model; loading it runs code."""
ALLOW_CODE = "allow_code"
"""Validation context key: True lets a file name a ``module:factory`` model (``sdnet check --allow-code-in-suite``)."""


def is_factory_spec(name: str) -> bool:
    return bool(FACTORY_NAME.match(name)) and not name.startswith((ROBUSTBENCH, TIMM))


def file_model_rule(value: str, allow_code: bool = False) -> str:
    """A model named by a file: a shipped or registered name, ``robustbench:<name>``, ``timm:<name>`` or a
    checkpoint path, never code to import (``module:factory`` runs only when a person types it, or with
    ``allow_code``). A name with any other colon is refused too, so nothing in a file can reach an import."""
    if not value:
        raise ValueError("must name a model, got ''")
    prefix = next((p for p in (ROBUSTBENCH, TIMM) if value.startswith(p)), None)
    if prefix is not None:
        if ":" in value[len(prefix) :] or len(value) == len(prefix):
            raise ValueError(f"must be {prefix}<name>, got {value!r}")
        return value
    if ":" not in value or (allow_code and is_factory_spec(value)):
        return value
    raise ValueError(
        "must be a shipped or registered model name, robustbench:<name>, timm:<name> or a checkpoint path, not "
        f"code to import: got {value!r} (module:factory runs only when typed as --model or model=, or from a suite "
        "with sdnet check --allow-code-in-suite)"
    )


def _file_model(value: str, info: ValidationInfo) -> str:
    return file_model_rule(value, bool((info.context or {}).get(ALLOW_CODE)))


FileModel = Annotated[str, AfterValidator(_file_model)]
"""A model name in any file: ``file_model_rule``, with the context's ``allow_code``."""
PlainName = Annotated[str, AfterValidator(file_model_rule)]
"""A model name in a file that can never be code (a manifest's architecture)."""


def _file_name(value: str) -> str:
    """A file inside the weights folder: relative, without ``..`` (a manifest must not point elsewhere)."""
    parts = Path(value).parts
    if not value or Path(value).is_absolute() or ".." in parts:
        raise ValueError(f"must name a file inside the weights folder, got {value!r}")
    return value


FileName = Annotated[str, AfterValidator(_file_name)]


class Schema(BaseModel):
    """Strict: a number written as text (``"93.8"``) or a bool where a number belongs is refused."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)


M = TypeVar("M", bound=BaseModel)


def _where(loc: tuple[int | str, ...]) -> str:
    """``rules.noise.lo``, ``rows[0].value``: the field's path, without pydantic's union-member tags."""
    text = ""
    for part in loc:
        if isinstance(part, str) and (part[:1].isupper() or "[" in part or part in ("str", "int", "float", "bool")):
            continue
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "the file"


def _reason(error: Any) -> str:
    if error["type"] == "missing":
        return "is missing"
    if error["type"] == "extra_forbidden":
        return "is not a known field"
    message = str(error["msg"]).removeprefix("Value error, ")
    if message.startswith("must"):
        return message
    return f"is invalid: {message}, got {error.get('input')!r}"


def load(
    schema: type[M],
    data: Any,
    kind: str,
    path: Path | str,
    parameter: str | None = None,
    error: type[UsageError] = UsageError,
    context: dict[str, Any] | None = None,
) -> M:
    """``data`` (read from ``path``) validated against ``schema``; else one ``error`` (a ``UsageError``) naming
    the file and the field: ``calibration weights/x.lambda.json: rules.noise.lo must be ..., got -5``.
    ``context``: what validators may consult (``ALLOW_CODE``)."""
    try:
        return schema.model_validate(data, context=context)
    except ValidationError as exc:
        first = max(exc.errors(), key=lambda e: len(e["loc"]))  # of a union's alternatives, the closest
        field = _where(first["loc"])
        # the other alternatives of the same value (at the field or above it) are not further problems
        more = len({w for w in (_where(e["loc"]) for e in exc.errors()) if not field.startswith(w)})
        extra = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        raise error(f"{kind} {path}: {_where(first['loc'])} {_reason(first)}{extra}", parameter=parameter) from None


# -- checkpoint metadata -------------------------------------------------------------------------
class CheckpointMeta(Schema):
    """The settings our safetensors files record in their header (each value JSON-encoded)."""

    lam: Lam = None
    n_steps: FistaSteps = None
    width: Width = None
    num_classes: Classes = None
    square_noise: bool | None = None
    architecture: str | None = None
    dataset: str | None = None


# -- weights manifest ----------------------------------------------------------------------------
class ManifestEntry(Schema):
    """One shipped (or trained) checkpoint: the typed record behind every weights config."""

    name: Annotated[PlainName, Field(min_length=1)]
    file: FileName
    architecture: PlainName
    dataset: str
    sha256: Sha256
    num_classes: Classes = None
    width: Width = None
    lam: Lam = None
    n_steps: FistaSteps = None
    square_noise: bool | None = None
    dtype: Literal["float32", "float16", "bfloat16"] | None = None
    default: bool = False
    calibration: FileName | None = None
    clean_accuracy: Accuracy = None
    clean_accuracy_bf16: Accuracy = None
    epochs: Annotated[Any, AfterValidator(count_rule(EPOCHS_MAX))] = None
    seed: Seed = None


class Manifest(Schema):
    models: list[ManifestEntry]

    @model_validator(mode="after")
    def _distinct_names(self) -> Manifest:
        names = [e.name for e in self.models]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"must name each checkpoint once; listed twice: {', '.join(twice)}")
        return self


# -- lambda calibrations -------------------------------------------------------------------------
class RuleLine(Schema):
    """lambda = clamp(a * f1 + c * f2 + b, lo, hi): coefficients finite, the clamp a valid lambda range."""

    a: Finite
    b: Finite
    lo: Lam
    hi: Lam
    c: Finite = 0.0

    @model_validator(mode="after")
    def _ordered(self) -> RuleLine:
        if self.lo > self.hi:
            raise ValueError(f"must have lo <= hi, got lo {self.lo!r} > hi {self.hi!r}")
        return self


class CalibrationPoint(Schema):
    corruption: str
    severity: Annotated[Any, AfterValidator(count_rule(5, lower=0))]
    curve: list[Accuracy] | None = None
    best_lam: Lam = None
    accuracy: Accuracy = None
    error: Finite = None
    noise: Finite = None
    impulse: Finite = None


class CalibrationFile(Schema):
    """Every layout (schema 1 to 4; see ``lam.calibration``): the common fields, and each rule's line
    wherever its layout keeps it (checked by ``calibration_rules``)."""

    schema_: Literal[1, 2, 3, 4] | None = Field(None, alias="schema")
    rules: dict[Literal["recon", "auto", "noise"], RuleLine] | None = None
    recommended: Literal["recon", "noise"] | None = None
    grid: Annotated[list[Lam], Field(min_length=1, max_length=GRID_MAX)]
    points: list[CalibrationPoint]
    corruptions: list[str]
    severities: list[Severity]
    n: Examples
    seed: Seed
    training_lam: Lam
    checkpoint_sha256: str
    split: str

    @model_validator(mode="after")
    def _curves_match_grid(self) -> CalibrationFile:
        for i, point in enumerate(self.points):
            if point.curve is not None and len(point.curve) != len(self.grid):
                raise ValueError(f"points[{i}].curve must have one accuracy per grid lambda ({len(self.grid)})")
        return self


class LegacyRules(Schema):
    """Schema 1: the reconstruction-error rule's line at the top level, ``noise`` nested."""

    a: Finite
    b: Finite
    lo: Lam
    hi: Lam
    noise: RuleLine

    @model_validator(mode="after")
    def _ordered(self) -> LegacyRules:
        RuleLine(a=self.a, b=self.b, lo=self.lo, hi=self.hi)
        return self


# -- check suites and baselines ------------------------------------------------------------------
def cell_rule(value: list[Any]) -> list[Any]:
    """``[corruption, severity]``."""
    if len(value) != 2 or not isinstance(value[0], str):
        raise ValueError(f"must be [corruption, severity], got {value!r}")
    return [value[0], severity_rule(value[1])]


class SuiteModel(Schema):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    model: FileModel
    checkpoint: str | None = None
    lam: str | None = None
    threat: Literal["corruptions", "Linf", "L2"] | None = None
    model_dir: str | None = None


class SuiteFile(Schema):
    """A check suite; every field optional (the defaults are ``check.Suite``'s)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    models: Annotated[list[FileModel | SuiteModel], Field(min_length=1, max_length=100)] = None  # type: ignore[assignment]
    dataset: str = None  # type: ignore[assignment]
    n_examples: Examples = None
    cells: Annotated[list[Annotated[list[Any], AfterValidator(cell_rule)]], Field(max_length=1_000)] = None  # type: ignore[assignment]
    attack: str = None  # type: ignore[assignment]
    eps: str = None  # type: ignore[assignment]
    steps: Steps = None
    tolerance: Tolerance = None
    seed: Seed = None


class BaselineRow(Schema):
    model: str
    metric: str
    value: Accuracy
    n: Examples = None
    checkpoint_sha256: str | None = None


class BaselineMeta(Schema):
    command: Literal["check"] | None = None
    suite: SuiteFile | None = None


class Baseline(Schema):
    meta: BaselineMeta
    rows: Annotated[list[BaselineRow], Field(min_length=1)]

    @model_validator(mode="after")
    def _distinct_metrics(self) -> Baseline:
        seen: set[tuple[str, str]] = set()
        for row in self.rows:
            key = (row.model, row.metric)
            if key in seen:
                raise ValueError(f"must hold each metric once; {row.model} {row.metric} appears twice")
            seen.add(key)
        return self


# -- reports read back by compare ----------------------------------------------------------------
class EvalRow(Schema):
    """A measured cell; a ``mean`` row (severity ``all``) is recomputed by ``compare``, never read."""

    corruption: str
    severity: Any
    n: Examples
    accuracy: Any

    @field_validator("severity")
    @classmethod
    def _severity(cls, value: Any, info: ValidationInfo) -> Any:
        return value if info.data.get("corruption") == "mean" else count_rule(5, lower=0)(value)

    @field_validator("accuracy")
    @classmethod
    def _accuracy(cls, value: Any, info: ValidationInfo) -> Any:
        return value if info.data.get("corruption") == "mean" else accuracy_rule(value)


class AttackRow(Schema):
    attack: str
    norm: str
    eps_text: str
    n: Examples
    clean_accuracy: Accuracy
    robust_accuracy: Accuracy


class ReportMeta(Schema):
    command: str


class EvalReport(Schema):
    meta: ReportMeta
    rows: list[EvalRow]


class AttackReport(Schema):
    meta: ReportMeta
    rows: list[AttackRow]


# -- eval resume state ---------------------------------------------------------------------------
class SavedRow(EvalRow):
    """A finished cell's row as ``evaluate.cell_row`` wrote it: its count must give its accuracy, so a
    damaged file cannot put a wrong number into the resumed report."""

    correct: Annotated[Any, AfterValidator(count_rule(EXAMPLES_MAX, lower=0))]
    seconds: Finite

    @model_validator(mode="after")
    def _consistent(self) -> SavedRow:
        if self.correct > self.n or round(100.0 * self.correct / self.n, 4) != self.accuracy:
            raise ValueError(f"must have correct/n give accuracy, got {self.correct}/{self.n} and {self.accuracy}")
        return self


class SavedCell(Schema):
    row: SavedRow
    lams: Annotated[str, Field(pattern=r"^[A-Za-z0-9+/]*={0,2}$")] | None


class EvalState(Schema):
    config: dict[str, Any]
    cells: dict[Annotated[str, Field(pattern=r"^[a-z_]{1,40}/[0-5]$")], SavedCell]


# -- sweep resume state --------------------------------------------------------------------------
Pairs = Annotated[Any, AfterValidator(count_rule(EXAMPLES_MAX * GRID_MAX, lower=0))]  # (lambda, image) pairs


class SavedSweep(Schema):
    """One finished cell of a lambda sweep (``sweep.runs.CellSweep``): per grid lambda, which images it
    classified correctly, the stem's mean reconstruction error and the seconds."""

    correct: list[Bits]
    mean_error: list[Finite]
    seconds: list[Finite]
    top2: Bits | None
    pairs_run: Pairs
    audited: Pairs
    audit_same: Pairs
    wall_seconds: Finite
    in_eval_batches: list[Annotated[Any, AfterValidator(count_rule(GRID_MAX, lower=0))]]

    @model_validator(mode="after")
    def _same_lengths(self) -> SavedSweep:
        n_lams = len(self.correct)
        if not n_lams or len(self.mean_error) != n_lams or len(self.seconds) != n_lams:
            raise ValueError("must give correct, mean_error and seconds for the same lambdas, at least one")
        n = len(self.correct[0])
        if any(len(c) != n for c in self.correct) or (self.top2 is not None and len(self.top2) != n):
            raise ValueError("must give every correct mask (and top2) as many images")
        if (
            self.audit_same > self.audited
            or self.pairs_run > n * n_lams
            or max(self.in_eval_batches, default=0) >= n_lams
        ):
            raise ValueError("must count at most its own pairs and name only its own lambdas")
        return self


class SweepState(Schema):
    config: dict[str, Any]
    cells: dict[Annotated[str, Field(pattern=r"^(test|train):[a-z_]{1,40}/[0-5]$")], SavedSweep]


# -- attack resume state -------------------------------------------------------------------------
class PoolState(Schema):
    clean: Bits
    fooled: list[list[Bits]]
    seconds: list[list[Finite]]
    max_excess: Finite  # an attack's largest raw overshoot of the threat set in this pool

    @model_validator(mode="after")
    def _same_lengths(self) -> PoolState:
        if any(len(f) != len(self.clean) for per_eps in self.fooled for f in per_eps):
            raise ValueError("must give every fooled mask as many images as clean")
        return self


class AttackState(Schema):
    config: dict[str, Any]
    pools: dict[Annotated[str, Field(pattern=r"^\d{1,9}$")], PoolState]
