"""reports/tta.md and its plot, rendered from the `sdnet eval` JSON reports in reports/tta/ (written by
reports/tta/run_all.sh, run_full.sh, run_calibration.sh and run_memo.sh): no number typed by
hand. A report that is missing leaves its row out and is named at the end.

    python reports/tta/render.py reports/tta reports/tta.md
"""

from __future__ import annotations

import json
import math
import sys
from datetime import datetime
from pathlib import Path
from statistics import median

import pandas as pd

from sdnet_cli.data.corruptions import BENCHMARK_CORRUPTIONS
from sdnet_cli.plots import save_panel_grid

NOISE = ["gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise"]
OTHERS = [c for c in BENCHMARK_CORRUPTIONS if c not in NOISE]
OTHER = f"{len(OTHERS)} other corruptions"  # the 15 benchmark corruptions less their three noises
BATCH = "200 images of one cell"
# (report stem, label, images per decision, state kept between test images, gradient steps)
PER_IMAGE = [  # the first report found among the stems counts: the full-size run of the noise cells, else the 500
    (("noise-resnet18-none", "resnet18-none"), "resnet18", "1", "none", "0"),
    (("sdnet18-lam0.1",), "sdnet18, lambda 0.1", "1", "none", "0"),
    (("noise-sdnet18-auto", "sdnet18-auto"), "sdnet18, auto", "1", "none", "0"),
    (("noise-resnet18-bnprior",), "resnet18 + bn-prior", "1", "none", "0"),
    (("noise-sdnet18-bnprior",), "sdnet18 + bn-prior", "1", "none", "0"),
    (("noise-sdnet18-auto-bnprior",), "sdnet18, auto + bn-prior", "1", "none", "0"),
    (("noise-sdnet18-autoprior-bnprior",), "sdnet18, auto calibrated under bn-prior + bn-prior", "1", "none", "0"),
]
BATCH_METHODS = [
    (("noise-resnet18-bn", "resnet18-bn"), "resnet18 + bn", "200", "none (per batch)", "0"),
    (("noise-resnet18-tent", "resnet18-tent"), "resnet18 + tent", "200", "BN affine parameters", "1 per batch"),
    (("noise-sdnet18-bn", "sdnet18-bn"), "sdnet18 + bn", "200", "none (per batch)", "0"),
    (("noise-sdnet18-tent", "sdnet18-tent"), "sdnet18 + tent", "200", "BN affine parameters", "1 per batch"),
    (("sdnet18-auto-bn",), "sdnet18, auto + bn", "200", "none (per batch)", "0"),
]
SAME_S = [  # the per-image methods on the mixed stream's images (order-free: any stream, any batch size): their own
    # s-* run, or the one-corruption run of the noise cells when it holds the same first images of every cell
    (("s-resnet18", "noise-resnet18-none"), "resnet18", "1", "none", "0"),
    (("s-sdnet18-auto", "noise-sdnet18-auto"), "sdnet18, auto", "1", "none", "0"),
    (("s-sdnet18-bnprior", "noise-sdnet18-bnprior"), "sdnet18 + bn-prior", "1", "none", "0"),
    (("s-sdnet18-auto-bnprior", "noise-sdnet18-auto-bnprior"), "sdnet18, auto + bn-prior", "1", "none", "0"),
    (
        ("s-sdnet18-autoprior-bnprior", "noise-sdnet18-autoprior-bnprior"),
        "sdnet18, auto calibrated under bn-prior + bn-prior",
        "1",
        "none",
        "0",
    ),
]
MIXED = [
    ("mixed-resnet18-bn", "resnet18 + bn", "200 (mixed)", "none (per batch)", "0"),
    ("mixed-resnet18-tent", "resnet18 + tent", "200 (mixed)", "BN affine parameters", "1 per batch"),
    ("mixed-sdnet18-bn", "sdnet18 + bn", "200 (mixed)", "none (per batch)", "0"),
    ("mixed-sdnet18-tent", "sdnet18 + tent", "200 (mixed)", "BN affine parameters", "1 per batch"),
]
BATCH1 = [
    ("batch1-resnet18-bn", "resnet18 + bn", "1", "none", "0"),
    ("batch1-resnet18-tent", "resnet18 + tent", "1", "BN affine parameters", "1 per image"),
    ("batch1-sdnet18-bn", "sdnet18 + bn", "1", "none", "0"),
    ("batch1-sdnet18-tent", "sdnet18 + tent", "1", "BN affine parameters", "1 per image"),
]
MEMO = [
    ("memo-resnet18-none", "resnet18", "1", "none", "0"),
    ("memo-sdnet18-auto", "sdnet18, auto", "1", "none", "0"),
    ("memo-resnet18-memo", "resnet18 + memo", "1 (32 augmented copies)", "none (reset per image)", "1 per image"),
    (
        "memo-sdnet18-auto-memo",
        "sdnet18, auto + memo",
        "1 (32 augmented copies)",
        "none (reset per image)",
        "1 per image",
    ),
]
CALIBRATED = [  # the last one's size picks the others' report among their candidates, for the same images
    (("noise-sdnet18-bn", "sdnet18-bn"), "sdnet18 + bn (lambda 0.1)"),
    (("noise-sdnet18-auto-bn", "sdnet18-auto-bn"), "sdnet18, auto calibrated with stored statistics + bn"),
    (("noise-sdnet18-autobn-bn",), "sdnet18, auto calibrated under bn + bn"),
]
CAL_PRIOR = "sdnet18-w32-cifar10.lambda-bn-prior.json"  # the rule fitted under bn-prior (run_full.sh)
CAL_BN = "sdnet18-w32-cifar10.lambda-bn.json"  # the rule fitted under bn (run_calibration.sh)
SHIPPED_CAL = Path(__file__).resolve().parents[2] / "weights" / "sdnet18-w32-cifar10.lambda.json"
METHODS = [  # (report stem, label, what it costs per test image, whether it uses a batch of test images)
    ("resnet18-none", "resnet18", "1 forward", False),
    ("resnet18-bn", "resnet18 + bn", "1 forward", True),
    ("resnet18-tent", "resnet18 + tent", "1 forward + 1 backward", True),
    ("sdnet18-lam0.1", "sdnet18, lambda 0.1", "1 forward", False),
    ("sdnet18-auto", "sdnet18, auto", "1 forward", False),
    ("sdnet18-bn", "sdnet18 + bn", "1 forward", True),
    ("sdnet18-tent", "sdnet18 + tent", "1 forward + 1 backward", True),
    ("sdnet18-auto-bn", "sdnet18, auto + bn", "1 forward", True),
    ("sdnet18-auto-tent", "sdnet18, auto + tent", "1 forward + 1 backward", True),
]
STREAMS = [
    ("stream-resnet18-none", "resnet18"),
    ("stream-resnet18-bn", "resnet18 + bn"),
    ("stream-resnet18-tent", "resnet18 + tent"),
    ("stream-sdnet18-auto", "sdnet18, auto"),
    ("stream-sdnet18-tent", "sdnet18 + tent"),
]


