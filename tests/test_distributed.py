"""torchrun sharding: every row evaluated exactly once, and 2 CPU processes (gloo) report what one does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sdnet_cli import distributed
from sdnet_cli.cli import app
from sdnet_cli.data.corruptions import corrupt

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("world", [1, 2, 3, 5])
@pytest.mark.parametrize(("n", "batch_size"), [(70, 16), (64, 16), (3, 8), (10_000, 256)])
def test_shards_are_whole_batches_covering_every_row_once(
    monkeypatch: pytest.MonkeyPatch, world: int, n: int, batch_size: int
) -> None:
    monkeypatch.setattr(distributed, "world_size", lambda: world)
    parts = []
    for r in range(world):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        parts.append(distributed.shard(n, batch_size))
    assert np.array_equal(np.concatenate([np.arange(n)[p] for p in parts]), np.arange(n))
    assert all(p.start % batch_size == 0 for p in parts)  # the batches of a single-process run
    batches = [-(-(p.stop - p.start) // batch_size) for p in parts]
    assert max(batches) - min(batches) <= 1


def test_without_torchrun_every_helper_is_the_identity() -> None:
    flags = np.array([True, False])
    assert distributed.shard(70, 16) == slice(0, 70) and distributed.is_main() and distributed.rank_suffix() == ""
    assert distributed.combine(flags, "sum") is flags and distributed.describe() is None
    assert distributed.in_turn(lambda: 3) == 3


def torchrun(*args: str) -> subprocess.CompletedProcess:
    """``sdnet`` under torchrun with 2 CPU processes (a free rendezvous port: --standalone)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "sdnet_cli",
    ]
    return subprocess.run(command + list(args), cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def without_seconds(report: dict) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in report["rows"]]


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory, cifar_test: tuple[np.ndarray, np.ndarray]) -> Path:
    """A 70-image official-layout CIFAR-10-C folder (gaussian_noise), so no cache is generated."""
    root = tmp_path_factory.mktemp("CIFAR-10-C")
    images, labels = cifar_test[0][:70], cifar_test[1][:70]
    cells = [corrupt(images, "gaussian_noise", s, np.random.default_rng(s)) for s in range(1, 6)]
    np.save(root / "gaussian_noise.npy", np.concatenate(cells))
    np.save(root / "labels.npy", np.tile(labels, 5))
    return root


def eval_args(data_dir: Path, release: Path) -> list[str]:
    """sdnet18 on clean and gaussian_noise 2 and 5 of ``release``: 70 images in batches of 16, so rank 0 gets
    2 batches (32 images) and rank 1 gets 3 (38)."""
    return ["eval", "--model", "sdnet18", "-c", "gaussian_noise", "-s", "2", "-s", "5", "-n", "70", "--batch-size",
            "16", "--device", "cpu", "--cifar-c-dir", str(release), "--data-dir", str(data_dir), "--name", "eval"]  # fmt: skip


@pytest.mark.slow
def test_torchrun_eval_equals_a_single_process(data_dir: Path, release: Path, tmp_path: Path) -> None:
    args = eval_args(data_dir, release)
    single = CliRunner().invoke(app, args + ["--out", str(tmp_path / "single")])
    assert single.exit_code == 0, single.output
    shared = torchrun(*args, "--out", str(tmp_path / "shared"))
    assert shared.returncode == 0, shared.stderr
    one = json.loads((tmp_path / "single" / "eval.json").read_text())
    two = json.loads((tmp_path / "shared" / "eval.json").read_text())
    assert without_seconds(two) == without_seconds(one) and one["rows"][0]["n"] == 70
    assert two["meta"]["distributed"]["world_size"] == 2 and two["meta"]["distributed"]["backend"] == "gloo"
    assert shared.stdout.count("wrote ") == 3 and shared.stdout.count("on cifar10") == 1  # rank 0 alone


@pytest.mark.slow
def test_torchrun_resume_reruns_a_cell_saved_on_one_rank_only(
    data_dir: Path, release: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run killed between two ranks' writes leaves a cell saved on one rank only. Before: that rank skipped
    it while the other ran it, so the ranks' all-reduces paired different cells. Now both run it again."""
    from sdnet_cli import evaluate

    args = eval_args(data_dir, release)
    single = CliRunner().invoke(app, args + ["--out", str(tmp_path / "single")])
    assert single.exit_code == 0, single.output
    cell_row, cells_started = evaluate._cell_row, []

    def stop_in_the_second_cell(*a: object, **k: object) -> object:
        cells_started.append(1)
        if len(cells_started) == 2:
            raise KeyboardInterrupt
        return cell_row(*a, **k)

    monkeypatch.setattr(evaluate, "_cell_row", stop_in_the_second_cell)
    cut = CliRunner().invoke(app, args + ["--out", str(tmp_path / "shared")])
    monkeypatch.undo()
    assert cut.exit_code == 130, cut.output
    state = tmp_path / "shared" / "eval.state.json"
    assert list(json.loads(state.read_text())["cells"]) == ["clean/0"]
    state.rename(state.with_name("eval.rank0-of-2.state.json"))  # rank 0 saved the clean cell, rank 1 nothing
    shared = torchrun(*args, "--out", str(tmp_path / "shared"), "--resume")
    assert shared.returncode == 0, shared.stderr
    one = json.loads((tmp_path / "single" / "eval.json").read_text())
    two = json.loads((tmp_path / "shared" / "eval.json").read_text())
    assert without_seconds(two) == without_seconds(one)
    assert not list((tmp_path / "shared").glob("*.state.json"))


@pytest.mark.slow
def test_torchrun_attack_equals_a_single_process_sample_by_sample(data_dir: Path, tmp_path: Path) -> None:
    # 24 images in pools of 2 batches of 4: rank 0 attacks pool 0, rank 1 pools 1 and 2, each with its own seed
    args = [
        "attack",
        "--model",
        "sdnet18",
        "--attack",
        "pgd",
        "--steps",
        "2",
        "--eps",
        "2/255",
        "--eps",
        "8/255",
        "-n",
        "24",
        "--batch-size",
        "4",
        "--pool-batches",
        "2",
        "--seed",
        "1",
        "--device",
        "cpu",
        "--data-dir",
        str(data_dir),
        "--name",
        "pgd",
    ]
    single = CliRunner().invoke(
        app, args + ["--out", str(tmp_path / "single"), "--save-adv", str(tmp_path / "single.npz")]
    )
    assert single.exit_code == 0, single.output
    shared = torchrun(*args, "--out", str(tmp_path / "shared"), "--save-adv", str(tmp_path / "shared.npz"))
    assert shared.returncode == 0, shared.stderr
    one = json.loads((tmp_path / "single" / "pgd.json").read_text())
    two = json.loads((tmp_path / "shared" / "pgd.json").read_text())
    assert without_seconds(two) == without_seconds(one)
    a, b = np.load(tmp_path / "single.npz"), np.load(tmp_path / "shared.npz")
    assert np.array_equal(a["clean"], b["clean"]) and np.array_equal(a["robust"], b["robust"])
    assert np.array_equal(a["images"], b["images"])
    assert sorted(p.name for p in (tmp_path / "shared").iterdir()) == ["pgd.csv", "pgd.json", "pgd.md"]


@pytest.mark.parametrize("command", ["sweep-lambda", "train", "check", "make-c"])
def test_single_process_commands_refuse_torchrun(command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    args = {"train": ["--model", "sdnet18", "--out", "x.safetensors"], "make-c": ["--out", "c"]}.get(command, [])
    result = CliRunner().invoke(app, [command, *args])
    assert result.exit_code == 2
    assert "runs in one process" in result.output
