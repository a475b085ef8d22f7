"""One validator per kind of value, whichever door the value comes through (flag, API argument, file),
and one schema per kind of file, whose errors name the file and the field."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sdnet_cli.attacks import AttackConfig
from sdnet_cli.attacks.config import Eps
from sdnet_cli.attacks.state import read_state
from sdnet_cli.check import Suite
from sdnet_cli.errors import UsageError
from sdnet_cli.lam import Calibration, FixedLambda, NoiseLevelLambda, lambda_grid, resolve_policy
from sdnet_cli.models import create_model
from sdnet_cli.models.weights import read_manifest
from sdnet_cli.schemas import GRID_MAX, LAM_MAX, check_count, check_lam, check_tolerance
from sdnet_cli.train import TrainConfig

REPO = Path(__file__).resolve().parents[1]
LAMBDA_RULE = f"must be a finite number in [0, {LAM_MAX:g}]"


@pytest.mark.parametrize("value", [0.0, 0.1, 1.4, LAM_MAX, 3])
def test_valid_lambdas_pass_unchanged(value: float) -> None:
    assert check_lam(value) == float(value)


@pytest.mark.parametrize("value", [-5, -1e-9, math.nan, math.inf, 1e30, LAM_MAX * 1.01, True, "0.1", None])
def test_invalid_lambdas_are_refused_naming_the_parameter(value: object) -> None:
    with pytest.raises(UsageError, match=r"^reference_lam must be") as err:
        check_lam(value, "reference_lam")
    assert err.value.parameter == "reference_lam"


def test_the_lambda_rule_is_the_same_through_every_door(tmp_path: Path) -> None:
    """lam = -5 from a flag value, an API argument, a grid, a training setting and a calibration file: one rule."""
    model = create_model("sdnet18", width=8)
    doors = [
        lambda: FixedLambda(-5.0),
        lambda: resolve_policy("-5", model),
        lambda: lambda_grid([0.1, -5]),
        lambda: lambda_grid("-5,0.1"),
        lambda: TrainConfig(model="sdnet18", lam=-5),
        lambda: NoiseLevelLambda(a=1.0, b=0.0, lo=-5.0, hi=1.0),
    ]
    for door in doors:
        with pytest.raises(UsageError, match=re.escape(LAMBDA_RULE)):
            door()
    path = tmp_path / "x.lambda.json"
    path.write_text(json.dumps(calibration_file(lo=-5.0)))
    with pytest.raises(UsageError) as err:
        Calibration.load(path)
    assert str(err.value) == f"calibration {path}: rules.noise.lo {LAMBDA_RULE}, got -5.0"


def calibration_file(**noise: float) -> dict:
    line = {"a": 8.0, "b": 0.1, "lo": 0.1, "hi": 1.4, "c": 0.0}
    return {
        "rules": {"recon": {"a": 0.01, "b": 0.05, "lo": 0.1, "hi": 1.4}, "noise": {**line, **noise}},
        "recommended": "noise",
        "grid": [0.1, 0.7, 1.4],
        "points": [{"corruption": "clean", "severity": 0, "curve": [90.0, 80.0, 70.0]}],
        "corruptions": ["gaussian_noise"],
        "severities": [5],
        "n": 100,
        "seed": 0,
        "training_lam": 0.1,
        "checkpoint_sha256": "ab" * 32,
        "split": "train",
        "schema": 4,
    }


def test_a_valid_calibration_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "ok.lambda.json"
    path.write_text(json.dumps(calibration_file()))
    calibration = Calibration.load(path)
    assert calibration.noise.lo == 0.1 and calibration.noise.hi == 1.4 and calibration.recommended == "noise"


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ({"lo": -5.0, "hi": -1.0}, "rules.noise.lo", "must be a finite number"),
        ({"lo": 1.0, "hi": 0.5}, "rules.noise", "must have lo <= hi"),
        ({"b": 1e30, "hi": 1e30}, "rules.noise.hi", "must be a finite number"),
        ({"a": math.nan}, "rules.noise.a", "must be a finite number"),
        ({"c": math.inf}, "rules.noise.c", "must be a finite number"),
        ({"hi": "1.4"}, "rules.noise.hi", "must be a number"),
    ],
)
def test_damaged_calibration_rules_name_file_and_field(tmp_path: Path, change: dict, field: str, reason: str) -> None:
    path = tmp_path / "x.lambda.json"
    path.write_text(json.dumps(calibration_file(**change)))
    with pytest.raises(UsageError) as err:
        Calibration.load(path)
    assert str(err.value).startswith(f"calibration {path}: {field} {reason}"), err.value


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"schema": 99}, "schema"),
        ({"grid": []}, "grid"),
        ({"n": 0}, "n"),
        ({"severities": [7]}, "severities[0]"),
        ({"training_lam": math.nan}, "training_lam"),
        ({"points": [{"corruption": "clean", "severity": 0, "curve": [90.0]}]}, "curve"),
        ({"points": [{"corruption": "clean", "severity": 0, "curve": [90.0, 250.0, 70.0]}]}, "points[0].curve[1]"),
    ],
)
def test_damaged_calibration_fields_name_file_and_field(tmp_path: Path, change: dict, field: str) -> None:
    path = tmp_path / "x.lambda.json"
    path.write_text(json.dumps({**calibration_file(), **change}))
    with pytest.raises(UsageError) as err:
        Calibration.load(path)
    assert str(path) in str(err.value) and field in str(err.value) and "\n" not in str(err.value)


def test_lambda_grid_is_bounded_before_any_list_is_built() -> None:
    assert lambda_grid("0.1:1.4:0.1") == [round(0.1 * i, 10) for i in range(1, 15)]  # 14 points, stop included
    for text, points in (("0:1:1e-9", "1,000,000,00[01]"), ("0:1:1e-5", "100,001")):
        start = time.perf_counter()
        with pytest.raises(UsageError, match=f"has {points} points; at most {GRID_MAX:,}"):
            lambda_grid(text)
        assert time.perf_counter() - start < 0.5  # refused by counting, not by building the list
    with pytest.raises(UsageError, match="at most"):
        lambda_grid([0.1] * (GRID_MAX + 1))
    for text in ("0:nan:0.1", "0:inf:0.1", "0:1:0"):
        with pytest.raises(UsageError, match="START:STOP:STEP"):
            lambda_grid(text)


def test_counts_and_tolerances_have_bounds() -> None:
    assert check_count(5, "steps", 10) == 5
    for bad in (0, 11, True, 2.0, "5"):
        with pytest.raises(UsageError, match="steps must be an integer"):
            check_count(bad, "steps", 10)
    assert check_tolerance(0) == 0.0
    for bad in (-1, math.nan, math.inf, "1", 101):
        with pytest.raises(UsageError, match="tolerance must be"):
            check_tolerance(bad)


def test_attack_budgets_have_upper_bounds() -> None:
    with pytest.raises(UsageError, match="steps must be an integer >= 1 and <= 100,000"):
        AttackConfig.create(attack="pgd", steps=10**9)
    with pytest.raises(UsageError, match="restarts must be an integer >= 1 and <= 100"):
        AttackConfig.create(attack="pgd", restarts=1000)
    with pytest.raises(UsageError, match="budgets"):
        AttackConfig.create(attack="autoattack", budgets={"square": 10**9})
    with pytest.raises(UsageError, match="eps"):
        Eps.of(Eps(1.5, "1.5"))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"lr": -1.0}, "lr must be a finite number in (0, 100]"),
        ({"lr": math.nan}, "lr must be a finite number"),
        ({"lr": 0.0}, "lr must be"),
        ({"lam": -1.0}, "lam must be a finite number in [0, 100]"),
        ({"epochs": 0}, "epochs must be an integer"),
        ({"batch_size": 10**9}, "batch_size must be an integer >= 1 and <= 65,536"),
        ({"n_train": 0}, "n_train must be"),
    ],
)
def test_training_settings_are_checked_when_the_config_is_made(settings: dict, message: str) -> None:
    with pytest.raises(UsageError) as err:
        TrainConfig(model="sdnet18", **settings)
    assert str(err.value).startswith(message), err.value


def test_suite_fields_are_validated_when_set() -> None:
    suite = Suite()
    for name, bad in (("tolerance", math.nan), ("tolerance", -5.0), ("n_examples", "20"), ("steps", 0)):
        with pytest.raises(UsageError, match=f"{name} must be"):
            setattr(suite, name, bad)
    with pytest.raises(UsageError, match="severity must be a severity from 1 to 5"):
        Suite(cells=[("fog", 9)])
    assert suite.tolerance == 1.0 and suite.n_examples == 500  # unchanged by the refused values


def manifest_entry(**change: object) -> dict:
    entry = {
        "name": "m",
        "file": "m.safetensors",
        "architecture": "sdnet18",
        "dataset": "cifar10",
        "sha256": "ab" * 32,
        "lam": 0.1,
        "n_steps": 2,
        "width": 8,
        "num_classes": 10,
    }
    return {**entry, **change}


@pytest.mark.parametrize(
    ("entries", "field"),
    [
        ([manifest_entry(file="../../elsewhere.safetensors")], "models[0].file"),
        ([manifest_entry(file="/abs/m.safetensors")], "models[0].file"),
        ([manifest_entry(calibration="../x.lambda.json")], "models[0].calibration"),
        ([manifest_entry(sha256="not-a-hash")], "models[0].sha256"),
        ([manifest_entry(lam=-5)], "models[0].lam"),
        ([manifest_entry(n_steps=0)], "models[0].n_steps"),
        ([manifest_entry(clean_accuracy=250.0)], "models[0].clean_accuracy"),
        ([manifest_entry(default="yes")], "models[0].default"),
        ([{k: v for k, v in manifest_entry().items() if k != "file"}], "models[0].file is missing"),
        ([manifest_entry(), manifest_entry()], "listed twice: m"),
    ],
)
def test_damaged_manifest_names_file_and_field(tmp_path: Path, entries: list, field: str) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({"models": entries}))
    with pytest.raises(UsageError) as err:
        read_manifest(tmp_path)
    assert str(err.value).startswith(f"manifest {tmp_path / 'manifest.json'}: ") and field in str(err.value)


def test_shipped_manifest_and_calibrations_pass_their_schemas() -> None:
    entries = read_manifest(REPO / "weights")
    assert entries and all(len(e["sha256"]) == 64 for e in entries)
    for path in sorted((REPO / "weights").glob("*.lambda.json")):
        assert 0 <= Calibration.load(path).noise.lo <= Calibration.load(path).noise.hi <= LAM_MAX


@pytest.mark.parametrize(
    ("pools", "field"),
    [
        ({"0": {"clean": "10x", "fooled": [], "seconds": [], "max_excess": 0.0}}, "pools.0.clean"),
        ({"0": {"clean": "10", "fooled": [["1"]], "seconds": [[1.0]], "max_excess": 0.0}}, "pools.0"),
        (
            {"0": {"clean": "10", "fooled": [["01"]], "seconds": [[math.nan]], "max_excess": 0.0}},
            "pools.0.seconds[0][0]",
        ),
        ({"0": {"clean": "10", "fooled": [["01"]], "seconds": [[1.0]], "max_excess": math.inf}}, "pools.0.max_excess"),
        ({"first": {"clean": "10", "fooled": [["01"]], "seconds": [[1.0]], "max_excess": 0.0}}, "pools.first"),
    ],
)
def test_damaged_attack_state_names_file_and_field(tmp_path: Path, pools: dict, field: str) -> None:
    path = tmp_path / "run.state.json"
    path.write_text(json.dumps({"config": {}, "pools": pools}))
    with pytest.raises(UsageError) as err:
        read_state(path)
    assert str(path) in str(err.value) and field in str(err.value) and "delete it" in str(err.value)


def test_help_never_imports_pydantic() -> None:
    """The schemas cost ~0.1 s to import; ``sdnet --help`` must stay fast, so the CLI module never loads them."""
    code = "import sys, sdnet_cli.cli; print('pydantic' in sys.modules, 'sdnet_cli.schemas' in sys.modules)"
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert found.stdout.split() == ["False", "False"]
