"""The benchmark scripts still run and print their tables (tiny settings: this checks they work, not speed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "args", "title"),
    [
        (
            "throughput.py",
            [
                "--width",
                "4",
                "--batch-size",
                "8",
                "--repeats",
                "1",
                "--scaling",
                "--n-examples",
                "16",
                "--scaling-batch-size",
                "4",
            ],
            "Evaluation time vs n-examples",
        ),
        (
            "throughput.py",
            ["--shipped", "--batch-size", "4", "--repeats", "1", "--precision", "fp32", "--precision", "bf16-checked"],
            "Evaluation throughput, resnet18 vs sdnet18",
        ),
        ("sweep_profile.py", ["--n", "2", "--repeats", "1"], "Sweep profile: where the oracle sweep's time goes"),
        ("train_step.py", ["--width", "8", "--batch-size", "8", "--repeats", "1"], "Training step throughput"),
        ("lambda_throughput.py", ["--width", "4", "--batch-size", "8", "--rounds", "1"], "Fixed lambda vs"),
        ("stem_precision.py", ["--width", "4", "--batch-size", "8", "--repeats", "1"], "CSC stem precision"),
        ("checked_precision.py", ["--n", "8", "--cells", "1"], "bf16-checked vs fp32: totals"),
        ("eval_memory.py", ["--n", "4", "--batch-size", "4", "--rounds", "1"], "Peak memory of sdnet eval"),
        ("pgd_step.py", ["--width", "4", "--batch-size", "4", "--steps", "1", "--repeats", "1"], "PGD step time"),
        ("cifar_c_rate.py", ["--images", "2", "--pipeline-images", "0"], "CIFAR-10-C generation rate"),
        ("cli_startup.py", ["--repeats", "1"], "CLI start-up"),
        (
            "eval_batch_size.py",
            ["--n-images", "8", "--batch-size", "4", "--batch-size", "8", "--repeats", "1", "--model", "sdnet18"],
            "Eval throughput by batch size",
        ),
    ],
)
def test_benchmark_prints_its_table(script: str, args: list[str], title: str, data_dir: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SDNET_DATA": str(data_dir)}
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert f"### {title}" in result.stdout and "|---" in result.stdout.replace(":", "-")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "flag"), [("authors_speed.py", "--authors-src"), ("autoattack_reference.py", "--reference-src")]
)
def test_side_by_side_without_the_other_code_says_what_to_pass(script: str, flag: str) -> None:
    """A side-by-side needs a checkout of the other project; without one it measures nothing and exits 0."""
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script)],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert flag in result.stdout and len(result.stdout.strip().splitlines()) == 1


@pytest.mark.slow
def test_gpu_check_smoke_mode_passes_every_stage_on_cpu(data_dir: Path, tmp_path: Path) -> None:
    """The GPU check at tiny sizes on CPU (gloo for torchrun): every stage passes, the evaluation covers
    19 corruptions x 5 severities plus clean, and the one-process torchrun rows equal the plain run's."""
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SDNET_DATA": str(data_dir)}
    command = [sys.executable, str(BENCHMARKS / "gpu_check.py"), "run", "--device", "cpu", "--quick", "--out", str(out)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = (out / "summary.md").read_text()
    rows = [line.split("|")[1:3] for line in summary.splitlines() if line.startswith("| ") and "| stage |" not in line]
    assert [(stage.strip(), status.strip()) for stage, status in rows] == [
        (stage, "ok") for stage in ("env", "tests", "throughput", "cifar_c", "torchrun")
    ]
    assert "12 rows equal, backend gloo" in summary  # clean + 2 corruptions x 5 severities + mean
    cells = json.loads((out / "cifar_c_eval.json").read_text())["rows"]
    assert len({(r["corruption"], r["severity"]) for r in cells if r["corruption"] not in ("clean", "mean")}) == 19 * 5
    assert all(r["n"] == 8 for r in cells if r["corruption"] != "mean")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [
            "summary.md",
            "cifar_c_eval.json",
            *(f"{s}.txt" for s in ("env", "tests", "throughput", "cifar_c", "torchrun")),
        ]
    )
