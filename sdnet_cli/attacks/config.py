"""What an attack run is: the attack, threat model and budgets, parsed and validated once."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, cast

from .. import distributed
from ..errors import UsageError
from ..schemas import RESTARTS_MAX, STEPS_MAX, check, check_count, fraction_rule
from .registry import AUTOATTACK, AUTOATTACK_VERSIONS, NORMS, Norm, attack_names, registered

BATCH_SIZE = 128
"""Images per attacked batch when a caller does not say."""
POOL_BATCHES = 8
"""Batches whose surviving points are pooled before each later attack (``run_attack``): later attacks get
full batches, while whole pools still spread over torchrun ranks and resume from disk."""

_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_EPS = re.compile(rf"(?P<num>{_NUMBER})(?:/(?P<den>{_NUMBER}))?")


@dataclass(frozen=True)
class Eps:
    """A perturbation budget in [0,1] pixel units, with the text the user wrote (``8/255``)."""

    value: float
    text: str

    @classmethod
    def parse(cls, text: str) -> Eps:
        """``8/255``, ``0.5/255``, ``0.031`` or ``0`` -> Eps; exact rational arithmetic, so 8/255 is 8/255."""
        compact = text.replace(" ", "")
        if compact.startswith("-"):
            raise UsageError(f"eps must be >= 0, got {text!r}", parameter="eps")
        match = _EPS.fullmatch(compact)
        if match is None:
            raise UsageError(f"eps must be a decimal or a fraction like 8/255, got {text!r}", parameter="eps")
        value = Fraction(match["num"])
        if match["den"] is not None:
            denominator = Fraction(match["den"])
            if denominator == 0:
                raise UsageError(f"eps {text!r} divides by zero", parameter="eps")
            value /= denominator
        if value > 1:
            raise UsageError(
                f"eps must be at most 1 (images are in [0, 1]), got {text!r} = {float(value):g}", parameter="eps"
            )
        return cls(check(fraction_rule, float(value), "eps"), compact)

    @classmethod
    def of(cls, eps: Eps | str | float) -> Eps:
        """An Eps from text, a number (its shortest round-trip decimal) or an Eps."""
        if isinstance(eps, Eps):
            check(fraction_rule, eps.value, "eps")
            return eps
        if isinstance(eps, str):
            return cls.parse(eps)
        if isinstance(eps, bool) or not isinstance(eps, (int, float)):
            raise UsageError(f"eps must be text like 8/255 or a number, got {eps!r}", parameter="eps")
        return cls.parse(str(eps) if isinstance(eps, int) else repr(float(eps)))


def _choice(value: str, choices: Sequence[str], parameter: str) -> str:
    """Case-insensitive match of ``value`` against ``choices``, returned in its canonical spelling."""
    for choice in choices:
        if str(value).lower() == choice.lower():
            return choice
    raise UsageError(f"unknown {parameter} {value!r}; choose one of: {', '.join(choices)}", parameter=parameter)


def check_norm(norm: str) -> Norm:
    """``norm`` in its canonical spelling (any case accepted), typed as a ``Norm``, else a usage error."""
    return cast(Norm, _choice(norm, NORMS, "norm"))


def _count(value: int | None, parameter: str, upper: int) -> int | None:
    """None (the attack's default) or an integer in [1, ``upper``] (``schemas.check_count``)."""
    return None if value is None else check_count(value, parameter, upper)


@dataclass(frozen=True)
class AttackConfig:
    """One attack (or AutoAttack) under one threat model, at every budget in ``eps`` (ascending, distinct).

    Build it with ``create``, which validates everything; ``steps``/``restarts`` None mean the
    attack's defaults. ``budgets`` shortens AutoAttack's components (name -> iterations, Square:
    queries) for quick runs: such a run is no longer standard AutoAttack, and the report's
    component settings show what ran.
    """

    attack: str
    norm: Norm
    eps: tuple[Eps, ...]
    steps: int | None = None
    restarts: int | None = None
    version: str = "standard"
    budgets: tuple[tuple[str, int], ...] = ()

    @classmethod
    def create(
        cls,
        *,
        attack: str = "autoattack",
        norm: str = "Linf",
        eps: Iterable[Eps | str | float] = ("8/255",),
        steps: int | None = None,
        restarts: int | None = None,
        version: str = "standard",
        budgets: Mapping[str, int] | None = None,
    ) -> AttackConfig:
        attack = _choice(attack, attack_names(), "attack")
        norm = check_norm(norm)
        version = _choice(version, tuple(AUTOATTACK_VERSIONS), "version")
        if isinstance(eps, (str, int, float, Eps)):
            eps = [eps]
        budgets_ = list((budgets or {}).items())
        parsed = [Eps.of(e) for e in eps]
        if not parsed:
            raise UsageError("give at least one eps", parameter="eps")
        if attack == AUTOATTACK:
            for name, value in (("steps", steps), ("restarts", restarts)):
                if value is not None:
                    raise UsageError(
                        "autoattack runs the standard settings (Croce & Hein, ICML 2020); steps and "
                        "restarts are for single attacks",
                        parameter=name,
                    )
        elif version != "standard":
            raise UsageError(f"version {version} applies to autoattack only", parameter="version")
        elif budgets_:
            raise UsageError(
                "budgets shortens autoattack's components; a single attack takes steps", parameter="budgets"
            )
        components = AUTOATTACK_VERSIONS[version].components if attack == AUTOATTACK else (attack,)
        for name, value in budgets_:
            if name not in components:
                raise UsageError(f"budgets names {name!r}, not one of {', '.join(components)}", parameter="budgets")
            _count(value, "budgets", STEPS_MAX)
        return cls(
            attack=attack,
            norm=norm,
            eps=tuple(sorted({e.value: e for e in parsed}.values(), key=lambda e: e.value)),
            steps=_count(steps, "steps", STEPS_MAX),
            restarts=_count(restarts, "restarts", RESTARTS_MAX),
            version=version,
            budgets=tuple(sorted(budgets_)),
        )

    @property
    def components(self) -> tuple[str, ...]:
        """The attacks a run applies, in order (AutoAttack: its version's components)."""
        return AUTOATTACK_VERSIONS[self.version].components if self.attack == AUTOATTACK else (self.attack,)

    @property
    def eot_iter(self) -> int:
        """Expectation-over-transformation iterations of the gradient attacks (AutoAttack rand: 20)."""
        return AUTOATTACK_VERSIONS[self.version].eot_iter if self.attack == AUTOATTACK else 1

    def steps_for(self, name: str) -> int:
        """Iterations (Square: queries) of component ``name``: a budget, the given steps, else its default."""
        return dict(self.budgets).get(name) or self.steps or registered(name).default_steps

    def work_units(self, n_images: int, batch_size: int, pool_batches: int = POOL_BATCHES) -> int:
        """The total ``run_attack`` reports to ``progress`` on this process: its images times the budgets."""
        return distributed.shard_size(n_images, batch_size * pool_batches) * len(self.eps)

    def as_meta(self) -> dict[str, Any]:
        """The report-meta fields of the run (``budgets`` only when AutoAttack was shortened)."""
        meta: dict[str, Any] = {
            "attack": self.attack,
            "norm": self.norm,
            "version": self.version if self.attack == AUTOATTACK else None,
            "eps": [{"value": e.value, "text": e.text} for e in self.eps],
        }
        if self.budgets:
            meta["budgets"] = dict(self.budgets)
        return meta

    def state_fields(self) -> dict[str, Any]:
        """What a resumable state must agree on (with seed, data and model, added by the runner)."""
        fields: dict[str, Any] = {
            "attack": self.attack,
            "norm": self.norm,
            "eps": [e.value for e in self.eps],
            "steps": self.steps,
            "restarts": self.restarts,
            "version": self.version,
        }
        if self.budgets:
            fields["budgets"] = dict(self.budgets)
        return fields
