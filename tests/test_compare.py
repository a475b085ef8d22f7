"""sdnet compare: rows matched on what was measured, means recomputed from the cells shown, ambiguous
input refused, plots beside the table."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.image
import matplotlib.pyplot as plt
import pytest
from typer.testing import CliRunner

from sdnet_cli.cli import app
from sdnet_cli.compare import MEAN_15, CompareError, compare, compare_reports, load_source
from sdnet_cli.data.corruptions import BENCHMARK_CORRUPTIONS
from sdnet_cli.report import write_report


def eval_report(tmp: Path, name: str, cells: dict[tuple[str, int], float], n: int) -> Path:
    rows = [
        {
            "model": "m",
            "dataset": "cifar10",
            "corruption": c,
            "severity": s,
            "lam": "0.1",
            "n": n,
            "correct": round(a * n / 100),
            "accuracy": a,
            "seconds": 1.0,
        }
        for (c, s), a in cells.items()
    ]
    rows.append({**rows[-1], "corruption": "mean", "severity": "all", "accuracy": -1.0})  # must be ignored
    write_report(rows, {"command": "eval", "seed": 0, "model": {"name": "m"}}, tmp, name)
    return tmp / f"{name}.json"


def attack_report(tmp: Path, name: str, robust: dict[str, float], clean: float, attack: str = "pgd") -> Path:
    rows = [
        {
            "model": "m",
            "dataset": "cifar10",
            "attack": attack,
            "norm": "Linf",
            "eps": eval(e),
            "eps_text": e,
            "lam": "0.1",
            "n": 100,
            "clean_accuracy": clean,
            "robust_accuracy": r,
            "seconds": 1.0,
        }
        for e, r in robust.items()
    ]
    meta = {
        "command": "attack",
        "seed": 0,
        "model": {"name": "m"},
        "lambda_gradient": "exact",
        "diagnostics": {"zero_gradient_fraction": 0.0, "warnings": ["a planted warning"]},
    }
    write_report(rows, meta, tmp, name)
    return tmp / f"{name}.json"


def test_eval_columns_and_recomputed_means(tmp_path: Path) -> None:
    a = eval_report(tmp_path, "a", {("clean", 0): 90.0, ("gaussian_noise", 1): 80.0, ("gaussian_noise", 2): 70.0}, 1000)
    b = eval_report(tmp_path, "b", {("clean", 0): 91.0, ("gaussian_noise", 1): 60.0, ("gaussian_noise", 2): 50.0}, 1000)
    rows, value = compare([load_source("A", a), load_source("B", b)])
    assert value == "accuracy (%)"
    table = {(r["corruption"], r["severity"]): (r["A"], r["B"]) for r in rows}
    assert table[("clean", 0)] == (90.0, 91.0)
    assert table[("gaussian_noise", "mean")] == pytest.approx((75.0, 55.0))
    assert all(r["corruption"] != "mean" for r in rows)  # the reports' own mean rows are not copied
    assert [r["corruption"] for r in rows][0] == "clean"
    assert MEAN_15 not in table  # not every benchmark corruption is present


def test_benchmark_mean_only_over_fifteen_and_slices_stay_apart(tmp_path: Path) -> None:
    cells = {("clean", 0): 90.0, **{(c, 3): float(i) for i, c in enumerate(BENCHMARK_CORRUPTIONS)}}
    full = eval_report(tmp_path, "full", {("clean", 0): 92.0, ("speckle_noise", 3): 40.0}, 10000)
    sub = eval_report(tmp_path, "sub", {**cells, ("speckle_noise", 3): 100.0}, 1000)
    rows, _ = compare([load_source("X", full), load_source("X", sub)])
    by_key = {(r["corruption"], r["severity"], r["n"]): r["X"] for r in rows}
    assert by_key[("clean", 0, 10000)] == 92.0 and by_key[("clean", 0, 1000)] == 90.0
    expected = sum(range(len(BENCHMARK_CORRUPTIONS))) / len(BENCHMARK_CORRUPTIONS)  # speckle (an extra) left out
    assert by_key[(MEAN_15, "all", 1000)] == pytest.approx(expected)
    assert rows[0]["n"] == 10000  # the full slice first


def test_attack_rows_in_eps_order_with_clean(tmp_path: Path) -> None:
    path = attack_report(tmp_path, "p", {"8/255": 1.0, "1/255": 50.0, "2/255": 30.0}, 85.0)
    rows, value = compare([load_source("R", path)])
    assert value == "robust accuracy (%)"
    assert [(r["attack"], r["eps"]) for r in rows] == [
        ("clean", "0"),
        ("pgd", "1/255"),
        ("pgd", "2/255"),
        ("pgd", "8/255"),
    ]
    assert [r["R"] for r in rows] == [85.0, 50.0, 30.0, 1.0]


def test_mixed_kinds_and_bad_sources_are_refused(tmp_path: Path) -> None:
    e = eval_report(tmp_path, "e", {("clean", 0): 90.0}, 10)
    p = attack_report(tmp_path, "p", {"8/255": 1.0}, 85.0)
    with pytest.raises(CompareError, match="mix"):
        compare([load_source("E", e), load_source("P", p)])
    with pytest.raises(CompareError, match="no report"):
        load_source("M", tmp_path / "missing.json")
    (tmp_path / "junk.json").write_text("[1, 2]")
    with pytest.raises(CompareError, match="not a JSON report"):
        load_source("J", tmp_path / "junk.json")


def test_cli_writes_all_formats_with_provenance(tmp_path: Path) -> None:
    p = attack_report(tmp_path, "p", {"8/255": 1.0}, 85.0)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["compare", f"resnet={p}", "--out", str(out), "--name", "adv", "--title", "Adversarial"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "adv.json").read_text())
    assert report["rows"][-1]["resnet"] == 1.0 and report["meta"]["sources"][0]["label"] == "resnet"
    markdown = (out / "adv.md").read_text()
    assert markdown.startswith("# Adversarial") and "a planted warning" in markdown
    assert (out / "adv.csv").read_text().splitlines()[0] == "attack,norm,eps,n,resnet"
    bad = CliRunner().invoke(app, ["compare", f"x={tmp_path / 'nope.json'}", "--out", str(out)])
    assert bad.exit_code == 2 and "no report" in bad.output
    assert not (out / "compare.json").exists()


def test_missing_values_render_as_a_dash(tmp_path: Path) -> None:
    a = eval_report(tmp_path, "a", {("clean", 0): 90.0, ("fog", 1): 80.0}, 100)
    b = eval_report(tmp_path, "b", {("clean", 0): 91.0}, 100)
    result = CliRunner().invoke(app, ["compare", f"A={a}", f"B={b}", "--out", str(tmp_path), "--name", "c"])
    assert result.exit_code == 0, result.output
    fog = next(line for line in (tmp_path / "c.md").read_text().splitlines() if line.startswith("| fog"))
    assert "nan" not in fog and fog.rstrip(" |").endswith("-")


def test_two_reports_of_one_cell_under_one_label_are_refused(tmp_path: Path) -> None:
    a = eval_report(tmp_path, "a", {("clean", 0): 90.0, ("fog", 1): 80.0}, 100)
    b = eval_report(tmp_path, "b", {("fog", 1): 70.0, ("fog", 2): 60.0}, 100)
    with pytest.raises(CompareError) as refused:
        compare([load_source("X", a), load_source("X", b)])
    message = str(refused.value)
    assert "'X'" in message and "fog severity 1 on 100 images" in message
    assert str(a) in message and str(b) in message
    # the same cell under two labels, or on another slice size, is no ambiguity
    assert len(compare([load_source("X", a), load_source("Y", b)])[0]) == 4
    c = eval_report(tmp_path, "c", {("fog", 1): 70.0}, 50)
    assert len(compare([load_source("X", a), load_source("X", c)])[0]) == 3

    result = CliRunner().invoke(app, ["compare", f"X={a}", f"X={b}", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "two values" in result.output
    assert not (tmp_path / "out").exists()


def test_attack_reports_under_one_label_share_clean_but_not_a_row(tmp_path: Path) -> None:
    pgd = attack_report(tmp_path, "pgd", {"8/255": 1.0}, 85.0)
    aa = attack_report(tmp_path, "aa", {"8/255": 0.5}, 85.0, attack="worst")
    rows, _ = compare([load_source("R", pgd), load_source("R", aa)])
    assert [(r["attack"], r["R"]) for r in rows] == [("clean", 85.0), ("pgd", 1.0), ("worst", 0.5)]

    again = attack_report(tmp_path, "again", {"4/255": 9.0, "8/255": 2.0}, 85.0)
    with pytest.raises(CompareError, match=r"'R'.*pgd \(Linf\) eps 8/255 on 100 images"):
        compare([load_source("R", pgd), load_source("R", again)])
    other_clean = attack_report(tmp_path, "other", {"8/255": 0.5}, 80.0, attack="worst")
    with pytest.raises(CompareError, match="clean accuracy"):
        compare([load_source("R", pgd), load_source("R", other_clean)])


def test_a_label_named_like_a_key_column_is_refused(tmp_path: Path) -> None:
    a = eval_report(tmp_path, "a", {("clean", 0): 90.0}, 10)
    with pytest.raises(CompareError, match="key columns"):
        compare([load_source("n", a)])


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Figures as they were when saved (captured where they are closed)."""
    figures: list[Any] = []
    close = plt.close

    def keep(fig: Any = None) -> None:
        figures.append(fig)
        close(fig)

    monkeypatch.setattr(plt, "close", keep)
    return figures


