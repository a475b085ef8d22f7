"""Running an attack: the threat set, the sample-wise worst case, and the batch loop.

Attacks differentiate ``base.AttackedModel``, the deployed model itself. Whether an adversarial
example fools the model is decided once, by ``runtime.predict`` on that very example; that flag is
what the report counts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed
from ..metrics import percent
from ..runtime import Runtime, check_gradients, own_rng, predict_correct
from ..schemas import BATCH_MAX, POOL_BATCHES_MAX, check_count
from ..specs import gradient_precision
from . import registry
from .base import AttackedModel
from .checks import DIAGNOSTIC_IMAGES, diagnose
from .config import BATCH_SIZE, POOL_BATCHES, AttackConfig
from .results import AttackResults
from .state import PoolResult, RunState


# -- the threat set ------------------------------------------------------------------------------
def project(candidate: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """The nearest point of the threat set (eps-ball around x, inside [0,1]); a guard against
    attacks that overshoot by rounding."""
    delta = candidate - x
    if norm == "Linf":
        delta = delta.clamp(-eps, eps)
    else:
        norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        delta = delta * (eps / norms).clamp(max=1.0)
    return (x + delta).clamp(0.0, 1.0)


def excess(candidate: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> float:
    """How far an attack's raw output (a non-empty batch) lies outside the threat set; 0 when inside."""
    delta = (candidate - x).flatten(1)
    size = delta.abs().amax(dim=1) if norm == "Linf" else delta.norm(dim=1)
    outside = (candidate - candidate.clamp(0.0, 1.0)).abs().amax()
    return max(float((size - eps).clamp_min(0).max()), float(outside))


# -- seeds ---------------------------------------------------------------------------------------
def derive_seed(*keys: int) -> int:
    """A 32-bit seed from (seed, batch, run, ...): reruns repeat, neighbours do not collide."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


# -- sample-wise runner --------------------------------------------------------------------------
def build_components(model: nn.Module, config: AttackConfig, eps: float, num_classes: int) -> list[registry.Component]:
    """The configured attacks at one eps, in the order they run."""
    return [
        registry.build(
            model,
            name,
            registry.AttackSetting(
                norm=config.norm,
                eps=eps,
                steps=config.steps_for(name),
                restarts=config.restarts or 1,
                num_classes=num_classes,
                eot_iter=config.eot_iter,
            ),
        )  # fmt: skip
        for name in config.components
    ]


@dataclass
class SampleWiseResult:
    fooled: torch.Tensor  # [K, P] bool: component k's example fooled the deployed model
    adv: torch.Tensor  # [P, C, H, W]: the fooling example where one was found, else the input
    seconds: list[float]  # per component
    max_excess: float  # largest raw overshoot of the threat set (examples are projected before judging)


class SampleWise:
    """Attacks one after another, each only on the points that every earlier one failed on; a point is
    robust only if no attack fooled it (the per-sample worst case). Each attack's output is judged once.

    It works on a pool of several batches: before each attack the points still standing in the whole
    pool are gathered and attacked ``batch_size`` at a time, so a later attack gets a few full batches
    instead of many nearly empty ones (as the reference AutoAttack does over its whole input).
    """

    def __init__(
        self, model: AttackedModel, components: list[registry.Component], norm: str, eps: float, batch_size: int
    ) -> None:
        self.model, self.components, self.norm, self.eps, self.batch_size = model, components, norm, eps, batch_size

    def __call__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        active: torch.Tensor,
        seed: int,
        done: Callable[[float], None] | None = None,
    ) -> SampleWiseResult:
        """``seed`` fixes every draw: attack k's run r on the s-th batch of standing points uses (seed, k, r, s).
        ``done(f)`` after each batch: the fraction f of the attacks (each an equal share) now finished."""
        fooled = torch.zeros(len(self.components), len(x), dtype=torch.bool, device=x.device)
        adv, standing, seconds, max_excess = x.clone(), active.clone(), [], 0.0
        for k, component in enumerate(self.components):
            start = time.perf_counter()
            for run in range(component.runs):
                pooled = standing.nonzero().flatten()
                if len(pooled) == 0:  # split() would still hand out one empty batch
                    break
                batches = pooled.split(self.batch_size)
                for s, idx in enumerate(batches):
                    # this batch's share of the attacks' work: from `base`, `width` wide (done() sums to 1)
                    width = 1 / (len(batches) * component.runs * len(self.components))
                    base = (k + (run + s / len(batches)) / component.runs) / len(self.components)
                    calls = sum(registry.calls_per_batch(component)) // component.runs
                    with _ticking(self.model, calls, done, base, width):
                        wrong, candidate, over = self._attack(component, x[idx], y[idx], derive_seed(seed, k, run, s))
                    max_excess = max(max_excess, over)
                    hit = idx[wrong]
                    fooled[k, hit] = True
                    adv[hit] = candidate[wrong]
                    standing[hit] = False
                    if done is not None:
                        done((k + (run + (s + 1) / len(batches)) / component.runs) / len(self.components))
            seconds.append(time.perf_counter() - start)
        return SampleWiseResult(fooled, adv, seconds, max_excess)

    def _attack(
        self, component: registry.Component, x: torch.Tensor, y: torch.Tensor, seed: int
    ) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(fooled flags, example inside the threat set, how far the raw output overshot it) of one attack on
        one batch."""
        if hasattr(component.attack, "seed"):
            component.attack.seed = seed
        with own_rng(x.device, seed):
            raw = component.attack(x.contiguous(), y).detach()
            candidate = project(raw, x, self.eps, self.norm)
            return self.model.predict(candidate) != y, candidate, excess(raw, x, self.eps, self.norm)


