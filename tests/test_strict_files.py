"""Files read strictly (issue 28): a key given twice, a named pipe, a folder, JSON nested without end and a
file too large are refused with one line naming the file, before anything parses or waits on them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sdnet_cli import _io
from sdnet_cli._io import read_json
from sdnet_cli.check import Suite, read_baseline
from sdnet_cli.cli import app
from sdnet_cli.errors import UsageError


def run_within(seconds: float, target: object) -> object:
    """``target()`` in a thread; fails the test (instead of hanging it) when it has not returned in time."""
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(_outcome(target)), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still blocked after {seconds} s"
    return result[0]


def _outcome(target: object) -> object:
    try:
        return target()  # type: ignore[operator]
    except BaseException as exc:  # noqa: BLE001 - handed back to the test
        return exc


def test_a_key_given_twice_is_refused_naming_file_and_key(tmp_path: Path) -> None:
    suite = tmp_path / "suite.json"
    suite.write_text('{"models": ["resnet18"], "tolerance": 1.0, "tolerance": 100.0}')
    with pytest.raises(UsageError, match=r"suite file .*suite.json: the key 'tolerance' is given twice"):
        Suite.load(suite)


def test_a_baseline_row_with_two_values_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "baseline.json"
    row = '{"model": "m", "metric": "clean", "value": 95.0, "value": 0.0, "n": 10}'
    path.write_text('{"meta": {"command": "check"}, "rows": [' + row + "]}")
    with pytest.raises(UsageError, match=r"baseline .*baseline.json: the key 'value' is given twice"):
        read_baseline(path)


def test_a_duplicate_inside_a_nested_object_is_found_too(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text('{"a": [{"b": {"c": 1, "c": 1}}]}')  # even with equal values: the file is ambiguous
    with pytest.raises(UsageError, match="the key 'c' is given twice"):
        read_json(path, "report")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_named_pipe_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "suite.json"
    os.mkfifo(fifo)
    outcome = run_within(10, lambda: Suite.load(fifo))
    assert isinstance(outcome, UsageError) and "is a named pipe, not a file" in str(outcome)
    command = [sys.executable, "-m", "sdnet_cli", "compare", f"a={fifo}", "--out", str(tmp_path / "o")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)  # a blocked reader times out
    assert done.returncode == 2 and "is a named pipe, not a file" in done.stderr, done.stderr


def test_a_folder_is_refused_as_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["compare", f"a={tmp_path}", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert f"report {tmp_path} is a folder, not a file" in result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, IsADirectoryError)


def test_deep_nesting_is_refused_before_the_parser_recurses(tmp_path: Path) -> None:
    path = tmp_path / "suite.json"
    path.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(UsageError, match=r"suite file .*suite.json nests arrays or objects more than 64 deep"):
        Suite.load(path)


def test_the_depth_bound_is_exact_and_ignores_brackets_inside_strings(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text("[" * 64 + "]" * 64)
    assert read_json(path, "report") is not None
    path.write_text(json.dumps({"label": "[[[{" * 100 + '"\\"[[' * 50, "rows": [[["x"]]]}))
    assert read_json(path, "report")["rows"] == [[["x"]]]
    path.write_text("[" * 65 + "]" * 65)
    with pytest.raises(UsageError, match="more than 64 deep"):
        read_json(path, "report")


def test_a_file_larger_than_the_bound_is_refused_unread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"rows": list(range(100))}))
    monkeypatch.setattr(_io, "JSON_BYTES_MAX", 100)
    size = path.stat().st_size
    with pytest.raises(UsageError, match=rf"report .*x.json is {size} bytes; at most 100 are read"):
        read_json(path, "report")


def test_a_check_whose_suite_is_unreadable_exits_2_not_as_a_regression(tmp_path: Path) -> None:
    """Exit 1 means a regression; an input problem must never read as one."""
    suite = tmp_path / "suite.json"
    suite.write_text('{"models": ["resnet18"], "models": ["sdnet18"]}')
    baseline = tmp_path / "b.json"
    result = CliRunner().invoke(app, ["check", "--update", "--suite", str(suite), "--baseline", str(baseline)])
    assert result.exit_code == 2 and "given twice" in result.output, result.output
    result = CliRunner().invoke(app, ["check", "--update", "--suite", str(tmp_path), "--baseline", str(baseline)])
    assert result.exit_code == 2 and "is a folder, not a file" in result.output, result.output
    result = CliRunner().invoke(app, ["check", "--baseline", str(tmp_path)])
    assert result.exit_code == 2 and "is a folder, not a file" in result.output, result.output


def test_a_check_that_crashes_exits_3_never_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sdnet_cli import api

    def broken(**kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(api, "check", broken)
    result = CliRunner().invoke(app, ["check", "--baseline", str(tmp_path / "b.json")])
    assert result.exit_code == 3, result.output
    assert "not a regression" in result.output
