"""Regression gate: a fixed, fast, seeded suite per model, compared with a stored baseline.

Every metric is an accuracy in percent on the first ``n_examples`` test images: clean, a few
generated corruption cells, and a short PGD run. Same code, checkpoint and seed give the same
numbers; the tolerance absorbs what differs between CPUs (a few flipped predictions).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ._io import read_json
from .attacks import AttackConfig, forwards_per_image, run_attack
from .data.cells import Cell, CellSource
from .errors import UsageError
from .evaluate import evaluate_cells
from .forecast import Progress, Silent
from .lam import lambda_label, resolve_policy
from .models import Classifier, LambdaPolicy, ModelInfo, load_model
from .rows import CLEAN, MEAN
from .runtime import Runtime
from .schemas import EXAMPLES_MAX, STEPS_MAX, check_count, check_seed, check_severity, check_tolerance


@dataclass
class ModelSpec:
    """A model of the suite: an architecture or shipped name (or ``robustbench:<name>`` with its ``threat``
    and ``model_dir``), optionally a checkpoint and a test lambda."""

    model: str
    checkpoint: str | None = None
    lam: str | None = None
    threat: str | None = None  # robustbench:<name> models: their leaderboard and weights folder
    model_dir: str | None = None

    @property
    def label(self) -> str:
        return (
            self.model
            + (f" ({Path(self.checkpoint).name})" if self.checkpoint else "")
            + (f" lam={self.lam}" if self.lam else "")
        )


SUITE_FIELDS = ("models", "dataset", "n_examples", "cells", "attack", "eps", "steps", "tolerance", "seed")


@dataclass
class Suite:
    """What ``check`` measures. Every field is validated when it is set (the same rules as the flags),
    so a value from a suite file, a baseline or ``tolerance=`` is judged before any work."""

    models: list[ModelSpec] = field(default_factory=lambda: [ModelSpec("sdnet18"), ModelSpec("resnet18")])
    dataset: str = "cifar10"
    n_examples: int = 500
    cells: list[tuple[str, int]] = field(
        default_factory=lambda: [("gaussian_noise", 3), ("contrast", 3), ("jpeg_compression", 3)]
    )
    attack: str = "pgd"
    eps: str = "2/255"
    steps: int = 10
    tolerance: float = 1.0  # accuracy points a metric may fall before the check fails
    seed: int = 0
    origin: str = field(default="the default suite", compare=False)
    """Where the suite was read (``suite s.json``, ``baseline b.json meta.suite``): errors about an entry name
    the file and its field. Not a setting: left out of ``as_meta``."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "n_examples":
            value = check_count(value, "n_examples", EXAMPLES_MAX)
        elif name == "steps":
            value = check_count(value, "steps", STEPS_MAX)
        elif name == "tolerance":
            value = check_tolerance(value)
        elif name == "seed":
            value = check_seed(value)
        elif name == "cells":
            value = [(str(c), check_severity(s)) for c, s in value]
        elif name == "models" and not value:
            raise UsageError("a suite needs at least one model", parameter="suite")
        super().__setattr__(name, value)

    @classmethod
    def load(cls, path: Path, allow_code: bool = False) -> Suite:
        """A JSON object with any of the fields above; ``models`` items are names or {model, checkpoint, lam}."""
        return cls.load_dict(read_json(path, "suite", parameter="suite"), f"suite {path}", allow_code)

    @classmethod
    def load_dict(cls, data: Any, source: str = "suite", allow_code: bool = False) -> Suite:
        """The suite a dict describes (a suite file's or a baseline's ``meta.suite``); ``source`` names it
        in errors. The attack settings are parsed here too, so a bad eps is refused before any work. A model
        name that would import code (``module:factory``) is refused unless ``allow_code``
        (``schemas.file_model_rule``): a suite comes from a pull request, and the gate must not run what it names."""
        from .schemas import ALLOW_CODE, SuiteFile, load

        kind, _, where = source.partition(" ")
        context = {ALLOW_CODE: allow_code}
        loaded = load(SuiteFile, data, kind, where or "(given)", parameter="suite", context=context)
        given = loaded.model_dump(exclude_none=True)
        given = {k: v for k, v in given.items() if k in data}
        if "models" in given:
            given["models"] = [ModelSpec(m) if isinstance(m, str) else ModelSpec(**m) for m in given["models"]]
        try:
            suite = cls(**given, origin=source)
            suite.attack_config()
        except UsageError as exc:
            raise UsageError(f"{source}: {exc}", parameter="suite") from None
        return suite

    def as_meta(self) -> dict[str, Any]:
        meta = asdict(self)
        meta.pop("origin")
        return meta

    def attack_config(self) -> AttackConfig:
        return AttackConfig.create(attack=self.attack, norm="Linf", eps=[self.eps], steps=self.steps)


