"""Report rows -> JSON / CSV / Markdown (and plots), always written atomically.

A report is a list of flat dict rows plus a ``meta`` dict (versions, seed, device, checkpoint,
data source). JSON holds both; CSV holds the rows; Markdown holds a short header and the table.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import UsageError

REPORT_PACKAGES = ("torch", "torchvision", "numpy", "torchattacks", "imagecorruptions", "sdnet-cli")


def package_versions(names: Sequence[str] = REPORT_PACKAGES) -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def base_meta(command: str, seed: int, **extra: Any) -> dict[str, Any]:
    """The fields every report's ``meta`` starts with."""
    return {
        "command": command,
        "argv": " ".join(sys.argv),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seed": seed,
        "versions": package_versions(),
        "host": platform.node(),
        **extra,
    }


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        # mkstemp's 0600 (and writers that recreate the file, like safetensors) would make the file private
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def markdown_table(rows: Sequence[dict[str, Any]], floatfmt: str = ".2f") -> str:
    """A Markdown table; cells with no value show as '-' (not 'nan')."""
    frame = pd.DataFrame(list(rows)).astype(object)
    return frame.where(frame.notna(), None).to_markdown(index=False, floatfmt=floatfmt, missingval="-")


def render_markdown(title: str, rows: Sequence[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [f"# {title}", ""]
    for key in ("model", "checkpoint_sha256", "data_source", "device", "precision", "seed", "created", "argv"):
        if key in meta:
            value = meta[key]
            lines.append(f"- {key}: `{json.dumps(value) if isinstance(value, dict) else value}`")
    lines += ["", markdown_table(rows), ""]
    return "\n".join(lines)


def write_report(
    rows: Sequence[dict[str, Any]],
    meta: dict[str, Any],
    out_dir: Path,
    name: str,
    title: str | None = None,
    markdown: str | None = None,
) -> list[Path]:
    """Write ``<out_dir>/<name>.{json,csv,md}``; all three are renamed into place only once all are rendered.
    ``markdown`` replaces the default rendering (title, key meta, table)."""
    out_dir = Path(out_dir)
    rows = list(rows)
    rendered = {
        out_dir / f"{name}.json": json.dumps({"meta": meta, "rows": rows}, indent=2, default=str) + "\n",
        out_dir / f"{name}.csv": pd.DataFrame(rows).to_csv(index=False),
        out_dir / f"{name}.md": markdown if markdown is not None else render_markdown(title or name, rows, meta),
    }
    for path, text in rendered.items():
        atomic_write_text(path, text)
    return list(rendered)


ExtraWriter = Callable[[Path, str], list[Path]]
"""Writes a report's extra files (plots) into a folder under a file stem; returns their paths."""


@dataclass
class Report:
    """What every API call returns: flat ``rows`` plus ``meta`` (versions, seed, device, checkpoint,
    data source). ``to_frame()`` for pandas, ``write(out_dir)`` for JSON + CSV + Markdown (+ plots)."""

    rows: list[dict[str, Any]]
    meta: dict[str, Any]
    name: str  # default file stem
    title: str
    markdown: str | None = None  # replaces the default rendering (title, key meta, table)
    extras: list[ExtraWriter] = field(default_factory=list)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)

    def write(self, out_dir: Path, name: str | None = None) -> list[Path]:
        """``<out_dir>/<name>.{json,csv,md}`` and the extra files, each written atomically; the extras go
        first, so a report whose tables exist is complete."""
        stem = check_stem(name or self.name)
        extras = [path for extra in self.extras for path in extra(Path(out_dir), stem)]  # plots first: the tables
        return (
            write_report(self.rows, self.meta, Path(out_dir), stem, title=self.title, markdown=self.markdown) + extras
        )


def check_stem(name: str) -> str:
    """A report name must be a plain file stem, so no report lands outside its folder."""
    if not name or name in (".", "..") or any(sep in name for sep in ("/", "\\", "\0")):
        raise UsageError(f"name must be a plain file name without folders, got {name!r}", parameter="name")
    return name


def check_writable_dir(path: Path, parameter: str) -> Path:
    """Fail before any work when ``path`` cannot become a folder we can write into."""
    path = Path(path)
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{parameter} {path} exists and is not a folder", parameter=parameter)
    if existing is not None and not existing.is_dir():
        raise UsageError(f"{parameter} {path} cannot be created: {existing} is a file", parameter=parameter)
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{parameter} {path} is not writable ({existing} is read-only)", parameter=parameter)
    return path


def save_line_plot(
    frame: pd.DataFrame, x: str, ys: Sequence[str], path: Path, title: str, ylabel: str, secondary: Sequence[str] = ()
) -> Path:
    """One PNG with a line per column (``secondary`` columns on a right-hand axis), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for y in ys:
        ax.plot(frame[x], frame[y], marker="o", markersize=3, label=y)
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if secondary:
        ax2 = ax.twinx()
        for y in secondary:
            ax2.plot(frame[x], frame[y], linestyle="--", color="gray", label=y)
        ax2.set_ylabel(", ".join(secondary))
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc="best", fontsize=8)
    return _save_figure(fig, Path(path))


def save_points_plot(
    series: Sequence[tuple[str, Sequence[float], Sequence[float], tuple[float, float] | None]],
    path: Path,
    title: str,
    xlabel: str,
    ylabel: str,
) -> Path:
    """One PNG of point sets (label, xs, ys, optional line (slope, intercept) drawn over their x range)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for label, xs, ys, line in series:
        dots = ax.scatter(xs, ys, s=14, label=label)
        if line is not None and len(xs):
            span = [min(xs), max(xs)]
            ax.plot(
                span,
                [line[0] * v + line[1] for v in span],
                color=dots.get_facecolor()[0],
                label=f"{label}: {line[0]:.4g} x + {line[1]:.4g}",
            )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return _save_figure(fig, Path(path))


def _save_figure(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def save_panel_grid(
    panels: dict[str, Sequence[tuple[str, Sequence[float], Sequence[float]]]],
    path: Path,
    title: str,
    xlabel: str,
    ylabel: str,
    tick_text: dict[float, str] | None = None,
    tick_rotation: float = 0.0,
    label_order: Sequence[str] = (),
    columns: int = 5,
) -> Path:
    """One PNG of small multiples: a panel per key of ``panels`` (title -> lines (label, xs, ys)), sharing
    the y axis so panels compare at a glance, with one legend. A label's colour follows its place in
    ``label_order`` (then first appearance), so it stays the same in every panel and in sibling figures.
    Each panel's x ticks are its own xs, written as ``tick_text`` gives them (else ``%g``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = list(dict.fromkeys(label for lines in panels.values() for label, _, _ in lines))
    order = list(dict.fromkeys([*label_order, *drawn]))
    markers = "osD^v"
    style = {label: {"color": f"C{i % 10}", "marker": markers[i // 10 % len(markers)]} for i, label in enumerate(order)}
    ncols = max(1, min(columns, len(panels)))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(2.8 * ncols, 2.3 * nrows + 0.8),
        dpi=110,
        sharey=True,
        squeeze=False,
        layout="constrained",
    )
    for i, (ax, (panel, lines)) in enumerate(zip(axes.flat, panels.items())):
        for label, xs, ys in lines:
            ax.plot(xs, ys, markersize=3, linewidth=1.2, label=label, **style[label])
        ticks = sorted({x for _, xs, _ in lines for x in xs})
        ax.set_xticks(ticks, [(tick_text or {}).get(x, f"{x:g}") for x in ticks], fontsize=7, rotation=tick_rotation)
        ax.tick_params(axis="y", labelsize=7)
        ax.set_title(panel, fontsize=9)
        ax.grid(alpha=0.3)
        if i % ncols == 0:
            ax.set_ylabel(ylabel, fontsize=8)
        if i + ncols >= len(panels):  # nothing below it
            ax.set_xlabel(xlabel, fontsize=8)
    for ax in axes.flat[len(panels) :]:
        fig.delaxes(ax)
    handles = [plt.Line2D([], [], **style[label]) for label in drawn]
    fig.legend(handles, drawn, loc="outside lower center", ncols=min(len(drawn), 4), fontsize=8)
    fig.suptitle(title, fontsize=10)
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)
