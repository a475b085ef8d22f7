"""Adversarial evaluation on torchattacks (SPEC section 4): attack builders, standard AutoAttack
run sample-wise, the adaptive view of a per-input lambda, and gradient-masking diagnostics.

Attacks work on [0,1] images and differentiate ``AttackedModel``: the deployed model itself
(normalisation, lambda policy, network), in eval mode, fp32 unless bf16 is asked for. Whether an
adversarial example fools the model is decided once, by a forward of the deployed model on that
very example; that flag is what the report counts.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import torchattacks
from torch import nn
from torchattacks.attack import Attack

from . import distributed
from .evaluate import Runtime
from .lam import FixedLambda
from .reports import atomic_path, atomic_write_text

ATTACKS = ("pgd", "apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "square", "autoattack")
NORMS = ("Linf", "L2")
VERSIONS = ("standard", "rand")
DEFAULT_STEPS = {"pgd": 20, "apgd-ce": 100, "apgd-dlr": 100, "apgd-t": 100, "fab-t": 100, "square": 5000}
AUTOATTACK = {"standard": ("apgd-ce", "apgd-t", "fab-t", "square"), "rand": ("apgd-ce", "apgd-dlr")}
MAX_TARGETS = 9  # target classes of APGD-T and FAB-T in standard AutoAttack
SQUARE_MARGIN = 0.2  # points by which Square may beat the white-box attacks before we warn
DIAGNOSTIC_IMAGES = 32


# -- parsing -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Eps:
    """A perturbation budget in [0,1] pixel units, with the text the user wrote (``8/255``)."""

    value: float
    text: str


_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_EPS = re.compile(rf"(?P<num>{_NUMBER})(?:/(?P<den>{_NUMBER}))?")


def parse_eps(text: str) -> Eps:
    """``8/255``, ``0.5/255``, ``0.031`` or ``0`` -> Eps; exact rational arithmetic, so 8/255 is 8/255."""
    compact = text.replace(" ", "")
    if compact.startswith("-"):
        raise ValueError(f"--eps must be >= 0, got {text!r}")
    match = _EPS.fullmatch(compact)
    if match is None:
        raise ValueError(f"--eps must be a decimal or a fraction like 8/255, got {text!r}")
    value = Fraction(match["num"])
    if match["den"] is not None:
        denominator = Fraction(match["den"])
        if denominator == 0:
            raise ValueError(f"--eps {text!r} divides by zero")
        value /= denominator
    if value > 1:
        raise ValueError(f"--eps must be at most 1 (images are in [0, 1]), got {text!r} = {float(value):g}")
    return Eps(float(value), compact)


def parse_choice(value: str, choices: Sequence[str], option: str) -> str:
    """Case-insensitive match of ``value`` against ``choices``, returned in its canonical spelling."""
    for choice in choices:
        if value.lower() == choice.lower():
            return choice
    raise ValueError(f"unknown {option} {value!r}; choose one of: {', '.join(choices)}")


# -- what attacks differentiate ------------------------------------------------------------------
class StraightThroughLine:
    """BPDA for a rule lambda(x) = clamp(a * feature(x) + b, lo, hi) (``lam.AutoLambda`` and kin).

    The forward value is the rule's own (deployed) lambda; the backward pass uses the line's
    gradient, so an input whose lambda sits at a clamp bound still passes a gradient through lambda.
    """

    def __init__(self, rule: Any) -> None:
        self.rule = rule
        self.name = rule.name

    def __call__(self, model: nn.Module, x_normalized: torch.Tensor) -> torch.Tensor:
        line = self.rule.a * self.rule.feature(model, x_normalized) + self.rule.b
        deployed = torch.as_tensor(self.rule(model, x_normalized), dtype=line.dtype, device=line.device).detach()
        return deployed + (line - line.detach())  # exactly the deployed value; the line's gradient


def is_line_rule(policy: Any) -> bool:
    return all(hasattr(policy, key) for key in ("a", "b", "lo", "hi", "feature"))


class _PlainGradient(torch.autograd.Function):
    """Identity whose backward hands out an NCHW-contiguous gradient (torchattacks ``.view()``s gradients,
    which fails on the channels_last ones a channels_last model produces)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