def candidates(stems: str | tuple[str, ...]) -> tuple[str, ...]:
    """A table entry's report stems, the preferred (full-size) one first."""
    return (stems,) if isinstance(stems, str) else stems


def load(folder: Path, stem: str) -> dict | None:
    path = folder / f"{stem}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 2) if values else None


def cells(report: dict) -> dict[tuple[str, int], float]:
    return {(r["corruption"], r["severity"]): r["accuracy"] for r in report["rows"] if r["corruption"] != "mean"}


def summary(label: str, cost: str, batches: bool, report: dict) -> dict:
    acc = cells(report)
    benchmark, others = BENCHMARK_CORRUPTIONS, OTHERS
    return {
        "method": label,
        "uses test batches": "yes (200 images of one cell)" if batches else "no (one image)",
        "cost per image": cost,
        "images per cell": report["meta"]["n_examples"],
        "clean": acc[("clean", 0)],
        "15 corruptions": mean([a for (c, s), a in acc.items() if c in benchmark]),
        "4 noises": mean([a for (c, s), a in acc.items() if c in NOISE]),
        "4 noises, s3+s5": mean([a for (c, s), a in acc.items() if c in NOISE and s in (3, 5)]),
        OTHER: mean([a for (c, s), a in acc.items() if c in others]),
        "other, s5": mean([a for (c, s), a in acc.items() if c in others and s == 5]),
    }


