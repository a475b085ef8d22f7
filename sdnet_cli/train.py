"""Training with the CIFAR recipe of the SDNet paper (Dai et al., NeurIPS 2022, following the standard ResNet
CIFAR recipe), shortened by ``epochs``.

SGD (Nesterov, momentum 0.9, weight decay 5e-4), cosine learning rate per iteration down to
1e-6, random crop (pad 4) + horizontal flip. Every epoch draws its randomness from
(seed, epoch) and ends with an atomic resume file, so an interrupted run loses at most one
epoch and a resumed run retraces the uninterrupted one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ._io import atomic_path
from .errors import UsageError
from .metrics import percent
from .models.classifier import Classifier
from .runtime import Runtime, count_correct
from .schemas import (
    BATCH_MAX,
    EPOCHS_MAX,
    EXAMPLES_MAX,
    WIDTH_MAX,
    check,
    check_count,
    check_lam,
    check_lr,
    finite_rule,
    fraction_rule,
)


@dataclass
class TrainConfig:
    model: str
    dataset: str = "cifar10"
    epochs: int = 30
    width: int = 32
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    min_lr: float = 1e-6
    lam: float = 0.1
    square_noise: bool = True
    seed: int = 0
    n_train: int | None = None  # first N training images only (tests, quick runs)
    n_test: int | None = None

    def __post_init__(self) -> None:
        """The flags' rules (``schemas``), checked before any data is loaded: a lambda of -1 or a learning
        rate of NaN would otherwise train a whole epoch, or write a checkpoint that cannot work."""
        check_lam(self.lam)
        check_lr(self.lr)
        check(finite_rule, self.min_lr, "min_lr")
        check(fraction_rule, self.momentum, "momentum")
        check(finite_rule, self.weight_decay, "weight_decay")
        check_count(self.epochs, "epochs", EPOCHS_MAX)
        check_count(self.width, "width", WIDTH_MAX)
        check_count(self.batch_size, "batch_size", BATCH_MAX)
        for value, parameter in ((self.n_train, "n_train"), (self.n_test, "n_test")):
            if value is not None:
                check_count(value, parameter, EXAMPLES_MAX)


@dataclass
class EpochLog:
    epoch: int
    train_loss: float
    train_accuracy: float
    test_accuracy: float
    lr: float
    seconds: float
    images_per_second: float


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    history: list[EpochLog] = field(default_factory=list)


def augment(images: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Random 32x32 crop of the zero-padded (4 px) batch plus a random horizontal flip; uint8 NCHW in and out."""
    n, _, h, w = images.shape
    padded = F.pad(images, (4, 4, 4, 4))
    dy = torch.from_numpy(rng.integers(0, 9, n))
    dx = torch.from_numpy(rng.integers(0, 9, n))
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
    batch = torch.arange(n)[:, None, None, None]
    chans = torch.arange(images.shape[1])[None, :, None, None]
    out = padded[batch, chans, rows, cols]
    flip = torch.from_numpy(rng.random(n) < 0.5)
    out[flip] = out[flip].flip(-1)
    return out


def cosine_lr(cfg: TrainConfig, step: int, total_steps: int) -> float:
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * step / total_steps))


def make_optimizer(model: Classifier, cfg: TrainConfig) -> torch.optim.SGD:
    return torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True
    )


def train_step(
    model: Classifier, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, runtime: Runtime
) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step on a [0,1] batch under the runtime's autocast; returns the (detached) loss and logits."""
    with runtime.autocast():
        logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), logits.detach()


