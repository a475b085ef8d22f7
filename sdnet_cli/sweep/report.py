"""Markdown and figures of the lambda jobs: sweeps and their fits, rules beside the oracles, hold-outs,
and attack sweeps over lambda. The numbers come from ``sweep.runs`` (and ``api.adversarial``); this module only
lays them out, so a report's wording or a plot's look changes here without touching a computation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import UsageError
from ..lam import Calibration, fit_line
from ..plots import save_figure, save_line_plot, save_points_plot
from ..report import markdown_table, render_markdown
from ..rows import WORST

ORACLE_NOTE = (
    "Rows with uses_labels = true are references, not methods: they use the test labels of the very images they "
    "are scored on. oracle:per-cell is the best single grid lambda of each cell: the ceiling of any "
    "one-lambda-per-cell method, and the realistic target for a label-free rule. oracle:per-input counts an image "
    "correct if any grid lambda classifies it correctly: with labels as the judge, every lambda is one more guess "
    "(predictions move across lambda for most images, clean ones too), so its lead is mostly lucky guessing, not "
    "headroom a label-free rule can expect to reach. oracle:top-2@<lambda> counts an image correct if its label is "
    "among the two most likely classes at the training lambda: just two guesses, for scale beside the per-input "
    "oracle's one per grid lambda."
)


def sweep_note(summary: dict[str, Any] | None) -> str:
    """One sentence on how a sweep visited its (lambda, image) pairs and the measured agreement of the
    pairs it inferred (``runs.plan_summary``)."""
    if not summary:
        return ""
    if summary["span"] == 0:
        return f"The sweep ran every one of its {summary['pairs']:,} (lambda, image) pairs."
    audit = (
        f"of a random {summary['audit']:.0%} of the inferred pairs, run anyway as a check, "
        f"{summary['audit_same']:,} of {summary['audited']:,} ({summary['audit_agreement']:.4%}) had the "
        "inferred correctness"
        if summary["audited"]
        else "no inferred pair was drawn for the check"
    )
    return (
        f"The sweep ran the network on {summary['pairs_run']:,} of its {summary['pairs']:,} (lambda, image) pairs "
        f"({summary['pairs_run'] / summary['pairs']:.1%}): grid lambdas at most {summary['span']:g} apart on "
        "every image, and between them only where an image's predicted class, or a softmax margin of at least "
        f"{summary['margin']:g}, differed at the two ends; the other pairs took the class of the ends; {audit}."
    )


def _cell_label(corruption: str, severity: int) -> str:
    return corruption if severity == 0 else f"{corruption} s{severity}"


def save_sweep_plots(
    rows: Sequence[dict[str, Any]],
    points: Sequence[dict[str, Any]],
    out_dir: Path,
    name: str,
    title: str,
    calibration: Calibration | None = None,
) -> list[Path]:
    """``<name>-accuracy.png`` (accuracy vs lambda, a line per cell) and ``<name>-fit.png`` (best lambda
    vs the stem's error at the training lambda: the test cells with their least-squares line, and the
    training groups with the calibrated ``recon`` line when given)."""
    frame = pd.DataFrame(list(rows))
    frame["cell"] = [_cell_label(c, s) for c, s in zip(frame["corruption"], frame["severity"])]
    wide = frame.pivot(index="lam", columns="cell", values="accuracy")
    order = list(dict.fromkeys(frame["cell"]))
    accuracy = save_line_plot(
        wide[order].reset_index(),
        "lam",
        order,
        Path(out_dir) / f"{name}-accuracy.png",
        f"{title}: accuracy vs lambda",
        "accuracy (%)",
    )
    series = [("test cells", [p["error"] for p in points], [p["best_lam"] for p in points], _line_or_none(points))]
    if calibration is not None:
        series.append(
            (
                "training groups (calibration)",
                [p["error"] for p in calibration.points],
                [p["best_lam"] for p in calibration.points],
                (calibration.recon.a, calibration.recon.b),
            )
        )
    fit = save_points_plot(
        series,
        Path(out_dir) / f"{name}-fit.png",
        f"{title}: best lambda vs reconstruction error",
        "mean stem reconstruction error at the training lambda",
        "best lambda",
    )
    return [accuracy, fit]


def _line_or_none(points: Sequence[dict[str, Any]]) -> tuple[float, float] | None:
    """The test cells' descriptive line, when their errors differ enough to define one."""
    try:
        return fit_line([p["error"] for p in points], [p["best_lam"] for p in points])
    except UsageError:
        return None