class AttackedModel(nn.Module):
    """The deployed model as attacks see it: precision of the run, float32 logits, and a
    straight-through clamp where the lambda policy is a clamped line (else the policy unchanged)."""

    def __init__(self, model: nn.Module, runtime: Runtime) -> None:
        super().__init__()
        self.model = model
        self.runtime = runtime
        deployed = getattr(model, "lam_policy", None)
        self.policy = StraightThroughLine(deployed) if is_line_rule(deployed) else deployed

    @contextmanager
    def _policy(self) -> Iterator[None]:
        deployed = getattr(self.model, "lam_policy", None)
        if self.policy is deployed:
            yield
            return
        self.model.lam_policy = self.policy
        try:
            yield
        finally:
            self.model.lam_policy = deployed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of [0,1] images: plain NCHW tensors and gradients for the attacks, channels_last inside."""
        with self._policy(), self.runtime.autocast():
            return self.model(_PlainGradient.apply(x).contiguous(memory_format=torch.channels_last)).float()

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Labels from the deployed model (no straight-through view): the judge of every example.
        no_grad rather than inference_mode, so a forward that enables autograd itself still runs."""
        with self.runtime.autocast():
            return self.model(x).argmax(dim=1)

    def lambda_gradient(self, x: torch.Tensor) -> str:
        """How the backward pass treats lambda (for the report meta); probes an unknown policy on ``x``.
        Starts with "none" when lambda(x) cannot pass a gradient."""
        policy = getattr(self.model, "lam_policy", None)
        if policy is None or isinstance(policy, FixedLambda):
            return "constant lambda (no per-input rule): nothing to differentiate through"
        if is_line_rule(policy):
            return (f"per-input lambda '{policy.name}' = clamp(a*{policy.feature.__name__}(x)+b, {policy.lo:g}, "
                    f"{policy.hi:g}): gradients flow through lambda(x) by autograd; the clamp is straight-through (BPDA)")
        with torch.enable_grad():
            lam = policy(self.model, self.model.normalize(x).requires_grad_(True))
        if isinstance(lam, torch.Tensor) and lam.requires_grad:
            return f"per-input lambda '{policy.name}': autograd through the policy as deployed"
        return (f"none: per-input lambda '{policy.name}' is not differentiable and has no straight-through form, "
                "so the backward pass holds lambda constant; robust accuracy is an upper bound")


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


# -- attack builders -----------------------------------------------------------------------------
@dataclass
class Component:
    """One attack of a run. ``runs`` > 1 repeats an attack without restarts of its own (PGD), with a
    fresh seed per run, on the points still standing."""

    name: str
    attack: Attack
    runs: int = 1


SETTING_KEYS = ("steps", "n_restarts", "n_target_classes", "n_queries", "p_init", "rescale_schedule", "loss",
                "eot_iter", "multi_targeted", "random_start")


def describe_component(component: Component) -> dict[str, Any]:
    """The constructed torchattacks object's eps-independent settings, for the report meta."""
    attack = component.attack
    found = {key: getattr(attack, key) for key in SETTING_KEYS if hasattr(attack, key)}
    if isinstance(attack, (torchattacks.PGD, torchattacks.PGDL2)):
        found["step_size"] = "2.5 * eps / steps"
    return {"name": component.name, "class": type(attack).__name__, "runs": component.runs, **found}


def build_attack(
    model: nn.Module, name: str, norm: str, eps: float, steps: int | None = None, restarts: int = 1,
    num_classes: int = 10, eot_iter: int = 1,
) -> Component:
    """One single attack by name, configured like its AutoAttack counterpart; PGD steps 2.5 * eps / steps
    (Madry et al.) from a random start."""
    steps = DEFAULT_STEPS[name] if steps is None else steps
    targets = min(MAX_TARGETS, num_classes - 1)
    if name == "pgd":
        cls = torchattacks.PGD if norm == "Linf" else torchattacks.PGDL2
        return Component(name, cls(model, eps=eps, alpha=2.5 * eps / steps, steps=steps, random_start=True), runs=restarts)
    if name in ("apgd-ce", "apgd-dlr"):
        attack = torchattacks.APGD(model, norm=norm, eps=eps, steps=steps, n_restarts=restarts, loss=name[5:],
                                   eot_iter=eot_iter)
    elif name == "apgd-t":
        attack = torchattacks.APGDT(model, norm=norm, eps=eps, steps=steps, n_restarts=restarts, n_classes=num_classes)
        attack.n_target_classes = targets
    elif name == "fab-t":
        attack = torchattacks.FAB(model, norm=norm, eps=eps, steps=steps, n_restarts=restarts, multi_targeted=True,
                                  n_classes=num_classes)
        attack.n_target_classes = targets
    elif name == "square":
        attack = torchattacks.Square(model, norm=norm, eps=eps, n_queries=steps, n_restarts=restarts, p_init=0.8,
                                     loss="margin", resc_schedule=False)
    else:
        raise ValueError(f"unknown attack {name!r}; choose one of: {', '.join(ATTACKS)}")
    return Component(name, attack)


