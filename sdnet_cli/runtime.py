"""Where and how forwards run, and the batch loop's primitives: uint8 images in, predictions out.

Every forward the tool judges (evaluation, sweeps, the gate, attacks, training's accuracy) goes
through ``Runtime`` and ``predict``, so device, precision and batching behave the same everywhere.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from .errors import UsageError
from .metrics import percent
from .models.classifier import Classifier
from .specs import Precision, check_device, check_precision

KEEP_FREED_MEMORY = "SDNET_KEEP_FREED_MEMORY"


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep large freed blocks for reuse instead of handing each back to the kernel.

    By default glibc serves every allocation of 32 MiB or more (and smaller ones until its adaptive
    threshold has grown) with a fresh ``mmap`` and unmaps it on free, so the next tensor of that size
    starts on untouched pages: a page fault per 4 KiB, paid again on every forward. A width-32 CIFAR
    network's activations at batch 256 are exactly 32 MiB in fp32, and attacks re-allocate their
    gradients at every step: in ``benchmarks/throughput.py`` this made fp32 forwards at batch 256 about
    1.8x slower (numbers in reports/benchmarks.md). Here every block comes from the heap, and up to
    1 GiB of freed memory stays with the process: no more faults, at the price of a higher peak
    RSS (aligned tensor blocks leave gaps, so the heap grows by a few blocks of each large size before
    it reuses them; +300 MB in that benchmark).

    Process-wide, so the CLI calls it for its own process and a notebook may call it once itself.
    Returns False, changing nothing, where the C library is not glibc or where the environment variable
    ``SDNET_KEEP_FREED_MEMORY`` is ``0`` (the off-switch, for less peak memory; ``1`` or unset: on).
    """
    switch = os.environ.get(KEEP_FREED_MEMORY, "1")
    if switch not in ("0", "1"):
        raise UsageError(f"environment variable {KEEP_FREED_MEMORY} must be 0 or 1, got {switch!r}")
    if switch == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)  # the C library this interpreter runs on
    except OSError:
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # not glibc: its mallopt ignores or rejects these settings
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # glibc's malloc.h
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))


CHECK_MARGIN = 0.5
"""bf16-checked re-runs in fp32 every image whose bf16 logits' top-1 minus top-2 is below this. In
benchmarks/checked_precision.py (reports/benchmarks.md) every image bf16 flipped had a margin of at most
0.0625 (shipped sdnet18 and resnet18, clean and gaussian noise severity 5); 0.5 re-ran 2-3% of clean and
10-12% of those noisy images."""
AUDIT_SHARE = 0.02
"""bf16-checked also re-runs this seeded share of the decisions it accepted, to measure their agreement."""


