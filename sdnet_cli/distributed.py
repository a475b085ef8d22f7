"""Evaluation across processes launched by ``torchrun``: who does which batches, and how results meet.

Every rank runs the same command on the same data. Each takes a contiguous run of *whole batches*
(``shard``), so it forwards exactly the batches a single process would, with the same contents and
the same per-batch seeds: logits, correct counts and attack outcomes are bit-for-bit those of a
one-process run with the same ``--batch-size``. Ranks then combine their numbers with an
all-reduce (``combine``), so every rank ends with the full result and rank 0 alone writes it.

Without torchrun's environment (``WORLD_SIZE``/``RANK``) nothing is initialised and every helper
is the identity: one process owns all batches.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable
from typing import Literal, TypeVar, cast

import numpy as np
import torch
import torch.distributed as dist

from .errors import UsageError

T = TypeVar("T")


def launched_by_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def init(device: str) -> str:
    """Join torchrun's process group (NCCL on GPUs, gloo on CPU) and return the device this rank
    uses: ``cuda:LOCAL_RANK`` on a GPU run, else ``device`` unchanged. A no-op outside torchrun."""
    if not launched_by_torchrun():
        return device
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        if not torch.cuda.is_available():
            raise UsageError(
                "device cuda was asked for, but torch sees no CUDA GPU on this machine", parameter="device"
            )
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
        atexit.register(dist.destroy_process_group)
    return device


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """Rank 0 (or the only process): the one that prints and writes reports."""
    return rank() == 0


def describe() -> dict[str, int | str] | None:
    """For report meta: how many processes shared the run (None for a single process)."""
    if not dist.is_initialized():
        return None
    return {"world_size": world_size(), "backend": str(dist.get_backend()), "seconds": "wall-clock of the slowest rank"}


def shard_batches(n_batches: int) -> range:
    """This rank's contiguous run of batch indices; sizes differ by at most one batch."""
    r, w = rank(), world_size()
    return range(n_batches * r // w, n_batches * (r + 1) // w)


def shard(n: int, batch_size: int) -> slice:
    """This rank's rows of ``range(n)``: whole batches of ``batch_size`` (see ``shard_batches``)."""
    batches = shard_batches(-(-n // batch_size))
    return slice(min(n, batches.start * batch_size), min(n, batches.stop * batch_size))


def shard_size(n: int, batch_size: int) -> int:
    part = shard(n, batch_size)
    return cast("int", part.stop - part.start)


def rank_suffix() -> str:
    """``.rank<R>-of-<W>`` under torchrun, else empty: names per-rank files (resume state) so ranks
    never share one, and a run with another world size does not pick them up."""
    return f".rank{rank()}-of-{world_size()}" if dist.is_initialized() else ""


def combine(array: np.ndarray, op: Literal["sum", "max"]) -> np.ndarray:
    """All-reduce a numpy array across ranks (the array itself for one process).

    ``sum`` also merges per-sample arrays that each rank filled on its own rows, zeros elsewhere:
    every entry then comes from exactly one rank, unchanged (booleans are OR-ed).
    """
    array = np.asarray(array)
    if not dist.is_initialized():
        return array
    flags = array.dtype == np.bool_
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    tensor = torch.from_numpy(array.astype(np.uint8) if flags else array.copy()).to(device)
    dist.all_reduce(tensor, dist.ReduceOp.MAX if flags or op == "max" else dist.ReduceOp.SUM)
    result = tensor.cpu().numpy()
    return result.astype(bool) if flags else result


def in_turn(work: Callable[[], T]) -> T:
    """Run ``work`` on rank 0 first, then on each other node's first process, then on the rest,
    with barriers between: a cache that ``work`` fills is written once per filesystem, never by
    two processes at a time, and the others find it complete."""
    if not dist.is_initialized():
        return work()
    stage = 0 if rank() == 0 else 1 if int(os.environ.get("LOCAL_RANK", "0")) == 0 else 2
    result: T | None = None
    for turn in range(3):
        if stage == turn:
            result = work()
        dist.barrier()
    return result  # type: ignore[return-value]
