"""Predicted durations, said once before (or at the very start of) long work, as one plain line.

A long command either measures its cost on a small probe before the work (attacks: ``attacks.runner``)
or, for every other progress task, extrapolates from the first seconds of the work itself. The line
says what the prediction covers; when it is over ``LONG_SECONDS`` and the caller left the image count
at its default, it adds how long a smaller count takes, in the caller's words: ``n_examples=`` for the
Python API, ``-n`` on the command line (``Forecast.cli``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

LONG_SECONDS = 600.0
"""A predicted run longer than this gets the hint of a smaller image count (when none was given)."""
QUICK_SECONDS = 300.0
"""The hint's image count is chosen to take about this long."""
FIRST_LOOK_SECONDS = 5.0
"""A progress task forecasts itself once its work since the first report has run this long (or done 5%)."""
SECOND_LOOK_SECONDS = 60.0
"""...and looks again once it has run this long and done 10% of its work."""
REVISE_FACTOR = 2.0
"""The second look is said only when it differs from the first by more than this factor, either way."""


class Forecast(str):
    """A note with a predicted duration; ``cli`` is the same line naming the command line's ``-n``."""

    cli: str

    def __new__(cls, text: str, cli: str | None = None) -> Forecast:
        note = super().__new__(cls, text)
        note.cli = text if cli is None else cli
        return note


def duration(seconds: float) -> str:
    """``about 9 h``, ``about 2 h 20 min``, ``about 27 min``, ``about 40 s``: as precise as a forecast is."""
    if seconds >= 3 * 3600:
        return f"about {seconds / 3600:.0f} h"
    if seconds >= 3600:
        hours, minutes = divmod(round(seconds / 600) * 10, 60)
        return f"about {hours:.0f} h" + (f" {minutes:.0f} min" if minutes else "")
    if seconds >= 90:
        return f"about {seconds / 60:.0f} min"
    return f"about {max(seconds, 1):.0f} s"


def quick_count(n: int, seconds: float) -> int:
    """The largest of 1, 2, 5, 10, 20, 50, ... below ``n`` whose share of ``seconds`` is about ``QUICK_SECONDS``."""
    target = n * QUICK_SECONDS / seconds
    count, step = 1, 0
    while True:
        following = count * (2.5 if step % 3 == 1 else 2)
        if following > target or following >= n:
            return count
        count, step = int(following), step + 1


def forecast(what: str, n: int, seconds: float, where: str, hint: bool) -> Forecast:
    """``<what> on <n> images: about <t> on <where>``, plus the smaller-``n`` hint when long and ``hint``."""
    text = f"{what} on {n:,} images: {duration(seconds)} on {where}"
    if not hint or seconds <= LONG_SECONDS or n < 2:
        return Forecast(text)
    m = quick_count(n, seconds)
    quick = f"takes {duration(seconds * m / n)}"
    return Forecast(f"{text}; n_examples={m} {quick}", f"{text}; -n {m} {quick}")


def where(device: str) -> str:
    return "this CPU" if device == "cpu" else device


class Progress(Protocol):
    """Where long work reports what it is doing (the CLI's progress bar, ``api.Silent``, or a notebook's own)."""

    def task(self, description: str, total: int) -> Callable[[int], None]: ...

    def note(self, text: str) -> None: ...


class Silent:
    """Progress that goes nowhere (the default)."""

    def task(self, description: str, total: int) -> Callable[[int], None]:
        return lambda k: None

    def note(self, text: str) -> None:
        pass


class Forecasting:
    """A ``Progress`` that adds one forecast line to every task that has none of its own, from the rate of its
    work since its first report: what came before that report (loading, generating, a worker pool starting,
    the first batch's warm-up) is counted once, not extrapolated (a generation whose first chunk came after its
    workers' start-up said "about 16 min" and took 68 s). The line comes once the work since the first report
    has run ``FIRST_LOOK_SECONDS``, or done 5% of the task in a second or more. A rate from the first seconds
    is at the mercy of what else ran then (a MEMO run that started while another job finished said "about 1 h
    50 min" and was 82% done after 13 min), so once the task has run ``SECOND_LOOK_SECONDS`` and done 10% of
    its work, the forecast is said again if it has moved by more than a factor ``REVISE_FACTOR``."""

    def __init__(self, progress: Progress, device: str, hint: bool) -> None:
        self.progress, self.device, self.hint = progress, device, hint
        self.told = False  # a job's own forecast (a probe) makes the generic one redundant

    def note(self, text: str) -> None:
        if isinstance(text, Forecast):
            self.told = True
        self.progress.note(text)

    def task(self, description: str, total: int) -> Callable[[int], None]:
        advance = self.progress.task(description, total)
        start, done = time.perf_counter(), [0]
        first: list[tuple[float, int]] = []  # (seconds, units done) at the task's first report
        said: list[float] = []  # the forecast seconds said so far (none when the job said its own)

        def forward(k: int) -> None:
            advance(k)
            done[0] += k
            elapsed = time.perf_counter() - start
            if not first:
                first.append((elapsed, done[0]))
                return
            if self.told or done[0] >= total or len(said) == 2:
                return
            (then, before), share = first[0], 100 * done[0] / total
            running, since = elapsed - then, done[0] - before
            if since <= 0:
                return
            seconds = then + running * (total - before) / since
            if not said and (running >= FIRST_LOOK_SECONDS or (100 * since / total >= 5 and running >= 1.0)):
                text = f"{description}: {duration(seconds)} in all on {where(self.device)}"
                text += f" (from the first {f'{share:.0f}%' if share >= 1 else 'seconds'} of the work)"
                said.append(seconds)
                self.say(text, seconds)
            elif said and elapsed >= SECOND_LOOK_SECONDS and share >= 10:
                said.append(seconds)
                if not 1 / REVISE_FACTOR <= seconds / said[0] <= REVISE_FACTOR:
                    self.say(
                        f"{description}: now {duration(seconds)} in all on {where(self.device)} (from the first "
                        f"{share:.0f}% of the work; the first forecast said {duration(said[0])})",
                        seconds,
                    )

        return forward

    def say(self, text: str, seconds: float) -> None:
        """One forecast line, with the smaller-count hint when the work is long and the caller left the count."""
        if self.hint and seconds > LONG_SECONDS:
            self.progress.note(
                Forecast(
                    f"{text}; fewer images (n_examples) take proportionally less",
                    f"{text}; fewer images (-n) take proportionally less",
                )
            )
        else:
            self.progress.note(Forecast(text))
