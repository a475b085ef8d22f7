"""sdnet check: the same suite twice agrees; a lowered metric fails with exit code 1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sdnet_cli.check import Suite, compare_with_baseline, failed
from sdnet_cli.cli import app
from sdnet_cli.errors import UsageError


def row(metric: str, value: float, model: str = "m") -> dict:
    return {"model": model, "checkpoint_sha256": "abc", "metric": metric, "n": 100, "value": value}


def test_statuses_against_the_tolerance() -> None:
    baseline = [row("clean", 80.0), row("noise", 50.0), row("pgd", 10.0), row("gone", 1.0)]
    now = [row("clean", 79.5), row("noise", 48.0), row("pgd", 12.0), row("extra", 3.0)]
    table = {r["metric"]: r for r in compare_with_baseline(now, baseline, tolerance=1.0)}
    assert table["clean"]["status"] == "ok" and table["clean"]["change"] == -0.5
    assert table["noise"]["status"] == "regressed"
    assert table["pgd"]["status"] == "improved"
    assert table["gone"]["status"] == "missing" and table["extra"]["status"] == "new"
    assert failed(list(table.values()))
    assert not failed(compare_with_baseline([row("clean", 80.0)], [row("clean", 80.5)], tolerance=1.0))


def test_suite_file_round_trip_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "suite.json"
    path.write_text(
        json.dumps(
            {"models": ["resnet18", {"model": "sdnet18", "lam": "0.3"}], "cells": [["fog", 2]], "n_examples": 50}
        )
    )
    suite = Suite.load(path)
    assert [m.label for m in suite.models] == ["resnet18", "sdnet18 lam=0.3"]
    assert suite.cells == [("fog", 2)] and suite.n_examples == 50 and suite.tolerance == 1.0
    path.write_text(json.dumps({"n_exampels": 5}))
    with pytest.raises(UsageError, match="suite.json: n_exampels is not a known field"):
        Suite.load(path)


@pytest.mark.slow
def test_check_passes_on_itself_and_fails_on_a_regression(tmp_path: Path, data_dir: Path) -> None:
    suite = tmp_path / "suite.json"
    suite.write_text(
        json.dumps({"models": ["resnet18"], "cells": [["gaussian_noise", 5]], "n_examples": 40, "steps": 2})
    )
    baseline = tmp_path / "baseline.json"
    common = [
        "--baseline",
        str(baseline),
        "--device",
        "cpu",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--data-dir",
        str(data_dir),
    ]
    runner = CliRunner()
    made = runner.invoke(app, ["check", *common, "--suite", str(suite), "--update"])
    assert made.exit_code == 0, made.output
    stored = json.loads(baseline.read_text())
    assert {r["metric"] for r in stored["rows"]} == {"clean", "gaussian_noise-5", "pgd-2-Linf-2/255"}
    assert stored["meta"]["suite"]["n_examples"] == 40
    again = runner.invoke(app, ["check", *common])  # the suite comes from the baseline
    assert again.exit_code == 0, again.output
    assert "check passed: 3 baseline metrics" in again.output
    min(stored["rows"], key=lambda r: r["value"])["value"] += 5.0  # the baseline was better: now a regression
    baseline.write_text(json.dumps(stored))
    worse = runner.invoke(app, ["check", *common])
    assert worse.exit_code == 1
    assert "regressed" in worse.output
    missing = runner.invoke(app, ["check", "--baseline", str(tmp_path / "none.json")])
    assert missing.exit_code == 2 and "--update" in missing.output


class Recorded:
    """A ``Progress`` that records each task's total and what its work reported."""

    def __init__(self) -> None:
        self.tasks: list[tuple[str, int, list[int]]] = []

    def task(self, description: str, total: int):  # type: ignore[no-untyped-def]
        done: list[int] = []
        self.tasks.append((description, total, done))
        return done.append

    def note(self, text: str) -> None:
        pass


def test_the_suite_s_progress_counts_forwards_after_the_generation_has_its_own_task(
    tmp_path: Path, data_dir: Path
) -> None:
    """Generating the cells is a task of its own, finished before the suite's task starts; the suite's task
    counts forwards, an attacked image weighing what PGD-2 costs (1 forward and 2 gradient calls of 2 forwards
    each = 5), so its total is 8 images x (clean + 1 cell + 5) = 56 and its work reports exactly that."""
    from sdnet_cli.check import run_suite
    from sdnet_cli.runtime import Runtime

    suite = Suite.load_dict({"models": ["resnet18"], "cells": [["gaussian_noise", 5]], "n_examples": 8, "steps": 2})
    progress = Recorded()
    run_suite(suite, Runtime.create("cpu"), data_dir, tmp_path / "cache", progress)
    (generating, missing, generated), (checking, total, done) = progress.tasks
    assert generating.startswith("generating") and sum(generated) == missing > 0
    assert checking == "checking" and total == 8 * (2 + 5) and sum(done) == total
    assert done[:2] == [8, 8] and all(k % 5 == 0 for k in done[2:])  # clean, the cell, then the attack at 5 an image


def test_an_attack_s_cost_in_forwards_from_its_calls() -> None:
    from torch import nn

    from sdnet_cli.attacks import AttackConfig, forwards_per_image

    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 10))
    pgd = AttackConfig.create(attack="pgd", norm="Linf", eps=["1/255", "2/255"], steps=10)
    assert forwards_per_image(model, pgd, 10) == 1 + 2 * (2 * 10)  # 10 gradient calls at each of 2 eps
    square = AttackConfig.create(attack="square", norm="Linf", eps=["1/255"], steps=300)
    assert forwards_per_image(model, square, 10) == 1 + 300  # forwards only, one per query