def main(folder: Path, out: Path) -> None:
    found = [(label, cost, batches, load(folder, stem)) for stem, label, cost, batches in METHODS]
    ran = [(label, cost, batches, report) for label, cost, batches, report in found if report is not None]
    table = pd.DataFrame([summary(*entry) for entry in ran])
    per_corruption = pd.DataFrame(
        [
            {"method": label, **{c: mean([a for (k, s), a in cells(r).items() if k == c]) for c in NOISE}}
            for label, _, _, r in ran
        ]
    )
    streams = [(label, load(folder, stem)) for stem, label in STREAMS]
    stream_rows = [
        {"method": label, "gaussian_noise s5, 10,000 images in order": cells(r)[("gaussian_noise", 5)]}
        for label, r in streams
        if r is not None
    ]
    sizes = sorted({report["meta"]["n_examples"] for *_, report in ran})
    n = sizes[0]  # the smallest, for the sampling error
    sized = f"first {counts(sizes, ' or ')} images of every cell" + (
        ", as the `images per cell` column says" if len(sizes) > 1 else ""
    )
    short = [label for label, _, _, report in ran if report["meta"]["n_examples"] < 2000]
    by = {row["method"]: row for row in table.to_dict("records")}
    reports = {label: r for label, _, _, r in ran}

    def get(label: str, column: str) -> float | None:
        return by.get(label, {}).get(column)

    def errors(label: str, column: str) -> float:
        return standard_error(cell_rows(reports[label], COLUMN_CELLS[column]))

    plot = out.with_suffix(".png")
    groups = {"4 noises": NOISE, OTHER: OTHERS}
    save_panel_grid(
        {
            title: [
                (
                    label,
                    [1, 2, 3, 4, 5],
                    [mean([a for (c, s), a in cells(r).items() if c in names and s == sev]) for sev in range(1, 6)],
                )
                for label, _, _, r in ran
            ]
            for title, names in groups.items()
        },
        plot,
        f"TTA vs test-time lambda (first {counts(sizes, ' or ')} images per cell)",
        "severity",
        "mean accuracy (%)",
        columns=2,
        legend_columns=3,
    )
    lines = [
        "# Test-time remedies (BN, TENT, bn-prior, MEMO) beside SDNet's test-time lambda",
        "",
        f"Shipped width-32 pair (`resnet18`, `sdnet18`), CIFAR-10 test split, CIFAR-10-C generated with seed 0 "
        f"(not the official release). **The summary and the per-corruption table: {sized}** (clean, the 15 "
        "benchmark corruptions and speckle_noise at severities 1-5). The sections on the noises use more, as "
        "each table's `images per cell` column says: in one-corruption batches, all 10,000 images of each noise "
        "cell for the four configurations the target names (resnet18, resnet18 + tent, sdnet18 `auto` and the "
        "best per-image SDNet configuration) and the first 2,000 for the others; the first 2,000 of each of the "
        f"21 clean and noise cells for the mixed stream, {sizes_of(folder, BATCH1)} for batch 1, "
        f"{sizes_of(folder, MEMO)} a cell of {memo_cells(folder)[1]} for MEMO. fp32 on a 2-core CPU. Each number comes from the "
        "`sdnet eval` JSON report beside this file (its `meta.argv` is the command; `reports/tta/run_all.sh`, "
        "`run_full.sh`, `run_calibration.sh` and `run_memo.sh` run them, each resumable) and was rendered by "
        "`reports/tta/render.py`."
        + (
            f" The issue asks for 2,000 images per cell for every method; these all-cells runs are still at {n:,}: "
            f"{', '.join(short)} (`N=2000 bash reports/tta/run_all.sh` replaces them)."
            if short
            else ""
        ),
        "",
        "- `bn`: every BatchNorm layer normalises with the statistics of the current test batch (Schneider et al., "
        "NeurIPS 2020; Nado et al., 2020). `tent`: as `bn`, plus one Adam step (lr 1e-3, betas 0.9/0.999) per "
        "batch on the BatchNorm affine parameters minimising the mean prediction entropy (Wang et al., ICLR "
        "2021); predictions come from the forward that computed the loss. Batches of 200 images **of one cell**; "
        "the model is reset before every cell.",
        f"- Sampling error: a cell's accuracy on {n:,} images has a standard error of at most "
        f"{100 * math.sqrt(0.25 / n):.1f} points. A lead is called a tie when it is below twice the standard "
        "error of the difference, each mean's error computed as if its cells were independent binomial counts "
        "(every cell holds the same base images, so the true errors of a mean are somewhat larger).",
        "- `lambda 0.1` is SDNet's training lambda; `auto` is the per-input rule its calibration recommends "
        "(calibrated on corrupted *training* images with the stored BN statistics). It sees one image and keeps "
        "no state.",
        "",
        "## Summary (accuracy, %)",
        "",
        table.to_markdown(index=False, floatfmt=".2f"),
        "",
        f"![accuracy vs severity]({plot.name})",
        "",
        "## Noise corruptions (mean over severities 1-5, %)",
        "",
        per_corruption.to_markdown(index=False, floatfmt=".2f"),
        "",
    ]
    if stream_rows:
        lines += [
            "## Stream setting",
            "",
            "All 10,000 images of one cell in order, batches of 200: `tent` keeps adapting through the whole "
            "stream (50 steps) instead of the short runs above.",
            "",
            pd.DataFrame(stream_rows).to_markdown(index=False, floatfmt=".2f"),
            "",
        ]
    streamed = {row["method"]: row["gaussian_noise s5, 10,000 images in order"] for row in stream_rows}
    lines += ["## What the numbers say", "", *findings(get, errors), *stream_findings(reports, streamed), ""]
    lines += remedies(folder)
    missing = [label for label, _, _, report in found if report is None]
    not_run, stand_ins = unfinished(folder)
    missing += not_run
    if missing:
        lines += [f"Not run (no report in {folder}): {', '.join(dict.fromkeys(missing))}.", ""]
    if stand_ins:
        lines += [f"Not yet run at the full size, a smaller run's rows stand in: {', '.join(stand_ins)}.", ""]
    out.write_text("\n".join(lines))


COLUMN_CELLS = {  # which cells each summary column averages
    "clean": lambda c, s: c == "clean",
    "15 corruptions": lambda c, s: c in BENCHMARK_CORRUPTIONS,
    "4 noises": lambda c, s: c in NOISE,
    "4 noises, s3+s5": lambda c, s: c in NOISE and s in (3, 5),
    OTHER: lambda c, s: c in OTHERS,
    "other, s5": lambda c, s: c in OTHERS and s == 5,
}
NOISE_CELLS = COLUMN_CELLS["4 noises"]
NOISE_S5 = lambda c, s: c in NOISE and s == 5  # noqa: E731
REMEDY_STEMS = [stem for group in (PER_IMAGE, SAME_S, MIXED, BATCH1, MEMO) for s, *_ in group for stem in candidates(s)]
REMEDY_STEMS += [stem for stems, _ in CALIBRATED for stem in stems] + ["sweep-sdnet18-bn"]


