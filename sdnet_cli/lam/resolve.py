"""From a user's ``lam`` value to the policy a ``Classifier`` runs with."""

from __future__ import annotations

from pathlib import Path

from ..errors import UsageError
from ..models.classifier import Classifier, LambdaPolicy
from ..models.csc import require_csc
from ..models.record import ModelInfo
from ..schemas import check_lam
from .calibration import load_calibration
from .policies import AUTO, NOISE, ORACLE, RECON, RULES, FixedLambda


def resolve_policy(
    lam: float | str | None,
    model: Classifier,
    info: ModelInfo | None = None,
    calibration: Path | None = None,
    adapt: str | None = None,
) -> LambdaPolicy | None:
    """``lam`` -> policy: a number (or its text); ``"recon"`` or ``"noise"``, the rule of that name fitted
    for the checkpoint ``info`` describes (or read from ``calibration``); ``"auto"``, the rule that
    calibration recommends (``adapt``: prefer the calibration fitted under that adaptation, see
    ``find_calibration``). None keeps each CSC layer's training lambda. ``"oracle"`` depends on the
    cell, not the input: see ``oracle_lambdas``."""
    if lam is None:
        return None
    require_csc(model, "it has no lambda to set (lam was given)", parameter="lam")
    if lam == AUTO or lam in RULES:
        if info is None:
            raise UsageError(
                f"lam={lam!r} needs info (the checkpoint's ModelInfo) to find and check its calibration",
                parameter="info",
            )
        return load_calibration(info, calibration, adapt).policy(str(lam))
    if lam == ORACLE:
        raise UsageError(
            f"lam={ORACLE!r} picks one lambda per corruption cell from a sweep report (oracle_lambdas), "
            "not one policy for every input",
            parameter="lam",
        )
    try:
        value = float(lam)
    except (TypeError, ValueError):
        raise UsageError(
            f"lam must be a number, {AUTO!r}, {RECON!r}, {NOISE!r} or {ORACLE!r}, got {lam!r}", parameter="lam"
        ) from None
    if isinstance(lam, bool):
        raise UsageError(f"lam must be a number, got {lam!r}", parameter="lam")
    return FixedLambda(check_lam(value))