@dataclass
class Checked:
    """What a bf16-checked run did: images decided, re-run in fp32 for a small margin, and of the accepted
    bf16 decisions, how many were audited (re-run anyway, a seeded sample, like a sweep plan's audit of
    its inferred pairs) and how many of those held; an audited image takes the fp32 decision.
    One per ``Runtime``: counts grow over every forward of the run (this process's, under torchrun), so
    a report's meta states them. The audit draws from its own generator, seeded by ``seed``, in batch order."""

    margin: float = CHECK_MARGIN
    audit_share: float = AUDIT_SHARE
    seed: int = 0
    images: int = 0
    rerun: int = 0
    audited: int = 0
    audit_same: int = 0
    rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng([self.seed, 31])

    def decide(self, model: nn.Module, x: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        """Float32 logits: ``low`` (bf16 logits of ``x``) where its top-1 leads top-2 by ``margin`` or more,
        the fp32 forward's elsewhere and on the audit sample (whose decisions are also compared)."""
        logits = low.float()
        top = logits.topk(2, dim=1).values if logits.shape[1] > 1 else torch.cat([logits, logits - 1e9], 1)
        doubtful = ~(top[:, 0] - top[:, 1] >= self.margin)  # NaN or inf margins are doubtful too
        drawn = torch.from_numpy(self.rng.random(len(logits)) < self.audit_share).to(logits.device)
        audit = drawn & ~doubtful
        rows = (doubtful | audit).nonzero().flatten()
        self.images += len(logits)
        self.rerun += int(doubtful.sum())
        if len(rows):
            with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
                exact = model(x[rows].contiguous(memory_format=torch.channels_last)).float()
            sampled = audit[rows]
            self.audited += int(sampled.sum())
            self.audit_same += int((exact[sampled].argmax(1) == logits[rows][sampled].argmax(1)).sum())
            logits[rows] = exact
        return logits

    def describe(self) -> dict[str, Any]:
        return {
            "margin": self.margin,
            "audit_share": self.audit_share,
            "images": self.images,
            "rerun": self.rerun,
            "audited": self.audited,
            "audit_same": self.audit_same,
            "audit_agreement": round(self.audit_same / self.audited, 6) if self.audited else None,
        }


class NonFiniteOutput(UsageError):
    """The model's outputs are not numbers for these inputs and settings: no accuracy can be reported."""


CPU_ISAS = (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX-512 BF16"), ("avx512f", "AVX-512"), ("avx2", "AVX2"))
"""/proc/cpuinfo flag -> name, best first."""
NATIVE_BF16 = frozenset({"amx_bf16", "avx512_bf16"})
"""The CPU flags under which bf16 autocast runs natively (faster than fp32); without them it is emulated."""


def cpu_fields(cpuinfo: str) -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo's text (``model name``, ``flags``...)."""
    first_cpu = cpuinfo.split("\n\n")[0].splitlines()
    return {key.strip(): value.strip() for key, value in (line.split(":", 1) for line in first_cpu if ":" in line)}


def read_cpuinfo() -> str:
    """/proc/cpuinfo's text, or "" where there is none (not Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return ""


def describe_cpu(cpuinfo: str, threads: int, fallback: str = "unknown") -> str:
    """``<model name> CPU (<best bf16-relevant ISA>), <threads> threads`` from /proc/cpuinfo's text."""
    info = cpu_fields(cpuinfo)
    flags = set(info.get("flags", "").split())
    isa = next((name for flag, name in CPU_ISAS if flag in flags), None)
    return f"{info.get('model name', fallback)} CPU{f' ({isa})' if isa else ''}, {threads} thread{'s' if threads != 1 else ''}"


def hardware() -> str:
    """The accelerator, or the CPU model name, its widest bf16-relevant instruction set and the thread
    count, for manifests and benchmark tables: bf16 autocast is faster than fp32 on CPUs with AMX or
    AVX-512 BF16 and several times slower on AVX2-only ones, and the model name alone does not tell."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return describe_cpu(read_cpuinfo(), torch.get_num_threads(), platform.processor() or platform.machine())


def emulated_bf16_note(runtime: Runtime, cpuinfo: str | None = None) -> str | None:
    """A one-line note when ``runtime`` asks for bf16 on a CPU whose flags show no native bf16 (measured here:
    bf16-checked 2.6-5.4x the fp32 time on an AVX2-only EPYC); None otherwise, and where the flags are unknown."""
    if runtime.device.type != "cpu" or runtime.precision == "fp32":
        return None
    flags = set(cpu_fields(read_cpuinfo() if cpuinfo is None else cpuinfo).get("flags", "").split())
    if not flags or flags & NATIVE_BF16:
        return None
    return (
        f"precision {runtime.precision}: this CPU has no native bf16 (AMX or AVX-512 BF16), so bf16 runs emulated "
        "and several times slower than fp32 here; --precision fp32 gives the same decisions faster"
    )


@dataclass(frozen=True)
class Runtime:
    """Where and how forwards run. bf16 autocast + channels_last is faster than fp32 on GPUs and on
    CPUs with AMX or AVX-512 BF16, several times slower on AVX2-only CPUs (benchmarks/); CSC solves
    stay float32 regardless (see ``CSCLayer.solve``). ``compile`` runs a classifier's no-grad
    inference through ``torch.compile`` (``Classifier.compile_inference``; attacks' gradient passes
    stay eager, compiled ones were slower on CPU): faster evaluation after a one-off compile of
    seconds to a minute, logits equal to eager up to float rounding (benchmarks/compile_speed.py)."""

    device: torch.device
    precision: Precision = "fp32"
    compile: bool = False
    checked: Checked = field(default_factory=Checked, compare=False)

    @classmethod
    def create(cls, device: str = "auto", precision: str = "fp32", compile: bool = False) -> Runtime:
        typed = check_precision(precision)
        check_device(device)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise UsageError(
                "device cuda was asked for, but torch sees no CUDA GPU on this machine", parameter="device"
            )
        return cls(torch.device(device), typed, compile)

    @property
    def eval_batch_size(self) -> int:
        """Images per forward when a caller does not say: on CPUs the size benchmarks/eval_batch_size.py
        found fastest (its numbers are in reports/benchmarks.md); on GPUs a larger batch, not yet measured."""
        return 64 if self.device.type == "cpu" else 256

    def autocast(self) -> AbstractContextManager[Any]:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision != "fp32")

    @property
    def exact(self) -> Runtime:
        """This runtime in fp32 where it is bf16-checked (for work that needs more than decisions: attacks)."""
        return Runtime(self.device, "fp32", self.compile) if self.precision == "bf16-checked" else self

    def prepare(self, model: nn.Module) -> nn.Module:
        """Move a model to the device in channels_last layout, in eval mode, and (``compile``) compile
        its inference path. In place: returns the same model, so ``using`` and attacks work as before."""
        model = model.to(self.device).to(memory_format=torch.channels_last).eval()
        if self.compile:
            if not isinstance(model, Classifier):
                raise UsageError("compile applies to classifiers (models.load_model) only", parameter="compile")
            model.compile_inference()
        return model

    def prepare_checked(self, model: nn.Module, name: str, dataset: str) -> nn.Module:
        """``prepare``, then the output contract every model is held to, checked once before any work
        (``check_outputs``): a model that breaks it is one usage error naming what it returned."""
        self.prepare(model)
        check_outputs(model, self, name, dataset)
        return model

    def to_input(self, images: np.ndarray) -> torch.Tensor:
        """uint8 NHWC -> float [0,1] NCHW (channels_last) on the device."""
        x = torch.from_numpy(np.array(images)).to(self.device)  # a copy: cells may be read-only memmaps
        return x.permute(0, 3, 1, 2).float().div_(255.0).contiguous(memory_format=torch.channels_last)

    def describe(self) -> dict[str, Any]:
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        checked = {"precision_check": self.checked.describe()} if self.precision == "bf16-checked" else {}
        return {
            "device": str(self.device), "device_name": name, "precision": self.precision, "compiled": self.compile,
            **checked,
        }  # fmt: skip


@contextmanager
def own_rng(device: torch.device, seed: int | None = None) -> Iterator[None]:
    """torch's global generators for the block only: seeded with ``seed`` (None: continuing from the
    caller's state), and the caller's state back on exit. torchattacks draws from (and reseeds) the
    global generators, so this is how a run is seeded without the caller noticing."""
    cuda = list(range(torch.cuda.device_count())) if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda, device_type="cuda"):
        if seed is not None:
            torch.manual_seed(seed)
        yield


PROBE_SIZES = (2, 3)
"""Batch sizes of the random images each model is probed with: two, so an output shape that does not follow
the batch is seen."""


def _first_line(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _described(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)} on {value.device}"
    if isinstance(value, (tuple, list, dict)):
        return f"a {type(value).__name__} of {len(value)}, not a tensor"
    return f"a {type(value).__name__}, not a tensor"


def check_outputs(model: nn.Module, runtime: Runtime, name: str, dataset: str) -> None:
    """The output contract of every model (ours, a factory's, a module given to the API, RobustBench's, timm's):
    for random [0, 1] images of ``dataset``'s size, a batch of each of ``PROBE_SIZES``, a floating-point
    tensor of shape (N, classes) on the runtime's device, finite. Checked once before any work, with the
    runtime's precision: accuracy is an argmax, which would silently count a wrong class count or a
    batch-shaped output. Runs with gradients on, so a compiled model's inference graph is not traced for
    the probe's shape; the random state a run depends on is left as it was (``own_rng``)."""
    from .models.inputs import model_input

    spec = model_input(dataset)
    size, classes = spec.image_size, spec.num_classes
    generator = torch.Generator().manual_seed(0)
    for n in PROBE_SIZES:
        x = torch.rand(n, 3, size, size, generator=generator).to(runtime.device)
        try:
            with own_rng(runtime.device), torch.enable_grad(), runtime.autocast():
                out = model(x)
        except Exception as exc:  # a model built for other inputs, or broken: its first line names why
            raise UsageError(
                f"model {name} fails on {n} random {size}x{size} RGB images of {dataset}: {_first_line(exc)}",
                parameter="model",
            ) from None
        wanted = f"{dataset} needs a floating-point tensor of shape ({n}, {classes}) on {runtime.device}"
        if not isinstance(out, torch.Tensor) or not out.is_floating_point():
            raise UsageError(f"model {name} returns {_described(out)} for {n} images; {wanted}", parameter="model")
        on_device = out.device.type == runtime.device.type and runtime.device.index in (None, out.device.index)
        if tuple(out.shape) != (n, classes) or not on_device:
            raise UsageError(f"model {name} returns {_described(out)} for {n} images; {wanted}", parameter="model")
        if not torch.isfinite(out.detach()).all():
            raise NonFiniteOutput(f"model {name} returns NaN or infinite logits for {n} random images")


def check_gradients(model: nn.Module, x: torch.Tensor, runtime: Runtime) -> None:
    """Attacks follow the gradient of the logits with respect to the images: a forward that detaches them
    (or runs under ``no_grad``) is refused here, before any attack, instead of failing inside one."""
    xg = x.detach().clone().requires_grad_(True)
    with own_rng(runtime.device), torch.enable_grad(), runtime.autocast():
        out = model(xg)
    if not out.requires_grad:
        raise UsageError(
            "the model returns logits without gradients with respect to its input images (its forward detaches them "
            "or runs under no_grad); attacks need them",
            parameter="model",
        )


@dataclass
class Counts:
    n: int
    correct: int
    seconds: float

    @property
    def accuracy(self) -> float:
        return percent(self.correct, self.n)


@dataclass(frozen=True)
class Batch:
    rows: slice  # which images of the array this batch holds
    x: torch.Tensor  # float [0,1] NCHW (channels_last) on the runtime's device
    y: torch.Tensor  # int64 labels on the same device


def iter_batches(images: np.ndarray, labels: np.ndarray, runtime: Runtime, batch_size: int) -> Iterator[Batch]:
    """The one way uint8 NHWC images become model inputs, ``batch_size`` at a time, in order."""
    for start in range(0, len(images), batch_size):
        rows = slice(start, min(start + batch_size, len(images)))
        y = torch.from_numpy(np.asarray(labels[rows], dtype=np.int64)).to(runtime.device)
        yield Batch(rows, runtime.to_input(images[rows]), y)


def predict_logits(model: nn.Module, x: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    """Logits of [0,1] inputs, checked finite: the judge of every accuracy the tool reports. Under
    bf16-checked, the rows whose bf16 decision is in doubt are fp32 logits (``Checked.decide``).

    Runs under ``no_grad``, never ``inference_mode``: a model whose forward optimises its input
    (test-time optimisation) switches gradients back on inside, which inference mode forbids.
    """
    with torch.no_grad(), runtime.autocast():
        logits = model(x)
    if runtime.precision == "bf16-checked":
        logits = runtime.checked.decide(model, x, logits)
    if not torch.isfinite(logits).all():  # argmax would still pick a class: a silent wrong number
        raise NonFiniteOutput(
            "the model returned NaN or infinite logits (e.g. a test-time lambda at which the "
            "sparse-coding solve diverges)"
        )
    return cast(torch.Tensor, logits)


def predict(model: nn.Module, x: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    """Predicted labels of [0,1] inputs (``predict_logits``' argmax)."""
    return predict_logits(model, x, runtime).argmax(dim=1)


def predict_correct(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    runtime: Runtime,
    batch_size: int = 256,
    progress: Callable[[int], None] | None = None,
    observe: Callable[[Batch], None] | None = None,
) -> np.ndarray:
    """Boolean [N]: whether the model classifies each image correctly.

    ``observe(batch)`` runs after each batch's prediction, so callers can compute per-sample
    quantities on the same inputs without a loop of their own.
    """
    correct = np.zeros(len(images), dtype=bool)
    for batch in iter_batches(images, labels, runtime, batch_size):
        correct[batch.rows] = (predict(model, batch.x, runtime) == batch.y).cpu().numpy()
        if observe is not None:
            observe(batch)
        if progress is not None:
            progress(batch.rows.stop - batch.rows.start)
    return correct


def count_correct(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    runtime: Runtime,
    batch_size: int = 256,
    progress: Callable[[int], None] | None = None,
    observe: Callable[[Batch], None] | None = None,
) -> Counts:
    start = time.perf_counter()
    correct = predict_correct(model, images, labels, runtime, batch_size, progress, observe)
    return Counts(len(correct), int(correct.sum()), time.perf_counter() - start)