def standard_components(
    model: nn.Module, norm: str, eps: float, num_classes: int = 10, version: str = "standard"
) -> list[Component]:
    """AutoAttack's attacks with the original settings (SPEC section 4), not torchattacks' defaults:
    100 iterations, 1 restart, 9 target classes, Square 5000 queries without rescheduling.
    ``rand``: APGD-CE and APGD-DLR with 20 EOT iterations each, for randomised models."""
    version = parse_choice(version, VERSIONS, "AutoAttack version")
    eot_iter = 20 if version == "rand" else 1
    return [build_attack(model, name, norm, eps, DEFAULT_STEPS[name], 1, num_classes, eot_iter)
            for name in AUTOATTACK[version]]


def component_names(attack: str, version: str = "standard") -> list[str]:
    return list(AUTOATTACK[version]) if attack == "autoattack" else [attack]


def derive_seed(*keys: int) -> int:
    """A 32-bit seed from (seed, batch, run, ...): reruns repeat, neighbours do not collide."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


# -- sample-wise runners -------------------------------------------------------------------------
@dataclass
class SampleWiseResult:
    fooled: torch.Tensor  # [K, B] bool: component k's example fooled the deployed model
    adv: torch.Tensor  # [B, C, H, W]: the fooling example where one was found, else the input
    seconds: list[float]  # per component


class SampleWise:
    """Attacks one after another, each only on the points that every earlier one failed on; a point is
    robust only if no attack fooled it (the per-sample worst case). Each attack's output is judged once."""

    def __init__(self, model: AttackedModel, components: list[Component], norm: str, eps: float) -> None:
        self.model, self.components, self.norm, self.eps = model, components, norm, eps
        self.max_excess = 0.0  # largest raw overshoot of the threat set seen (clipped before judging)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, active: torch.Tensor, seed: int) -> SampleWiseResult:
        fooled = torch.zeros(len(self.components), len(x), dtype=torch.bool, device=x.device)
        adv, standing, seconds = x.clone(), active.clone(), []
        for k, component in enumerate(self.components):
            start = time.perf_counter()
            for run in range(component.runs):
                idx = standing.nonzero().flatten()
                if len(idx) == 0:
                    break
                run_seed = derive_seed(seed, run)
                torch.manual_seed(run_seed)
                if hasattr(component.attack, "seed"):
                    component.attack.seed = run_seed
                raw = component.attack(x[idx].contiguous(), y[idx]).detach()
                self.max_excess = max(self.max_excess, excess(raw, x[idx], self.eps, self.norm))
                candidate = project(raw, x[idx], self.eps, self.norm)
                wrong = self.model.predict(candidate) != y[idx]
                hit = idx[wrong]
                fooled[k, hit] = True
                adv[hit] = candidate[wrong]
                standing[hit] = False
            seconds.append(time.perf_counter() - start)
        return SampleWiseResult(fooled, adv, seconds)


class StandardAutoAttack(SampleWise):
    """Standard AutoAttack (APGD-CE, APGD-T, FAB-T, Square with the original settings), sample-wise."""

    def __init__(
        self, model: AttackedModel, norm: str, eps: float, num_classes: int = 10, version: str = "standard"
    ) -> None:
        super().__init__(model, standard_components(model, norm, eps, num_classes, version), norm, eps)


def check_settings(attack: str, steps: int | None, restarts: int | None, version: str) -> None:
    """autoattack means the standard settings, so it takes no others; ``version`` is autoattack's."""
    if attack == "autoattack" and (steps is not None or restarts is not None):
        raise ValueError("autoattack runs the standard settings (SPEC section 4); --steps/--restarts are for single attacks")
    if attack != "autoattack" and version != "standard":
        raise ValueError(f"--version {version} applies to autoattack only")
    if (steps is not None and steps < 1) or (restarts is not None and restarts < 1):
        raise ValueError("--steps and --restarts must be >= 1")


