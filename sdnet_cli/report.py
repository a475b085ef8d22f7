"""Report rows -> JSON / CSV / Markdown, written as one all-or-nothing set.

A report is a list of flat dict rows plus a ``meta`` dict (versions, seed, device, checkpoint,
data source). JSON holds both; CSV holds the rows; Markdown holds a short header and the table.
"""

from __future__ import annotations

import json
import platform
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, cast

import pandas as pd

from ._io import check_writable_dir, package_versions, write_files_atomically
from .errors import UsageError

REPORT_SUFFIXES = (".json", ".csv", ".md")


def base_meta(command: str, seed: int, **extra: Any) -> dict[str, Any]:
    """The fields every report's ``meta`` starts with."""
    return {
        "command": command,
        "argv": " ".join(sys.argv),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seed": seed,
        "versions": {"python": platform.python_version(), **package_versions()},
        "host": platform.node(),
        **extra,
    }


def markdown_table(rows: Sequence[dict[str, Any]], floatfmt: str = ".2f") -> str:
    """A Markdown table; cells with no value show as '-' (not 'nan')."""
    frame = pd.DataFrame(list(rows)).astype(object)
    return cast("str", frame.where(frame.notna(), None).to_markdown(index=False, floatfmt=floatfmt, missingval="-"))


def render_markdown(title: str, rows: Sequence[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [f"# {title}", ""]
    for key in (
        "model",
        "checkpoint_sha256",
        "data_source",
        "device",
        "precision",
        "seed",
        "created",
        "argv",
        "resumed_cells",
    ):
        if key in meta:
            value = meta[key]
            lines.append(f"- {key}: `{json.dumps(value) if isinstance(value, dict) else value}`")
    lines += ["", markdown_table(rows), ""]
    return "\n".join(lines)


def write_report(
    rows: Sequence[dict[str, Any]],
    meta: dict[str, Any],
    out_dir: Path,
    name: str,
    title: str | None = None,
    markdown: str | None = None,
    written: Sequence[Path] = (),
) -> list[Path]:
    """Write ``<out_dir>/<name>.{json,csv,md}`` all or nothing (``_io.write_files_atomically``).
    ``markdown`` replaces the default rendering (title, key meta, table); ``written`` are files of the
    same set already in place (plots), removed again if the tables cannot be written."""
    out_dir = Path(out_dir)
    rows = list(rows)
    rendered = {
        out_dir / f"{name}.json": json.dumps({"meta": meta, "rows": rows}, indent=2, default=str) + "\n",
        out_dir / f"{name}.csv": pd.DataFrame(rows).to_csv(index=False),
        out_dir / f"{name}.md": markdown if markdown is not None else render_markdown(title or name, rows, meta),
    }
    try:
        return write_files_atomically(rendered)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise


ExtraWriter = Callable[[Path, str], list[Path]]
"""Writes a report's extra files (plots) into a folder under a file stem; returns their paths."""


@dataclass
class Report:
    """What every API call returns: flat ``rows`` plus ``meta`` (versions, seed, device, checkpoint,
    data source). ``to_frame()`` for pandas, ``write(out_dir)`` for JSON + CSV + Markdown (+ plots)."""

    rows: list[dict[str, Any]]
    meta: dict[str, Any]
    name: str  # default file stem
    title: str
    markdown: str | None = None  # replaces the default rendering (title, key meta, table)
    extras: list[ExtraWriter] = field(default_factory=list)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)

    def write(self, out_dir: Path, name: str | None = None) -> list[Path]:
        """``<out_dir>/<name>.{json,csv,md}`` and the extra files, as one set: on any failure none is left.
        The extras go first, so a report whose tables exist is complete."""
        stem = check_stem(name or self.name)
        extras: list[Path] = []
        try:
            for extra in self.extras:
                extras += extra(Path(out_dir), stem)
        except BaseException:
            for path in extras:
                path.unlink(missing_ok=True)
            raise
        tables = write_report(
            self.rows, self.meta, Path(out_dir), stem, title=self.title, markdown=self.markdown, written=extras
        )
        return tables + extras


def check_stem(name: str) -> str:
    """A report name must be a plain file stem, so no report lands outside its folder."""
    if not name or name in (".", "..") or any(sep in name for sep in ("/", "\\", "\0")):
        raise UsageError(f"name must be a plain file name without folders, got {name!r}", parameter="name")
    return name


def check_report_target(out_dir: Path, name: str | None = None, parameter: str = "out_dir") -> Path:
    """Refuse, before any work, a report folder or name the report cannot be written under: a folder
    that cannot be created or written, a name with folders in it or too long for the file system
    (probed with the temporary name of the report's longest file)."""
    names = [f"{check_stem(name)}{suffix}" for suffix in REPORT_SUFFIXES] if name is not None else []
    return check_writable_dir(Path(out_dir), parameter, names, name_parameter="name")
