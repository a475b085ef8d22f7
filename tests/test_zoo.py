"""Models from outside: RobustBench's zoo (offline, from files in its layout), timm, a user's factory."""

from __future__ import annotations

import importlib.util
import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from sdnet_cli.api._session import Session
from sdnet_cli.data.cells import Cell, CellSource
from sdnet_cli.errors import UsageError
from sdnet_cli.evaluate import evaluate_cells
from sdnet_cli.models import load_model, state_dict_sha256
from sdnet_cli.models.zoo import import_robustbench, is_zoo_spec, load_zoo_model
from sdnet_cli.runtime import Runtime
from sdnet_cli.specs import DataSpec, ModelSpec, RunSpec

# optional integrations (extras "robustbench" and "timm"; CI installs both)
needs_robustbench = pytest.mark.skipif(
    importlib.util.find_spec("robustbench") is None,
    reason="robustbench is not installed: pip install -e '.[robustbench]'",
)
needs_timm = pytest.mark.skipif(
    importlib.util.find_spec("timm") is None, reason="timm is not installed: pip install -e '.[timm]'"
)


@pytest.fixture(autouse=True)
def private_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """robustbench imports gdown, which creates ~/.cache/gdown when first imported: let that be a temporary home."""
    monkeypatch.setenv("HOME", str(tmp_path_factory.mktemp("home")))


N = 50
NAME = "Hendrycks2020AugMix_WRN"  # WRN-40-2 of the corruptions leaderboard: small, normalises inside

CPU = RunSpec(device="cpu")


def test_zoo_specs_are_told_apart_from_our_model_names() -> None:
    assert is_zoo_spec("robustbench:Standard") and is_zoo_spec("timm:resnet18") and is_zoo_spec("my.pkg:build")
    assert not any(is_zoo_spec(name) for name in ("sdnet18", "resnet18", "tv_resnet50", "weights/x.safetensors"))


@needs_robustbench
def test_robustbench_imports_on_todays_stack_and_leaves_no_shims_behind() -> None:
    utils = import_robustbench()
    assert callable(utils.load_model) and callable(utils.clean_accuracy)
    assert "autoattack" not in sys.modules or sys.modules["autoattack"].__name__ == "autoattack"


@pytest.fixture(scope="module")
def robustbench_dir(tmp_path_factory: pytest.TempPathFactory, cifar_test: tuple[np.ndarray, np.ndarray]) -> Path:
    """RobustBench's layout holding a seeded WRN-40-2 whose last layer is fitted (least squares) to the
    first N clean test images: accuracies far from chance, so a pipeline that feeds the network other
    inputs than RobustBench does gets another number."""
    import_robustbench()
    from robustbench.model_zoo.cifar10 import Hendrycks2020AugMixWRNNet

    torch.manual_seed(0)
    network = Hendrycks2020AugMixWRNNet().eval()
    images, labels = cifar_test
    x = torch.from_numpy(images[:N]).permute(0, 3, 1, 2).float() / 255
    features: list[torch.Tensor] = []
    hook = network.fc.register_forward_hook(lambda m, args, out: features.append(args[0]))
    with torch.no_grad():
        network(x)
    hook.remove()
    targets = torch.nn.functional.one_hot(torch.from_numpy(labels[:N]).long(), 10).double()
    design = torch.cat([features[0].double(), torch.ones(N, 1, dtype=torch.float64)], dim=1)
    solution = torch.linalg.lstsq(design, targets).solution
    with torch.no_grad():
        network.fc.weight.copy_(solution[:-1].T.float())
        network.fc.bias.copy_(solution[-1].float())
    root = tmp_path_factory.mktemp("rb")
    (root / "cifar10" / "corruptions").mkdir(parents=True)
    # as RobustBench's own files: a dict with 'state_dict', keys prefixed by DataParallel's 'module.'
    state = {f"module.{k}": v for k, v in network.state_dict().items()}
    torch.save({"state_dict": state}, root / "cifar10" / "corruptions" / f"{NAME}.pt")
    return root