def assert_png(path: Path, fig: Any) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = matplotlib.image.imread(path)
    width, height = fig.get_size_inches() * fig.dpi
    assert pixels.shape == (round(height), round(width), 4)


def lines_by_panel(fig: Any) -> dict[str, dict[str, tuple[list[float], list[float]]]]:
    return {
        ax.get_title(): {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()}
        for ax in fig.axes
    }


def test_eval_plots_a_panel_per_corruption_and_the_markdown_links_them(tmp_path: Path, drawn: list[Any]) -> None:
    a = eval_report(tmp_path, "a", {("clean", 0): 90.0, ("fog", 1): 80.0, ("fog", 2): 70.0, ("snow", 1): 60.0}, 100)
    b = eval_report(tmp_path, "b", {("clean", 0): 91.0, ("fog", 1): 81.0, ("fog", 2): 71.0, ("snow", 1): 61.0}, 100)
    c = eval_report(tmp_path, "c", {("fog", 1): 50.0}, 10)  # another slice: a figure of its own
    out = tmp_path / "out"
    paths = compare_reports([f"A={a}", ("B", b), ("B", c)], out_dir=out, name="cmp", title="T")
    plots = [out / "cmp-severity-n100.png", out / "cmp-severity-n10.png"]
    assert paths == [out / "cmp.json", out / "cmp.csv", out / "cmp.md", *plots]
    assert len(drawn) == 2
    for path, fig in zip(plots, drawn):
        assert_png(path, fig)
    full = lines_by_panel(drawn[0])
    assert sorted(full) == ["fog", "snow"]
    assert all(len(lines) == 2 for lines in full.values())  # two labels
    assert full["fog"]["A"] == ([0, 1, 2], [90.0, 80.0, 70.0])  # clean drawn as severity 0
    assert full["snow"]["B"] == ([0, 1], [91.0, 61.0])
    assert lines_by_panel(drawn[1]) == {"fog": {"B": ([1], [50.0])}}  # no clean on that slice

    markdown = (out / "cmp.md").read_text()
    for path in plots:
        assert f"]({path.name})" in markdown  # relative to the Markdown's folder
    assert json.loads((out / "cmp.json").read_text())["meta"]["plots"] == [p.name for p in plots]