def run_suite(
    suite: Suite,
    runtime: Runtime,
    data_dir: Path | None = None,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
    weights_dir: Path | None = None,
) -> list[dict[str, Any]]:
    """Rows ``{model, checkpoint_sha256, metric, n, value}``, one per model and metric. Every model is loaded,
    held to the output contract and given its lambda policy, and the corrupted cells generated (a progress task
    of their own), before the suite's task starts. That task counts forwards: an attacked image weighs what
    the attack costs (``attacks.forwards_per_image``), so its forecast from the first evaluations holds."""
    config = suite.attack_config()
    loaded = [_load_entry(suite, i, runtime, weights_dir) for i in range(len(suite.models))]
    source = CellSource(data_dir, None, cache_dir, seed=suite.seed, n_examples=suite.n_examples, dataset=suite.dataset)
    told = progress or Silent()
    source.prepare_told(sorted({c for c, _ in suite.cells}), told)
    cells = [Cell(CLEAN, 0)] + [Cell(c, s) for c, s in suite.cells]
    weights = [forwards_per_image(classifier, config, info.num_classes) for classifier, info, _ in loaded]
    advance = told.task("checking", sum(suite.n_examples * (len(cells) + w) for w in weights))
    rows: list[dict[str, Any]] = []
    for spec, (classifier, info, policy), weight in zip(suite.models, loaded, weights):
        with classifier.using(policy):
            base = {"model": spec.label, "dataset": suite.dataset, "lam": lambda_label(classifier)}
            found = [
                r
                for r in evaluate_cells(classifier, cells, source, runtime, base, progress=advance)
                if r["corruption"] != MEAN
            ]
            metrics = [
                (CLEAN if r["severity"] == 0 else f"{r['corruption']}-{r['severity']}", r["n"], r["accuracy"])
                for r in found
            ]
            images, labels = source.load(Cell(CLEAN, 0))
            attacked = run_attack(
                classifier, images, labels, config, seed=suite.seed, runtime=runtime.exact,
                progress=_weighted(advance, weight),
            )  # fmt: skip
            (robust,) = attacked.rows(base)
        metrics.append(
            (f"{suite.attack}-{suite.steps}-Linf-{config.eps[0].text}", robust["n"], robust["robust_accuracy"])
        )
        rows += [
            {"model": spec.label, "checkpoint_sha256": info.sha256, "metric": m, "n": n, "value": v}
            for m, n, v in metrics
        ]
    return rows


def _weighted(advance: Callable[[int], None], weight: int) -> Callable[[int], None]:
    """``advance`` for work whose every unit counts ``weight`` units of the task."""
    return lambda k: advance(k * weight)


