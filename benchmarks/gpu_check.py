"""The one prepared check for a GPU machine: CUDA tests, eval throughput, a full CIFAR-10-C
evaluation timed, and a one-process NCCL torchrun eval equal to the plain run.

Here, once, with the checkout's environment (the GPU machine is offline and gets only the tree):

    python benchmarks/gpu_check.py pack      # build/gpu-carry: CIFAR-10 test split (xz) + pure-Python deps

On the GPU machine (the device tool's ``run``, carrying ``build/gpu-carry``):

    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py run --out $OUT

Smoke run on CPU (tiny sizes, gloo instead of NCCL; what tests/test_benchmarks.py runs):

    SDNET_DATA=../shared/data python benchmarks/gpu_check.py run --device cpu --quick --out /tmp/gpu-check

Stages run in order, each with its own time budget (``BUDGETS``; about 9 minutes in all), each
writing its commands and output to ``<out>/<stage>.txt``; a failing or timed-out stage is recorded
and the next one still runs. ``<out>/summary.md`` is one table of them all. Exit status 1 when any
stage did not pass. The tests stage runs the whole suite (every test that leaves ``device`` at
``auto`` runs on the GPU) with this file as a pytest plugin that counts the tests which allocated
CUDA memory; on a machine without the CIFAR-10 train split (only the test split is carried) a test
that failed for that reason alone is reported as skipped, with that reason.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import lzma
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CARRY = ROOT / "build" / "gpu-carry"  # build/ is git-ignored; the device tool's `carry` takes it along
CARRIED_PACKAGES = ("torchattacks", "imagecorruptions")  # dependencies missing from the GPU machine's image
CIFAR = "cifar-10-batches-py"
FULL = 10_000  # CIFAR-10 test images per cell
N_CELLS = 19 * 5  # CIFAR-10-C: 15 benchmark + 4 extra corruptions, severities 1..5
EQUALITY_CELLS = ["gaussian_noise", "contrast"]  # torchrun vs plain: one noise, one global corruption
TRAIN_MISSING = "train split not found"  # how sdnet_cli.data.cifar says the train split is absent

# seconds per stage: full run (about 9 min, inside the device tool's 10-minute command limit) and --quick
BUDGETS = {"env": 30, "tests": 180, "throughput": 60, "cifar_c": 210, "torchrun": 60}
QUICK_BUDGETS = {"env": 30, "tests": 60, "throughput": 60, "cifar_c": 90, "torchrun": 60}


@dataclass
class Outcome:
    """What one stage reports in summary.md."""

    status: str = "ok"  # ok, FAILED ..., TIMED OUT ...
    result: str = ""


class Stage:
    """One stage's log (``<out>/<stage>.txt``) and deadline; commands run one after another, output appended."""

    def __init__(self, name: str, budget: float, out: Path, env: dict[str, str]) -> None:
        self.name, self.budget, self.env = name, budget, env
        self.deadline = time.monotonic() + budget
        self.log_path = out / f"{name}.txt"
        self.outcome = Outcome()

    def note(self, text: str) -> None:
        with open(self.log_path, "a") as log:
            log.write(text.rstrip("\n") + "\n")

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, command: list[str], env: dict[str, str] | None = None, check: bool = True) -> tuple[int, float]:
        """(exit status, wall seconds) of ``command``, killed at the stage's deadline (status -9, marked TIMED OUT).
        A non-zero status marks the stage FAILED unless ``check`` is false."""
        self.note(f"\n$ {' '.join(command)}")
        start = time.monotonic()
        with open(self.log_path, "a") as log:
            try:  # a session of its own, so a timeout ends its workers too (pytest-xdist, torchrun, make-c)
                process = subprocess.Popen(
                    command,
                    cwd=ROOT,
                    env={**self.env, **(env or {})},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as exc:  # e.g. a program that is not installed
                log.write(f"{exc}\n")
                process = None
            try:
                rc = process.wait(timeout=max(1.0, self.left())) if process else 127
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                rc = -9
        seconds = time.monotonic() - start
        self.note(f"[exit {rc}, {seconds:.1f} s]")
        if rc == -9:
            self.outcome.status = f"TIMED OUT after {self.budget:.0f} s"
        elif rc and check and self.outcome.status == "ok":
            self.outcome.status = f"FAILED (exit {rc})"
        return rc, seconds

    def output(self) -> str:
        return self.log_path.read_text() if self.log_path.is_file() else ""


# ---------------------------------------------------------------------------------------------- pack (here)


def pack() -> None:
    """Write build/gpu-carry: the CIFAR-10 test split (test_batch xz-compressed, batches.meta) and the
    installed copies of the pure-Python packages the GPU machine's image lacks (with their metadata)."""
    sys.path.insert(0, str(ROOT))
    from sdnet_cli.data.cifar import resolve_data_dir

    source = resolve_data_dir(None) / CIFAR
    if not (source / "test_batch").is_file():
        sys.exit(f"no CIFAR-10 test split in {source}; set SDNET_DATA to the folder containing {CIFAR}")
    shutil.rmtree(CARRY, ignore_errors=True)
    data = CARRY / "data" / CIFAR
    data.mkdir(parents=True)
    shutil.copy(source / "batches.meta", data)
    with lzma.open(data / "test_batch.xz", "wb", preset=6) as f:
        f.write((source / "test_batch").read_bytes())
    site = CARRY / "site"
    for name in CARRIED_PACKAGES:
        dist = importlib.metadata.distribution(name)
        for top in {Path(str(f)).parts[0] for f in dist.files or () if not str(f).startswith("..")}:
            path = Path(str(dist.locate_file(top)))
            if path.is_dir():
                shutil.copytree(path, site / top, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    size = sum(p.stat().st_size for p in CARRY.rglob("*") if p.is_file()) / 2**20
    print(
        f"wrote {CARRY.relative_to(ROOT)} ({size:.1f} MiB); on the GPU machine, carrying it:\n"
        "  PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py run --out $OUT"
    )


# ---------------------------------------------------------------------------------------------- run (there)


def data_root(work: Path) -> Path:
    """$SDNET_DATA when it holds the CIFAR-10 test split, else the carried copy unpacked under ``work``."""
    given = Path(os.environ.get("SDNET_DATA", "data"))
    if (given / CIFAR / "test_batch").is_file():
        return given.resolve()
    carried = CARRY / "data" / CIFAR
    if not (carried / "test_batch.xz").is_file():
        sys.exit("no CIFAR-10 test split: set SDNET_DATA, or run `python benchmarks/gpu_check.py pack` first")
    target = work / "data" / CIFAR
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(carried / "batches.meta", target)
    with lzma.open(carried / "test_batch.xz") as f:
        (target / "test_batch").write_bytes(f.read())
    return target.parent


def environment(work: Path, data: Path, quick: bool) -> dict[str, str]:
    """Environment of every command: the checkout and the carried packages importable, data and caches
    under ``work`` (nothing written to the home folder), unbuffered output so a timed-out log is whole."""
    paths = [str(CARRY / "site")] if (CARRY / "site").is_dir() else []
    paths += [str(ROOT), os.environ.get("PYTHONPATH", "")]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in paths if p),
        "SDNET_DATA": str(data),
        "SDNET_CACHE": str(work / "cache"),
        "PYTHONUNBUFFERED": "1",
        "MPLBACKEND": "Agg",
    }
    if quick:
        env["OMP_NUM_THREADS"] = env.get("OMP_NUM_THREADS", "1")
    return env


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def sdnet(*args: str) -> list[str]:
    return python("-m", "sdnet_cli", *args)


