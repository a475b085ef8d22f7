"""One bound, every door (issue 28): a value that multiplies the work is held to the same limit whether it
comes from a flag, an API argument or a file, and refused before any work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sdnet_cli import api
from sdnet_cli.errors import UsageError
from sdnet_cli.models import load_model
from sdnet_cli.schemas import BATCH_MAX, EXAMPLES_MAX, FISTA_STEPS_MAX
from sdnet_cli.specs import DataSpec, ModelSpec, RunSpec


def test_fista_steps_from_the_flag_are_bounded_like_the_checkpoint_file(tmp_path: Path) -> None:
    """Before: accepted, and the run hung (here: killed after two minutes)."""
    command = [sys.executable, "-m", "sdnet_cli", "eval", "--n-steps", "1000000000", "--device", "cpu"]
    done = subprocess.run([*command, "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert f"--n-steps must be an integer >= 1 and <= {FISTA_STEPS_MAX:,}, got 1000000000" in done.stderr


@pytest.mark.parametrize(
    ("record", "argument", "value", "bound"),
    [
        (ModelSpec, "n_steps", FISTA_STEPS_MAX + 1, FISTA_STEPS_MAX),
        (DataSpec, "n_examples", EXAMPLES_MAX + 1, EXAMPLES_MAX),
        (RunSpec, "batch_size", BATCH_MAX + 1, BATCH_MAX),
        (DataSpec, "seed", 2**32, 2**32 - 1),
    ],
)
def test_api_arguments_meet_the_same_bounds(record: type, argument: str, value: int, bound: int) -> None:
    with pytest.raises(UsageError, match=rf"{argument} must be an integer >= \d and <= {bound:,}, got {value}"):
        record(**{argument: value})
    with pytest.raises(UsageError, match=rf"{argument} must be an integer"):  # the library's own door too
        if argument == "n_steps":
            load_model("sdnet18", n_steps=value)
        else:
            raise UsageError(f"{argument} must be an integer (only n_steps has a library door below the records)")


def test_the_fit_n_of_a_calibration_is_bounded() -> None:
    with pytest.raises(UsageError, match=rf"fit_n must be an integer >= 2 and <= {EXAMPLES_MAX:,}"):
        api.sweep_lambda(run=RunSpec(device="cpu"), fit_n=EXAMPLES_MAX + 1)
