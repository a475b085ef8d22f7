"""Regression gate: a fixed, fast, seeded suite per model, compared with a stored baseline.

Every metric is an accuracy in percent on the first ``n_examples`` test images: clean, a few
generated corruption cells, and a short PGD run. Same code, checkpoint and seed give the same
numbers; the tolerance absorbs what differs between CPUs (a few flipped predictions).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .attacks import AttackConfig, run_attack
from .data.cells import Cell, CellSource
from .errors import UsageError
from .evaluate import evaluate_cells
from .lam import lambda_label, resolve_policy
from .models import load_model
from .rows import CLEAN, MEAN
from .runtime import Runtime


@dataclass
class ModelSpec:
    """A model of the suite: an architecture or shipped name, optionally a checkpoint and a test lambda."""

    model: str
    checkpoint: str | None = None
    lam: str | None = None

    @property
    def label(self) -> str:
        return (
            self.model
            + (f" ({Path(self.checkpoint).name})" if self.checkpoint else "")
            + (f" lam={self.lam}" if self.lam else "")
        )


@dataclass
class Suite:
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

    @classmethod
    def load(cls, path: Path) -> Suite:
        """A JSON object with any of the fields above; ``models`` items are names or {model, checkpoint, lam}."""
        try:
            return cls.load_dict(json.loads(Path(path).read_text()))
        except FileNotFoundError:
            raise UsageError(f"no suite file at {path}", parameter="suite") from None
        except json.JSONDecodeError as exc:
            raise UsageError(f"suite {path} is not JSON ({exc})", parameter="suite") from None

    @classmethod
    def load_dict(cls, data: dict[str, Any]) -> Suite:
        try:
            data = dict(data)
            models = [
                ModelSpec(m) if isinstance(m, str) else ModelSpec(**m)
                for m in data.pop("models", ["sdnet18", "resnet18"])
            ]
            cells = [(str(c), int(s)) for c, s in data.pop("cells", cls().cells)]
            return cls(models=models, cells=cells, **data)
        except (TypeError, ValueError, AttributeError) as exc:
            raise UsageError(
                f"not a valid suite ({exc}); its fields: {', '.join(asdict(cls()))}", parameter="suite"
            ) from None

    def as_meta(self) -> dict[str, Any]:
        return asdict(self)

    def attack_config(self) -> AttackConfig:
        return AttackConfig.create(attack=self.attack, norm="Linf", eps=[self.eps], steps=self.steps)

    def work_units(self) -> int:
        """Images the suite pushes through per model: clean, every cell, and the attack."""
        return self.n_examples * (len(self.cells) + 2) * len(self.models)


def run_suite(
    suite: Suite,
    runtime: Runtime,
    data_dir: Path | None = None,
    cache_dir: Path | None = None,
    progress: Callable[[int], None] | None = None,
    weights_dir: Path | None = None,
) -> list[dict[str, Any]]:
    """Rows ``{model, checkpoint_sha256, metric, n, value}``, one per model and metric."""
    config = suite.attack_config()
    source = CellSource(data_dir, None, cache_dir, seed=suite.seed, n_examples=suite.n_examples, dataset=suite.dataset)
    source.prepare(sorted({c for c, _ in suite.cells}))
    cells = [Cell(CLEAN, 0)] + [Cell(c, s) for c, s in suite.cells]
    rows: list[dict[str, Any]] = []
    for spec in suite.models:
        checkpoint = Path(spec.checkpoint) if spec.checkpoint else None
        classifier, info = load_model(spec.model, checkpoint, suite.dataset, weights_dir)
        runtime.prepare(classifier)
        with classifier.using(resolve_policy(spec.lam, classifier, info)):
            base = {"model": spec.label, "dataset": suite.dataset, "lam": lambda_label(classifier)}
            found = [
                r
                for r in evaluate_cells(classifier, cells, source, runtime, base, progress=progress)
                if r["corruption"] != MEAN
            ]
            metrics = [
                (CLEAN if r["severity"] == 0 else f"{r['corruption']}-{r['severity']}", r["n"], r["accuracy"])
                for r in found
            ]
            images, labels = source.load(Cell(CLEAN, 0))
            attacked = run_attack(
                classifier, images, labels, config, seed=suite.seed, runtime=runtime, progress=progress
            )
            (robust,) = attacked.rows(base)
        metrics.append(
            (f"{suite.attack}-{suite.steps}-Linf-{config.eps[0].text}", robust["n"], robust["robust_accuracy"])
        )
        rows += [
            {"model": spec.label, "checkpoint_sha256": info.sha256, "metric": m, "n": n, "value": v}
            for m, n, v in metrics
        ]
    return rows


def compare_with_baseline(
    rows: list[dict[str, Any]], baseline: list[dict[str, Any]], tolerance: float
) -> list[dict[str, Any]]:
    """Each metric now vs the baseline: ok, regressed (fell by more than ``tolerance``), improved, new or missing."""
    before = {(r["model"], r["metric"]): r for r in baseline}
    now = {(r["model"], r["metric"]): r for r in rows}
    table = []
    for key in list(before) + [k for k in now if k not in before]:
        old, new = before.get(key), now.get(key)
        change = None if old is None or new is None else round(new["value"] - old["value"], 4)
        if old is None:
            status = "new"
        elif new is None:
            status = "missing"
        elif change < -tolerance:  # type: ignore[operator]
            status = "regressed"
        elif change > tolerance:  # type: ignore[operator]
            status = "improved"
        else:
            status = "ok"
        if (
            old is not None
            and new is not None
            and old.get("checkpoint_sha256") != new.get("checkpoint_sha256")
            and status == "ok"
        ):
            status = "ok (checkpoint changed)"
        table.append(
            {
                "model": key[0],
                "metric": key[1],
                "baseline": old and old["value"],
                "now": new and new["value"],
                "change": change,
                "status": status,
            }
        )
    return table


def failed(table: list[dict[str, Any]]) -> bool:
    """A regression, or a baseline metric that is no longer measured, fails the check."""
    return any(r["status"] in ("regressed", "missing") for r in table)


def read_baseline(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    try:
        report = json.loads(Path(path).read_text())
        return report["meta"], report["rows"]
    except FileNotFoundError:
        raise UsageError(
            f"no baseline at {path}; create it with update=True (sdnet check --update)", parameter="baseline"
        ) from None
    except (json.JSONDecodeError, KeyError, TypeError):
        raise UsageError(f"{path} is not a baseline written by check with update=True", parameter="baseline") from None