@contextmanager
def _ticking(
    model: nn.Module, calls: int, done: Callable[[float], None] | None, base: float, width: float
) -> Iterator[None]:
    """``done(base + width * f)`` after every forward of ``model`` in the block, f the share of the ``calls``
    expected made so far (at most 1): progress moves with every iteration of an attack, not only per batch."""
    if done is None:
        yield
        return
    made = [0]

    def tick(*_: Any) -> None:
        made[0] += 1
        done(base + width * min(made[0] / max(calls, 1), 1.0))

    handle = model.register_forward_hook(tick)
    try:
        yield
    finally:
        handle.remove()


def to_nhwc(x: torch.Tensor) -> np.ndarray:
    return x.detach().permute(0, 2, 3, 1).float().cpu().numpy()


class _Share:
    """``total`` work units handed to ``progress`` as a stage advances (``to(fraction done)``), whole units only."""

    def __init__(self, progress: Callable[[int], None] | None, total: int) -> None:
        self.progress, self.total, self.credited = progress, total, 0

    def to(self, fraction: float) -> None:
        target = int(self.total * min(fraction, 1.0))
        if self.progress is not None and target > self.credited:
            self.progress(target - self.credited)
            self.credited = target


GRADIENT_FORWARDS = 2
"""A forward with input gradient, in forwards: PGD-10 (1 forward and 10 gradient calls an image) took 19-20 times
an evaluation's time per image on the shipped resnet18 and sdnet18 (one thread of this project's 2-core CPU)."""


def forwards_per_image(model: nn.Module, config: AttackConfig, num_classes: int) -> int:
    """What attacking one image costs at most, in forwards (a gradient call as ``GRADIENT_FORWARDS``): its clean
    forward, then at every eps each attack's calls on a point that resists them all (``registry.calls_per_batch``).
    A progress total that mixes an attack with plain evaluations weights the attack's images by it."""
    total = 1
    for e in config.eps:
        for component in build_components(model, config, e.value, num_classes):
            gradients, forwards = registry.calls_per_batch(component)
            total += GRADIENT_FORWARDS * gradients + forwards
    return total


PROBE_IMAGES = 16
"""Images (the first of the run) on which ``predict_seconds`` times the model before an attack."""
PROBE_STEPS = 3
"""Steps of the PGD that tells the probe which images will still stand after an eps's first attack."""


def predict_seconds(
    model: AttackedModel, runners: Sequence[SampleWise | None], x: torch.Tensor, y: torch.Tensor, n: int
) -> float:
    """Seconds the attack of ``n`` images is predicted to take, measured on the probe ``x``: a forward and a
    forward with input gradient per image, times the calls each attack makes (``registry.calls_per_batch``)
    on the images it will meet. The first attack of an eps meets every image still standing; the later
    ones meet those that a short PGD (``PROBE_STEPS``, whose steps also time the gradient) leaves standing."""
    with own_rng(x.device, 0):
        with torch.no_grad():
            standing = model.predict(x) == y  # also the warm-up: first calls allocate
            start = time.perf_counter()
            model(x)
            forward_s = (time.perf_counter() - start) / len(x)
        grad_s = None
        per_image = forward_s  # the clean forward of every image
        for runner in runners:
            if runner is None:
                continue
            first, *later = (registry.calls_per_batch(c) for c in runner.components)
            fooled, seconds = _quick_pgd(model, x, y, runner.eps, runner.norm)
            grad_s = seconds / len(x) if grad_s is None else grad_s
            per_image += float(standing.float().mean()) * (first[0] * grad_s + first[1] * forward_s)
            standing = standing & ~fooled
            per_image += float(standing.float().mean()) * sum(g * grad_s + f * forward_s for g, f in later)
    return per_image * n