def build_runner(
    model: AttackedModel, attack: str, norm: str, eps: float, steps: int | None, restarts: int | None,
    num_classes: int, version: str = "standard",
) -> SampleWise:
    """The runner for ``attack`` at one eps."""
    check_settings(attack, steps, restarts, version)
    if attack == "autoattack":
        return StandardAutoAttack(model, norm, eps, num_classes, version)
    return SampleWise(model, [build_attack(model, attack, norm, eps, steps, restarts or 1, num_classes)], norm, eps)


# -- diagnostics ---------------------------------------------------------------------------------
@dataclass
class Diagnostics:
    """AutoAttack's gradient-masking warning signs (SPEC section 4), measured on the first images."""

    n: int
    output_difference: float  # max |logits| difference between two identical forwards
    nondeterministic: bool
    looks_like_probabilities: bool
    zero_gradient_fraction: float  # samples whose input gradient of the loss is exactly zero
    forward_calls_autograd: bool
    lambda_gradient: str
    square_gain: dict[str, float] = field(default_factory=dict)  # eps -> points Square took after the white-box attacks
    max_excess: float = 0.0  # largest raw overshoot of the threat set by an attack (examples are projected before judging)

    def warnings(self) -> list[str]:
        notes = []
        if self.nondeterministic:
            notes.append(f"two identical forwards differ (max {self.output_difference:.3g}): a randomised model; "
                         "use --version rand (EOT) and treat single-draw numbers with care")
        if self.looks_like_probabilities:
            notes.append("outputs look like probabilities (rows in [0,1] summing to 1), not logits: losses saturate")
        if self.zero_gradient_fraction > 0:
            notes.append(f"{100 * self.zero_gradient_fraction:.1f}% of samples have an all-zero input gradient: "
                         "gradient masking, white-box numbers are unreliable")
        if self.forward_calls_autograd:
            notes.append("the forward pass itself computes gradients (test-time optimisation): needs an adaptive attack")
        if self.lambda_gradient.startswith("none"):
            notes.append(f"lambda gradient: {self.lambda_gradient}")
        for eps, gain in self.square_gain.items():
            if gain > SQUARE_MARGIN:
                notes.append(f"at eps {eps} the black-box Square attack fooled {gain:.2f} points more than the "
                             "white-box attacks: their gradients are likely masked")
        return notes

    def as_meta(self) -> dict[str, Any]:
        return {**asdict(self), "warnings": self.warnings()}


_AUTOGRAD_ENTRIES = ("grad", "backward")


def forward_calls_autograd(model: nn.Module, x: torch.Tensor) -> bool:
    """Does one forward (under no_grad, as at evaluation) call torch.autograd.grad/backward, or fail without gradients?"""
    calls: list[str] = []

    def tracer(frame, event, arg):  # type: ignore[no-untyped-def]
        code = frame.f_code
        if event == "call" and code.co_name in _AUTOGRAD_ENTRIES and "torch" in code.co_filename \
                and "autograd" in code.co_filename:
            calls.append(code.co_name)

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        with torch.no_grad():
            model(x)
    except RuntimeError:
        return True
    finally:
        sys.settrace(previous)
    return bool(calls)


def diagnose(model: AttackedModel, x: torch.Tensor, y: torch.Tensor) -> Diagnostics:
    """Determinism, logits vs probabilities, zero gradients and autograd-in-forward on a small batch."""
    calls_autograd = forward_calls_autograd(model.model, x)
    first, second = model(x).detach(), model(x).detach()
    difference = float((first - second).abs().max())
    scale = max(1.0, float(first.abs().max()))
    in_unit = bool(((first >= 0) & (first <= 1)).all())
    probabilities = in_unit and torch.allclose(first.sum(1), torch.ones_like(first[:, 0]), atol=1e-4)
    xg = x.clone().requires_grad_(True)
    loss = F.cross_entropy(model(xg), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, xg)
    zero = float((grad.flatten(1).abs().amax(dim=1) == 0).float().mean())
    return Diagnostics(
        n=len(x),
        output_difference=difference,
        nondeterministic=difference > 1e-5 * scale,
        looks_like_probabilities=probabilities,
        zero_gradient_fraction=zero,
        forward_calls_autograd=calls_autograd,
        lambda_gradient=model.lambda_gradient(x),
    )


