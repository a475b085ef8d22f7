"""The benchmark scripts still run and print their tables (tiny settings: this checks they work, not speed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize(
    ("script", "args", "title"),
    [
        ("throughput.py", ["--width", "4", "--batch-size", "8", "--repeats", "1", "--scaling", "--n-examples", "16",
                           "--scaling-batch-size", "4"], "Evaluation time vs n-examples"),
        ("train_step.py", ["--width", "4", "--batch-size", "8", "--repeats", "1"], "Training step throughput"),
        ("lambda_throughput.py", ["--width", "4", "--batch-size", "8", "--rounds", "1"], "Fixed lambda vs"),
        ("stem_precision.py", ["--width", "4", "--batch-size", "8", "--repeats", "1"], "CSC stem precision"),
        ("pgd_step.py", ["--width", "4", "--batch-size", "4", "--steps", "1", "--repeats", "1"], "PGD step time"),
        ("cifar_c_rate.py", ["--images", "2", "--pipeline-images", "0"], "CIFAR-10-C generation rate"),
        ("cli_startup.py", ["--repeats", "1"], "CLI start-up"),
    ],
)
def test_benchmark_prints_its_table(script: str, args: list[str], title: str, data_dir: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SDNET_DATA": str(data_dir)}
    result = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"### {title}" in result.stdout and "|---" in result.stdout.replace(":", "-")
