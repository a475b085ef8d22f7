"""The generation pool never hangs: it runs from any kind of main module, and a dead worker is one error.

The reference for "works" is the in-process result (workers=1), which the pool must equal byte for byte.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from sdnet_cli.data.cifar_c_generate import generate_cifar_c
from sdnet_cli.data.workers import WorkerError, run_pool

REPO = Path(__file__).resolve().parents[1]

# No `if __name__ == "__main__":` guard, on purpose: spawn workers used to re-run it (and hang).
UNGUARDED = """
import sys
import numpy as np
from sdnet_cli.data.cifar_c_generate import generate_cifar_c

images = np.random.default_rng(0).integers(0, 256, (2000, 32, 32, 3), dtype=np.uint8)
generate_cifar_c(images, np.zeros(2000, np.int64), sys.argv[-1], ["contrast"], seed=0, workers=2)
print("generated", flush=True)
"""


def reference(tmp_path: Path) -> np.ndarray:
    images = np.random.default_rng(0).integers(0, 256, (2000, 32, 32, 3), dtype=np.uint8)
    generate_cifar_c(images, np.zeros(2000, np.int64), tmp_path / "ref", ["contrast"], seed=0, workers=1)
    return np.load(tmp_path / "ref" / "contrast.npy")


@pytest.mark.parametrize(
    "how", [pytest.param("script", marks=pytest.mark.slow), "stdin", pytest.param("dash-c", marks=pytest.mark.slow)]
)
def test_pool_runs_from_a_main_module_without_guard(tmp_path: Path, how: str) -> None:
    """A script without a main guard, the same read from stdin, and `python -c`: each finishes, same bytes."""
    out = tmp_path / "out"
    script = tmp_path / "s.py"
    script.write_text(UNGUARDED)
    command = {
        "script": [sys.executable, str(script), str(out)],
        "stdin": [sys.executable, "-", str(out)],
        "dash-c": [sys.executable, "-c", UNGUARDED, str(out)],
    }[how]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        command,
        input=UNGUARDED if how == "stdin" else None,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("generated") == 1  # the script ran once: not again in each worker
    assert np.array_equal(np.load(out / "contrast.npy"), reference(tmp_path))
    assert not list(out.glob(".*.tmp"))  # the pool's scratch input is gone too


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_killed_worker_ends_the_run_with_one_error_naming_it(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, (3000, 32, 32, 3), dtype=np.uint8)
    killed: list[int] = []

    def kill_one(k: int) -> None:
        if not killed:
            victim = multiprocessing.active_children()[0].pid
            assert victim is not None
            killed.append(victim)
            os.kill(victim, signal.SIGKILL)

    start = time.monotonic()
    with pytest.raises(WorkerError) as err:
        generate_cifar_c(
            images, np.zeros(3000, np.int64), tmp_path, ["contrast", "fog"], seed=0, workers=2, progress=kill_one
        )
    assert time.monotonic() - start < 30
    message = str(err.value)
    assert f"worker process {killed[0]} was killed by SIGKILL" in message and "\n" not in message
    assert not list(tmp_path.glob(".*.tmp")) and not (tmp_path / "contrast.npy").exists()
    assert not multiprocessing.active_children()  # the other worker was stopped, not left running


def test_a_worker_that_exits_is_named_with_its_exit_code() -> None:
    """os._exit(3) in a worker: no result ever comes; the pool says which worker ended and how."""
    start = time.monotonic()
    with pytest.raises(WorkerError, match=r"worker process \d+ exited with code 3"):
        run_pool(os._exit, [(3,), (3,)], lambda task, result: None, workers=2)
    assert time.monotonic() - start < 30


def test_pool_and_in_process_call_the_same_function_with_the_shared_input(tmp_path: Path) -> None:
    shared = np.arange(12, dtype=np.int64).reshape(3, 4)
    results: dict[int, int] = {}
    for workers in (1, 2):
        got: dict[tuple[int, ...], int] = {}
        run_pool(np.take, [(i,) for i in range(12)], got.__setitem__, workers, shared=shared, scratch=tmp_path)
        results[workers] = sum(got.values())
    assert results == {1: sum(range(12)), 2: sum(range(12))}
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("how", ["script", "stdin"])
def test_readme_api_example_runs_as_a_plain_script_on_an_empty_cache(tmp_path: Path, how: str) -> None:
    """README's first API example, copied into a file without a main guard (and piped into stdin)."""
    readme = (REPO / "README.md").read_text()
    example = readme.split("## Python API", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    example = example.replace("n_examples=200", "n_examples=20").replace("n_examples=64", "n_examples=8")
    script = tmp_path / "s.py"
    script.write_text(example)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "SDNET_CACHE": str(tmp_path / "cache"),
        "OMP_NUM_THREADS": "1",
    }
    command = [sys.executable, str(script)] if how == "script" else [sys.executable, "-"]
    done = subprocess.run(
        command,
        input=example if how == "stdin" else None,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "gaussian_noise" in done.stdout
    assert textwrap.dedent(done.stdout).count("robust_accuracy") == 1


def test_an_interrupt_before_the_pool_starts_stays_an_interrupt() -> None:
    """SIGTERM (a KeyboardInterrupt) while the shared array is being written, before any worker exists: it must
    reach the caller as the interrupt, not as an AttributeError from the pool's except clause, which CI saw
    under load when ``concurrent.futures.process`` had not been imported yet. A fresh interpreter, so no other
    test has imported it."""
    code = (
        "import numpy as np\n"
        "from sdnet_cli.data import workers\n"
        "def interrupted(*a, **k):\n"
        "    raise KeyboardInterrupt\n"
        "workers.np.save = interrupted\n"
        "try:\n"
        "    workers.run_pool(abs, [(1,), (2,)], lambda t, r: None, 2, shared=np.zeros(4))\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupt')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "interrupt", done.stderr