# -- results -------------------------------------------------------------------------------------
@dataclass
class AttackResults:
    """Per-sample outcome of one run: ``fooled[e, k, i]`` = component k's example fooled image i at eps e.

    Over an eps sweep (ascending), a point fooled at a smaller eps counts as fooled at every larger
    one (its example lies inside the larger ball) and is not attacked again.
    """

    attack: str
    norm: str
    eps: list[Eps]
    components: list[str]
    clean: np.ndarray  # [N] bool
    fooled: np.ndarray  # [E, K, N] bool
    seconds: np.ndarray  # [E, K]
    diagnostics: Diagnostics
    settings: list[dict[str, Any]]
    adv: np.ndarray | None = None  # [E, N, H, W, C] float32 in [0,1]

    def robust(self, e: int, through: int | None = None) -> np.ndarray:
        """[N] bool: correct and not fooled at eps index ``e`` by components 0..through (all by default)."""
        stop = len(self.components) if through is None else through + 1
        return self.clean & ~self.fooled[:e].any(axis=(0, 1)) & ~self.fooled[e, :stop].any(axis=0)

    def rows(self, base: dict[str, Any]) -> list[dict[str, Any]]:
        """One row per eps (autoattack: per component, robust accuracy after it, then ``worst``);
        ``base`` gives model, dataset and lam."""
        n = len(self.clean)

        def row(attack: str, e: int, robust: np.ndarray, seconds: float) -> dict[str, Any]:
            return {
                "model": base["model"], "dataset": base["dataset"], "attack": attack, "norm": self.norm,
                "eps": self.eps[e].value, "eps_text": self.eps[e].text, "lam": base["lam"], "n": n,
                "clean_accuracy": round(100.0 * float(self.clean.sum()) / n, 4),
                "robust_accuracy": round(100.0 * float(robust.sum()) / n, 4), "seconds": round(float(seconds), 3),
            }

        rows = []
        for e in range(len(self.eps)):
            if self.attack == "autoattack":
                rows += [row(name, e, self.robust(e, k), self.seconds[e, k]) for k, name in enumerate(self.components)]
                rows.append(row("worst", e, self.robust(e), self.seconds[e].sum()))
            else:
                rows.append(row(self.attack, e, self.robust(e), self.seconds[e].sum()))
        return rows

    def square_gain(self) -> dict[str, float]:
        """Points fooled by Square after all white-box attacks had failed, per eps."""
        if "square" not in self.components or len(self.components) < 2:
            return {}
        k = self.components.index("square")
        return {eps.text: 100.0 * float(self.fooled[e, k].sum()) / len(self.clean) for e, eps in enumerate(self.eps)}


# -- resumable state -----------------------------------------------------------------------------
def _bits(flags: np.ndarray) -> str:
    return "".join("1" if f else "0" for f in flags)


def _unbits(text: str) -> np.ndarray:
    return np.frombuffer(text.encode(), dtype=np.uint8) == ord("1")


@dataclass
class BatchResult:
    clean: np.ndarray  # [B] bool
    fooled: np.ndarray  # [E, K, B] bool
    seconds: np.ndarray  # [E, K]
    adv: np.ndarray | None  # [E, B, H, W, C] float32


def images_dir(state_path: Path) -> Path:
    """``<name>.state.adv/`` beside ``<name>.state.json``: per-batch adversarial images of a run that keeps them."""
    return state_path.with_name(state_path.name.removesuffix(".json") + ".adv")