@pytest.fixture(scope="module")
def noise_cache(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """Generated gaussian_noise cells of the first N test images (seed 0)."""
    cache = tmp_path_factory.mktemp("cache")
    CellSource(data_dir, cache_dir=cache, seed=0, n_examples=N).prepare(["gaussian_noise"])
    return cache


@pytest.mark.slow
@needs_robustbench
def test_robustbench_accuracy_equals_robustbench_clean_accuracy(
    robustbench_dir: Path, data_dir: Path, noise_cache: Path
) -> None:
    utils = import_robustbench()
    classifier, info = load_model(f"robustbench:{NAME}", model_dir=robustbench_dir)
    assert info.source == "robustbench" and info.details["threat"] == "corruptions"
    assert info.sha256 is not None and len(info.sha256) == 64
    assert {"width", "stem"}.isdisjoint(info.as_meta()) and info.as_meta()["name"] == f"robustbench:{NAME}"
    reference = utils.load_model(NAME, model_dir=str(robustbench_dir), dataset="cifar10", threat_model="corruptions")

    source = CellSource(data_dir, cache_dir=noise_cache, seed=0, n_examples=N)
    source.prepare(["gaussian_noise"])
    cells = [Cell("clean", 0), Cell("gaussian_noise", 5)]
    runtime = Runtime.create("cpu")
    runtime.prepare(classifier)
    rows = evaluate_cells(classifier, cells, source, runtime, {"model": info.name, "dataset": "cifar10", "lam": None})
    for cell, row in zip(cells, rows):
        images, labels = source.load(cell)
        x = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float() / 255
        expected = utils.clean_accuracy(reference, x, torch.from_numpy(np.array(labels)).long())
        assert row["accuracy"] == pytest.approx(100 * expected, abs=1e-9), cell
    assert rows[0]["accuracy"] > 90 and rows[1]["accuracy"] < rows[0]["accuracy"]  # the fit took, noise hurts


@needs_robustbench
def test_robustbench_missing_file_is_one_line_naming_it_before_any_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    utils = import_robustbench()
    monkeypatch.setattr(utils, "download_gdrive_new", lambda *a: pytest.fail("robustbench tried to download"))
    with pytest.raises(UsageError) as caught:
        load_zoo_model("robustbench:Standard", threat="Linf", model_dir=tmp_path)
    message = str(caught.value)
    assert "\n" not in message and str(tmp_path / "cifar10" / "Linf" / "Standard.pt") in message
    assert caught.value.parameter == "model_dir"
    assert not (tmp_path / "cifar10").exists()  # robustbench never ran (it creates the folder first)


@pytest.mark.parametrize(
    ("spec", "threat", "match"),
    [
        ("robustbench:Hendrycks2020AugMix_WRM", "corruptions", "did you mean Hendrycks2020AugMix_WRN"),
        ("robustbench:Standard", "L1", "unknown threat"),
        ("robustbench:Debenedetti2022Light_XCiT-S12", "Linf", "never"),
    ],
)
@needs_robustbench
def test_robustbench_bad_names_are_refused(spec: str, threat: str, match: str, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=match):
        load_zoo_model(spec, threat=threat, model_dir=tmp_path)


class NotATensor:
    """Anything unpickling would have to construct."""


@needs_robustbench
def test_robustbench_files_holding_pickled_objects_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "cifar10" / "corruptions"
    folder.mkdir(parents=True)
    torch.save({"state_dict": {}, "extra": NotATensor()}, folder / f"{NAME}.pt")
    with pytest.raises(UsageError, match="refusing to load"):
        load_zoo_model(f"robustbench:{NAME}", model_dir=tmp_path)


@needs_timm
def test_timm_model_uses_its_pretrained_normalisation(tmp_path: Path) -> None:
    import timm

    torch.manual_seed(0)
    network = timm.create_model("test_efficientnet", pretrained=False, num_classes=10).eval()
    path = tmp_path / "effnet.safetensors"
    save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(path))
    classifier, info = load_model("timm:test_efficientnet", checkpoint=path)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    imagenet_mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)  # timm's default config, stated here
    imagenet_std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(classifier(x), network((x - imagenet_mean) / imagenet_std))
    assert info.source == "timm" and info.checkpoint == str(path) and info.lam is None
    with pytest.raises(UsageError, match="needs checkpoint"):
        load_model("timm:test_efficientnet")
    with pytest.raises(UsageError, match="timm has no model"):
        load_model("timm:test_efficientnot", checkpoint=path)