def unfinished(folder: Path) -> tuple[list[str], list[str]]:
    """(the table entries with no report at all, by their preferred stem; those whose preferred (full-size) report
    is missing while a smaller one stands in, saying which)."""
    entries = [candidates(stems) for group in (PER_IMAGE, BATCH_METHODS, MEMO) for stems, *_ in group]
    entries += [(stem,) for group in (MIXED, BATCH1) for stem, *_ in group] + [stems for stems, _ in CALIBRATED]
    not_run, stand_ins = [], []
    for stems in dict.fromkeys(entries):
        there = [stem for stem in stems if (folder / f"{stem}.json").is_file()]
        if not there:
            not_run.append(stems[0])
        elif there[0] != stems[0]:
            stand_ins.append(f"{stems[0]} ({there[0]} stands in)")
    return not_run, stand_ins


NOISE_S35 = COLUMN_CELLS["4 noises, s3+s5"]


def sizes_of(folder: Path, group) -> str:  # type: ignore[no-untyped-def]
    """The images per cell of a group's reports, in words (``1,000 or 2,000``)."""
    found = [r["meta"]["n_examples"] for r in (load(folder, stem) for stem, *_ in group) if r is not None]
    return counts(sorted(set(found)), " or ") if found else "none"


def memo_cells(folder: Path):  # type: ignore[no-untyped-def]
    """(which cells the MEMO section averages, in words): the 20 noise cells once every MEMO report has them all
    (a run cut into sittings writes its report only when finished), else severity 5 of the 4 noises."""
    reports = [r for r in (load(folder, stem) for stem, *_ in MEMO) if r is not None]
    if reports and all(len(cell_rows(r, NOISE_CELLS)) == 20 for r in reports):
        return NOISE_CELLS, "the 20 noise cells"
    return NOISE_S5, "the four severity-5 noise cells"


def cell_rows(report: dict, keep) -> list[dict]:  # type: ignore[no-untyped-def]
    return [r for r in report["rows"] if r["corruption"] != "mean" and keep(r["corruption"], r["severity"])]


def cell_mean(rows: list[dict]) -> float | None:
    return mean([r["accuracy"] for r in rows])


def standard_error(rows: list[dict]) -> float:
    """Standard error (points) of a mean of cell accuracies, each cell a binomial count of its own images."""
    variance = sum((r["accuracy"] / 100) * (1 - r["accuracy"] / 100) / r["n"] for r in rows)
    return 100 * math.sqrt(variance) / len(rows) if rows else float("nan")


def tie(a: float, b: float, se_a: float, se_b: float) -> bool:
    """A difference below twice its standard error (the two means taken as independent) is a tie."""
    return abs(a - b) < 2 * math.sqrt(se_a**2 + se_b**2)


def ms_per_image(report: dict) -> float:
    """The run's own timed forwards (the cells' ``seconds``) per image, in milliseconds."""
    rows = cell_rows(report, lambda c, s: True)
    return 1000 * sum(r["seconds"] for r in rows) / sum(r["n"] for r in rows)


def cell_costs(report: dict, keep) -> list[float]:  # type: ignore[no-untyped-def]
    """Each cell's own timed forwards per image, in milliseconds (``keep``'s cells)."""
    return [1000 * r["seconds"] / r["n"] for r in cell_rows(report, keep)]


def sittings_cost(folder: Path, group, keep) -> str:  # type: ignore[no-untyped-def]
    """For each run of ``group`` cut into sittings (its meta's ``resumed_cells``), the spread of its cells' cost
    per image: its sittings ran at different loads (the runs table), so the table's figure, over every cell,
    is not one load's."""
    said = []
    for stems, label, *_ in group:
        report = entry_report(folder, stems)
        if report is None or not report["meta"].get("resumed_cells"):
            continue
        costs = sorted(cell_costs(report, keep))
        said.append(f"{label}: {costs[0]:,.0f} to {costs[-1]:,.0f} ms an image by cell (median {median(costs):,.0f})")
    if not said:
        return ""
    return (
        "Runs cut into sittings ran at a different load in each (the runs table), so their `ms per image` is an "
        "average over loads; by cell: " + "; ".join(said) + "."
    )


def entry_report(folder: Path, stems: str | tuple[str, ...], size: int | None = None) -> dict | None:
    """A table entry's report: the candidate with ``size`` images per cell when there is one, else the first
    found (None when none exists)."""
    found = [r for r in (load(folder, stem) for stem in candidates(stems)) if r is not None]
    return next((r for r in found if r["meta"]["n_examples"] == size), found[0] if found else None)


def method_rows(folder: Path, group, keep, size: int | None = None) -> list[dict]:  # type: ignore[no-untyped-def]
    """One table row per method of ``group`` whose report exists (with ``size`` images per cell when one of its
    candidate reports has that many, else its first report found): what it relies on, its cost, its accuracy."""
    out = []
    for stems, label, images, state, steps in group:
        report = entry_report(folder, stems, size)
        if report is None:
            continue
        rows = cell_rows(report, keep)
        out.append(
            {
                "method": label,
                "images per decision": images,
                "state between images": state,
                "gradient steps": steps,
                "ms per image (same run)": round(ms_per_image(report), 1),
                "images per cell": min(r["n"] for r in rows),
                "images": sum(r["n"] for r in rows),
                "accuracy": cell_mean(rows),
                "± s.e.": round(standard_error(rows), 2),
                "_date": report["meta"]["created"][:10],
            }
        )
    return out