class RunState:
    """Finished batches of a long run in ``<out>/<name>.state.json`` (rewritten atomically after each
    batch; adversarial images, when kept, in ``<name>.state.adv/``), so ``resume`` skips them."""

    def __init__(self, path: Path, config: dict[str, Any], resume: bool) -> None:
        self.path, self.config = Path(path), config
        self.adv_dir = images_dir(self.path)
        self.batches: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            if not resume:
                raise ValueError(f"{self.path} holds an unfinished run; pass --resume to continue it, or delete it")
            saved = json.loads(self.path.read_text())
            changed = sorted(k for k in set(config) | set(saved["config"]) if saved["config"].get(k) != config.get(k))
            if changed:
                raise ValueError(f"cannot resume {self.path}: it was started with different settings ({', '.join(changed)})")
            self.batches = saved["batches"]

    def get(self, index: int) -> BatchResult | None:
        saved = self.batches.get(str(index))
        if saved is None:
            return None
        adv_file = self.adv_dir / f"batch-{index:05d}.npy"
        return BatchResult(
            clean=_unbits(saved["clean"]),
            fooled=np.array([[_unbits(f) for f in per_eps] for per_eps in saved["fooled"]]),
            seconds=np.array(saved["seconds"], dtype=float),
            adv=np.load(adv_file) if adv_file.is_file() else None,
        )

    def put(self, index: int, result: BatchResult) -> None:
        if result.adv is not None:
            self.adv_dir.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.adv_dir / f"batch-{index:05d}.npy") as tmp, open(tmp, "wb") as f:
                np.save(f, result.adv)
        self.batches[str(index)] = {
            "clean": _bits(result.clean),
            "fooled": [[_bits(f) for f in per_eps] for per_eps in result.fooled],
            "seconds": result.seconds.tolist(),
        }
        atomic_write_text(self.path, json.dumps({"config": self.config, "batches": self.batches}) + "\n")


def remove_state(path: Path) -> None:
    """Delete a finished run's state file and its kept images."""
    path = Path(path)
    path.unlink(missing_ok=True)
    shutil.rmtree(images_dir(path), ignore_errors=True)


# -- the run -------------------------------------------------------------------------------------
def to_nhwc(x: torch.Tensor) -> np.ndarray:
    return x.detach().permute(0, 2, 3, 1).float().cpu().numpy()


def attack_batch(
    model: AttackedModel, runners: Sequence[SampleWise | None], n_components: int, x: torch.Tensor, y: torch.Tensor,
    seed: int, keep_adv: bool,
) -> BatchResult:
    """Clean flags, then each eps in turn on the points still standing (``None`` runner: eps 0,
    where the threat set is the input itself, so nothing is attacked)."""
    torch.manual_seed(seed)
    clean = model.predict(x) == y
    standing, adv = clean.clone(), x.clone()
    fooled = torch.zeros(len(runners), n_components, len(x), dtype=torch.bool, device=x.device)
    seconds = np.zeros((len(runners), n_components))
    advs = []
    for e, runner in enumerate(runners):
        if runner is not None and standing.any():
            result = runner(x, y, standing, seed)
            hit = result.fooled.any(dim=0)
            fooled[e], seconds[e] = result.fooled, result.seconds
            adv, standing = torch.where(hit.view(-1, 1, 1, 1), result.adv, adv), standing & ~hit
        if keep_adv:
            advs.append(to_nhwc(adv))
    return BatchResult(clean.cpu().numpy(), fooled.cpu().numpy(), seconds, np.stack(advs) if keep_adv else None)


