"""Writing files so that a reader never sees half of one, reading JSON strictly, and package versions.

Every file the tool writes goes through ``atomic_path`` (or ``write_files_atomically`` for a set):
it is written to ``.<name>.<pid>.tmp`` beside its final name and renamed into place when whole.
The pid lets ``sweep_stale_temps`` tell a dead writer's leftover (SIGKILL, power cut) from the
temporary of a writer that still runs. Any ``OSError`` while writing (a full disk, a read-only
folder, a name too long for the file system) becomes one ``WriteError`` naming the path and the
system's reason, with no temporary left. ``read_json`` is the one reader of every JSON file the tool
reads back (suites, baselines, reports, calibrations, manifests, state files): a file it cannot
trust (not a regular file, too large, nested too deep, a key given twice) is refused naming the file,
before anything parses it. The lowest layer: it imports nothing of the package but
``errors``, so every other module may use it.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from .errors import UsageError

REPORT_PACKAGES = ("torch", "torchvision", "numpy", "torchattacks", "imagecorruptions", "sdnet-cli")


class WriteError(UsageError):
    """A file could not be written (no space, no permission, a name too long...): the path and the reason."""


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def write_error(path: Path, exc: OSError, parameter: str | None = None) -> WriteError:
    """The one wording of a failed write: which path, and what the system said (e.g. no space left on device)."""
    return WriteError(f"cannot write {path}: {_reason(exc)}", parameter=parameter)


def package_versions(names: Sequence[str] = REPORT_PACKAGES) -> dict[str, str]:
    """Installed version of each distribution in ``names`` ("not installed" when absent)."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def temp_path(path: Path) -> Path:
    """``.<name>.<pid>.tmp`` beside ``path``: hidden, and the pid tells a later sweep whether its writer runs."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid() or os.name == "nt":  # on Windows os.kill would end the process: keep its files
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def sweep_stale_temps(folder: Path, names: Iterable[str] | None = None) -> list[Path]:
    """Delete the temporaries (``.<name>.<pid>.tmp``) that killed writers left in ``folder``; returns them.

    Only files whose pid no longer runs on this machine are removed; ``names`` limits the sweep to the
    temporaries of those final file names.
    """
    patterns = [".*.tmp"] if names is None else [f".{name}.*.tmp" for name in names]
    swept = []
    for pattern in patterns:
        for tmp in Path(folder).glob(pattern):
            pid = tmp.name.rsplit(".", 2)[-2]
            if pid.isdigit() and not _pid_alive(int(pid)):
                tmp.unlink(missing_ok=True)
                swept.append(tmp)
    return swept


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield the temporary path of ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary is removed on any failure; an ``OSError`` (in the block or the rename) becomes a
    ``WriteError`` naming ``path``.
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # some writers (safetensors) create private files: follow the umask
        os.replace(tmp, path)
    except OSError as exc:
        raise write_error(path, exc) from exc
    finally:
        _remove(tmp)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:  # a path that cannot even be looked up (e.g. too long) left nothing behind
        pass


def write_files_atomically(files: Mapping[Path, bytes | str]) -> list[Path]:
    """Write a set of files all or nothing: every file to its temporary first, then all renamed.

    On any failure no file of the set is left (renamed ones are removed again) and no temporary;
    an ``OSError`` becomes a ``WriteError`` naming the file that failed. Returns the paths in order.
    """
    paths = [Path(p) for p in files]
    temps = {path: temp_path(path) for path in paths}
    renamed: list[Path] = []
    current = paths[0] if paths else Path(".")
    try:
        for path, content in zip(paths, files.values()):
            current = path
            path.parent.mkdir(parents=True, exist_ok=True)
            sweep_stale_temps(path.parent, [path.name])
            data = content.encode("utf-8") if isinstance(content, str) else content
            with open(temps[path], "wb") as f:
                f.write(data)
        for path in paths:
            current = path
            os.replace(temps[path], path)
            renamed.append(path)
    except BaseException as exc:
        for path in renamed:
            _remove(path)
        for tmp in temps.values():
            _remove(tmp)
        if isinstance(exc, OSError):
            raise write_error(current, exc) from exc
        raise
    return paths


def _short(name: str) -> str:
    return name if len(name) <= 60 else f"{name[:40]}... ({len(name)} characters)"


def check_writable_dir(
    path: Path, parameter: str, names: Sequence[str] = (), name_parameter: str | None = None
) -> Path:
    """Fail before any work when files named ``names`` (or a generic probe) cannot be written into ``path``.

    Creates the folder (and missing parents) and a probe file under the temporary name of the
    longest of ``names``, then removes both again: the probe meets what the real write will meet
    (read-only or pseudo file systems, permissions, name length limits). Raises ``UsageError``;
    a name too long for the file system is blamed on ``name_parameter`` when given.
    """
    path = Path(path)
    probe_name = max(names, key=len) if names else "sdnet-probe"
    for _ in range(3):
        try:
            _probe_dir(path, parameter, probe_name, name_parameter)
            return path
        except FileNotFoundError:  # another process (a torchrun rank) removed the folder we were probing: again
            continue
    raise UsageError(f"{parameter} {path} kept disappearing while it was checked", parameter=parameter)


def _probe_dir(path: Path, parameter: str, probe_name: str, name_parameter: str | None) -> None:
    """One attempt of ``check_writable_dir``; ``FileNotFoundError`` when the folder vanished under us."""
    created: list[Path] = []
    probe = temp_path(path / probe_name)
    try:
        try:
            if path.exists() and not path.is_dir():
                raise UsageError(f"{parameter} {path} exists and is not a folder", parameter=parameter)
            blocker = next((p for p in (path, *path.parents) if p.exists()), None)
            if blocker is not None and not blocker.is_dir():
                raise UsageError(f"{parameter} {path} cannot be created: {blocker} is a file", parameter=parameter)
            for folder in reversed([p for p in (path, *path.parents) if not p.exists()]):
                try:
                    folder.mkdir()
                except FileExistsError:  # another run made it meanwhile: not ours to remove
                    continue
                created.append(folder)
        except FileNotFoundError:  # a parent we found was removed before our mkdir
            raise
        except OSError as exc:
            raise UsageError(f"{parameter} {path} cannot be used: {_reason(exc)}", parameter=parameter) from None
        try:
            with open(probe, "xb"):
                pass
        except OSError as exc:
            if isinstance(exc, FileNotFoundError) and not path.is_dir():
                raise  # the folder vanished under us: the caller tries again
            blamed = name_parameter if exc.errno == errno.ENAMETOOLONG and name_parameter else parameter
            raise UsageError(
                f"{parameter} {path}: cannot write {_short(probe_name)} there: {_reason(exc)}", parameter=blamed
            ) from None
    finally:
        _remove(probe)
        for folder in reversed(created):
            try:
                folder.rmdir()
            except OSError:
                pass


JSON_BYTES_MAX = 512 * 2**20
"""Largest JSON file read back (the largest we write, a sweep report of every cell, is a few MB)."""
JSON_DEPTH_MAX = 64
"""Deepest nesting of arrays and objects read back (ours nest at most 6 deep); deeper text is refused before
the parser sees it, which would otherwise recurse until Python's stack limit."""