def _load_entry(
    suite: Suite, index: int, runtime: Runtime, weights_dir: Path | None
) -> tuple[Classifier, ModelInfo, LambdaPolicy | None]:
    """Entry ``index`` of ``suite.models`` loaded, checked and with its policy; a problem is named as the file's
    field (``suite s.json: models[1].checkpoint: ...``), not as a flag nobody typed."""
    spec = suite.models[index]
    try:
        checkpoint = Path(spec.checkpoint) if spec.checkpoint else None
        model_dir = Path(spec.model_dir) if spec.model_dir else None
        classifier, info = load_model(
            spec.model, checkpoint, suite.dataset, weights_dir, threat=spec.threat or "corruptions", model_dir=model_dir
        )
        runtime.prepare_checked(classifier, info.name, suite.dataset)
        return classifier, info, resolve_policy(spec.lam, classifier, info)
    except UsageError as exc:
        entry = f"models[{index}]" + (f".{exc.parameter}" if exc.parameter in ENTRY_FIELDS else "")
        raise UsageError(f"{suite.origin}: {entry}: {exc}") from None


ENTRY_FIELDS = ("checkpoint", "lam", "threat", "model_dir")
"""The fields of a suite's model entry besides ``model`` (``ModelSpec``)."""


def compare_with_baseline(
    rows: list[dict[str, Any]], baseline: list[dict[str, Any]], tolerance: float
) -> list[dict[str, Any]]:
    """Each metric now vs the baseline. A baseline metric is ok, regressed (fell by more than
    ``tolerance``), improved, missing (not measured now), invalid (a value that is not a finite
    accuracy) or measured on another number of images; a metric the baseline lacks is new."""
    tolerance = check_tolerance(tolerance)
    before = {(r["model"], r["metric"]): r for r in baseline}
    now = {(r["model"], r["metric"]): r for r in rows}
    table = []
    for key in list(before) + [k for k in now if k not in before]:
        old, new = before.get(key), now.get(key)
        change = None
        if old is None:
            status = "new"
        elif new is None:
            status = "missing"
        elif not (_is_accuracy(old.get("value")) and _is_accuracy(new.get("value"))):
            status = "invalid"
        elif old.get("n") is not None and old.get("n") != new.get("n"):
            status = f"measured on {new.get('n')} images, baseline on {old.get('n')}"
        else:
            change = round(new["value"] - old["value"], 4)
            status = "regressed" if change < -tolerance else "improved" if change > tolerance else "ok"
            if status == "ok" and old.get("checkpoint_sha256") != new.get("checkpoint_sha256"):
                status = "ok (checkpoint changed)"
        table.append(
            {
                "model": key[0],
                "metric": key[1],
                "baseline": old and old.get("value"),
                "now": new and new.get("value"),
                "change": change,
                "status": status,
            }
        )
    return table


def _is_accuracy(value: Any) -> bool:
    return (
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and 0 <= value <= 100
    )


PASSING = ("ok", "ok (checkpoint changed)", "improved")


def verdict(table: list[dict[str, Any]]) -> dict[str, Any]:
    """The gate's decision, failing closed: it passes only when at least one baseline metric was compared
    and every baseline metric was measured, finite and within tolerance. Metrics the baseline lacks are
    counted apart (``new``): they never make a check pass."""
    compared = [r for r in table if r["status"] != "new"]
    failures = [f"{r['model']} {r['metric']}: {r['status']}" for r in compared if r["status"] not in PASSING]
    if not compared:
        failures.append("the baseline has no metric that this suite measures")
    return {
        "passed": not failures,
        "compared": len(compared),
        "new": len(table) - len(compared),
        "failures": failures,
    }


def failed(table: list[dict[str, Any]]) -> bool:
    """Whether the check fails (see ``verdict``)."""
    return not verdict(table)["passed"]


def read_baseline(path: Path, allow_code: bool = False) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The baseline's meta and rows, validated: a malformed baseline is a usage error (exit 2) naming the
    file and field, never a regression (exit 1). Its stored suite is held to ``Suite.load_dict``'s rules."""
    from .schemas import ALLOW_CODE, Baseline, load

    report = read_json(path, "baseline", "baseline", missing="; create it with update=True (sdnet check --update)")
    load(Baseline, report, "baseline", path, parameter="baseline", context={ALLOW_CODE: allow_code})
    if report["meta"].get("suite") is not None:
        Suite.load_dict(report["meta"]["suite"], f"baseline {path}", allow_code)
    return report["meta"], report["rows"]
