"""Words that cannot drift: help shows the numbers the code uses, options a command lacks are not offered,
and the README carries no test counts or suite timings that nothing keeps true."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from sdnet_cli.attacks.config import BATCH_SIZE, POOL_BATCHES
from sdnet_cli.cli import app

README = Path(__file__).resolve().parents[1] / "README.md"


def help_text(*command: str) -> str:
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


def test_attack_help_shows_the_default_numbers_and_no_python_names() -> None:
    text = help_text("attack")
    assert f"Images per attacked batch (default: {BATCH_SIZE})" in text
    assert f"pools of this many batches (default: {POOL_BATCHES})" in text
    assert "sdnet_cli." not in text
    assert "--adapt" not in text  # attacks on adapted models are out of scope: not offered at all
    assert "random starts" in text and "generated corruptions" not in text.split("--seed", 1)[1].split("--", 1)[0]


def test_train_offers_only_the_datasets_it_trains_on() -> None:
    dataset = help_text("train").split("--dataset", 1)[1].split(" --", 1)[0]
    assert "cifar10 or cifar100" in dataset and "imagenet" not in dataset


def test_readme_has_no_test_counts() -> None:
    assert not re.search(r"\(\d[\d,]* tests\)", README.read_text())
