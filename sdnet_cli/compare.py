"""Side-by-side tables from reports the tool already wrote (lambda policies, models, attacks).

Each source is ``LABEL=report.json``; a label may name several reports (e.g. full noise cells
plus a subsample of every corruption). Rows are matched on what was measured, including the
number of images, so cells measured on different slices never share a row. Means are
recomputed here from the cells, not copied, so every mean covers exactly the cells shown.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Sequence

from .data.cells import CLEAN
from .data.corruptions import BENCHMARK_CORRUPTIONS
from .reports import markdown_table

MEAN_15 = f"mean ({len(BENCHMARK_CORRUPTIONS)} corruptions)"


class CompareError(ValueError):
    """A source that is missing, not a report of this tool, or of a different kind than the others."""


@dataclass
class Source:
    label: str
    path: Path
    meta: dict[str, Any]
    rows: list[dict[str, Any]]

    @property
    def kind(self) -> str:
        return str(self.meta.get("command"))


def parse_source(text: str) -> tuple[str, Path]:
    """``LABEL=PATH`` (or a bare PATH, labelled by its file stem)."""
    label, sep, path = text.partition("=")
    if not sep:
        label, path = Path(text).stem, text
    if not label or not path:
        raise CompareError(f"expected LABEL=REPORT.json, got {text!r}")
    return label, Path(path)


def load_source(label: str, path: Path) -> Source:
    try:
        report = json.loads(Path(path).read_text())
        meta, rows = report["meta"], report["rows"]
    except FileNotFoundError:
        raise CompareError(f"no report at {path}") from None
    except (json.JSONDecodeError, KeyError, TypeError):
        raise CompareError(f"{path} is not a JSON report written by sdnet (needs 'meta' and 'rows')") from None
    if meta.get("command") not in ("eval", "attack"):
        raise CompareError(f"{path}: only eval and attack reports can be compared, not {meta.get('command')!r}")
    return Source(label, Path(path), meta, rows)


def _eval_cells(source: Source) -> dict[tuple, float]:
    return {(r["corruption"], r["severity"], r["n"]): r["accuracy"] for r in source.rows if r["corruption"] != "mean"}


def _attack_cells(source: Source) -> dict[tuple, float]:
    cells: dict[tuple, float] = {}
    for r in source.rows:
        cells[(CLEAN, r["norm"], "0", r["n"])] = r["clean_accuracy"]
        cells[(r["attack"], r["norm"], r["eps_text"], r["n"])] = r["robust_accuracy"]
    return cells


def _with_means(cells: dict[tuple, float]) -> dict[tuple, float]:
    """Add (corruption, 'mean', n) over each corruption's severities and the benchmark mean per n."""
    out = dict(cells)
    by_corruption: dict[tuple[str, int], list[float]] = {}
    for (corruption, severity, n), accuracy in cells.items():
        if corruption != CLEAN:
            by_corruption.setdefault((corruption, n), []).append(accuracy)
    for (corruption, n), values in by_corruption.items():
        if len(values) > 1:
            out[(corruption, "mean", n)] = sum(values) / len(values)
    for n in {n for (_, _, n) in cells}:
        if {c for (c, _, m) in cells if m == n} >= set(BENCHMARK_CORRUPTIONS):
            benchmark = [v for (c, _, m), v in cells.items() if m == n and c in BENCHMARK_CORRUPTIONS]
            out[(MEAN_15, "all", n)] = sum(benchmark) / len(benchmark)
    return out


def _sort_value(value: Any) -> tuple:
    """Severities and eps ("8/255") in numeric order, 'mean'/'all' after them."""
    try:
        return (0, float(Fraction(str(value))))
    except (ValueError, ZeroDivisionError):
        return (1, 0.0)


