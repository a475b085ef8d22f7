"""The ``sdnet`` app and what every command shares: usage errors as one line, the progress bar, refusing
options a run cannot use, report printing, and ``command`` (registration)."""

from __future__ import annotations

import functools
import re
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .. import __version__
from ..errors import Interrupted, UsageError

if TYPE_CHECKING:
    from ..report import Report

app = typer.Typer(
    name="sdnet",
    help="Robustness of sparse-coding networks (SDNet) and ResNet baselines: CIFAR-10-C, attacks, test-time lambda.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: flags shown as flags, not as '<bool>' values
)
console = Console(stderr=True, markup=False, emoji=False)
stdout = Console(markup=False, emoji=False)
"""Both print text as written: user text (a model name, a path, a message) is never read as markup or
``:emoji:`` codes; styled labels are ``Text`` parts (``labelled``)."""
F = TypeVar("F", bound=Callable[..., None])

FLAGS = {
    "corruptions": "--corruption",
    "severities": "--severity",
    "fit_corruptions": "--fit-corruption",
    "rules": "--rule",
    "out_dir": "--out",
    "save_adversarials": "--save-adv",
    "cifar_c_dir": "--cifar-c-dir",
}
"""API parameter -> CLI option where the option is not simply ``--`` + the parameter with dashes."""


def flag_message(exc: UsageError | Interrupted) -> str:
    """The API's message, speaking of the CLI option instead of the Python parameter: the first mention of the
    parameter as a word of its own (``n_examples must ...``, ``with resume=True``) becomes the flag. A word
    inside a path (``runs/resume/``), a file name or a quoted value is text the user wrote, and stays."""
    if exc.parameter is None:
        return str(exc)
    flag = FLAGS.get(exc.parameter, "--" + exc.parameter.replace("_", "-"))
    name = re.escape(exc.parameter)
    word = rf"(?<![\w\-/\\.:~'\"=]){name}(=True)?(?![\w\-/\\.'\"]|=(?!True))"
    return re.sub(word, flag, str(exc), count=1)


def labelled(label: str, style: str, text: str) -> Text:
    """``label`` in ``style``, a space, then ``text`` exactly as written."""
    return Text.assemble((label, style), " ", text)


def main_process() -> bool:
    """Rank 0 under torchrun (or the only process): the one that prints and writes reports."""
    from .. import distributed

    return distributed.is_main()


def user_errors(command: F) -> F:
    """Usage errors become one red line and exit 2; Ctrl-C and SIGTERM exit 130 / 143 with nothing
    half-written (every file is renamed into place only when complete). Anything else is a bug and
    keeps its traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        terminated = []

        def on_sigterm(signum: int, frame: Any) -> None:
            terminated.append(signum)
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGTERM, on_sigterm)
        from ..runtime import keep_freed_memory

        try:
            keep_freed_memory()  # our own process: tensors reuse freed memory instead of faulting in fresh pages
            return command(*args, **kwargs)
        except UsageError as exc:
            console.print(labelled("error:", "bold red", flag_message(exc)), soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt as exc:
            saved = f": {flag_message(exc)}" if isinstance(exc, Interrupted) else ""
            stopped = "terminated" if terminated else "interrupted"
            console.print(Text(f"{stopped}; no report was written{saved}", style="yellow"), soft_wrap=True)
            raise typer.Exit(143 if terminated else 130) from None
        finally:
            signal.signal(signal.SIGTERM, previous)

    return wrapper  # type: ignore[return-value]


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class RichProgress:
    """``api.Progress`` on a rich progress bar (stderr), silent on torchrun's other ranks. The bar starts
    with the first task, when the API has joined the process group and the rank is known."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[left]}"),
            console=console,
        )

    def __enter__(self) -> RichProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar.live.is_started:
            self.bar.stop()

    def task(self, description: str, total: int) -> Callable[[int], None]:
        if not main_process():
            return lambda k: None
        self.bar.start()
        task = self.bar.add_task(description, total=total, left="")
        start, done = time.perf_counter(), [0]

        def advance(k: int) -> None:
            # the time left from the average rate since the start: shown from the first step on, where
            # rich's own estimate waits for several steps within its last 30 s (minutes in an attack)
            done[0] += k
            rate = done[0] / max(time.perf_counter() - start, 1e-9)
            left = f"{_clock((total - done[0]) / rate)} left" if 0 < done[0] < total else ""
            self.bar.update(task, advance=k, left=left)

        return advance

    def note(self, text: str) -> None:
        from ..forecast import Forecast

        if main_process():  # a forecast names the command line's -n, not the API's n_examples
            self.bar.console.print(
                text.cli if isinstance(text, Forecast) else text, markup=False, highlight=False, soft_wrap=True
            )


def refuse_given(ctx: typer.Context, names: Sequence[str], why: str) -> None:
    """Options among ``names`` that the user typed, though this run cannot use them, are refused (naming
    the first), never dropped."""
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name) if param.name in names else None
        if source is not None and source.name == "COMMANDLINE":
            raise UsageError(f"{param.opts[0]} {why}")


def preflight(out_dir: Path, name: str | None = None, parameter: str = "out_dir") -> None:
    """Refuse, before any work, an output folder we cannot write or a report name that cannot be written there."""
    from ..report import check_report_target

    check_report_target(out_dir, name, parameter)


def print_rows(title: str, rows: list[dict[str, Any]], columns: list[str]) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(
            column, justify="left" if column in ("corruption", "model", "attack", "metric", "status") else "right"
        )
    for row in rows:
        table.add_row(
            *(f"{row[c]:.2f}" if isinstance(row[c], float) and c.endswith("accuracy") else str(row[c]) for c in columns)
        )
    stdout.print(table)


def write(report: Report, out_dir: Path, name: str | None) -> list[Path]:
    paths = report.write(out_dir, name)
    for path in paths:
        stdout.print(f"wrote {path}")
    return paths


def version_callback(value: bool) -> None:
    if value:
        stdout.print(f"sdnet-cli {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool, typer.Option("--version", callback=version_callback, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Robustness of sparse-coding networks (SDNet) and ResNet baselines: CIFAR-10-C, attacks, test-time lambda."""


def command(name: str, hidden: bool = False) -> Callable[[Callable[..., None]], None]:
    """Register ``sdnet NAME``, usage errors and interrupts handled by ``user_errors``."""

    def register(function: Callable[..., None]) -> None:
        app.command(name, hidden=hidden)(user_errors(function))

    return register