def _quick_pgd(
    model: AttackedModel, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str
) -> tuple[torch.Tensor, float]:
    """(fooled flags, seconds per step after the first) of a ``PROBE_STEPS``-step PGD from the clean input."""
    adv, start = x.clone(), 0.0
    for step in range(PROBE_STEPS):
        start = time.perf_counter() if step == 1 else start  # the first step is the warm-up
        adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(adv), y), adv)
        move = grad.sign() if norm == "Linf" else grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        adv = project(adv.detach() + 2.5 * eps / PROBE_STEPS * move, x, eps, norm)
    seconds = (time.perf_counter() - start) / (PROBE_STEPS - 1)
    with torch.no_grad():
        return model.predict(adv) != y, seconds


def attack_pool(
    model: AttackedModel,
    runners: Sequence[SampleWise | None],
    n_components: int,
    x: torch.Tensor,
    y: torch.Tensor,
    seed: int,
    batch_size: int,
    keep_adv: bool,
    progress: Callable[[int], None] | None,
) -> PoolResult:
    """Clean flags, then each eps in turn on the points still standing (``None`` runner: eps 0,
    where the threat set is the input itself, so nothing is attacked)."""
    with own_rng(x.device, seed):
        clean = torch.cat([model.predict(part) for part in x.split(batch_size)]) == y
    standing, adv = clean.clone(), x.clone()
    fooled = torch.zeros(len(runners), n_components, len(x), dtype=torch.bool, device=x.device)
    seconds, max_excess = np.zeros((len(runners), n_components)), 0.0
    advs = []
    for e, runner in enumerate(runners):
        share = _Share(progress, len(x))
        if runner is not None and standing.any():
            result = runner(x, y, standing, derive_seed(seed, e), share.to)
            hit = result.fooled.any(dim=0)
            fooled[e], seconds[e], max_excess = result.fooled, result.seconds, max(max_excess, result.max_excess)
            adv, standing = torch.where(hit.view(-1, 1, 1, 1), result.adv, adv), standing & ~hit
        if keep_adv:
            advs.append(to_nhwc(adv))
        share.to(1.0)
    return PoolResult(
        clean.cpu().numpy(), fooled.cpu().numpy(), seconds, np.stack(advs) if keep_adv else None, max_excess
    )