def stage_env(stage: Stage) -> None:
    """The GPU, driver, torch build and package versions; installs sdnet-cli (no deps, offline) if it is not."""
    try:
        importlib.metadata.version("sdnet-cli")
    except importlib.metadata.PackageNotFoundError:  # the GPU machine: editable install for the metadata and `sdnet`
        stage.run(python("-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-e", "."))
    if shutil.which("nvidia-smi"):
        stage.run(["nvidia-smi"], check=False)
    info = (
        "import json, os, platform, torch\n"
        "from sdnet_cli._io import package_versions\n"
        "c = torch.cuda.is_available()\n"
        "print('facts:', json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda, 'cuda_available': c,\n"
        "  'device': torch.cuda.get_device_name(0) if c else 'cpu',\n"
        "  'capability': torch.cuda.get_device_capability(0) if c else None,\n"
        "  'bf16': torch.cuda.is_bf16_supported() if c else None, 'cudnn': torch.backends.cudnn.version(),\n"
        "  'nccl': '.'.join(map(str, torch.cuda.nccl.version())) if c else None,\n"
        "  'cpus': os.cpu_count(), 'versions': {'python': platform.python_version(), **package_versions()}}))\n"
    )
    stage.run(python("-c", info))
    found = re.findall(r"^facts: (.*)$", stage.output(), flags=re.M)
    if found:
        facts = json.loads(found[-1])
        stage.outcome.result = (
            f"{facts['device']}, torch {facts['torch']} (CUDA {facts['cuda']}, NCCL {facts['nccl']}), "
            f"{facts['cpus']} CPUs"
        )


