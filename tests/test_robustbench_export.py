"""The RobustBench corruptions-leaderboard entry made from an eval report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sdnet_cli.data.corruptions import BENCHMARK_CORRUPTIONS
from sdnet_cli.errors import UsageError
from sdnet_cli.robustbench_export import check_request, robustbench_entry, write_robustbench_entry

# the fields of a real entry, model_info/cifar10/corruptions/Hendrycks2020AugMixWRN.json in RobustBench's repository
ROBUSTBENCH_FIELDS = {
    "link", "name", "authors", "additional_data", "number_forward_passes", "dataset", "venue",
    "architecture", "eps", "clean_acc", "reported", "corruptions_acc",
}  # fmt: skip


def eval_rows(adapt: str | None = None) -> list[dict]:
    """Clean 91.5; corruption i (0..14) at severity s (1..5): 50 + i + s, whose mean is 50 + 7 + 3 = 60."""
    extra = {"adapt": adapt, "uses_test_batches": True, "adapt_batch_size": 200} if adapt else {}
    rows = [{"model": "m", "dataset": "cifar10", "corruption": "clean", "severity": 0, "accuracy": 91.5, **extra}]
    for i, corruption in enumerate(BENCHMARK_CORRUPTIONS):
        for s in range(1, 6):
            rows.append(
                {"model": "m", "dataset": "cifar10", "corruption": corruption, "severity": s, "accuracy": 50.0 + i + s}
            )
            rows[-1].update(extra)
    rows.append({"model": "m", "dataset": "cifar10", "corruption": "mean", "severity": "all", "accuracy": 0.0})
    return rows


def meta(source: str = "generated", n: int = 2000) -> dict:
    data = {"benchmark": "CIFAR-10-C", "source": source, "path": "/x"} | ({"seed": 0} if source == "generated" else {})
    return {
        "command": "eval",
        "model": {"name": "sdnet18", "architecture": "sdnet18", "dataset": "cifar10"},
        "data_source": data,
        "n_examples": n,
        "checkpoint_sha256": "ab" * 32,
        "argv": "sdnet eval --model sdnet18 -c all",
    }


def test_entry_has_robustbench_fields_and_the_mean_over_the_75_cells() -> None:
    entry = robustbench_entry(eval_rows(), meta(), name="SDNet", venue="NeurIPS 2022")
    assert ROBUSTBENCH_FIELDS <= entry.keys()
    assert (entry["clean_acc"], entry["corruptions_acc"]) == ("91.50", "60.00")
    assert entry["eps"] is None and entry["dataset"] == "cifar10" and entry["architecture"] == "sdnet18"
    assert entry["corruptions_data"] == "generated" and entry["corruptions_seed"] == 0
    assert "not the official release" in entry["footnote"] and "first 2000 test images" in entry["footnote"]
    assert entry["uses_test_batches"] is False


def test_entry_marks_official_data_and_adaptation() -> None:
    entry = robustbench_entry(eval_rows("tent"), meta("official", 10000))
    assert entry["corruptions_data"] == "official" and entry["corruptions_seed"] is None
    assert "official release" in entry["footnote"] and "first" not in entry["footnote"]
    assert entry["uses_test_batches"] is True and "tent on batches of 200" in entry["footnote"]


def test_incomplete_or_foreign_reports_are_refused() -> None:
    rows = [r for r in eval_rows() if not (r["corruption"] == "fog" and r["severity"] == 3)]
    with pytest.raises(UsageError, match="lacks 1 cells \\(fog/3\\)"):
        robustbench_entry(rows, meta())
    with pytest.raises(UsageError, match="eval report"):
        robustbench_entry(eval_rows(), {**meta(), "command": "attack"})
    with pytest.raises(UsageError, match="oracle"):
        robustbench_entry(eval_rows(), {**meta(), "oracle": True})


def test_written_entry_reads_back(tmp_path: Path) -> None:
    entry = robustbench_entry(eval_rows(), meta())
    path = write_robustbench_entry(tmp_path / "SDNet18.json", entry)
    assert json.loads(path.read_text()) == entry
    with pytest.raises(UsageError, match=r"\.json"):
        write_robustbench_entry(tmp_path / "entry.txt", entry)


def test_request_is_checked_before_the_evaluation(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from sdnet_cli.cli import app

    assert check_request(tmp_path / "e.json", "cifar10", ["all"], ["all"]) == tmp_path / "e.json"
    with pytest.raises(UsageError, match="corruptions all, severities all"):
        check_request(tmp_path / "e.json", "cifar10", ["all"], ["1", "2", "3", "4"])
    with pytest.raises(UsageError, match="not 'imagenet'"):
        check_request(tmp_path / "e.json", "imagenet", ["all"], ["all"])
    result = CliRunner().invoke(
        app, ["eval", "-c", "gaussian_noise", "--robustbench-json", str(tmp_path / "e.json"), "--out", str(tmp_path)]
    )
    assert result.exit_code == 2 and "--robustbench-json needs every cell" in result.output
    assert not list(tmp_path.iterdir())  # refused before any work
