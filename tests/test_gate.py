"""sdnet check fails closed: it passes only when every baseline metric was measured, finite and within a
finite tolerance; a damaged baseline or suite is a usage error (exit 2) naming the file and field, found
before any work, never exit 1 (which CI reads as a regression)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from sdnet_cli.check import compare_with_baseline, verdict
from sdnet_cli.cli import app
from sdnet_cli.errors import UsageError

SUITE = {"models": ["resnet18"], "n_examples": 20, "cells": [["gaussian_noise", 5]], "steps": 1, "tolerance": 1.0}


def row(metric: str, value: Any, model: str = "m", n: int = 100) -> dict:
    return {"model": model, "checkpoint_sha256": "abc", "metric": metric, "n": n, "value": value}


def baseline_file(tmp_path: Path, rows: list, suite: Any = SUITE, meta: dict | None = None) -> Path:
    path = tmp_path / "baseline.json"
    path.write_text(
        json.dumps({"meta": meta if meta is not None else {"command": "check", "suite": suite}, "rows": rows})
    )
    return path


GOOD_ROWS = [row("clean", 93.8, "resnet18", 20)]


def damaged_suite(**change: Any) -> dict:
    return {**SUITE, **change}


DAMAGED_BASELINES = [
    # (rows, suite, field named in the error)
    ([], SUITE, "rows"),
    ([row("clean", math.nan)], SUITE, "rows[0].value"),
    ([row("clean", "93.8")], SUITE, "rows[0].value"),
    ([row("clean", None)], SUITE, "rows[0].value"),
    ([{k: v for k, v in row("clean", 1.0).items() if k != "value"}], SUITE, "rows[0].value is missing"),
    ([row("clean", 250.0)], SUITE, "rows[0].value"),
    ([row("clean", -1.0)], SUITE, "rows[0].value"),
    ([row("clean", math.inf)], SUITE, "rows[0].value"),
    ([row("clean", 90.0), row("clean", 91.0)], SUITE, "appears twice"),
    ([{k: v for k, v in row("clean", 1.0).items() if k != "metric"}], SUITE, "rows[0].metric is missing"),
    (GOOD_ROWS, damaged_suite(tolerance="1"), "meta.suite.tolerance must be a number"),
    (GOOD_ROWS, damaged_suite(tolerance=-5), "meta.suite.tolerance must be"),
    (GOOD_ROWS, damaged_suite(tolerance=math.nan), "meta.suite.tolerance must be"),
    (GOOD_ROWS, damaged_suite(n_examples="20"), "meta.suite.n_examples must be an integer"),
    (GOOD_ROWS, damaged_suite(n_examples=0), "meta.suite.n_examples must be an integer"),
    (GOOD_ROWS, damaged_suite(steps=10**9), "meta.suite.steps must be an integer"),
    (GOOD_ROWS, damaged_suite(cells=[["fog", 9]]), "meta.suite.cells[0]"),
    (GOOD_ROWS, damaged_suite(schema=2), "meta.suite.schema is not a known field"),
    (GOOD_ROWS, damaged_suite(models=[]), "meta.suite.models"),
    (GOOD_ROWS, damaged_suite(eps="2/0"), "divides by zero"),
]


def run_check(tmp_path: Path, *args: str) -> Any:
    return CliRunner().invoke(
        app, ["check", "--device", "cpu", "--cache-dir", str(tmp_path / "cache"), "--data-dir", "/nonexistent", *args]
    )


def assert_refused_before_work(result: Any, tmp_path: Path, *named: str) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    for text in named:
        assert text in lines[0], lines[0]
    assert not (tmp_path / "cache").exists()  # no cell was prepared: nothing ran
    return lines[0]


@pytest.mark.parametrize(("rows", "suite", "field"), DAMAGED_BASELINES)
def test_damaged_baseline_is_exit_2_naming_file_and_field(tmp_path: Path, rows: list, suite: Any, field: str) -> None:
    path = baseline_file(tmp_path, rows, suite)
    assert_refused_before_work(run_check(tmp_path, "--baseline", str(path)), tmp_path, str(path), field)


@pytest.mark.parametrize(
    ("content", "named"),
    [
        ("{not json", "is not JSON"),
        (json.dumps({"rows": [row("clean", 1.0)]}), "meta is missing"),
        (json.dumps({"meta": {"command": "eval"}, "rows": [row("clean", 1.0)]}), "meta.command"),
        (json.dumps([1, 2]), "the file"),
    ],
)
def test_baseline_that_is_not_one_is_exit_2(tmp_path: Path, content: str, named: str) -> None:
    path = tmp_path / "baseline.json"
    path.write_text(content)
    assert_refused_before_work(run_check(tmp_path, "--baseline", str(path)), tmp_path, str(path), named)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"tolerance": "1"}, "tolerance must be a number"),
        ({"tolerance": -5}, "tolerance must be"),
        ({"tolerance": math.nan}, "tolerance must be"),
        ({"n_examples": "20"}, "n_examples must be an integer"),
        ({"n_exampels": 5}, "n_exampels is not a known field"),
        ({"models": [{"model": "resnet18", "lam": 0.3}]}, "models[0]"),
    ],
)
def test_damaged_suite_file_is_exit_2(tmp_path: Path, change: dict, field: str) -> None:
    suite = tmp_path / "suite.json"
    suite.write_text(json.dumps(damaged_suite(**change)))
    baseline = baseline_file(tmp_path, GOOD_ROWS)
    result = run_check(tmp_path, "--baseline", str(baseline), "--suite", str(suite))
    assert_refused_before_work(result, tmp_path, f"suite {suite}: ", field)


@pytest.mark.parametrize("tolerance", ["nan", "inf", "-1", "1e9"])
def test_tolerance_flag_is_held_to_the_same_rule(tmp_path: Path, tolerance: str) -> None:
    baseline = baseline_file(tmp_path, GOOD_ROWS)
    result = run_check(tmp_path, "--baseline", str(baseline), "--tolerance", tolerance)
    assert_refused_before_work(result, tmp_path, "--tolerance must be")


# -- the verdict, on hand-made tables ------------------------------------------------------------
def test_within_tolerance_passes_and_counts_every_baseline_metric() -> None:
    table = compare_with_baseline([row("a", 80.0), row("b", 50.5)], [row("a", 80.5), row("b", 50.0)], tolerance=1.0)
    assert [r["status"] for r in table] == ["ok", "ok"] and [r["change"] for r in table] == [-0.5, 0.5]
    assert verdict(table) == {"passed": True, "compared": 2, "new": 0, "failures": []}


def test_a_baseline_with_no_metric_in_common_fails() -> None:
    """Every metric new (the baseline measured other models): nothing was compared, so nothing passed."""
    table = compare_with_baseline([row("a", 80.0), row("b", 50.0)], [row("a", 80.0, model="other")], tolerance=1.0)
    result = verdict(table)
    assert not result["passed"] and result["new"] == 2
    assert result["compared"] == 1 and result["failures"] == ["other a: missing"]
    only_new = verdict(compare_with_baseline([row("a", 80.0)], [], tolerance=1.0))
    assert not only_new["passed"] and only_new["compared"] == 0
    assert only_new["failures"] == ["the baseline has no metric that this suite measures"]


def test_new_metrics_are_reported_but_never_count_towards_passing() -> None:
    table = compare_with_baseline([row("a", 80.0), row("extra", 10.0)], [row("a", 80.0)], tolerance=1.0)
    assert {r["metric"]: r["status"] for r in table} == {"a": "ok", "extra": "new"}
    assert verdict(table) == {"passed": True, "compared": 1, "new": 1, "failures": []}


@pytest.mark.parametrize(
    ("now", "status"),
    [
        (math.nan, "invalid"),
        (math.inf, "invalid"),
        (250.0, "invalid"),
        ("93.8", "invalid"),
        (None, "invalid"),
    ],
)
def test_a_non_finite_measurement_fails(now: Any, status: str) -> None:
    table = compare_with_baseline([row("a", now)], [row("a", 80.0)], tolerance=1.0)
    assert table[0]["status"] == status and not verdict(table)["passed"]


def test_metrics_on_another_number_of_images_are_not_compared() -> None:
    table = compare_with_baseline([row("a", 80.0, n=40)], [row("a", 80.0, n=500)], tolerance=1.0)
    assert table[0]["status"] == "measured on 40 images, baseline on 500" and not verdict(table)["passed"]


@pytest.mark.parametrize("tolerance", [math.nan, -1.0, math.inf, "1"])
def test_compare_refuses_a_tolerance_that_is_not_finite_and_non_negative(tolerance: Any) -> None:
    with pytest.raises(UsageError, match="tolerance must be"):
        compare_with_baseline([row("a", 80.0)], [row("a", 80.0)], tolerance=tolerance)


def test_regression_by_more_than_the_tolerance_fails() -> None:
    table = compare_with_baseline([row("a", 78.9)], [row("a", 80.0)], tolerance=1.0)
    assert table[0]["status"] == "regressed" and verdict(table)["failures"] == ["m a: regressed"]
    table = compare_with_baseline([row("a", 79.0)], [row("a", 80.0)], tolerance=1.0)  # exactly the tolerance
    assert table[0]["status"] == "ok" and verdict(table)["passed"]


# -- end to end on a tiny suite --------------------------------------------------------------------
@pytest.mark.slow
def test_gate_end_to_end_on_a_tiny_suite(tmp_path: Path, data_dir: Path, tiny_checkpoint: Path) -> None:
    suite = tmp_path / "suite.json"
    suite.write_text(
        json.dumps(
            {
                "models": [{"model": "sdnet18", "checkpoint": str(tiny_checkpoint)}],
                "n_examples": 8,
                "cells": [],  # clean and the attack only: no corrupted cache to generate
                "steps": 1,
            }
        )
    )
    baseline = tmp_path / "baseline.json"
    common = ["--baseline", str(baseline), "--device", "cpu", "--cache-dir", str(tmp_path / "cache")]
    common += ["--data-dir", str(data_dir)]
    runner = CliRunner()
    made = runner.invoke(app, ["check", *common, "--suite", str(suite), "--update"])
    assert made.exit_code == 0, made.output
    stored = json.loads(baseline.read_text())
    assert [r["metric"] for r in stored["rows"]] == ["clean", "pgd-1-Linf-2/255"]
    same = runner.invoke(app, ["check", *common])
    assert same.exit_code == 0 and "check passed: 2 baseline metrics" in same.output, same.output

    unmeasured = {**stored, "rows": [*stored["rows"], {**stored["rows"][0], "metric": "fog-1"}]}
    baseline.write_text(json.dumps(unmeasured))
    missing = runner.invoke(app, ["check", *common])
    assert missing.exit_code == 1 and "fog-1: missing" in missing.output, missing.output

    other = {**stored, "rows": [{**r, "model": "another model"} for r in stored["rows"]]}
    baseline.write_text(json.dumps(other))
    nothing = runner.invoke(app, ["check", *common])
    assert nothing.exit_code == 1 and "missing" in nothing.output and "new" in nothing.output, nothing.output
