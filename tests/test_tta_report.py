"""reports/tta/render.py's verdicts, on made-up reports whose answer is worked out by hand: the target distance,
a lead within the sampling error called a tie, and the rows that pick a report of the requested size."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

RENDER = Path(__file__).resolve().parents[1] / "reports" / "tta" / "render.py"
NOISE = ["gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise"]


@pytest.fixture(scope="module")
def render():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("tta_render", RENDER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write(folder: Path, stem: str, n: int, correct: int, severities: range = range(1, 6)) -> None:
    """A report of ``correct`` right of ``n`` images in every noise cell of ``severities`` (and clean), 2 ms an
    image."""
    cells = [("clean", 0)] + [(c, s) for c in NOISE for s in severities]
    rows = [
        {"corruption": c, "severity": s, "n": n, "correct": correct, "accuracy": 100 * correct / n, "seconds": n / 500}
        for c, s in cells
    ]
    meta = {"n_examples": n, "created": "2026-12-07T00:00:00+00:00", "argv": f"sdnet eval --name {stem}"}
    (folder / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}))


def target_line(render, folder: Path) -> str:  # type: ignore[no-untyped-def]
    return next(line for line in render.remedies(folder) if line.startswith("**Target"))


def test_the_target_distance_and_its_verdict_from_the_rows(render, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    write(tmp_path, "noise-resnet18-tent", 10_000, 8_000)  # 80.00%
    write(tmp_path, "noise-sdnet18-auto", 10_000, 7_000)  # 70.00%: 10 points behind
    write(tmp_path, "noise-sdnet18-auto-bnprior", 10_000, 7_600)  # 76.00%: 4 points behind, the best
    line = target_line(render, tmp_path)
    assert (
        "auto + bn-prior (76.00% on 10,000 images a cell), is 4.00 points behind resnet18 + tent (80.00%): within 5"
        in line
    )
    # s.e. of a 20-cell mean of binomial cells at p: sqrt(20 p (1-p) / n) / 20; at 10,000 images a cell
    se = ((0.8 * 0.2 / 10_000 + 0.76 * 0.24 / 10_000) / 20) ** 0.5 * 100
    assert f"standard error: {se:.2f} points" in line
    assert "sdnet18, auto 10.00" in line
    # a configuration on fewer images a cell, 0.10 ahead (s.e. of the difference about 0.3): a tie, so the
    # verdict stays with the full-size run and names it
    write(tmp_path, "noise-sdnet18-autoprior-bnprior", 2_000, 1_522)  # 76.10%
    line = target_line(render, tmp_path)
    assert "sdnet18, auto + bn-prior (76.00% on 10,000 images a cell; sdnet18, auto calibrated under" in line
    assert "76.10% on 2,000, ties it), is 4.00 points behind" in line
    write(tmp_path, "noise-sdnet18-autoprior-bnprior", 2_000, 1_580)  # 79.00%: beyond the error, so the best
    assert "configuration, sdnet18, auto calibrated under bn-prior + bn-prior (79.00% on 2,000 images a cell)" in (
        target_line(render, tmp_path)
    )


def test_a_small_lead_is_a_tie_and_a_row_comes_from_the_report_of_the_stream_s_size(render, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    write(tmp_path, "mixed-resnet18-bn", 2_000, 1_500)  # 75.00%
    write(tmp_path, "s-sdnet18-auto", 2_000, 1_510)  # 75.50%: 0.5 ahead, s.e. of the difference about 0.31
    write(tmp_path, "noise-sdnet18-auto", 10_000, 9_000)  # another size: not the stream's images
    lines = render.remedies(tmp_path)
    said = next(line for line in lines if line.startswith("The best per-image SDNet configuration here"))
    assert "(sdnet18, auto, 75.50%)" in said
    assert "resnet18 + bn 75.00%: tie (+0.50)" in said
    write(tmp_path, "s-sdnet18-auto", 2_000, 1_560)  # 78.00%: 3 points ahead, far beyond the error
    said = next(line for line in render.remedies(tmp_path) if line.startswith("The best per-image SDNet"))
    assert "resnet18 + bn 75.00%: ahead by 3.00" in said


def test_memo_joins_the_target_only_once_it_covers_every_noise_cell(render, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    write(tmp_path, "noise-resnet18-tent", 10_000, 8_000)  # 80.00%
    write(tmp_path, "noise-sdnet18-auto-bnprior", 10_000, 7_000)  # 70.00%
    write(tmp_path, "memo-sdnet18-auto-memo", 500, 450, severities=range(5, 6))  # 90.00%, severity 5 only
    lines = render.remedies(tmp_path)
    assert "### MEMO (the four severity-5 noise cells)" in lines
    assert "configuration, sdnet18, auto + bn-prior (70.00%" in target_line(render, tmp_path)  # not MEMO's 4 cells
    write(tmp_path, "memo-sdnet18-auto-memo", 2_000, 1_500)  # 75.00% on all 20 noise cells
    lines = render.remedies(tmp_path)
    assert "### MEMO (the 20 noise cells)" in lines
    line = target_line(render, tmp_path)
    assert "configuration, sdnet18, auto + memo (75.00% on 2,000 images a cell)" in line
    assert "is 5.00 points behind resnet18 + tent (80.00%): within 5" in line


def test_a_run_with_one_count_right_in_every_cell_is_named_as_collapsed(render, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    write(tmp_path, "batch1-resnet18-tent", 2_000, 199)  # the same count in every cell: one class for every image
    write(tmp_path, "batch1-resnet18-bn", 2_000, 250)
    data = json.loads((tmp_path / "batch1-resnet18-bn.json").read_text())
    data["rows"][1]["correct"] = 251  # one cell differs: a model that still tells images apart
    (tmp_path / "batch1-resnet18-bn.json").write_text(json.dumps(data))
    said = next(line for line in render.remedies(tmp_path) if line.startswith("`bn` normalises each image"))
    assert "resnet18 + tent has 199 of 2,000 right in every cell, clean included" in said
    assert "resnet18 + bn has" not in said


def test_a_resumed_run_lists_the_load_of_every_sitting(render, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    write(tmp_path, "memo-resnet18-memo", 2_000, 1_500)  # written 2026-12-07T00:00
    (tmp_path / "runs.log").write_text(
        "2026-12-05T10:00:00Z start memo-resnet18-memo (load: 9.99 1 1)\n"  # an earlier run at another size...
        "2026-12-05T11:00:00Z done memo-resnet18-memo (exit 0)\n"  # ...finished: not a sitting of this one
        "2026-12-06T05:41:04Z start memo-resnet18-memo (load: 2.80 3 3)\n"
        "2026-12-06T08:34:52Z start memo-resnet18-memo (load: 0.70 1 1)\n"
        "2026-12-07T09:00:00Z start memo-resnet18-memo (load: 5.55 1 1)\n"  # after the report: a later run
    )
    runs = [line for line in render.remedies(tmp_path) if line.startswith("| memo-resnet18-memo.json |")]
    assert len(runs) == 1 and runs[0].endswith("| 0.70 |")  # not resumed: the last start before the report
    data = json.loads((tmp_path / "memo-resnet18-memo.json").read_text())
    data["meta"]["resumed_cells"] = 3
    (tmp_path / "memo-resnet18-memo.json").write_text(json.dumps(data))
    runs = [line for line in render.remedies(tmp_path) if line.startswith("| memo-resnet18-memo.json |")]
    assert runs[0].endswith("| 2.80, 0.70 (2 sittings) |")


def test_a_run_cut_into_sittings_gives_the_spread_of_its_cells_cost(render, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    write(tmp_path, "memo-resnet18-memo", 2_000, 1_500)  # 2 ms an image in every cell
    assert not any("cut into sittings" in line for line in render.remedies(tmp_path))  # one sitting: nothing to say
    data = json.loads((tmp_path / "memo-resnet18-memo.json").read_text())
    data["meta"]["resumed_cells"] = 4
    for row, seconds in zip(data["rows"][1:], [800.0, 900.0, 1600.0] + [1000.0] * 17):  # the noise cells
        row["seconds"] = seconds
    (tmp_path / "memo-resnet18-memo.json").write_text(json.dumps(data))
    said = next(line for line in render.remedies(tmp_path) if "cut into sittings" in line)
    assert "resnet18 + memo: 400 to 800 ms an image by cell (median 500)" in said  # 800 s / 2,000 ... 1,600 s / 2,000