def test_attack_plots_robust_accuracy_over_eps_per_attack(tmp_path: Path, drawn: list[Any]) -> None:
    r = attack_report(tmp_path, "r", {"1/255": 40.0, "8/255": 1.0}, 85.0)
    s = attack_report(tmp_path, "s", {"1/255": 50.0, "8/255": 2.0}, 86.0)
    s_aa = attack_report(tmp_path, "s-aa", {"8/255": 0.5}, 86.0, attack="worst")
    *_, path = compare_reports([("resnet", r), ("sdnet", s), ("sdnet", s_aa)], out_dir=tmp_path, name="adv")
    assert path == tmp_path / "adv-eps-n100.png"
    assert_png(path, drawn[0])
    panels = lines_by_panel(drawn[0])
    assert {title: len(lines) for title, lines in panels.items()} == {"pgd (Linf)": 2, "worst (Linf)": 1}
    assert panels["pgd (Linf)"]["sdnet"] == ([0, float(Fraction(1, 255)), float(Fraction(8, 255))], [86.0, 50.0, 2.0])
    assert panels["worst (Linf)"]["sdnet"] == ([0, float(Fraction(8, 255))], [86.0, 0.5])
    assert "![robust accuracy (%) vs eps, 100 images per cell](adv-eps-n100.png)" in (tmp_path / "adv.md").read_text()
