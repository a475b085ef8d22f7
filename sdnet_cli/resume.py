"""Resume files of long runs: the finished parts of a run (an attack's pools of images, an evaluation's
cells) in one JSON file beside its report, rewritten atomically after each part, so an interrupted run
continues where it stopped and retraces the uninterrupted one. The file is removed once the report is
written."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, TypeVar, cast

from pydantic import BaseModel

from ._io import atomic_write_text, read_json
from .errors import Interrupted, UsageError
from .schemas import load

ADVICE = "delete it to start the run afresh"
R = TypeVar("R", bound="ResumeFile")


class ResumeFile:
    """``{"config": ..., <PARTS>: {key: part}}`` at ``path``. ``config`` is everything the parts depend on
    (model fingerprint, data, seed, settings); a file written under another config is refused rather than
    mixed in, and an existing file without ``resume`` is refused rather than overwritten."""

    SCHEMA: ClassVar[type[BaseModel]]
    PARTS: ClassVar[str]
    """The file's key for its parts (``pools``, ``cells``); also the word the messages use."""

    def __init__(self, path: Path, config: dict[str, Any], resume: bool) -> None:
        self.path, self.config = Path(path), config
        self.parts: dict[str, Any] = {}
        if not self.path.is_file():
            return
        if not resume:
            raise UsageError(
                f"{self.path} holds an unfinished run; pass resume=True to continue it, or delete it",
                parameter="resume",
            )
        saved = self.read(self.path)
        changed = sorted(k for k in set(config) | set(saved["config"]) if saved["config"].get(k) != config.get(k))
        if changed:
            raise UsageError(
                f"cannot resume {self.path}: it was started with different settings ({', '.join(changed)})",
                parameter="resume",
            )
        self.parts = saved[self.PARTS]

    @classmethod
    def at(cls: type[R], state_dir: Path | None, stem: str, config: dict[str, Any], resume: bool) -> R | None:
        """The run's file ``<state_dir>/<stem>.state.json``, or None without ``state_dir`` (where ``resume`` is
        refused: there is nothing to continue from)."""
        if state_dir is None:
            if resume:
                raise UsageError("resume=True needs state_dir, the folder of the interrupted run", parameter="resume")
            return None
        return cls(Path(state_dir) / f"{stem}.state.json", config, resume)

    @classmethod
    def read(cls, path: Path) -> dict[str, Any]:
        """The file's contents, validated against ``SCHEMA``; a damaged file is named, with what to do."""
        try:
            saved = read_json(path, "resume state", "resume")
        except UsageError as exc:
            raise UsageError(f"the resume state {path} is damaged ({exc}); {ADVICE}", parameter="resume") from None
        cls.refuse_outdated(path, saved)
        try:
            load(cls.SCHEMA, saved, "resume state", path, parameter="resume")
        except UsageError as exc:
            raise UsageError(f"{exc} (the file is damaged; {ADVICE})", parameter="resume") from None
        return cast("dict[str, Any]", saved)

    @classmethod
    def refuse_outdated(cls, path: Path, saved: Any) -> None:
        """A hook before validation: a kind of file can name a layout an earlier version wrote (none here)."""

    @classmethod
    def saved(cls, path: Path) -> int:
        """How many finished parts a file holds (0 when there is none or it is unreadable)."""
        try:
            return len(cls.read(path)[cls.PARTS])
        except UsageError:
            return 0

    def put(self, key: str, part: Any) -> None:
        self.parts[key] = part
        atomic_write_text(self.path, json.dumps({"config": self.config, self.PARTS: self.parts}) + "\n")


@contextmanager
def interrupted_saying(saved: ResumeFile | None, total: int) -> Iterator[None]:
    """Ctrl-C (or SIGTERM) with parts saved becomes ``Interrupted``, saying how many of ``total`` and how to
    continue."""
    try:
        yield
    except KeyboardInterrupt:
        if saved is None or not saved.parts:
            raise
        raise Interrupted(
            f"{len(saved.parts)} finished {saved.PARTS} of {total} are saved in {saved.path}; "
            "the same call with resume=True continues",
            parameter="resume",
        ) from None