def counts(sizes: list[int], joiner: str = ", ") -> str:
    """Image counts in words: ``500 or 2,000``."""
    return joiner.join(f"{k:,}" for k in sizes)


def best_configuration(rows: list[dict]) -> tuple[dict, list[dict]]:
    """The most accurate row among those on the most images a cell, and the rows on fewer images that tie it or
    better it within the sampling error (a row on fewer images that beats it by more is the best instead)."""
    most = max(r["images per cell"] for r in rows)
    top = max((r for r in rows if r["images per cell"] == most), key=lambda r: r["accuracy"])
    better = [r for r in rows if r["accuracy"] > top["accuracy"]]
    if any(not tie(r["accuracy"], top["accuracy"], r["± s.e."], top["± s.e."]) for r in better):
        return max(rows, key=lambda r: r["accuracy"]), []
    return top, better


def fit_words(path: Path) -> str:
    """What a lambda calibration was fitted on, in words, from the calibration file itself."""
    cal = json.loads(path.read_text()) if path.is_file() else None
    if cal is None:
        return f"{path.name} not found"
    names = ", ".join(cal["corruptions"])
    severities = ", ".join(str(s) for s in cal["severities"])
    return (
        f"clean and {len(cal['corruptions'])} corruptions ({names}) at severities {severities} of the "
        f"{cal['split']} split, {cal['n']} images a group"
    )


