"""Side-by-side tables (and plots) from reports the tool already wrote (lambda policies, models, attacks).

Each source is ``LABEL=report.json``; a label may name several reports (e.g. full noise cells
plus a subsample of every corruption), but never two reports of the same cell, which would leave
its value ambiguous. Rows are matched on what was measured, including the number of images, so
cells measured on different slices never share a row. Means are recomputed here from the cells,
not copied, so every mean covers exactly the cells shown.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ._io import read_json
from .data.corruptions import BENCHMARK_CORRUPTIONS
from .errors import UsageError
from .plots import save_panel_grid
from .report import base_meta, markdown_table, write_report
from .rows import ALL, CLEAN, MEAN

MEAN_15 = f"mean ({len(BENCHMARK_CORRUPTIONS)} corruptions)"
EVAL_KEY = ("corruption", "severity", "n")
ATTACK_KEY = ("attack", "norm", "eps", "n")

SourceSpec = str | os.PathLike[str] | tuple[str, str | os.PathLike[str]]
"""``"LABEL=path.json"`` as typed on the command line, a bare path (labelled by its file stem), or ``(label, path)``."""
Curve = tuple[str, list[float], list[float]]  # (label, xs, ys): one line of a plot


class CompareError(UsageError):
    """A source that is missing, not a report of this tool, of a different kind than the others,
    or a second report of a cell its label already has."""


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
        raise CompareError(f"sources: expected LABEL=REPORT.json, got {text!r}", parameter="sources")
    return label, Path(path)


def _as_pair(source: SourceSpec) -> tuple[str, Path]:
    if isinstance(source, tuple):
        if len(source) != 2 or not source[0]:
            raise CompareError(f"sources: expected (label, path), got {source!r}", parameter="sources")
        return str(source[0]), Path(source[1])
    if isinstance(source, os.PathLike):
        return Path(source).stem, Path(source)
    return parse_source(source)


def load_source(label: str, path: Path) -> Source:
    report = read_json(path, "report", "sources", error=CompareError)
    try:
        meta, rows = report["meta"], report["rows"]
    except (KeyError, TypeError):
        raise CompareError(
            f"{path} is not a JSON report written by sdnet (needs 'meta' and 'rows')", parameter="sources"
        ) from None
    if not isinstance(meta, dict) or meta.get("command") not in ("eval", "attack"):
        command = meta.get("command") if isinstance(meta, dict) else None
        raise CompareError(
            f"{path}: only eval and attack reports can be compared, not {command!r}", parameter="sources"
        )
    from .schemas import AttackReport, EvalReport, load

    schema = EvalReport if meta["command"] == "eval" else AttackReport
    load(schema, report, f"{meta['command']} report", path, parameter="sources", error=CompareError)
    return Source(label, Path(path), meta, rows)


def _measured(source: Source) -> list[tuple[tuple[Any, ...], float]]:
    """(row key, value) for every value a report measured; an attack report repeats its clean accuracy
    (eps 0) on each of its rows."""
    if source.kind == "eval":
        return [
            ((r["corruption"], r["severity"], r["n"]), r["accuracy"]) for r in source.rows if r["corruption"] != MEAN
        ]
    measured = []
    for r in source.rows:
        measured.append(((CLEAN, r["norm"], "0", r["n"]), r["clean_accuracy"]))
        measured.append(((r["attack"], r["norm"], r["eps_text"], r["n"]), r["robust_accuracy"]))
    return measured


def _describe_key(key: tuple[Any, ...]) -> str:
    if len(key) == len(EVAL_KEY):
        corruption, severity, n = key
        return f"{corruption} severity {severity} on {n} images"
    attack, norm, eps, n = key
    return f"clean accuracy ({norm}) on {n} images" if attack == CLEAN else f"{attack} ({norm}) eps {eps} on {n} images"


def _columns(sources: Sequence[Source]) -> dict[str, dict[tuple[Any, ...], float]]:
    """label -> row key -> value. A label's reports may not both measure a cell (which one would the table
    show?); only the clean accuracy that attack reports repeat may recur, and only with the same value."""
    columns: dict[str, dict[tuple[Any, ...], float]] = {}
    origin: dict[tuple[str, tuple[Any, ...]], Path] = {}
    for source in sources:
        cells = columns.setdefault(source.label, {})
        for key, value in _measured(source):
            first = origin.setdefault((source.label, key), source.path)
            if key in cells and not (key[0] == CLEAN and len(key) == len(ATTACK_KEY) and cells[key] == value):
                raise CompareError(
                    f"label {source.label!r} has two values for {_describe_key(key)} ({cells[key]} in {first}, "
                    f"{value} in {source.path}); give the reports different labels or leave one out",
                    parameter="sources",
                )
            cells[key] = value
    return columns


def _with_means(cells: dict[tuple[Any, ...], float]) -> dict[tuple[Any, ...], float]:
    """Add (corruption, 'mean', n) over each corruption's severities and the benchmark mean per n."""
    out = dict(cells)
    by_corruption: dict[tuple[str, int], list[float]] = {}
    for (corruption, _severity, n), accuracy in cells.items():
        if corruption != CLEAN:
            by_corruption.setdefault((corruption, n), []).append(accuracy)
    for (corruption, n), values in by_corruption.items():
        if len(values) > 1:
            out[(corruption, MEAN, n)] = sum(values) / len(values)
    for n in {n for (_, _, n) in cells}:
        if {c for (c, _, m) in cells if m == n} >= set(BENCHMARK_CORRUPTIONS):
            benchmark = [v for (c, _, m), v in cells.items() if m == n and c in BENCHMARK_CORRUPTIONS]
            out[(MEAN_15, ALL, n)] = sum(benchmark) / len(benchmark)
    return out


