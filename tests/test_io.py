"""Writes that fail cleanly: report sets all or nothing, one-line errors naming the path and the system's
reason, no temporaries left, and a pre-flight probe that refuses a folder or name the run could not write."""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from sdnet_cli import _io
from sdnet_cli._io import (
    WriteError,
    atomic_path,
    atomic_write_text,
    check_writable_dir,
    package_versions,
    sweep_stale_temps,
    write_files_atomically,
)
from sdnet_cli.errors import UsageError
from sdnet_cli.report import Report, check_report_target

ROWS = [{"corruption": "clean", "severity": 0, "accuracy": 50.0}]


def everything_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


class FullDisk(io.BytesIO):
    """A file object whose writes fail as on a full disk."""

    def write(self, data: Any) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def full_disk_after(monkeypatch: pytest.MonkeyPatch, good_files: int) -> None:
    """``_io``'s ``open``: the first ``good_files`` files are written for real, then the disk is full
    (the real file is still created, as a write that runs out of space leaves a partial file)."""
    opened = []

    def fake_open(path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        opened.append(path)
        real = open(path, mode, *args, **kwargs)
        if len(opened) <= good_files:
            return real
        real.close()
        return FullDisk()

    monkeypatch.setattr(_io, "open", fake_open, raising=False)


def test_a_set_is_written_whole(tmp_path: Path) -> None:
    files = {tmp_path / "out" / "a.json": '{"x": 1}\n', tmp_path / "out" / "b.bin": b"\x00\x01"}
    assert write_files_atomically(files) == list(files)
    assert (tmp_path / "out" / "a.json").read_text() == '{"x": 1}\n'
    assert (tmp_path / "out" / "b.bin").read_bytes() == b"\x00\x01"
    assert everything_in(tmp_path / "out") == ["a.json", "b.bin"]


@pytest.mark.parametrize("good_files", [0, 1, 2])
def test_full_disk_leaves_no_file_of_the_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, good_files: int) -> None:
    full_disk_after(monkeypatch, good_files)
    out = tmp_path / "out"
    with pytest.raises(WriteError) as raised:
        Report(ROWS, {"command": "eval", "seed": 0}, name="r", title="t").write(out)
    assert everything_in(out) == []
    message = str(raised.value)
    assert message.count("\n") == 0 and "No space left on device" in message
    assert str(out / ("r.json", "r.csv", "r.md")[good_files]) in message  # the file that did not fit
    assert isinstance(raised.value, UsageError)  # the CLI prints it as one line, exit 2


def test_full_disk_keeps_the_previous_set_and_removes_the_plots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A report written again into a full folder: the earlier tables stay as they were, and the plot
    this attempt drew (an extra, written first) is removed with the rest of its set."""
    Report(ROWS, {"command": "eval", "seed": 0}, name="r", title="t").write(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def plot(out_dir: Path, stem: str) -> list[Path]:
        atomic_write_text(out_dir / f"{stem}-curve.png", "png")
        return [out_dir / f"{stem}-curve.png"]

    full_disk_after(monkeypatch, 1)
    changed = [{**ROWS[0], "accuracy": 10.0}]
    with pytest.raises(WriteError):
        Report(changed, {"command": "eval", "seed": 0}, name="r", title="t", extras=[plot]).write(tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_failed_rename_removes_what_was_renamed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_replace = os.replace
    calls = []

    def second_fails(src: Any, dst: Any) -> None:
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_replace(src, dst)

    monkeypatch.setattr(_io.os, "replace", second_fails)
    with pytest.raises(WriteError, match="b.txt: Input/output error"):
        write_files_atomically({tmp_path / "a.txt": "a", tmp_path / "b.txt": "b", tmp_path / "c.txt": "c"})
    assert everything_in(tmp_path) == []


def test_atomic_path_names_the_path_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    with pytest.raises(WriteError) as raised, atomic_path(target) as tmp:
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert str(raised.value) == f"cannot write {target}: No space left on device"
    assert everything_in(tmp_path) == []


def test_a_stale_temporary_of_a_dead_writer_is_swept(tmp_path: Path) -> None:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(child.stdout)
    stale, live = tmp_path / f".r.json.{dead}.tmp", tmp_path / f".r.json.{os.getppid()}.tmp"  # our parent: alive
    stale.write_text("left by a killed run")
    other = tmp_path / f".notes.txt.{dead}.tmp"  # not a file of this set: left alone
    other.write_text("x")
    live.write_text("x")
    assert sweep_stale_temps(tmp_path, ["r.json"]) == [stale]
    assert everything_in(tmp_path) == sorted([live.name, other.name])
    write_files_atomically({tmp_path / "r.json": "{}"})
    assert everything_in(tmp_path) == sorted([live.name, other.name, "r.json"])


def test_probe_accepts_a_new_folder_and_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b"
    assert check_report_target(target, "eval-sdnet18") == target
    assert everything_in(tmp_path) == []


def test_probe_survives_another_rank_removing_the_folder_it_probes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # torchrun: rank 0 made the folder for its own probe and removes it again just as rank 1
    # (which found it there) writes its probe into it
    target = tmp_path / "shared"
    target.mkdir()
    opened: list[Path] = []

    def open_after_the_other_rank_cleaned_up(path: Path, mode: str) -> Any:
        if not opened:
            target.rmdir()
        opened.append(Path(path))
        return open(path, mode)

    monkeypatch.setattr(_io, "open", open_after_the_other_rank_cleaned_up, raising=False)
    assert check_report_target(target, "eval") == target
    assert len(opened) == 2 and everything_in(tmp_path) == []


@pytest.mark.parametrize(
    ("folder", "name", "parameter", "reason"),
    [
        (lambda tmp: tmp / ("d" * 300), None, "out_dir", "File name too long"),
        (lambda tmp: tmp, "n" * 300, "name", "File name too long"),
        (lambda tmp: tmp, "n" * 245, "name", "File name too long"),  # fits alone, not as its temporary
        (lambda tmp: Path("/proc/sdnet-out"), None, "out_dir", ""),
        (lambda tmp: tmp / "file.txt" / "sub", None, "out_dir", "is a file"),
    ],
)
def test_probe_refuses_what_the_run_could_not_write(
    tmp_path: Path, folder: Any, name: str | None, parameter: str, reason: str
) -> None:
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(UsageError) as raised:
        check_report_target(folder(tmp_path), name)
    assert raised.value.parameter == parameter and reason in str(raised.value)
    assert "\n" not in str(raised.value)
    assert everything_in(tmp_path) == ["file.txt"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_probe_refuses_a_read_only_folder(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(UsageError, match="Permission denied"):
            check_writable_dir(folder, "cache_dir", ["gaussian_noise.npy"])
    finally:
        folder.chmod(0o700)


def test_versions() -> None:
    versions = package_versions(("torch", "no-such-distribution-sdnet"))
    assert versions == {"torch": torch.__version__.split("+")[0], "no-such-distribution-sdnet": "not installed"}


def test_report_json_round_trips(tmp_path: Path) -> None:
    paths = Report(ROWS, {"command": "eval", "seed": 0}, name="r", title="t").write(tmp_path)
    assert [p.name for p in paths] == ["r.json", "r.csv", "r.md"]
    assert json.loads((tmp_path / "r.json").read_text())["rows"] == ROWS
