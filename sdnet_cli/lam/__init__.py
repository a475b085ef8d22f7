"""Test-time lambda: which sparsity weight each input's CSC layers use.

- ``policies``: what a policy is (``FixedLambda``, the per-input rules ``ReconErrorLambda`` and
  ``NoiseLevelLambda`` with their label-free features) and how reports name it.
- ``fit``: lambda grids and the line fits behind the per-input rules.
- ``calibration``: a checkpoint's fitted rules on disk (and which one ``"auto"`` runs), refits
  without some corruptions, and oracle lambdas from a sweep report.
- ``oracles``: the label-using ceilings (per-cell and per-input oracle) from per-image correctness.
- ``resolve``: a user's ``lam`` value (number, ``"auto"``, ``"recon"``, ``"noise"``) -> policy.

Sweeps and the calibration itself run models, so they live in ``sdnet_cli.sweep``.
"""

from .calibration import (
    CALIBRATION_SUFFIX,
    POINT_FEATURES,
    Calibration,
    default_calibration_path,
    fit_rules,
    find_calibration,
    load_calibration,
    oracle_lambdas,
    recommend,
    rule_accuracy,
    store_calibration,
)
from .fit import fit_line, fit_line_for_accuracy, lambda_grid, mean_group_accuracy
from .policies import (
    AUTO,
    NOISE,
    ORACLE,
    RECON,
    RULES,
    FixedLambda,
    LineRule,
    NoiseLevelLambda,
    ReconErrorLambda,
    estimate_noise_sigma,
    lambda_label,
    noise_sigma,
    stem_error,
)
from .oracles import OracleScores, oracle_scores, per_cell_oracle, per_input_oracle
from .resolve import resolve_policy

__all__ = [
    "AUTO",
    "CALIBRATION_SUFFIX",
    "NOISE",
    "ORACLE",
    "POINT_FEATURES",
    "RECON",
    "RULES",
    "Calibration",
    "FixedLambda",
    "LineRule",
    "NoiseLevelLambda",
    "OracleScores",
    "ReconErrorLambda",
    "default_calibration_path",
    "estimate_noise_sigma",
    "find_calibration",
    "fit_line",
    "fit_line_for_accuracy",
    "fit_rules",
    "lambda_grid",
    "lambda_label",
    "load_calibration",
    "mean_group_accuracy",
    "noise_sigma",
    "oracle_lambdas",
    "oracle_scores",
    "per_cell_oracle",
    "per_input_oracle",
    "recommend",
    "resolve_policy",
    "rule_accuracy",
    "stem_error",
    "store_calibration",
]
