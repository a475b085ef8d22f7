"""Test-time lambda: which sparsity weight each input's CSC layers use.

- ``policies``: what a policy is (``FixedLambda``, the per-input rules ``AutoLambda`` and
  ``NoiseLevelLambda`` with their label-free features) and how reports name it.
- ``fit``: lambda grids and the line fits behind the per-input rules.
- ``calibration``: a checkpoint's fitted rules on disk, and oracle lambdas from a sweep report.
- ``resolve``: a user's ``lam`` value (number, ``"auto"``, ``"noise"``) -> policy.

Sweeps and the calibration itself run models, so they live in ``sdnet_cli.sweep``.
"""

from .calibration import (
    CALIBRATION_SUFFIX,
    Calibration,
    default_calibration_path,
    find_calibration,
    load_calibration,
    oracle_lambdas,
    store_calibration,
)
from .fit import fit_line, fit_line_for_accuracy, lambda_grid
from .policies import (
    AUTO,
    NOISE,
    ORACLE,
    RULES,
    AutoLambda,
    FixedLambda,
    LineRule,
    NoiseLevelLambda,
    estimate_noise_sigma,
    lambda_label,
    noise_sigma,
    stem_error,
)
from .resolve import resolve_policy

__all__ = [
    "AUTO",
    "CALIBRATION_SUFFIX",
    "NOISE",
    "ORACLE",
    "RULES",
    "AutoLambda",
    "Calibration",
    "FixedLambda",
    "LineRule",
    "NoiseLevelLambda",
    "default_calibration_path",
    "estimate_noise_sigma",
    "find_calibration",
    "fit_line",
    "fit_line_for_accuracy",
    "lambda_grid",
    "lambda_label",
    "load_calibration",
    "noise_sigma",
    "oracle_lambdas",
    "resolve_policy",
    "stem_error",
    "store_calibration",
]