def _sort_value(value: Any) -> tuple[Any, ...]:
    """Severities and eps ("8/255") in numeric order, 'mean'/'all' after them."""
    try:
        return (0, float(Fraction(str(value))))
    except (ValueError, ZeroDivisionError):
        return (1, 0.0)


def compare(sources: Sequence[Source]) -> tuple[list[dict[str, Any]], str]:
    """One row per measured cell (or attack and eps), one column per label; returns (rows, value name)."""
    if not sources:
        raise CompareError("sources must name at least one report", parameter="sources")
    kinds = {s.kind for s in sources}
    if len(kinds) > 1:
        raise CompareError(f"cannot mix report kinds in one table: {sorted(kinds)}", parameter="sources")
    kind = kinds.pop()
    names = EVAL_KEY if kind == "eval" else ATTACK_KEY
    clashing = sorted({s.label for s in sources} & set(names))
    if clashing:
        raise CompareError(
            f"labels {clashing} are also names of the table's key columns {list(names)}", parameter="sources"
        )
    columns = _columns(sources)
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
    rows = [{**dict(zip(names, key)), **{label: cells.get(key) for label, cells in columns.items()}} for key in keys]
    return rows, "accuracy (%)" if kind == "eval" else "robust accuracy (%)"


def describe_sources(sources: Sequence[Source]) -> list[dict[str, Any]]:
    """What each column was measured with, for the report's meta (and its warnings, for attacks)."""
    described = []
    for s in sources:
        meta = s.meta
        entry = {
            "label": s.label,
            "report": str(s.path),
            "argv": meta.get("argv"),
            "model": (meta.get("model") or {}).get("name"),
            "checkpoint_sha256": meta.get("checkpoint_sha256"),
            "lam_policy": meta.get("lam_policy"),
            "n_examples": meta.get("n_examples"),
            "seed": meta.get("seed"),
            "device": meta.get("device_name"),
            "precision": meta.get("precision"),
            "created": meta.get("created"),
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


def render(
    title: str,
    rows: Sequence[dict[str, Any]],
    value: str,
    sources: Sequence[dict[str, Any]],
    note: str = "",
    plots: Sequence[tuple[str, Path]] = (),
) -> str:
    """Markdown: the table, the plots (``(caption, path)``, linked relative to the Markdown's folder), then
    each column's provenance and any attack warnings."""
    lines = [f"# {title}", "", f"Values: {value}; `n` = images per cell.", ""]
    if note:
        lines += [note, ""]
    lines += [markdown_table(rows), ""]
    if plots:
        lines += ["## Plots", ""]
        lines += [f"![{caption}]({quote(Path(path).name)})\n" for caption, path in plots]
    lines += ["## Sources", ""]
    for s in sources:
        lines.append(
            f"- **{s['label']}**: model `{s['model']}` (sha256 `{str(s['checkpoint_sha256'])[:12]}`), lambda "
            f"{s['lam_policy']}, seed {s['seed']}, {s['device']} {s['precision']}; `{s['report']}`; "
            f"command `{_as_typed(s['argv'])}`"
        )
        diagnostics = s.get("diagnostics")
        if diagnostics is not None:
            lines.append(f"  - lambda gradient: {s['lambda_gradient']}")
            facts = ", ".join(f"{k} {v}" for k, v in diagnostics.items() if k not in ("warnings", "lambda_gradient"))
            lines.append(f"  - diagnostics: {facts}")
            for warning in diagnostics.get("warnings") or ["none"]:
                lines.append(f"  - warning: {warning}")
    return "\n".join(lines) + "\n"


def _curves(rows: Sequence[dict[str, Any]], labels: Sequence[str], kind: str) -> dict[int, dict[str, list[Curve]]]:
    """Per slice size n: panel title -> a (label, xs, ys) line per label. Eval panels are corruptions over
    severity, attack panels are attacks (per norm) over eps; every line starts at x = 0 from the clean
    accuracy measured on the same images, where its label has it."""

    def where(row: dict[str, Any]) -> tuple[Any, ...]:
        return (row["n"],) if kind == "eval" else (row["norm"], row["n"])

    name = "corruption" if kind == "eval" else "attack"
    clean = {where(r): r for r in rows if r[name] == CLEAN}
    points: dict[int, dict[str, dict[str, list[tuple[float, float]]]]] = {}
    for row in rows:
        if kind == "eval":
            if row[name] == CLEAN or not isinstance(row["severity"], int):
                continue  # clean starts every line; means have no severity
            panel, x = row[name], float(row["severity"])
        elif row[name] == CLEAN:
            continue
        else:
            panel, x = f"{row[name]} ({row['norm']})", float(Fraction(row["eps"]))
        lines = points.setdefault(row["n"], {}).setdefault(panel, {})
        for label in labels:
            start = clean.get(where(row), {}).get(label)
            if row[label] is not None:
                line = lines.setdefault(label, [] if start is None else [(0.0, start)])
                line.append((x, row[label]))
    return {
        n: {
            panel: [
                (label, [x for x, _ in sorted(line)], [y for _, y in sorted(line)]) for label, line in lines.items()
            ]
            for panel, lines in panels.items()
        }
        for n, panels in points.items()
    }


def save_plots(
    rows: Sequence[dict[str, Any]], labels: Sequence[str], kind: str, out_dir: Path, name: str, title: str
) -> list[tuple[str, Path]]:
    """A grid of small plots per slice size: ``<name>-severity-n<N>.png`` (accuracy vs severity, a panel per
    corruption) or ``<name>-eps-n<N>.png`` (robust accuracy vs eps, a panel per attack); a line per label.
    Returns (caption, path) pairs."""
    if kind == "eval":
        x, y, tick_text, rotation = "severity", "accuracy (%)", {0.0: "clean"}, 0.0
    else:  # eps written as in the reports ("8/255"), slanted so neighbours do not overlap
        x, y, rotation = "eps", "robust accuracy (%)", 45.0
        tick_text = {float(Fraction(r["eps"])): str(r["eps"]) for r in rows if r["attack"] != CLEAN} | {0.0: "clean"}
    plots = []
    for n, panels in _curves(rows, labels, kind).items():
        caption = f"{y} vs {x}, {n} images per cell"
        path = save_panel_grid(
            panels, Path(out_dir) / f"{name}-{x}-n{n}.png", f"{title}: {caption}", x, y, tick_text, rotation, labels
        )
        plots.append((caption, path))
    return plots


def compare_reports(
    sources: Sequence[SourceSpec], *, out_dir: Path, name: str = "compare", title: str | None = None, note: str = ""
) -> list[Path]:
    """Compare eval (or attack) reports: write ``<out_dir>/<name>.{json,csv,md}`` and the plots the Markdown
    links; returns those paths in that order, the PNGs last. Every source is loaded and checked before
    anything is written."""
    loaded = [load_source(*_as_pair(source)) for source in sources]
    rows, value = compare(loaded)
    labels = list(dict.fromkeys(s.label for s in loaded))
    title = title or name
    plots = save_plots(rows, labels, loaded[0].kind, Path(out_dir), name, title)
    described = describe_sources(loaded)
    meta = base_meta("compare", seed=0, value=value, sources=described, plots=[path.name for _, path in plots])
    markdown = render(title, rows, value, described, note, plots)
    written = [path for _, path in plots]
    return write_report(rows, meta, Path(out_dir), name, markdown=markdown, written=written) + written