def run_attack(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    attack: str,
    norm: str,
    eps: Sequence[Eps],
    steps: int | None = None,
    restarts: int | None = None,
    seed: int = 0,
    runtime: Runtime | None = None,
    batch_size: int = 128,
    progress: Callable[[int], None] | None = None,
    version: str = "standard",
    state_path: Path | None = None,
    resume: bool = False,
    keep_adv: bool = False,
    fingerprint: dict[str, Any] | None = None,
) -> AttackResults:
    """Attack uint8 NHWC ``images`` at every eps (sorted ascending) with one attack or standard
    AutoAttack. Batch b is seeded from (seed, b), so a run, and a resumed run, repeats exactly.
    ``state_path``: per-batch results saved there (``fingerprint`` names the model in it).
    Under torchrun each rank attacks its own whole batches (``distributed.shard_batches``), same
    contents and seeds, and the per-sample flags are merged: every rank returns the results of a
    single-process run with the same ``batch_size`` (``seconds``: the slowest rank's)."""
    attack = parse_choice(attack, ATTACKS, "attack")
    norm = parse_choice(norm, NORMS, "norm")
    version = parse_choice(version, VERSIONS, "version")
    if not eps:
        raise ValueError("give at least one --eps")
    check_settings(attack, steps, restarts, version)
    eps_list = sorted({e.value: e for e in eps}.values(), key=lambda e: e.value)
    runtime = runtime or Runtime.create("cpu")
    attacked = AttackedModel(runtime.prepare(model), runtime).eval()
    first = runtime.to_input(images[:DIAGNOSTIC_IMAGES])
    diagnostics = diagnose(attacked, first, torch.from_numpy(np.asarray(labels[:DIAGNOSTIC_IMAGES])).to(runtime.device))
    with torch.no_grad():
        num_classes = int(attacked(first[:1]).shape[1])
    runners = [None if e.value == 0 else build_runner(attacked, attack, norm, e.value, steps, restarts, num_classes, version)
               for e in eps_list]
    components = component_names(attack, version)
    state = None
    if state_path is not None:
        policy = getattr(model, "lam_policy", None)
        config = {"attack": attack, "norm": norm, "eps": [e.value for e in eps_list], "steps": steps, "restarts": restarts,
                  "version": version, "seed": seed, "n": len(images), "batch_size": batch_size, "keep_adv": keep_adv,
                  "precision": runtime.precision, "lam": None if policy is None else repr(policy), **(fingerprint or {})}
        state = RunState(state_path, config, resume)
    n, shape = len(images), (len(eps_list), len(components))
    clean, fooled, seconds = np.zeros(n, dtype=bool), np.zeros((*shape, n), dtype=bool), np.zeros(shape)
    adv = np.zeros((len(eps_list), n, *images.shape[1:]), dtype=np.float32) if keep_adv else None
    for index in distributed.shard_batches(-(-n // batch_size)):
        start, stop = index * batch_size, min((index + 1) * batch_size, n)
        part = state.get(index) if state is not None else None
        if part is None:
            x = runtime.to_input(images[start:stop])
            y = torch.from_numpy(np.asarray(labels[start:stop])).to(runtime.device)
            part = attack_batch(attacked, runners, len(components), x, y, derive_seed(seed, index), keep_adv)
            if state is not None:
                state.put(index, part)
        clean[start:stop], fooled[..., start:stop] = part.clean, part.fooled
        seconds += part.seconds
        if adv is not None:
            adv[:, start:stop] = part.adv
        if progress is not None:
            progress((stop - start) * len(eps_list))
    max_excess = max((r.max_excess for r in runners if r is not None), default=0.0)
    diagnostics.max_excess = float(distributed.combine(np.array(max_excess), "max"))
    results = AttackResults(
        attack=attack, norm=norm, eps=eps_list, components=components,
        clean=distributed.combine(clean, "sum"),
        fooled=distributed.combine(fooled, "sum"),
        seconds=distributed.combine(seconds, "max"),
        diagnostics=diagnostics,
        settings=next(([describe_component(c) for c in r.components] for r in runners if r is not None), []),
        adv=None if adv is None else distributed.combine(adv, "sum"),
    )
    diagnostics.square_gain = results.square_gain()
    return results


def requantized_robust_accuracy(model: nn.Module, results: AttackResults, labels: np.ndarray, runtime: Runtime,
                                batch_size: int = 256) -> dict[str, float]:
    """Robust accuracy per eps when the stored examples are rounded to uint8 (rounding can undo an attack,
    and for L2 can leave the ball): a separate, informative number, never the reported one."""
    if results.adv is None:
        raise ValueError("these results kept no adversarial examples")
    attacked = AttackedModel(model, runtime).eval()
    out = {}
    for e, eps in enumerate(results.eps):
        correct = np.zeros(len(labels), dtype=bool)
        for start in range(0, len(labels), batch_size):
            chunk = np.rint(results.adv[e, start : start + batch_size] * 255).astype(np.uint8)
            target = torch.from_numpy(np.asarray(labels[start : start + batch_size])).to(runtime.device)
            correct[start : start + len(chunk)] = (attacked.predict(runtime.to_input(chunk)) == target).cpu().numpy()
        out[eps.text] = round(100.0 * float((correct & results.clean).sum()) / len(labels), 4)
    return out


def save_adversarials(path: Path, results: AttackResults, labels: np.ndarray) -> Path:
    """``.npz`` with float32 NHWC examples in [0,1] per eps (rounding to uint8 could undo them), labels,
    eps and per-sample robust flags; written atomically."""
    path = Path(path)
    if results.adv is None:
        raise ValueError("these results kept no adversarial examples")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(
            f, images=results.adv, labels=np.asarray(labels), eps=np.array([e.value for e in results.eps]),
            eps_text=np.array([e.text for e in results.eps]), clean=results.clean,
            robust=np.stack([results.robust(e) for e in range(len(results.eps))]),
        )
    return path