def stage_tests(stage: Stage, quick: bool) -> None:
    """The suite on this machine, tests that leave ``device`` at auto on the GPU (``-p gpu_check`` counts them)."""
    if quick:
        selection = ["tests/test_cli.py::test_eval_end_to_end"]
    else:
        selection = ["tests", "--ignore", "tests/test_benchmarks.py"]  # the benchmarks have their own stage
    workers = []
    if not quick and importlib.util.find_spec("xdist"):
        workers = ["-n", str(max(1, min(12, (os.cpu_count() or 2) - 2)))]
    env = {"PYTHONPATH": os.pathsep.join([str(HERE), stage.env["PYTHONPATH"]]), "OMP_NUM_THREADS": "1"}
    limits = ["--timeout", "150"] if importlib.util.find_spec("pytest_timeout") else []  # one hung test, not the stage
    stage.run(
        python(
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "gpu_check",
            "--durations",
            "10",
            *workers,
            *limits,
            *selection,
        ),
        env=env,
    )
    lines = stage.output().splitlines()
    totals = [line.strip("= ") for line in lines if re.search(r"\d+ (passed|failed|error)", line)]
    cuda = [line for line in lines if line.startswith("CUDA: ")]
    stage.outcome.result = "; ".join(filter(None, [totals[-1] if totals else "", cuda[-1] if cuda else ""]))


def stage_throughput(stage: Stage, device: str, quick: bool) -> None:
    """benchmarks/throughput.py on this device: both models, fp32 and bf16, plus the eval loop's scaling."""
    script = str(HERE / "throughput.py")
    if quick:
        stage.run(python(script, "--device", device, "--width", "4", "--batch-size", "8", "--repeats", "1"))
    else:
        stage.run(python(script, "--device", device, "--width", "32", "--batch-size", "256", "--repeats", "20"))
        stage.run(
            python(
                script,
                "--device",
                device,
                "--width",
                "32",
                "--batch-size",
                "1024",
                "--repeats",
                "10",
                "--scaling",
                "--n-examples",
                "2000",
                "--n-examples",
                "10000",
                "--scaling-batch-size",
                "256",
                "--scaling-batch-size",
                "1024",
                "--scaling-batch-size",
                "4096",
            )
        )
    rows = re.findall(r"^\|\s+\d+ \| (fp32|bf16)\s+\| (\w+)\s+\|\s+\d+ \|\s+([\d.]+) \|", stage.output(), flags=re.M)
    stage.outcome.result = ", ".join(f"{model} {precision} {speed} img/s" for precision, model, speed in rows[:4])


def read_rows(report: Path) -> list[dict[str, Any]]:
    return json.loads(report.read_text())["rows"] if report.is_file() else []


def cell_seconds(rows: list[dict[str, Any]]) -> tuple[int, float]:
    """(images, seconds) summed over a report's cells (the mean row left out)."""
    cells = [r for r in rows if r["corruption"] != "mean"]
    return sum(r["n"] for r in cells), sum(r["seconds"] for r in cells)


