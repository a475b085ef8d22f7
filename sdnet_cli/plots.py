"""Figures of reports (PNG), each written atomically through ``_io``.

matplotlib is imported inside each function: only commands that draw pay its import time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ._io import atomic_path


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
    return save_figure(fig, Path(path))


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
    return save_figure(fig, Path(path))


def save_figure(fig: Any, path: Path, tight: bool = True) -> Path:
    """Write a matplotlib figure as PNG atomically (``_io.atomic_path``) and close it."""
    import matplotlib.pyplot as plt

    if tight:
        fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return path


def save_panel_grid(
    panels: Mapping[str, Sequence[tuple[str, Sequence[float], Sequence[float]]]],
    path: Path,
    title: str,
    xlabel: str,
    ylabel: str,
    tick_text: dict[float, str] | None = None,
    tick_rotation: float = 0.0,
    label_order: Sequence[str] = (),
    columns: int = 5,
    legend_columns: int = 4,
) -> Path:
    """One PNG of small multiples: a panel per key of ``panels`` (title -> lines (label, xs, ys)), sharing
    the y axis so panels compare at a glance, with one legend. A label's colour follows its place in
    ``label_order`` (then first appearance), so it stays the same in every panel and in sibling figures.
    Each panel's x ticks are its own xs, written as ``tick_text`` gives them (else ``%g``); the legend has
    ``legend_columns`` entries a row (fewer for a narrow figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    drawn = list(dict.fromkeys(label for lines in panels.values() for label, _, _ in lines))
    order = list(dict.fromkeys([*label_order, *drawn]))
    markers = "osD^v"
    style: dict[str, dict[str, Any]] = {
        label: {"color": f"C{i % 10}", "marker": markers[i // 10 % len(markers)]} for i, label in enumerate(order)
    }
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
    handles = [Line2D([], [], **style[label]) for label in drawn]
    fig.legend(handles, drawn, loc="outside lower center", ncols=min(len(drawn), legend_columns), fontsize=8)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, Path(path), tight=False)