def save_attack_sweep_plot(rows: Sequence[dict[str, Any]], model: str, path: Path) -> Path:
    """Clean and robust accuracy vs lambda (a line per eps) for ``model``'s rows of an attack sweep; any
    other model's rows (a baseline at its own lambda) become dashed horizontal reference lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def final(
        rows_of: Sequence[dict[str, Any]],
    ) -> list[dict[str, Any]]:  # AutoAttack: the worst case over its components
        names = {r["attack"] for r in rows_of}
        return [r for r in rows_of if r["attack"] == WORST or WORST not in names]

    ours = final([r for r in rows if r["model"] == model])
    frame = pd.DataFrame(ours).sort_values("lam")
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    clean = frame.drop_duplicates("lam")
    ax.plot(clean["lam"], clean["clean_accuracy"], marker="o", markersize=3, color="black", label=f"{model} clean")
    colours = {}
    for i, (eps_text, group) in enumerate(frame.groupby("eps_text", sort=False)):
        colours[eps_text] = f"C{i}"
        ax.plot(
            group["lam"],
            group["robust_accuracy"],
            marker="o",
            markersize=3,
            color=colours[eps_text],
            label=f"{model} robust, eps {eps_text}",
        )
    for reference in sorted({r["model"] for r in rows} - {model}):
        theirs = final([r for r in rows if r["model"] == reference])
        ax.axhline(theirs[0]["clean_accuracy"], color="black", linestyle="--", linewidth=1, label=f"{reference} clean")
        for r in theirs:
            ax.axhline(
                r["robust_accuracy"],
                color=colours.get(r["eps_text"], "gray"),
                linestyle="--",
                linewidth=1,
                label=f"{reference} robust, eps {r['eps_text']}",
            )
    ax.set_xlabel("test-time lambda")
    ax.set_ylabel("accuracy (%)")
    attack = "autoattack" if ours[0]["attack"] == WORST else ours[0]["attack"]
    ax.set_title(f"{model}: accuracy under {attack} vs lambda ({ours[0]['n']} images)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=7)
    return save_figure(fig, Path(path))


def render_attack_sweep(
    title: str, rows: Sequence[dict[str, Any]], meta: dict[str, Any], diagnostics: dict[str, Any], plot_name: str
) -> str:
    """The attack sweep's Markdown: the rows, the plot and, per lambda, the gradient-masking warnings
    (or that there were none)."""
    lines = [
        render_markdown(title, rows, meta),
        f"![accuracy vs lambda]({plot_name})",
        "",
        "## Gradient-masking diagnostics per lambda",
        "",
    ]
    for key, found in diagnostics.items():
        warnings = found["warnings"]
        quiet = f"no warning signs (zero-gradient fraction {found['zero_gradient_fraction']:.3f})"
        lines.append(f"- {key}: " + ("; ".join(warnings) if warnings else quiet))
    return "\n".join(lines) + "\n"


def wide_accuracy(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per cell, a column of accuracy per method (``lam``)."""
    table: dict[tuple[Any, Any], dict[str, Any]] = {}
    for r in rows:
        cell = table.setdefault(
            (r["corruption"], r["severity"]), {"corruption": r["corruption"], "severity": r["severity"]}
        )
        cell[str(r["lam"])] = r["accuracy"]
    return list(table.values())


def render_rules(
    title: str, rows: Sequence[dict[str, Any]], summary: Sequence[dict[str, Any]], meta: dict[str, Any]
) -> str:
    """The rule comparison's Markdown: each method's gain first, then accuracy per cell, then every row."""
    gains = (
        f"Gain and clean change: accuracy points against `{rows[0]['lam']}`; corrupted_mean: mean over the "
        f"corrupted cells. {ORACLE_NOTE} {sweep_note(meta.get('sweep'))}"
    )
    return "\n".join(
        [
            render_markdown(title, summary, meta).rstrip(),
            "",
            gains,
            "",
            "## Accuracy per cell (%)",
            "",
            markdown_table(wide_accuracy(rows)),
            "",
            "## All rows",
            "",
            markdown_table(rows),
            "",
        ]
    )


def render_hold_out(
    title: str,
    rows: Sequence[dict[str, Any]],
    summary: Sequence[dict[str, Any]],
    meta: dict[str, Any],
    severities: Sequence[int],
) -> str:
    """The hold-out's Markdown: one row per held-out corruption, what the columns mean, then every row."""
    note = (
        f"Per held-out corruption: mean test accuracy over severities {', '.join(map(str, severities))} at "
        f"lambda {meta['reference_lam']:g}, and the gain (points) of rule `{meta['rule']}` over it when the "
        "corruption's training groups are in the calibration and when they are left out (refitted from the stored "
        "group curves of clean and the other corruptions). kept = held-out gain / in-calibration gain. No test "
        "labels choose anything."
    )
    table = [render_markdown(title, summary, meta).rstrip(), "", note, "", "## All rows", "", markdown_table(rows)]
    return "\n".join([*table, ""])