# -- the run -------------------------------------------------------------------------------------
def run_attack(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    config: AttackConfig,
    *,
    seed: int = 0,
    runtime: Runtime | None = None,
    batch_size: int = BATCH_SIZE,
    pool_batches: int = POOL_BATCHES,
    progress: Callable[[int], None] | None = None,
    state_path: Path | None = None,
    resume: bool = False,
    keep_adv: bool = False,
    fingerprint: dict[str, Any] | None = None,
    estimate: Callable[[float], None] | None = None,
) -> AttackResults:
    """Attack uint8 NHWC ``images`` at every eps of ``config`` (ascending) with one attack or AutoAttack.

    The images are cut into pools of ``pool_batches`` batches; within a pool each attack runs on the
    points every earlier attack left standing, ``batch_size`` at a time (``SampleWise``). Pool p is
    seeded from (seed, p), so a run, and a resumed run, repeats exactly; the caller's torch RNG state
    is left as it was. ``progress(k)``: k of ``config.work_units(...)`` done. ``state_path``: per-pool
    results saved there, continued with ``resume`` (``fingerprint`` names the model in it, so another
    checkpoint's state is refused). ``keep_adv``: keep the examples. ``estimate``: told the predicted
    seconds of the run before it starts (``predict_seconds``); progress moves with every attack iteration. Under torchrun each rank attacks
    its own whole pools (``distributed.shard_batches``), same contents and seeds, and the per-sample
    flags are merged: every rank returns the results of a single-process run with the same
    ``batch_size`` and ``pool_batches`` (``seconds``: the slowest rank's).
    """
    check_count(batch_size, "batch_size", BATCH_MAX)
    check_count(pool_batches, "pool_batches", POOL_BATCHES_MAX)
    runtime = runtime or Runtime.create("cpu")
    gradient_precision(runtime.precision, "an attack")
    attacked = AttackedModel(runtime.prepare(model), runtime).eval()
    first = runtime.to_input(images[:DIAGNOSTIC_IMAGES])
    check_gradients(attacked.model, first[:2], runtime)  # before any attack needs them
    with own_rng(runtime.device, 0), torch.no_grad():  # its own draws: diagnose sees the caller's state
        num_classes = int(attacked(first[:1]).shape[1])
    runners = [
        None
        if e.value == 0
        else SampleWise(
            attacked, build_components(attacked, config, e.value, num_classes), config.norm, e.value, batch_size
        )
        for e in config.eps
    ]
    components = list(config.components)
    state = None
    if state_path is not None:
        policy = getattr(model, "lam_policy", None)
        state = RunState(
            state_path,
            {
                **config.state_fields(),
                "seed": seed,
                "n": len(images),
                "batch_size": batch_size,
                "pool_batches": pool_batches,
                "keep_adv": keep_adv,
                "precision": runtime.precision,
                "lam": None if policy is None else repr(policy),
                **(fingerprint or {}),
            },
            resume,
        )
    if estimate is not None:
        probe = slice(0, min(PROBE_IMAGES, batch_size, len(images)))
        x_probe = runtime.to_input(images[probe])
        y_probe = torch.from_numpy(np.asarray(labels[probe])).to(runtime.device)
        mine = distributed.shard_size(len(images), batch_size * pool_batches)
        estimate(predict_seconds(attacked, runners, x_probe, y_probe, mine))  # before the checks: said sooner
    with own_rng(runtime.device):
        diagnostics = diagnose(
            attacked, first, torch.from_numpy(np.asarray(labels[:DIAGNOSTIC_IMAGES])).to(runtime.device)
        )
    n, shape = len(images), (len(config.eps), len(components))
    clean, fooled, seconds = np.zeros(n, dtype=bool), np.zeros((*shape, n), dtype=bool), np.zeros(shape)
    max_excess = 0.0  # over every pool, saved ones included
    adv = np.zeros((len(config.eps), n, *images.shape[1:]), dtype=np.float32) if keep_adv else None
    pool_size = batch_size * pool_batches
    for index in distributed.shard_batches(-(-n // pool_size)):
        start, stop = index * pool_size, min((index + 1) * pool_size, n)
        part = state.get(index) if state is not None else None
        if part is None:
            x = runtime.to_input(images[start:stop])
            y = torch.from_numpy(np.asarray(labels[start:stop])).to(runtime.device)
            part = attack_pool(
                attacked, runners, len(components), x, y, derive_seed(seed, index), batch_size, keep_adv, progress
            )
            if state is not None:
                state.put_pool(index, part)
        elif progress is not None:
            progress((stop - start) * len(config.eps))
        clean[start:stop], fooled[..., start:stop] = part.clean, part.fooled
        seconds, max_excess = seconds + part.seconds, max(max_excess, part.max_excess)
        if adv is not None:
            adv[:, start:stop] = part.adv
    diagnostics.max_excess = float(distributed.combine(np.array(max_excess), "max"))
    results = AttackResults(
        attack=config.attack,
        norm=config.norm,
        eps=list(config.eps),
        components=components,
        clean=distributed.combine(clean, "sum"),
        fooled=distributed.combine(fooled, "sum"),
        seconds=distributed.combine(seconds, "max"),
        diagnostics=diagnostics,
        settings=next(([registry.describe(c) for c in r.components] for r in runners if r is not None), []),
        adv=None if adv is None else distributed.combine(adv, "sum"),
    )
    diagnostics.square_gain = results.square_gain()
    return results


def requantized_robust_accuracy(
    model: nn.Module, results: AttackResults, labels: np.ndarray, runtime: Runtime | None = None, batch_size: int = 256
) -> dict[str, float]:
    """Robust accuracy per eps when the kept examples are rounded to uint8 (rounding can undo an attack,
    and for L2 can leave the ball): a separate, informative number, never the reported one."""
    runtime = runtime or Runtime.create("cpu")
    adv = results.kept_adversarials()
    out = {}
    for e, eps in enumerate(results.eps):
        requantized = np.rint(adv[e] * 255).astype(np.uint8)
        correct = predict_correct(model, requantized, labels, runtime, batch_size)
        out[eps.text] = round(percent((correct & results.clean).sum(), len(labels)), 4)
    return out
