"""The README's Python API example runs as written and does what it says."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # runs the whole README example on real data

README = Path(__file__).resolve().parents[1] / "README.md"


def python_api_examples() -> list[str]:
    section = README.read_text().split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 2, "the README's Python API section shows a named model and a plain module"
    return blocks


def run_example(code: str) -> str:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, str(README), "exec"), {})
    return printed.getvalue()


def test_python_api_example_runs(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDNET_DATA", str(data_dir))
    monkeypatch.chdir(tmp_path)
    text = run_example(python_api_examples()[0])
    written = sorted(p.name for p in (tmp_path / "runs" / "notebook").iterdir())
    assert written == ["eval-sdnet18-w32-cifar10.csv", "eval-sdnet18-w32-cifar10.json", "eval-sdnet18-w32-cifar10.md"]
    assert "gaussian_noise" in text and "robust_accuracy" in text


def test_plain_module_example_runs(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A module the user built goes through evaluate_corruptions and attack; both reports name the same weights."""
    monkeypatch.setenv("SDNET_DATA", str(data_dir))
    monkeypatch.chdir(tmp_path)
    assert run_example(python_api_examples()[1]).strip().splitlines()[-1] == "True"