def save_resume(
    path: Path, model: Classifier, optimizer: torch.optim.Optimizer, state: TrainState, cfg: TrainConfig
) -> None:
    payload = {
        "model": model.network.state_dict(),
        "optimizer": optimizer.state_dict(),
        # warm starts of the step-size power iterations, so a resumed run retraces the original
        "power_vectors": [layer._power_vector for layer in model.csc_layers],
        "epoch": state.epoch,
        "history": [asdict(h) for h in state.history],
        "config": asdict(cfg),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def check_resume(path: Path, cfg: TrainConfig, payload: dict[str, Any] | None = None) -> dict[str, Any]:
    """The resume file's payload; a usage error when it was started with other settings than ``cfg``."""
    payload = payload if payload is not None else torch.load(path, map_location="cpu", weights_only=True)
    if payload["config"] != asdict(cfg):
        changed = sorted(k for k in payload["config"] if payload["config"][k] != asdict(cfg).get(k))
        raise UsageError(
            f"cannot resume {path}: it was started with different settings ({', '.join(changed)})", parameter="resume"
        )
    return payload


def load_resume(path: Path, model: Classifier, optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> TrainState:
    payload = check_resume(path, cfg)
    model.network.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    for layer, vector in zip(model.csc_layers, payload["power_vectors"]):
        layer._power_vector = vector
    return TrainState(payload["epoch"], [EpochLog(**h) for h in payload["history"]])


def train(
    model: Classifier,
    cfg: TrainConfig,
    train_data: tuple[np.ndarray, np.ndarray],
    test_data: tuple[np.ndarray, np.ndarray],
    runtime: Runtime,
    resume_path: Path,
    resume: bool = False,
    on_batch: Callable[[int], None] | None = None,
    on_epoch: Callable[[EpochLog], None] | None = None,
) -> TrainState:
    """Train ``model`` in place; returns the per-epoch history. Writes ``resume_path`` after every epoch."""
    images, labels = train_data
    if cfg.n_train is not None:
        images, labels = images[: cfg.n_train], labels[: cfg.n_train]
    test_images, test_labels = test_data
    if cfg.n_test is not None:
        test_images, test_labels = test_images[: cfg.n_test], test_labels[: cfg.n_test]
    runtime.prepare(model)
    optimizer = make_optimizer(model, cfg)
    state = load_resume(resume_path, model, optimizer, cfg) if resume and resume_path.is_file() else TrainState()
    steps_per_epoch = math.ceil(len(images) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    all_images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    all_labels = torch.from_numpy(labels)
    for epoch in range(state.epoch, cfg.epochs):
        rng = np.random.default_rng([cfg.seed, epoch])
        torch.manual_seed(cfg.seed * 100_003 + epoch)
        model.train()
        order = torch.from_numpy(rng.permutation(len(images)))
        loss_sum, correct, start = 0.0, 0, time.perf_counter()
        for i in range(steps_per_epoch):
            step = epoch * steps_per_epoch + i
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(cfg, step, total_steps)
            idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            x = augment(all_images[idx], rng).to(runtime.device).float().div_(255)
            x = x.contiguous(memory_format=torch.channels_last)
            y = all_labels[idx].to(runtime.device)
            loss, logits = train_step(model, optimizer, x, y, runtime)
            loss_sum += float(loss) * len(idx)
            correct += int((logits.argmax(1) == y).sum())
            if on_batch is not None:
                on_batch(len(idx))
        seconds = time.perf_counter() - start
        model.eval()
        test = count_correct(model, test_images, test_labels, runtime, batch_size=500)
        log = EpochLog(
            epoch=epoch + 1,
            train_loss=loss_sum / len(images),
            train_accuracy=percent(correct, len(images)),
            test_accuracy=test.accuracy,
            lr=optimizer.param_groups[0]["lr"],
            seconds=seconds,
            images_per_second=len(images) / seconds,
        )
        state.epoch, state.history = epoch + 1, state.history + [log]
        save_resume(resume_path, model, optimizer, state, cfg)
        if on_epoch is not None:
            on_epoch(log)
    model.eval()
    return state


def clean_accuracies(model: Classifier, test_data: tuple[np.ndarray, np.ndarray], runtime: Runtime) -> dict[str, float]:
    """The manifest's accuracies: ``clean_accuracy`` in fp32 (what ``sdnet eval`` reports by default),
    plus ``clean_accuracy_bf16`` under bf16 autocast for a model trained that way."""
    fp32 = count_correct(model, *test_data, Runtime(runtime.device, "fp32"), batch_size=500)
    result = {"clean_accuracy": round(fp32.accuracy, 2)}
    if runtime.precision == "bf16":
        result["clean_accuracy_bf16"] = round(count_correct(model, *test_data, runtime, batch_size=500).accuracy, 2)
    return result