_NOT_STRUCTURE = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[^"\[\]{}]+')
"""A JSON string, or a run of text without brackets or quotes: what is left after removing them all is the
brackets that nest."""


def _kind_of(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def nests_deeper(text: str, limit: int = JSON_DEPTH_MAX) -> bool:
    """Whether ``text``'s arrays and objects nest more than ``limit`` deep (brackets inside strings do not
    count); a scan without recursion, stopped where the limit is passed."""
    if text.count("[") + text.count("{") <= limit:
        return False
    depth = 0
    for char in _NOT_STRUCTURE.sub("", text):
        depth += 1 if char in "[{" else -1
        if depth > limit:
            return True
    return False


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) < len(pairs):
        seen: set[str] = set()
        twice = next(key for key, _ in pairs if key in seen or seen.add(key))  # type: ignore[func-returns-value]
        raise ValueError(f"the key {twice!r} is given twice in one object (which one counts?)")
    return found


def parse_json(text: str, where: str, parameter: str | None = None, error: type[UsageError] = UsageError) -> Any:
    """``text`` parsed strictly (nesting bounded, no key twice in an object); else one ``error`` naming ``where``."""
    if nests_deeper(text):
        raise error(f"{where} nests arrays or objects more than {JSON_DEPTH_MAX} deep", parameter=parameter)
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        raise error(f"{where} is not JSON ({exc})", parameter=parameter) from None
    except ValueError as exc:
        raise error(f"{where}: {exc}", parameter=parameter) from None


def read_json(
    path: Path | str,
    kind: str,
    parameter: str | None = None,
    error: type[UsageError] = UsageError,
    missing: str = "",
) -> Any:
    """The JSON value in ``path``, read strictly: refused with one ``error`` naming ``kind`` and the path when
    the file is missing (``missing`` adds a hint), is not a regular file (a folder, a named pipe, which would
    block the reader, a device), is larger than ``JSON_BYTES_MAX``, is not UTF-8 JSON, nests deeper than
    ``JSON_DEPTH_MAX`` or gives a key twice in one object (the reader would see one value, the tool another)."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise error(f"no {kind} at {path}{missing}", parameter=parameter) from None
    except OSError as exc:
        raise error(f"{kind} {path} cannot be read: {_reason(exc)}", parameter=parameter) from None
    if not stat.S_ISREG(mode):
        raise error(f"{kind} {path} is {_kind_of(mode)}, not a file", parameter=parameter)
    try:  # non-blocking, and checked again once open: the path may have been swapped for a pipe meanwhile
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise error(f"{kind} {path} is {_kind_of(info.st_mode)}, not a file", parameter=parameter)
            if info.st_size > JSON_BYTES_MAX:
                raise error(
                    f"{kind} {path} is {info.st_size:,} bytes; at most {JSON_BYTES_MAX:,} are read",
                    parameter=parameter,
                )
            data = f.read(JSON_BYTES_MAX + 1)
    except OSError as exc:
        raise error(f"{kind} {path} cannot be read: {_reason(exc)}", parameter=parameter) from None
    if len(data) > JSON_BYTES_MAX:
        raise error(f"{kind} {path} is over {JSON_BYTES_MAX:,} bytes; at most that is read", parameter=parameter)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(
            f"{kind} {path} is not UTF-8 text ({exc.reason} at byte {exc.start})", parameter=parameter
        ) from None
    return parse_json(text, f"{kind} {path}", parameter, error)
