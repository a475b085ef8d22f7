"""Forecast lines: the words a user reads before long work, worked out by hand."""

from __future__ import annotations

import pytest

from sdnet_cli import forecast as fc
from sdnet_cli.forecast import Forecast, Forecasting, duration, forecast, quick_count


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(5, "about 5 s"), (89, "about 89 s"), (1620, "about 27 min"), (3600, "about 1 h"), (8400, "about 2 h 20 min"),
     (32400, "about 9 h")],
)  # fmt: skip
def test_duration_words(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_quick_count_takes_about_five_minutes_from_the_1_2_5_series() -> None:
    # 10,000 images in 72,000 s: 300 s is 41.7 images, so 20 (the next, 50, would take 6 min)
    assert quick_count(10_000, 72_000) == 20
    assert quick_count(10_000, 3_000) == 1000  # exactly 300 s
    assert quick_count(3, 10**9) == 1


def test_the_hint_comes_only_for_long_runs_without_a_count_and_in_each_door_s_words() -> None:
    long = forecast("standard AutoAttack at eps 8/255", 10_000, 32_400, "this CPU", hint=True)
    assert (
        long
        == "standard AutoAttack at eps 8/255 on 10,000 images: about 9 h on this CPU; n_examples=50 takes about 3 min"
    )
    assert (
        long.cli == "standard AutoAttack at eps 8/255 on 10,000 images: about 9 h on this CPU; -n 50 takes about 3 min"
    )
    assert "takes" not in forecast("pgd", 10_000, 32_400, "this CPU", hint=False)  # -n was given
    assert "takes" not in forecast("pgd", 10_000, 500, "this CPU", hint=True)  # under 10 minutes


class Record:
    def __init__(self) -> None:
        self.notes: list[str] = []

    def task(self, description: str, total: int):  # type: ignore[no-untyped-def]
        return lambda k: None

    def note(self, text: str) -> None:
        self.notes.append(text)


def forecasting(monkeypatch: pytest.MonkeyPatch, clock: list[float], hint: bool) -> tuple[Record, Forecasting]:
    """A ``Forecasting`` over a ``Record``, with ``time.perf_counter`` returning ``clock``'s readings in turn (one
    when a task starts, one at each advance)."""
    readings = iter(clock)
    monkeypatch.setattr(fc.time, "perf_counter", lambda: next(readings))
    record = Record()
    return record, Forecasting(record, "cpu", hint=hint)


def test_a_task_forecasts_itself_once_from_the_rate_after_its_first_report(monkeypatch: pytest.MonkeyPatch) -> None:
    record, progress = forecasting(monkeypatch, [0.0, 2.0, 4.0, 6.0], hint=True)
    advance = progress.task("sweeping", 1000)
    advance(50)  # the first report: 2 s so far, counted once
    advance(50)  # 5% more in 2 s: 2 + 2 * 950 / 50 = 40 s in all
    advance(50)
    assert record.notes == ["sweeping: about 40 s in all on this CPU (from the first 10% of the work)"]


def test_the_time_before_the_first_report_is_counted_once_not_extrapolated(monkeypatch: pytest.MonkeyPatch) -> None:
    """30 s of start-up (workers, loading) before 1% of the work: extrapolating it would say 3,000 s (about 50 min);
    counted once, with the rate after it (50 units in 2 s): 30 + 2 * 990 / 50 = 69.6 s."""
    record, progress = forecasting(monkeypatch, [0.0, 30.0, 32.0], hint=True)
    advance = progress.task("generating", 1000)
    advance(10)
    advance(50)
    assert record.notes == ["generating: about 70 s in all on this CPU (from the first 6% of the work)"]


def test_a_forecast_that_moved_more_than_twofold_is_said_again_once(monkeypatch: pytest.MonkeyPatch) -> None:
    record, progress = forecasting(monkeypatch, [0.0, 1.0, 3.0, 70.0, 80.0], hint=False)
    advance = progress.task("evaluating", 1000)
    advance(10)  # the first report, at 1 s
    advance(50)  # 1 + 2 * 990 / 50 = 40.6 s in all
    advance(100)  # at 70 s, 160 done: 1 + 69 * 990 / 150 = 456.4 s in all, 11.2 times the first
    advance(100)  # said twice already: nothing more
    assert record.notes == [
        "evaluating: about 41 s in all on this CPU (from the first 6% of the work)",
        "evaluating: now about 8 min in all on this CPU (from the first 16% of the work; the first forecast said "
        "about 41 s)",
    ]


def test_a_forecast_within_twofold_of_the_first_is_not_said_again(monkeypatch: pytest.MonkeyPatch) -> None:
    record, progress = forecasting(monkeypatch, [0.0, 1.0, 3.0, 30.0, 61.0], hint=False)
    advance = progress.task("evaluating", 1000)
    advance(10)
    advance(50)  # 40.6 s in all
    advance(50)  # 11% but only 30 s: too early for a second look
    advance(690)  # 80% in 61 s: 1 + 60 * 990 / 790 = 76.2 s in all, 1.9 times the first
    assert record.notes == ["evaluating: about 41 s in all on this CPU (from the first 6% of the work)"]


def test_a_job_s_own_forecast_replaces_the_generic_one(monkeypatch: pytest.MonkeyPatch) -> None:
    record, progress = forecasting(monkeypatch, [0.0, 1.0, 20.0], hint=True)
    advance = progress.task("attack", 1000)
    progress.note(Forecast("attack on 10 images: about 5 s on this CPU"))
    advance(1)
    advance(500)
    assert record.notes == ["attack on 10 images: about 5 s on this CPU"]
