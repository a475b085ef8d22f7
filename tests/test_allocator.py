"""`runtime.keep_freed_memory`: large tensors reuse freed memory instead of faulting in fresh pages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sdnet_cli import runtime
from sdnet_cli.cli import app

FAULTS = """
import json, resource, sys, torch
from sdnet_cli.runtime import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
for _ in range(10):  # 64 MiB each, written and freed: the first few grow the heap (aligned blocks leave gaps)
    torch.ones(16 << 20)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    torch.ones(16 << 20)
print(json.dumps({"applied": applied, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def faults_of_four_64mib_tensors(mode: str, switch: str = "1") -> dict:
    """Minor page faults (the kernel's count) of writing four fresh 64 MiB tensors, after ten were freed."""
    env = {**os.environ, "SDNET_KEEP_FREED_MEMORY": switch}
    done = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True, env=env)
    return json.loads(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_the_off_switch_leaves_malloc_as_it_starts() -> None:
    off = faults_of_four_64mib_tensors("keep", switch="0")
    assert off["applied"] is False
    assert off["faults"] > 4 * (64 << 20) // 4096 // 100  # fresh pages again, as in the "default" run below


def test_a_bad_off_switch_is_a_usage_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SDNET_KEEP_FREED_MEMORY", "off")
    result = CliRunner().invoke(app, ["eval", "-n", "1", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "SDNET_KEEP_FREED_MEMORY must be 0 or 1" in result.output, result.output


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_large_tensors_reuse_freed_memory_instead_of_fresh_pages() -> None:
    default, kept = faults_of_four_64mib_tensors("default"), faults_of_four_64mib_tensors("keep")
    if not kept["applied"]:
        pytest.skip("not glibc: nothing to set")
    pages = 4 * (64 << 20) // 4096
    # glibc as it starts maps each tensor afresh: about one fault per 4 KiB page (fewer with huge pages)
    assert default["faults"] > 10 * max(kept["faults"], 1), (default, kept)
    assert kept["faults"] < pages // 100, kept


def test_every_command_keeps_freed_memory_for_its_process(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[bool] = []
    monkeypatch.setattr(runtime, "keep_freed_memory", lambda: calls.append(True) or True)
    result = CliRunner().invoke(app, ["eval", "-n", "0", "--out", str(tmp_path)])
    assert result.exit_code == 2 and calls == [True], result.output