def compare(sources: Sequence[Source]) -> tuple[list[dict[str, Any]], str]:
    """One row per measured cell (or attack and eps), one column per label; returns (rows, value name)."""
    if not sources:
        raise CompareError("give at least one LABEL=REPORT.json")
    kinds = {s.kind for s in sources}
    if len(kinds) > 1:
        raise CompareError(f"cannot mix report kinds in one table: {sorted(kinds)}")
    kind = kinds.pop()
    columns: dict[str, dict[tuple, float]] = {}
    for source in sources:
        cells = _eval_cells(source) if kind == "eval" else _attack_cells(source)
        columns.setdefault(source.label, {}).update(cells)
    if kind == "eval":
        columns = {label: _with_means(cells) for label, cells in columns.items()}
    # rows grouped by slice size (largest first); clean, then names in the order the reports list them,
    # each corruption's mean after its cells, the benchmark mean last
    first_seen: dict[str, int] = {CLEAN: -1}
    for cells in columns.values():
        for key in cells:
            first_seen.setdefault(key[0], len(first_seen) if key[0] != MEAN_15 else 1_000_000)
    keys = sorted(
        {k for cells in columns.values() for k in cells},
        key=lambda k: (-k[-1], first_seen[k[0]], _sort_value(k[-2] if kind == "attack" else k[1])),
    )
    names = ("corruption", "severity", "n") if kind == "eval" else ("attack", "norm", "eps", "n")
    rows = [{**dict(zip(names, key)), **{label: cells.get(key) for label, cells in columns.items()}} for key in keys]
    return rows, "accuracy (%)" if kind == "eval" else "robust accuracy (%)"


def describe_sources(sources: Sequence[Source]) -> list[dict[str, Any]]:
    """What each column was measured with, for the report's meta (and its warnings, for attacks)."""
    described = []
    for s in sources:
        meta = s.meta
        entry = {
            "label": s.label, "report": str(s.path), "argv": meta.get("argv"), "model": (meta.get("model") or {}).get("name"),
            "checkpoint_sha256": meta.get("checkpoint_sha256"), "lam_policy": meta.get("lam_policy"),
            "n_examples": meta.get("n_examples"), "seed": meta.get("seed"), "device": meta.get("device_name"),
            "precision": meta.get("precision"), "created": meta.get("created"),
        }
        if s.kind == "attack":
            entry["lambda_gradient"] = meta.get("lambda_gradient")
            entry["diagnostics"] = meta.get("diagnostics")
        described.append(entry)
    return described


def _as_typed(argv: str | None) -> str:
    """``/path/sdnet_cli/__main__.py eval ...`` (python -m, torchrun) as the user would type it: ``sdnet eval ...``."""
    program, _, rest = (argv or "").partition(" ")
    return f"sdnet {rest}" if program.endswith(("__main__.py", "sdnet")) else argv or ""


def render(title: str, rows: Sequence[dict[str, Any]], value: str, sources: Sequence[dict[str, Any]], note: str = "") -> str:
    """Markdown: the table, then each column's provenance and any attack warnings."""
    lines = [f"# {title}", "", f"Values: {value}; `n` = images per cell.", ""]
    if note:
        lines += [note, ""]
    lines += [markdown_table(rows), "", "## Sources", ""]
    for s in sources:
        lines.append(f"- **{s['label']}**: model `{s['model']}` (sha256 `{str(s['checkpoint_sha256'])[:12]}`), lambda "
                     f"{s['lam_policy']}, seed {s['seed']}, {s['device']} {s['precision']}; `{s['report']}`; "
                     f"command `{_as_typed(s['argv'])}`")
        diagnostics = s.get("diagnostics")
        if diagnostics is not None:
            lines.append(f"  - lambda gradient: {s['lambda_gradient']}")
            facts = ", ".join(f"{k} {v}" for k, v in diagnostics.items() if k not in ("warnings", "lambda_gradient"))
            lines.append(f"  - diagnostics: {facts}")
            for warning in diagnostics.get("warnings") or ["none"]:
                lines.append(f"  - warning: {warning}")
    return "\n".join(lines) + "\n"