def stage_cifar_c(stage: Stage, work: Path, out: Path, device: str, n: int) -> Path | None:
    """Generate all 19 x 5 corruptions of the first ``n`` test images (all CPU cores, timed), then time
    sdnet18's eval of every cell: a probe on one corruption first; if the full set would not fit the
    stage's time left, only the first images of each cell, the full time then extrapolated and said so.
    Returns the generated folder (for the torchrun stage) when it is complete."""
    folder = work / "CIFAR-10-C"
    workers = str(os.cpu_count() or 1)
    rc, generate = stage.run(sdnet("make-c", "--out", str(folder), "--seed", "0", "-n", str(n), "--workers", workers))
    if rc:
        return None
    facts = [f"make-c {N_CELLS} cells x {n:,}: {generate:.0f} s on {workers} workers"]
    common = [
        "eval",
        "-m",
        "sdnet18",
        "-s",
        "all",
        "--cifar-c-dir",
        str(folder),
        "--device",
        device,
        "--out",
        str(work / "reports"),
    ]
    rc, probe_wall = stage.run(sdnet(*common, "-c", EQUALITY_CELLS[0], "-n", str(n), "--name", "probe"))
    images, seconds = cell_seconds(read_rows(work / "reports" / "probe.json"))
    if rc or not seconds:
        stage.outcome.result = "; ".join(facts)
        return folder
    rate, start_up = images / seconds, probe_wall - seconds
    estimate = start_up + (N_CELLS + 1) * n / rate
    fits = estimate < 0.8 * stage.left()
    subset = n if fits else max(1, int(n * (0.5 * stage.left() - start_up) / (estimate - start_up)))
    stage.note(
        f"probe: {rate:.0f} images/s, start-up {start_up:.1f} s; all cells at n={n} estimated {estimate:.0f} s, "
        f"{stage.left():.0f} s left: evaluating n={subset}"
    )
    rc, wall = stage.run(sdnet(*common, "-c", "all", "-c", "extra", "-n", str(subset), "--name", "full"))
    full = work / "reports" / "full.json"
    if not rc and full.is_file():
        shutil.copy(full, out / "cifar_c_eval.json")
        rows = read_rows(full)
        images, seconds = cell_seconds(rows)
        mean = next(r["accuracy"] for r in rows if r["corruption"] == "mean")
        measured = (
            f"sdnet18 fp32 eval of {N_CELLS} cells + clean x {subset:,}: {wall:.0f} s wall, "
            f"{images / seconds:.0f} img/s in cells, mean accuracy {mean:.2f}%"
        )
        if subset < n:
            extrapolated = start_up + (wall - start_up) * n / subset
            measured = f"EXTRAPOLATED: {measured}; at {n:,} per cell about {extrapolated:.0f} s"
        facts.append(measured)
    stage.outcome.result = "; ".join(facts)
    return folder


def stage_torchrun(stage: Stage, work: Path, device: str, n: int, folder: Path | None) -> None:
    """The same eval plainly and under ``torchrun --nproc-per-node 1`` (NCCL on a GPU, gloo on CPU): rows equal."""
    cells = [a for c in EQUALITY_CELLS for a in ("-c", c)]
    source = ["--cifar-c-dir", str(folder)] if folder else ["--cache-dir", str(work / "cache")]
    args = ["eval", "-m", "sdnet18", *cells, "-s", "all", "-n", str(n), "--device", device, *source, "--name", "eq"]
    stage.run(sdnet(*args, "--out", str(work / "plain")))
    stage.run(
        python(
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "1",
            "-m",
            "sdnet_cli",
            *args,
            "--out",
            str(work / "torchrun"),
        )
    )
    if stage.outcome.status != "ok":
        return
    plain, shared = (json.loads((work / part / "eq.json").read_text()) for part in ("plain", "torchrun"))
    strip = lambda report: [{k: v for k, v in row.items() if k != "seconds"} for row in report["rows"]]  # noqa: E731
    backend = (shared["meta"].get("distributed") or {}).get("backend")
    expected = "nccl" if device.startswith("cuda") else "gloo"
    equal = strip(plain) == strip(shared)
    stage.note(f"plain rows: {json.dumps(strip(plain))}\ntorchrun rows: {json.dumps(strip(shared))}")
    stage.outcome.result = (
        f"{len(plain['rows'])} rows {'equal' if equal else 'DIFFER'}, backend {backend}, n={n:,} per cell"
    )
    if not equal or backend != expected:
        stage.outcome.status = (
            "FAILED (rows differ)" if not equal else f"FAILED (backend {backend}, expected {expected})"
        )


def write_summary(out: Path, results: list[tuple[str, Stage | None, float]], args: argparse.Namespace) -> None:
    rows = ["| stage | status | seconds | budget | result |", "|---|---|---:|---:|---|"]
    for name, stage, seconds in results:
        if stage is None:
            rows.append(f"| {name} | skipped | | | |")
        else:
            rows.append(
                f"| {name} | {stage.outcome.status} | {seconds:.0f} | {stage.budget:.0f} | {stage.outcome.result} |"
            )
    mode = "quick" if args.quick else "full"
    (out / "summary.md").write_text(
        f"### GPU check ({mode}, --device {args.device})\n\n`{' '.join(sys.argv)}`; each "
        "stage's commands and output are in <stage>.txt beside this file.\n\n" + "\n".join(rows) + "\n"
    )


