"""Attack name -> builder. One ``@register``ed function per attack; AutoAttack is a composition of them.

Every builder configures its torchattacks class like the attack's counterpart in standard
AutoAttack (Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks", ICML 2020): 100 iterations, 1 restart, 9 target classes for
APGD-T and FAB-T, Square with 5000 queries, p_init 0.8 and no rescheduling of p.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal, get_args

import torchattacks
from torch import nn
from torchattacks.attack import Attack

from ..errors import UsageError

AUTOATTACK = "autoattack"
MAX_TARGETS = 9  # target classes of APGD-T and FAB-T in standard AutoAttack (Croce & Hein, 2020)
Norm = Literal["Linf", "L2"]
NORMS: tuple[str, ...] = get_args(Norm)


@dataclass(frozen=True)
class Component:
    """One attack of a run. ``runs`` > 1 repeats an attack without restarts of its own (PGD), with a
    fresh seed per run, on the points still standing."""

    name: str
    attack: Attack
    runs: int = 1


@dataclass(frozen=True)
class AttackSetting:
    """What one attack is built with: threat model and budget ``eps``, iterations (Square: queries),
    restarts, the classifier's number of classes (targeted attacks) and EOT forwards per gradient."""

    norm: Norm
    eps: float
    steps: int
    restarts: int = 1
    num_classes: int = 10
    eot_iter: int = 1


Builder = Callable[[nn.Module, AttackSetting], Component]
"""``(model, setting) -> Component``: each builder reads the settings its attack has."""


@dataclass(frozen=True)
class RegisteredAttack:
    name: str
    default_steps: int  # iterations (Square: queries) when the run does not say
    build: Builder


REGISTRY: dict[str, RegisteredAttack] = {}
"""Filled once, at import, by ``@register``; read through ``registered`` and ``attack_names``."""


def register(name: str, default_steps: int) -> Callable[[Builder], Builder]:
    """Add an attack under ``name``; the decorated function builds it for one eps."""

    def add(build: Builder) -> Builder:
        if name in REGISTRY or name == AUTOATTACK:
            raise RuntimeError(f"attack {name!r} is registered twice")
        REGISTRY[name] = RegisteredAttack(name, default_steps, build)
        return build

    return add


def registered(name: str) -> RegisteredAttack:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UsageError(
            f"unknown attack {name!r}; choose one of: {', '.join(attack_names())}", parameter="attack"
        ) from None


def attack_names() -> tuple[str, ...]:
    """Every name ``attack`` accepts: the registered attacks, then ``autoattack``."""
    return (*REGISTRY, AUTOATTACK)


@dataclass(frozen=True)
class AutoAttackVersion:
    components: tuple[str, ...]  # registered attacks, run in this order
    eot_iter: int  # expectation over transformation: gradients averaged over this many forwards


AUTOATTACK_VERSIONS: Mapping[str, AutoAttackVersion] = MappingProxyType(
    {
        # Croce & Hein (ICML 2020): the standard ensemble, and the one for randomised defences.
        "standard": AutoAttackVersion(("apgd-ce", "apgd-t", "fab-t", "square"), eot_iter=1),
        "rand": AutoAttackVersion(("apgd-ce", "apgd-dlr"), eot_iter=20),
    }
)


def build(model: nn.Module, name: str, setting: AttackSetting) -> Component:
    """The registered attack ``name`` on ``model`` with ``setting`` (one eps)."""
    return registered(name).build(model, setting)


@register("pgd", default_steps=20)
def pgd(model: nn.Module, s: AttackSetting) -> Component:
    """PGD from a random start with step 2.5 * eps / steps (Madry et al., ICLR 2018); restarts are repeated runs."""
    cls = torchattacks.PGD if s.norm == "Linf" else torchattacks.PGDL2
    attack = cls(model, eps=s.eps, alpha=2.5 * s.eps / s.steps, steps=s.steps, random_start=True)
    return Component("pgd", attack, runs=s.restarts)


def _apgd(loss: str) -> Builder:
    def apgd(model: nn.Module, s: AttackSetting) -> Component:
        attack = torchattacks.APGD(
            model, norm=s.norm, eps=s.eps, steps=s.steps, n_restarts=s.restarts, loss=loss, eot_iter=s.eot_iter
        )
        return Component(f"apgd-{loss}", attack)

    apgd.__doc__ = f"APGD with the {loss.upper()} loss (Croce & Hein, 2020)."
    return apgd


register("apgd-ce", default_steps=100)(_apgd("ce"))
register("apgd-dlr", default_steps=100)(_apgd("dlr"))


@register("apgd-t", default_steps=100)
def apgd_t(model: nn.Module, s: AttackSetting) -> Component:
    """Targeted APGD on the DLR loss, against the 9 most likely other classes in turn."""
    attack = torchattacks.APGDT(
        model, norm=s.norm, eps=s.eps, steps=s.steps, n_restarts=s.restarts, n_classes=s.num_classes
    )
    attack.n_target_classes = min(MAX_TARGETS, s.num_classes - 1)
    return Component("apgd-t", attack)


@register("fab-t", default_steps=100)
def fab_t(model: nn.Module, s: AttackSetting) -> Component:
    """Targeted FAB (minimum-norm; Croce & Hein, ICML 2020), against the 9 most likely other classes."""
    attack = torchattacks.FAB(
        model, norm=s.norm, eps=s.eps, steps=s.steps, n_restarts=s.restarts, multi_targeted=True,
        n_classes=s.num_classes,
    )  # fmt: skip
    attack.n_target_classes = min(MAX_TARGETS, s.num_classes - 1)
    return Component("fab-t", attack)


@register("square", default_steps=5000)
def square(model: nn.Module, s: AttackSetting) -> Component:
    """Square (black-box, score-based; Andriushchenko et al., ECCV 2020): ``steps`` queries, p_init 0.8,
    margin loss, no rescheduling."""
    attack = torchattacks.Square(
        model, norm=s.norm, eps=s.eps, n_queries=s.steps, n_restarts=s.restarts, p_init=0.8, loss="margin",
        resc_schedule=False,
    )  # fmt: skip
    return Component("square", attack)


SETTING_KEYS = (
    "steps",
    "n_restarts",
    "n_target_classes",
    "n_queries",
    "p_init",
    "rescale_schedule",
    "loss",
    "eot_iter",
    "multi_targeted",
    "random_start",
)


def describe(component: Component) -> dict[str, Any]:
    """The constructed torchattacks object's eps-independent settings, for the report meta."""
    attack = component.attack
    found = {key: getattr(attack, key) for key in SETTING_KEYS if hasattr(attack, key)}
    if isinstance(attack, (torchattacks.PGD, torchattacks.PGDL2)):
        found["step_size"] = "2.5 * eps / steps"
    return {"name": component.name, "class": type(attack).__name__, "runs": component.runs, **found}


def calls_per_batch(component: Component) -> tuple[int, int]:
    """(forward-and-input-gradient calls, forward-only calls) one run of ``component`` makes on a batch whose
    points all resist it (counted on torchattacks 3.5: APGD makes 2 more, FAB-T a gradient and a forward per step)."""
    attack = component.attack
    restarts = max(int(getattr(attack, "n_restarts", 1)), 1) * component.runs
    if isinstance(attack, torchattacks.Square):
        return 0, int(attack.n_queries) * restarts
    steps = int(getattr(attack, "steps", 1)) * restarts * max(int(getattr(attack, "n_target_classes", 1)), 1)
    return steps, steps if isinstance(attack, torchattacks.FAB) else 0
