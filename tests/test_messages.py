"""Messages printed as written (issue 28): user text is never read as markup or emoji codes, the flag
rewrite touches only the parameter's own name (never a path), and a suite's entries are named as the
file's fields, not as --model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sdnet_cli.cli import app
from sdnet_cli.cli._app import flag_message
from sdnet_cli.errors import Interrupted, UsageError

BASELINE = Path(__file__).resolve().parents[1] / "reports" / "baseline.json"


@pytest.mark.parametrize("name", ["qapwn:m:", "[bold]x[/bold]:smile:", ":thumbs_up:"])
def test_a_model_name_is_printed_verbatim(name: str) -> None:
    """Before: ``qapwn:m:`` was printed as ``qapwnⓂ``."""
    result = CliRunner().invoke(app, ["eval", "-m", name, "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert repr(name) in result.output, result.output


@pytest.mark.parametrize(
    ("message", "parameter", "expected"),
    [
        (
            "the resume state runs/resume/r.state.json is damaged",
            "resume",
            "the --resume state runs/resume/r.state.json is damaged",
        ),
        (
            "3 finished pools are saved in runs/resume/r.state.json; the same call with resume=True continues",
            "resume",
            "3 finished pools are saved in runs/resume/r.state.json; the same call with --resume continues",
        ),
        ("checkpoint checkpoint/x is a directory", "checkpoint", "--checkpoint checkpoint/x is a directory"),
        ("n_examples must be an integer >= 1", "n_examples", "--n-examples must be an integer >= 1"),
        ("cannot read 'seed' in seed.json", "seed", "cannot read 'seed' in seed.json"),
    ],
)
def test_only_the_parameters_own_name_becomes_the_flag(message: str, parameter: str, expected: str) -> None:
    """Before: ``runs/resume/r.state.json`` became ``runs/--resume/r.state.json``."""
    assert flag_message(UsageError(message, parameter)) == expected
    assert flag_message(Interrupted(message, parameter)) == expected


def test_a_suite_entry_is_named_as_the_files_field(tmp_path: Path) -> None:
    """Before: an unknown model in a suite was reported as ``unknown --model``."""
    suite = tmp_path / "suite.json"
    suite.write_text(json.dumps({"models": ["resnet18", {"model": "no_such_net", "lam": "0.2"}], "n_examples": 2}))
    result = CliRunner().invoke(
        app,
        ["check", "--suite", str(suite), "--baseline", str(BASELINE), "--device", "cpu", "--data-dir", "/nonexistent"],
    )
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert f"suite {suite}: models[1]: unknown model 'no_such_net'" in line, line
    assert "--model" not in line
