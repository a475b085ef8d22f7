"""sdnet compare: rows matched on what was measured, means recomputed from the cells shown."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sdnet_cli.cli import app
from sdnet_cli.compare import MEAN_15, CompareError, compare, load_source
from sdnet_cli.data.corruptions import BENCHMARK_CORRUPTIONS
from sdnet_cli.reports import write_report


def eval_report(tmp: Path, name: str, cells: dict[tuple[str, int], float], n: int) -> Path:
    rows = [{"model": "m", "dataset": "cifar10", "corruption": c, "severity": s, "lam": "0.1", "n": n,
             "correct": round(a * n / 100), "accuracy": a, "seconds": 1.0} for (c, s), a in cells.items()]
    rows.append({**rows[-1], "corruption": "mean", "severity": "all", "accuracy": -1.0})  # must be ignored
    write_report(rows, {"command": "eval", "seed": 0, "model": {"name": "m"}}, tmp, name)
    return tmp / f"{name}.json"


def attack_report(tmp: Path, name: str, robust: dict[str, float], clean: float) -> Path:
    rows = [{"model": "m", "dataset": "cifar10", "attack": "pgd", "norm": "Linf", "eps": eval(e), "eps_text": e,
             "lam": "0.1", "n": 100, "clean_accuracy": clean, "robust_accuracy": r, "seconds": 1.0} for e, r in robust.items()]
    meta = {"command": "attack", "seed": 0, "model": {"name": "m"}, "lambda_gradient": "exact",
            "diagnostics": {"zero_gradient_fraction": 0.0, "warnings": ["a planted warning"]}}
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
    sub = eval_report(tmp_path, "sub", {**cells, ("speckle_noise", 3): 1000.0}, 1000)
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
    assert [(r["attack"], r["eps"]) for r in rows] == [("clean", "0"), ("pgd", "1/255"), ("pgd", "2/255"), ("pgd", "8/255")]
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
    result = CliRunner().invoke(app, ["compare", f"resnet={p}", "--out", str(out), "--name", "adv", "--title", "Adversarial"])
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
