"""Test-time lambda: which sparsity weight each input's CSC layers use.

- ``policies``: what a policy is (``FixedLambda``, the per-input rules ``ReconErrorLambda`` and
  ``NoiseLevelLambda``), their label-free features (``FEATURES``: reconstruction error, noise sigma,
  salt-and-pepper fraction) and how reports name a policy.
- ``fit``: lambda grids and the line fits (one feature or several) behind the per-input rules.
- ``calibration``: a checkpoint's fitted rules on disk (and which one ``"auto"`` runs), refits
  without some corruptions, and oracle lambdas from a sweep report.
- ``oracles``: the label-using ceilings (per-cell and per-input oracle) from per-image correctness.
- ``resolve``: a user's ``lam`` value (number, ``"auto"``, ``"recon"``, ``"noise"``) -> policy.

Sweeps and the calibration itself run models, so they live in ``sdnet_cli.sweep``.
"""

from .calibration import (
    CALIBRATION_SUFFIX,
    Calibration,
    adaptation_label,
    calibration_destination,
    calibration_mismatch,
    default_calibration_path,
    find_calibration,
    fit_rules,
    load_calibration,
    oracle_lambdas,
    recommend,
    rule_accuracy,
    store_calibration,
)
from .fit import fit_line, fit_line_for_accuracy, fit_rule_for_accuracy, lambda_grid, mean_group_accuracy
from .oracles import OracleScores, oracle_scores, per_cell_oracle, per_input_oracle
from .policies import (
    AUTO,
    FEATURES,
    NOISE,
    ORACLE,
    RECON,
    RULES,
    FixedLambda,
    LineRule,
    NoiseLevelLambda,
    ReconErrorLambda,
    estimate_impulse_fraction,
    estimate_noise_sigma,
    impulse_fraction,
    lambda_label,
    noise_sigma,
    stem_error,
)
from .resolve import resolve_policy

__all__ = [
    "AUTO",
    "CALIBRATION_SUFFIX",
    "FEATURES",
    "NOISE",
    "ORACLE",
    "RECON",
    "RULES",
    "Calibration",
    "FixedLambda",
    "LineRule",
    "NoiseLevelLambda",
    "OracleScores",
    "ReconErrorLambda",
    "adaptation_label",
    "calibration_mismatch",
    "default_calibration_path",
    "estimate_impulse_fraction",
    "estimate_noise_sigma",
    "find_calibration",
    "fit_line",
    "fit_line_for_accuracy",
    "fit_rule_for_accuracy",
    "fit_rules",
    "impulse_fraction",
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
    "calibration_destination",
    "store_calibration",
]