def test_a_users_factory_is_imported_and_called(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "zoo_test_factories.py").write_text(
        textwrap.dedent(
            """
            import torch
            from torch import nn

            def build():
                torch.manual_seed(3)
                return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))

            def wrong_classes():
                return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 7))

            def wrong_inputs():
                return nn.Sequential(nn.Flatten(), nn.Linear(5, 10))

            not_callable = 3
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    classifier, info = load_model("zoo_test_factories:build")
    torch.manual_seed(3)
    expected = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(classifier(x), expected(x))  # [0,1] inputs reach the module unchanged
    assert info.source == "factory" and info.sha256 == state_dict_sha256(expected)
    assert load_model("zoo_test_factories:build")[1].sha256 == info.sha256
    with torch.no_grad():
        expected[1].bias.add_(1e-3)
    assert state_dict_sha256(expected) != info.sha256
    with pytest.raises(UsageError, match=r"shape \(2, 7\)"):  # the output contract, before any work
        Session.open("eval", model=ModelSpec("zoo_test_factories:wrong_classes"), data=DataSpec(), run=CPU)
    with pytest.raises(UsageError, match="fails on 2 random 32x32 RGB images"):
        Session.open("eval", model=ModelSpec("zoo_test_factories:wrong_inputs"), data=DataSpec(), run=CPU)
    with pytest.raises(UsageError, match="no callable"):
        load_model("zoo_test_factories:not_callable")
    with pytest.raises(UsageError, match="cannot import"):
        load_model("zoo_test_no_such_module:build")


@pytest.mark.slow
@needs_robustbench
def test_cli_eval_and_attack_of_a_robustbench_model(
    robustbench_dir: Path, data_dir: Path, noise_cache: Path, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from sdnet_cli.cli import app

    common = ["--model", f"robustbench:{NAME}", "--model-dir", str(robustbench_dir), "-n", "20"]
    common += ["--data-dir", str(data_dir), "--out", str(tmp_path)]
    result = CliRunner().invoke(
        app, ["eval", *common, "-c", "gaussian_noise", "-s", "5", "--cache-dir", str(noise_cache), "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / f"eval-robustbench:{NAME}.json").read_text())
    assert report["meta"]["model"]["source"] == "robustbench" and report["rows"][0]["accuracy"] > 90
    attack = ["attack", *common[:4], "--data-dir", str(data_dir), "--out", str(tmp_path), "--device", "cpu"]
    attack += ["--attack", "pgd", "--steps", "2", "--eps", "1/255", "-n", "8", "--batch-size", "8"]
    result = CliRunner().invoke(app, attack)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / f"attack-robustbench:{NAME}-pgd.json").read_text())
    assert report["meta"]["model"]["source"] == "robustbench"
    result = CliRunner().invoke(app, [*attack, "--adapt", "bn"])
    assert result.exit_code == 2 and "No such option: --adapt" in result.output  # attack has no --adapt
    missing = CliRunner().invoke(app, ["eval", "--model", "robustbench:Standard", "--model-dir", str(tmp_path)])
    assert missing.exit_code == 2 and "Standard.pt does not exist" in missing.output


@pytest.mark.slow
def test_check_suite_holds_a_robustbench_model(
    robustbench_dir: Path, data_dir: Path, noise_cache: Path, tmp_path: Path
) -> None:
    """A suite names a zoo model with its threat and folder; the baseline it writes re-checks as passed,
    every baseline metric compared (clean, the cell, the attack)."""
    from sdnet_cli import api

    suite = tmp_path / "suite.json"
    model = {"model": f"robustbench:{NAME}", "threat": "corruptions", "model_dir": str(robustbench_dir)}
    suite.write_text(json.dumps({"models": [model], "n_examples": 20, "cells": [["gaussian_noise", 1]], "steps": 1}))
    folders = {"data": api.DataSpec(data_dir=data_dir, cache_dir=noise_cache), "run": api.RunSpec(device="cpu")}
    baseline = api.check(baseline=tmp_path / "baseline.json", suite=suite, update=True, **folders)
    baseline.write(tmp_path, "baseline")
    report = api.check(baseline=tmp_path / "baseline.json", **folders)
    assert report.meta["passed"] and report.meta["compared"] == 3
    assert {row["model"] for row in report.rows} == {f"robustbench:{NAME}"}


@pytest.mark.parametrize(("option", "value"), [("threat", "Linf"), ("model_dir", Path("models"))])
def test_robustbench_options_on_another_model_are_refused(option: str, value: object) -> None:
    with pytest.raises(UsageError, match=f"{option} applies to robustbench:<name> models, not to resnet18"):
        load_model("resnet18", **{option: value})
