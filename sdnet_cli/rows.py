"""The marker values that report rows carry instead of a measured cell, and the columns the CLI shows.

A row of an eval report is one (corruption, severity) cell, except the clean cell (``CLEAN``,
severity 0) and the summary over the corrupted cells (``MEAN``, severity ``ALL``); an attack
report's AutoAttack row of the worst case over its components has attack ``WORST``. Readers of
reports (``compare``, ``check``, the sweeps, the CLI tables) test for these names, so they live here
once. A leaf: imports nothing of the package.
"""

from __future__ import annotations

CLEAN = "clean"  # corruption of the uncorrupted cell (its severity is 0); in compare, also its attack
MEAN = "mean"  # corruption of the summary row: the mean over corrupted cells
ALL = "all"  # severity of that summary row
WORST = "worst"  # attack of AutoAttack's row of the worst case over its components

# hold-out evaluation of the lambda rules: which calibration a row's lambda came from
HELD_OUT, IN_CALIBRATION, REFERENCE = "held-out", "in-calibration", "reference"

# The columns each CLI table shows, in order (the rows hold more; the reports keep them all).
EVAL_COLUMNS = ("corruption", "severity", "lam", "n", "accuracy")
SWEEP_COLUMNS = ("corruption", "severity", "lam", "n", "accuracy", "mean_error")
LAMBDA_RULES_COLUMNS = ("lam", "uses_labels", "corrupted_mean", "gain", "clean", "clean_change", "lam_mean")
HOLD_OUT_COLUMNS = ("held_out", "reference_accuracy", "gain_in_calibration", "rule_held_out", "gain_held_out", "kept")
ATTACK_COLUMNS = ("attack", "norm", "eps_text", "lam", "n", "clean_accuracy", "robust_accuracy", "seconds")
ATTACK_SWEEP_COLUMNS = (
    "model",
    "attack",
    "eps_text",
    "lam",
    "n",
    "clean_accuracy",
    "robust_accuracy",
    "masking_warnings",
)
CHECK_COLUMNS = ("model", "metric", "baseline", "now", "change", "status")
TEXT_COLUMNS = frozenset({"corruption", "model", "attack", "metric", "status"})  # left-aligned; numbers right