def run(args: argparse.Namespace) -> int:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for name in BUDGETS:  # this script's own files only: --out may hold others
        (out / f"{name}.txt").unlink(missing_ok=True)
    work = Path(args.work).resolve() if args.work else Path(tempfile.mkdtemp(prefix="sdnet-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    n = args.n_examples or (8 if args.quick else FULL)
    budgets = QUICK_BUDGETS if args.quick else BUDGETS
    env = environment(work, data_root(work), args.quick)
    results: list[tuple[str, Stage | None, float]] = []
    folder: Path | None = None
    for name in BUDGETS:
        if args.stage and name not in args.stage:
            results.append((name, None, 0.0))
            continue
        stage = Stage(name, budgets[name], out, env)
        start = time.monotonic()
        print(f"[{name}] up to {stage.budget:.0f} s ...", flush=True)
        try:
            if name == "env":
                stage_env(stage)
            elif name == "tests":
                stage_tests(stage, args.quick)
            elif name == "throughput":
                stage_throughput(stage, args.device, args.quick)
            elif name == "cifar_c":
                folder = stage_cifar_c(stage, work, out, args.device, n)
            else:
                stage_torchrun(stage, work, args.device, n, folder)
        except Exception as exc:  # a broken stage must not cost the ones after it
            stage.note(f"stage raised {exc!r}")
            stage.outcome.status = f"FAILED ({exc.__class__.__name__})"
        results.append((name, stage, time.monotonic() - start))
        print(f"[{name}] {stage.outcome.status}: {stage.outcome.result}", flush=True)
        write_summary(out, results, args)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    print((out / "summary.md").read_text())
    return 0 if all(s is None or s.outcome.status == "ok" for _, s, _ in results) else 1


# ---------------------------------------------------------------------------------------------- pytest plugin


def cuda_allocations() -> int:
    """CUDA allocations made so far by this process (0 before CUDA is first used; never initialises it)."""
    import torch

    return int(torch.cuda.memory_stats().get("allocation.all.allocated", 0)) if torch.cuda.is_initialized() else 0


class CudaUsage:
    """Counts the tests whose call allocated CUDA memory; reports a test that failed only because the
    CIFAR-10 train split is absent as skipped (the GPU machine gets the test split alone)."""

    def __init__(self, train_missing: bool) -> None:
        self.train_missing = train_missing
        self.cuda: list[str] = []
        self.called = 0

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Iterator[None]:
        before = cuda_allocations()
        yield
        item.user_properties.append(("cuda_allocations", cuda_allocations() - before))

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
        outcome = yield
        report = outcome.get_result()
        if self.train_missing and report.failed and TRAIN_MISSING in str(report.longrepr):
            report.outcome = "skipped"
            report.longrepr = (
                str(item.path),
                item.location[1] or 0,
                "skipped: needs the CIFAR-10 train split (not carried)",
            )

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call":
            self.called += 1
            if dict(report.user_properties).get("cuda_allocations", 0) > 0:
                self.cuda.append(report.nodeid)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if hasattr(terminalreporter.config, "workerinput"):  # a pytest-xdist worker: the controller reports
            return
        for nodeid in self.cuda:
            terminalreporter.write_line(f"  cuda: {nodeid}")
        terminalreporter.write_line(f"CUDA: {len(self.cuda)} of {self.called} tests allocated CUDA memory")


def pytest_configure(config: pytest.Config) -> None:
    """Loaded with ``pytest -p gpu_check`` (benchmarks/ on PYTHONPATH) by the tests stage."""
    data = Path(os.environ.get("SDNET_DATA", "data")) / CIFAR
    config.pluginmanager.register(CudaUsage(not (data / "data_batch_1").is_file()), "sdnet-cuda-usage")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("pack", help="write build/gpu-carry (here, before a device session)")
    checking = commands.add_parser("run", help="run the stages (on the GPU machine)")
    checking.add_argument(
        "--out",
        default=os.environ.get("OUT") or str(ROOT / "build" / "gpu-check"),
        help="folder for <stage>.txt and summary.md (default: $OUT, else build/gpu-check)",
    )
    checking.add_argument("--device", default="cuda", help="cuda (default) or cpu for a smoke run")
    checking.add_argument("--quick", action="store_true", help="tiny sizes: checks the script, measures nothing")
    checking.add_argument("--n-examples", type=int, help="images per CIFAR-10-C cell (default 10,000; --quick 8)")
    checking.add_argument("--stage", action="append", choices=list(BUDGETS), help="only these stages (repeatable)")
    checking.add_argument("--work", help="scratch folder, kept (default: a temporary folder, removed)")
    args = parser.parse_args()
    if args.command == "pack":
        pack()
    else:
        sys.exit(run(args))


if __name__ == "__main__":
    main()
