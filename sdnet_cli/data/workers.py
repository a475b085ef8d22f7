"""The process pool that data generation runs in: it never re-runs the caller's script and never hangs.

Workers are ``spawn`` processes (the caller may hold threads, torch's or BLAS's, that ``fork`` breaks).
Two things make the standard pool unsafe in ordinary use, and this module removes both:

- ``spawn`` re-imports the caller's main module in every worker. A script without an
  ``if __name__ == "__main__":`` guard then runs again in each worker, and one read from stdin
  (``python - < s.py``) cannot be found at all. Our workers need nothing from the caller's script,
  so while they start, ``sys.modules["__main__"]`` is a bare module: they import only ``sdnet_cli``.
- A worker that dies while its start-up data is still being written blocks the parent forever
  (``multiprocessing`` writes that data into a pipe whose reading end the parent still holds). The
  start-up data is therefore small: a large shared input (the clean images) is written once to a
  scratch ``.npy`` beside the output and memory-mapped by the workers.

A worker that dies (killed, out of memory, failed start) ends the run within seconds with one
``WorkerError`` that names the worker and how it ended.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import tempfile
import threading
import types
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from .._io import temp_path
from ..errors import UsageError

# What each worker process holds: the shared input, memory-mapped once by the initializer.
_SHARED: np.ndarray | None = None


class WorkerError(UsageError):
    """A worker process ended abruptly (killed, out of memory, could not start). Not a bug in the
    input or in us: one line naming the worker and how it ended, like a disk that is full."""


def exit_with_parent() -> None:
    """Make this pool worker exit as soon as the process that started it is gone, even if it was SIGKILLed.

    A killed parent cannot stop its workers, which would otherwise finish (and keep the CPUs busy
    with) work nobody will collect.
    """
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])  # ready when the parent has exited
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _start_worker(shared_path: str | None) -> None:
    global _SHARED
    import cv2

    cv2.setNumThreads(1)  # the parallelism comes from the processes
    exit_with_parent()
    if shared_path is not None:
        _SHARED = np.load(shared_path, mmap_mode="r", allow_pickle=False)


def _call(function: Callable[..., Any], task: tuple[Any, ...]) -> Any:
    return function(*task) if _SHARED is None else function(_SHARED, *task)


@contextmanager
def _parent_main_hidden() -> Iterator[None]:
    """While workers start, ``__main__`` is a bare module, so ``spawn`` does not re-run the caller's script."""
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main


def _how_it_ended(processes: dict[int, Any], what: str) -> str:
    """One sentence naming the worker whose end broke the pool (the others were stopped with SIGTERM)."""
    ended = [(pid, p.exitcode) for pid, p in processes.items() if p.exitcode not in (None, 0)]
    first = [(pid, code) for pid, code in ended if code != -signal.SIGTERM] or ended
    if not first:
        return f"a {what} worker process ended abruptly"
    pid, code = first[0]
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else f"signal {-code}"
        hint = " (the system's out-of-memory killer sends it when memory runs out)" if -code == signal.SIGKILL else ""
        return f"{what} worker process {pid} was killed by {name}{hint}"
    return f"{what} worker process {pid} exited with code {code} (its own error, if any, is printed above)"


def run_pool(
    function: Callable[..., Any],
    tasks: Sequence[tuple[Any, ...]],
    done: Callable[[tuple[Any, ...], Any], None],
    workers: int,
    shared: np.ndarray | None = None,
    scratch: Path | None = None,
    what: str = "corruption",
    on_stop: Callable[[], None] | None = None,
) -> None:
    """``function(*task)`` (``function(shared, *task)`` with ``shared``) for every task; ``done(task, result)``
    runs in the caller as each finishes, in any order.

    With ``workers`` > 1 and more than one task the calls run in that many ``spawn`` processes;
    ``shared`` then travels once, through a scratch file in ``scratch`` (default: the system's temporary
    folder) that is removed at the end.
    Results are the same either way; they must be small (a count, a path): a worker killed while it sends a
    large one leaves a partial message in the result pipe that the parent would wait for forever, so large
    outputs go to files. An exception in ``done`` or Ctrl-C cancels what has not started;
    ``on_stop`` then runs first, before the wait for the tasks that are running.
    """
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            done(task, function(*task) if shared is None else function(shared, *task))
        return
    shared_file = None if shared is None else temp_path(Path(scratch or tempfile.gettempdir()) / "pool-input.npy")
    started: dict[int, Any] = {}
    try:
        if shared is not None and shared_file is not None:
            with open(shared_file, "wb") as f:
                np.save(f, np.ascontiguousarray(shared), allow_pickle=False)
        with concurrent.futures.ProcessPoolExecutor(
            max_workers=min(workers, len(tasks)),
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(None if shared_file is None else str(shared_file),),
        ) as pool:
            try:
                futures = {}
                with _parent_main_hidden():
                    for task in tasks:
                        futures[pool.submit(_call, function, task)] = task
                        started.update(getattr(pool, "_processes", None) or {})
                for future in concurrent.futures.as_completed(futures):
                    done(futures[future], future.result())
            except BaseException:
                if on_stop is not None:
                    on_stop()
                # without this, leaving the with-block would still run every queued task
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    except BrokenProcessPool:
        raise WorkerError(
            f"{_how_it_ended(started, what)}; the run stopped and nothing partial was kept "
            "(files already finished are, so a rerun continues)"
        ) from None
    finally:
        if shared_file is not None:
            shared_file.unlink(missing_ok=True)
