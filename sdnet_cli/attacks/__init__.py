"""Adversarial evaluation on torchattacks: one attack or AutoAttack, sample-wise, on the deployed model.

    config = AttackConfig.create(attack="pgd", norm="Linf", eps=["1/255", "8/255"], steps=20)
    results = run_attack(model, images, labels, config, seed=0, runtime=Runtime.create("cpu"))
    rows = results.rows({"model": "sdnet18", "dataset": "cifar10", "lam": None})

``base``: the model as attacks see it; ``config``: what to run (validated once); ``registry``: attack name -> builder; ``runner``: the
batch loop; ``checks``: gradient-masking warning signs;
``state``: resumable runs; ``results``: per-sample outcome, rows and saved examples.
"""

from .base import AttackedModel
from .checks import Diagnostics, diagnose
from .config import AttackConfig, Eps, check_norm
from .registry import AUTOATTACK_VERSIONS, NORMS, AttackSetting, Component, Norm, attack_names, register
from .results import AttackResults, save_adversarials
from .runner import build_components, forwards_per_image, requantized_robust_accuracy, run_attack
from .state import remove_state

__all__ = [
    "AUTOATTACK_VERSIONS",
    "NORMS",
    "AttackConfig",
    "AttackSetting",
    "AttackResults",
    "AttackedModel",
    "Component",
    "Diagnostics",
    "Eps",
    "Norm",
    "attack_names",
    "build_components",
    "check_norm",
    "diagnose",
    "forwards_per_image",
    "register",
    "remove_state",
    "requantized_robust_accuracy",
    "run_attack",
    "save_adversarials",
]
