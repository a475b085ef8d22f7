"""The regression gate against a stored baseline, and reports side by side."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..forecast import Progress
from ..report import Report, base_meta, check_stem
from ..specs import DataSpec, RunSpec, unused
from ._session import job_progress, single_process

if TYPE_CHECKING:
    from ..check import Suite


def check(
    *,
    baseline: Path = Path("reports/baseline.json"),
    suite: Path | None = None,
    update: bool = False,
    tolerance: float | None = None,
    data: DataSpec = DataSpec(),
    run: RunSpec = RunSpec(),
    weights_dir: Path | None = None,
    allow_code_in_suite: bool = False,
    progress: Progress | None = None,
) -> Report:
    """Re-run a fixed, seeded suite and compare every metric with ``baseline``.

    Returns the comparison (``meta["passed"]`` is False on a regression or a metric no longer
    measured). With ``update`` the returned report holds the new baseline's rows instead, to be
    written over ``baseline``. The suite comes from ``suite``, else the baseline's own, else the default;
    it names the models, dataset, seed and images, so ``data`` gives only the folders (``data_dir``,
    ``cache_dir``) and ``run`` the device and precision; ``weights_dir`` is where shipped checkpoints are.
    A suite (or baseline) naming a ``module:factory`` model is refused unless ``allow_code_in_suite``: that
    imports and runs the code it names.
    """
    from ..check import compare_with_baseline, read_baseline, run_suite, verdict
    from ..runtime import Runtime
    from ..schemas import check_tolerance

    single_process("check")
    why = "the suite says what to run"
    unused(data, ("dataset", "cifar_c_dir", "seed", "n_examples"), "check", why)
    unused(run, ("batch_size", "compile"), "check", why)
    baseline = Path(baseline)
    if tolerance is not None:
        check_tolerance(tolerance)
    stored = read_baseline(baseline, allow_code_in_suite) if not update or baseline.is_file() else None
    chosen = _suite(suite, stored, tolerance, allow_code_in_suite, baseline)
    runtime = Runtime.create(run.device, run.precision)
    rows = run_suite(chosen, runtime, data.data_dir, data.cache_dir, job_progress(progress, runtime), weights_dir)
    if update:
        meta = base_meta("check", chosen.seed, suite=chosen.as_meta(), **runtime.describe())
        return Report(rows, meta, name=baseline.stem, title="sdnet check baseline")
    table = compare_with_baseline(rows, stored[1], chosen.tolerance)  # type: ignore[index]
    meta = base_meta(
        "check", chosen.seed, baseline=str(baseline), tolerance=chosen.tolerance, **verdict(table),
        suite=chosen.as_meta(), **runtime.describe(),
    )  # fmt: skip
    return Report(table, meta, name=f"check-{baseline.stem}", title=f"sdnet check vs {baseline}")


def _suite(
    suite: Path | None,
    stored: tuple[dict[str, Any], Any] | None,
    tolerance: float | None,
    allow_code: bool,
    baseline: Path,
) -> Suite:
    """The suite to run: the ``suite`` file, else the one stored in the baseline, else the default."""
    from ..check import Suite

    if suite is not None:
        chosen = Suite.load(Path(suite), allow_code)
    elif stored is not None and "suite" in stored[0]:
        chosen = Suite.load_dict(stored[0]["suite"], f"baseline {baseline} meta.suite", allow_code)
    else:
        chosen = Suite()
    if tolerance is not None:
        chosen.tolerance = tolerance
    return chosen


def compare(
    sources: Sequence[str | Path | tuple[str, Path]],
    *,
    out_dir: Path,
    name: str = "compare",
    title: str | None = None,
    note: str = "",
) -> list[Path]:
    """One table (and plots) from several eval or attack reports, a column per label; writes them to
    ``out_dir`` and returns the paths. Sources are ``"LABEL=report.json"`` or ``(label, path)``."""
    from ..compare import compare_reports

    check_stem(name)
    return compare_reports(sources, out_dir=Path(out_dir), name=name, title=title, note=note)