def table_md(rows: list[dict]) -> str:
    return pd.DataFrame([{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]).to_markdown(
        index=False, floatfmt=".2f"
    )


def gain(a: dict, b: dict) -> str:
    """``a``'s accuracy minus ``b``'s, called a tie when within the sampling error (``tie``)."""
    words = " (a tie)" if tie(a["accuracy"], b["accuracy"], a["± s.e."], b["± s.e."]) else ""
    return f"{a['accuracy'] - b['accuracy']:+.2f} points{words}"


DONE = "done"


def run_log(folder: Path) -> dict[str, list[tuple[datetime, str]]]:
    """Report stem -> what the run scripts logged of it (``runs.log``), in order: (time, 1-minute load average)
    of each start and (time, ``DONE``) of each finish."""
    path = folder / "runs.log"
    found: dict[str, list[tuple[datetime, str]]] = {}
    for line in path.read_text().splitlines() if path.is_file() else []:
        parts = line.split()
        if len(parts) >= 5 and parts[1] == "start" and parts[3] == "(load:":
            what = parts[4]
        elif len(parts) >= 3 and parts[1] == DONE:
            what = DONE
        else:
            continue
        found.setdefault(parts[2], []).append((datetime.fromisoformat(parts[0].replace("Z", "+00:00")), what))
    return found


def collapsed(folder: Path, group) -> str:  # type: ignore[no-untyped-def]
    """A sentence naming the runs of ``group`` with the same count right in every cell, clean included: a model
    that predicts one class for every image (each cell holds the same base images, so the same count of that
    class); empty when there is none."""
    same = []
    for stems, label, *_ in group:
        report = entry_report(folder, stems)
        counts = {r["correct"] for r in cell_rows(report, lambda c, s: True)} if report is not None else set()
        if len(counts) == 1:
            same.append((label, counts.pop(), report["meta"]["n_examples"]))
    if not same:
        return ""
    return (
        " "
        + ", ".join(f"{label} has {right:,} of {n:,} right in every cell" for label, right, n in same)
        + ", clean included: each ends up predicting one class for every image (the first images of every cell are "
        "the same test images, so the same count of that class), the collapse of entropy minimisation on single "
        "images that Niu et al. (ICLR 2023) report for TENT at batch size 1."
    )


def load_at_start(logged: dict[str, list[tuple[datetime, str]]], stem: str, report: dict) -> str:
    """The load logged by the last start of ``stem`` before its report was written (a later start is a run
    still going, or one stopped before it wrote anything). A resumed run (``meta.resumed_cells``) ran in
    sittings: the load at every start since the previous finish of ``stem``."""
    written = datetime.fromisoformat(report["meta"]["created"])
    before = [what for when, what in logged.get(stem, []) if when <= written]
    if not report["meta"].get("resumed_cells"):
        return next((what for what in reversed(before) if what != DONE), "")
    sittings: list[str] = []
    for what in before:  # the starts since the last finish
        sittings = [] if what == DONE else [*sittings, what]
    return f"{', '.join(sittings)} ({len(sittings)} sittings)"


def remedies(folder: Path) -> list[str]:
    """The sections of issue 30: per-image remedies, the mixed stream, batch 1, MEMO, lambda under BN, the target."""
    per_image = method_rows(folder, PER_IMAGE, NOISE_CELLS)
    batched = method_rows(folder, BATCH_METHODS, NOISE_CELLS)
    mixed = method_rows(folder, MIXED, NOISE_CELLS)
    batch1 = method_rows(folder, BATCH1, NOISE_CELLS)
    s_images = next((load(folder, stem)["meta"]["n_examples"] for stem, *_ in MIXED + BATCH1 if load(folder, stem)), 0)
    same = method_rows(folder, SAME_S, NOISE_CELLS, s_images)
    memo_keep, memo_where = memo_cells(folder)
    memo = method_rows(folder, MEMO, memo_keep)
    if memo_keep is NOISE_CELLS:  # MEMO on every noise cell: one more per-image candidate of the target
        per_image += [r for r in memo if r["method"].endswith("+ memo")]
    lines = [
        "## Per-image remedies beside batch adaptation (4 noises, severities 1-5, %)",
        "",
        "The 20 noise cells, the first `images per cell` images of each (10,000: the whole cell; a row with 500 "
        "had no run of its own on the noise cells yet and comes from the all-cells runs above). `bn-prior`: each image's BatchNorm "
        "statistics N/(N+1) * stored + 1/(N+1) * its own, N = 16 (Schneider et al., NeurIPS 2020; the "
        "single-image prior of MEMO's released code); it decides per image and "
        "keeps nothing, so any stream order or batch size gives the same predictions (tested). `auto` is the "
        "shipped rule, fitted with the stored statistics; `auto calibrated under bn-prior` was refitted with bn-prior "
        f"in place (`sdnet sweep-lambda --fit --adapt bn-prior`: {fit_words(folder / CAL_PRIOR)}; the command "
        "is in `run_full.sh`). Cost: the run's own timed forwards per image, on a "
        "2-core CPU shared with other jobs (load differs between runs; the date of each run is in its JSON).",
        "",
        "### One-corruption batches of 200",
        "",
        table_md(per_image + batched),
        "",
    ]
    tent = next((r for r in batched if r["method"] == "resnet18 + tent"), None)
    sdnet_per_image = [r for r in per_image if r["method"].startswith("sdnet18")]
    if tent is not None and sdnet_per_image:
        top, tied = best_configuration(sdnet_per_image)
        gap = tent["accuracy"] - top["accuracy"]
        verdict = "within" if gap <= 5 else "not within"
        lines += [
            f"**Target (one-corruption batches):** the best per-image SDNet configuration, {top['method']} "
            f"({top['accuracy']:.2f}% on {top['images per cell']:,} images a cell"
            + "".join(f"; {r['method']}, {r['accuracy']:.2f}% on {r['images per cell']:,}, ties it" for r in tied)
            + f"), is {gap:.2f} points behind resnet18 + tent ({tent['accuracy']:.2f}%): "
            f"{verdict} 5 points (the distance's standard error: "
            f"{math.sqrt(tent['± s.e.'] ** 2 + top['± s.e.'] ** 2):.2f} points). Every per-image SDNet "
            "configuration's distance: "
            + ", ".join(f"{r['method']} {tent['accuracy'] - r['accuracy']:.2f}" for r in sdnet_per_image)
            + ".",
            "",
        ]
        short = load(folder, "resnet18-tent")
        if short is not None and short["meta"]["n_examples"] < tent["images per cell"]:
            k = short["meta"]["n_examples"]
            shorter = cell_mean(cell_rows(short, NOISE_CELLS))
            lines += [
                f"TENT keeps adapting along a cell: over all {tent['images per cell']:,} images of each cell "
                f"({-(-tent['images per cell'] // 200)} steps) it reaches {tent['accuracy']:.2f}%, over the first {k:,} "
                f"({-(-k // 200)} steps; the summary's run) {shorter:.2f}%: the distance depends on how long a "
                "stream of one corruption the batch method is given (a per-image method's accuracy does not).",
                "",
            ]
    for title, rows, words in (
        (
            "### Mixed stream, batches of 200",
            mixed,
            f"All 21 cells' first {s_images:,} images (clean and the 20 noise cells) interleaved in one seeded "
            "stream (`--stream mixed`, Niu et al., ICLR 2023): a batch mixes corruptions and severities; TENT "
            "adapts through the whole stream. The per-image methods ran on the same images (their predictions do "
            "not depend on the order or the batch size, which the tests prove).",
        ),
        (
            "### Batch 1 (mixed stream, one image per batch)",
            batch1,
            "`bn` normalises each image with its own statistics alone; `tent` takes an Adam step after every image "
            "and carries the parameters through the whole mixed stream." + collapsed(folder, BATCH1),
        ),
    ):
        if not rows:
            continue
        sizes = sorted({r["images per cell"] for r in same + rows})
        if len(sizes) > 1:
            words += (
                f" The rows differ in images per cell ({counts(sizes)}), so they are not all on "
                "the same images: a smaller run's images are the first of a larger one's."
            )
        lines += [title, "", words, "", table_md(same + rows), ""]
        same_sdnet = [r for r in same if r["method"].startswith("sdnet18")]
        if same_sdnet:
            top = max(same_sdnet, key=lambda r: r["accuracy"])
            verdicts = []
            for r in rows:
                gap = top["accuracy"] - r["accuracy"]
                if tie(top["accuracy"], r["accuracy"], top["± s.e."], r["± s.e."]):
                    said = f"tie ({gap:+.2f})"
                else:
                    said = f"{'ahead' if gap > 0 else 'behind'} by {abs(gap):.2f}"
                verdicts.append(f"{r['method']} {r['accuracy']:.2f}%: {said}")
            lines += [
                f"The best per-image SDNet configuration here ({top['method']}, {top['accuracy']:.2f}%) against "
                "each batch method: " + "; ".join(verdicts) + ".",
                "",
            ]
    if memo:
        count = memo[0]["images per cell"]
        memo_runs = [r for r in (load(folder, stem) for stem, *_ in MEMO) if r and r["meta"].get("adaptation")]
        settings = memo_runs[0]["meta"]["adaptation"] if memo_runs else None
        said = (
            f"{settings['copies']} AugMix-style copies (crop, flip, "
            f"{', '.join(settings['augmentations']['operations'])}; none of the benchmark corruptions), "
            f"{settings['steps_per_image']} {settings['optimizer']} step, lr {settings['lr']:g}, on "
            f"{settings['parameters']} parameters, {settings['loss']}, predict the original image, restore; "
            f"BatchNorm keeps its {settings['batchnorm']}."
            if settings
            else "no MEMO run found."
        )
        cost = settings["cost_per_image"] if settings else {"forwards": "?", "backwards": "?"}
        lines += [
            f"### MEMO ({memo_where})",
            "",
            f"MEMO (Zhang, Levine, Finn, NeurIPS 2022) costs {cost['forwards']} forwards and {cost['backwards']} "
            f"backward per image, so it ran on the first {count:,} images of each of {memo_where} only, "
            f"beside its baselines on the same images (standard error of the mean: the table's `± s.e.`). "
            f"Settings: {said}",
            "",
            table_md(memo),
            "",
        ]
        spread = sittings_cost(folder, MEMO, memo_keep)
        lines += [spread, ""] if spread else []
        tent_there = method_rows(folder, [r for r in BATCH_METHODS if r[1] == "resnet18 + tent"], memo_keep)
        memo_sdnet = [r for r in memo if r["method"].startswith("sdnet18") and "memo" in r["method"]]
        if tent_there and memo_sdnet:
            tent, top = tent_there[0], memo_sdnet[0]
            lines += [
                f"On {memo_where} resnet18 + tent (one-corruption batches of 200, the first "
                f"{tent['images per cell']:,} images of each) reaches {tent['accuracy']:.2f}%: {top['method']} is "
                f"{tent['accuracy'] - top['accuracy']:.2f} points behind it.",
                "",
            ]
    under_bn = load(folder, CALIBRATED[-1][0][0])
    size = under_bn["meta"]["n_examples"] if under_bn is not None else None
    calibrated = [
        {"method": label, **{k: v for k, v in row.items() if k in ("images per cell", "accuracy", "± s.e.")}}
        for stems, label in CALIBRATED
        for row in method_rows(folder, [(stems, label, "", "", "")], NOISE_S35, size)
    ]
    if len(calibrated) == len(CALIBRATED):
        sizes = sorted({row["images per cell"] for row in calibrated})
        same = (
            f"First {sizes[0]:,} test images of each of the 8 cells."
            if len(sizes) == 1
            else f"The rows differ in images per cell ({counts(sizes)}), so they are not all on the same images."
        )
        lines += [
            "### The lambda rule calibrated under BN adaptation (4 noises, severities 3 and 5, batches of 200 of one cell)",
            "",
            "`sdnet sweep-lambda --fit --adapt bn` fits the rule with BN adaptation in place (every lambda on "
            f"every calibration image, in batches of 200 of one group); here {fit_words(folder / CAL_BN)} "
            "(`reports/tta/run_calibration.sh` has the command and the lambda grid), a smaller fit than the "
            f"shipped stored-statistics calibration ({fit_words(SHIPPED_CAL)}), which the other rows use. {same}",
            "",
            table_md(calibrated),
            "",
            f"Gain of the rule calibrated under bn over the stored-statistics rule: "
            f"{gain(calibrated[2], calibrated[1])}; against bn at lambda 0.1: {gain(calibrated[2], calibrated[0])}.",
            "",
        ]
    logged = run_log(folder)
    lines += [
        "### Runs",
        "",
        "Seconds: the run's timed forwards (the cells' `seconds`). Load: the machine's 1-minute load average when "
        "the run started (2 cores shared with other jobs; a run resumed with `--resume`: when each of its sittings "
        "started), from `runs.log` where the run scripts wrote it; the runs of 2026-12-02 did not record theirs.",
        "",
        "| report | command | images | seconds | load at start |",
        "|---|---|---:|---:|---:|",
    ]
    for stem in [stem for s, *_ in PER_IMAGE + BATCH_METHODS for stem in candidates(s)] + REMEDY_STEMS:
        if stem.startswith("sweep-"):
            continue
        report = load(folder, stem)
        if report is None or f"| {stem}.json |" in "\n".join(lines):
            continue
        rows = cell_rows(report, lambda c, s: True)
        argv = report["meta"]["argv"].split(" eval ", 1)[-1]
        lines.append(
            f"| {stem}.json | `sdnet eval {argv}` | {sum(r['n'] for r in rows):,} | "
            f"{sum(r['seconds'] for r in rows):,.0f} | {load_at_start(logged, stem, report)} |"
        )
    return lines + [""]


def stream_findings(reports: dict[str, dict], streamed: dict[str, float]) -> list[str]:
    """TENT against BN adaptation: over the summary's images of each noise cell, and over a whole cell's stream."""
    tent, bn = reports.get("resnet18 + tent"), reports.get("resnet18 + bn")
    long = streamed.get("resnet18 + tent"), streamed.get("resnet18 + bn")
    if tent is None or bn is None or None in long:
        return []
    (a, se_a), (b, se_b) = [
        (cell_mean(rows), standard_error(rows)) for rows in (cell_rows(r, NOISE_CELLS) for r in (tent, bn))
    ]
    n = tent["meta"]["n_examples"]
    said = "tie within the sampling error" if tie(a, b, se_a, se_b) else ("TENT leads" if a > b else "BN leads")
    return [
        f"- TENT against BN adaptation on the ResNet, on the noises: over the first {n:,} images of each cell "
        f"({-(-n // 200)} steps) {a:.2f}% vs {b:.2f}% ({said}); over a whole 10,000-image stream of "
        f"gaussian_noise s5 (50 steps) {long[0]:.2f}% vs {long[1]:.2f}%."
    ]


def best(get) -> dict[str, tuple[str, float]]:  # type: ignore[no-untyped-def]
    """Per summary column, the method with the highest accuracy among those run."""
    labels = [label for _, label, _, _ in METHODS if get(label, "clean") is not None]
    columns = ("clean", "4 noises", OTHER, "15 corruptions")
    return {c: max(((label, get(label, c)) for label in labels), key=lambda item: item[1]) for c in columns}


def findings(get, errors) -> list[str]:  # type: ignore[no-untyped-def]
    """The sentences the issue asks for, each stated from the table's numbers; ``errors(label, column)`` is the
    standard error of that mean (``standard_error``), so a lead within the sampling error is called a tie."""
    said = []
    for column, (winner, value) in best(get).items():
        tied = [
            label
            for _, label, _, _ in METHODS
            if label != winner
            and get(label, column) is not None
            and tie(value, get(label, column), errors(winner, column), errors(label, column))
        ]
        ties = f"; tied within the sampling error with {', '.join(tied)}" if tied else ""
        said.append(f"- Best on {column}: {winner} ({value:.2f}%{ties}).")
    r_bn, s_auto = get("resnet18 + bn", "4 noises"), get("sdnet18, auto", "4 noises")
    if r_bn is not None and s_auto is not None:
        verdict = "beats" if r_bn > s_auto else "does not beat"
        said.append(
            f"- On the four noises, BN adaptation of the ResNet ({r_bn:.2f}%) {verdict} SDNet's test-time lambda "
            f"rule `auto` ({s_auto:.2f}%; SDNet at its training lambda: {get('sdnet18, lambda 0.1', '4 noises'):.2f}%, "
            f"the plain ResNet: {get('resnet18', '4 noises'):.2f}%)."
        )
    r_other, r_other_bn = get("resnet18", OTHER), get("resnet18 + bn", OTHER)
    s_other_auto = get("sdnet18, auto", OTHER)
    if r_other is not None and r_other_bn is not None and s_other_auto is not None:
        said.append(
            f"- On the {OTHER}, where no lambda rule gains anything, BN adaptation moves the ResNet "
            f"from {r_other:.2f}% to {r_other_bn:.2f}% (SDNet `auto`: {s_other_auto:.2f}%)."
        )
    s_bn, s_auto_bn = get("sdnet18 + bn", "4 noises"), get("sdnet18, auto + bn", "4 noises")
    if s_bn is not None and s_auto_bn is not None:
        adds = "add up" if s_auto_bn > s_bn else "do not add up"
        said.append(
            f"- On SDNet, lambda and BN adaptation {adds} on the noises: `auto + bn` {s_auto_bn:.2f}% vs `bn` at "
            f"lambda 0.1 {s_bn:.2f}%. The `auto` rule was calibrated with the stored BN statistics and raises lambda "
            "for noisy inputs, which no longer helps once BN adapts; the rule calibrated under BN adaptation "
            "(`sdnet sweep-lambda --fit --adapt bn`) is measured below."
        )
    clean = [
        (label, get(label, "clean")) for label in ("resnet18", "resnet18 + bn", "sdnet18, lambda 0.1", "sdnet18 + bn")
    ]
    if all(v is not None for _, v in clean):
        said.append(
            "- Clean accuracy under BN adaptation (batch statistics of 200 clean images): "
            + ", ".join(f"{label} {v:.2f}%" for label, v in clean)
            + "."
        )
    said.append(
        "- What each number relies on differs: `bn` and `tent` need a batch of test images that share one "
        "corruption (and `tent` a backward pass and state carried from batch to batch); the lambda rule decides "
        "per image, with no batch, no state and no gradient step, so it applies where a test batch is one image "
        "or a mixed stream. The comparison is fair only with that said."
    )
    return said


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
