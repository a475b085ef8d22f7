"""Models named by files, and models that misbehave (issue 28): a file can never make the tool import code,
importing or calling a factory never ends the process, and every model is held to one output contract
before any work, each refusal one line naming what was wrong."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from sdnet_cli import api
from sdnet_cli.api._session import Session
from sdnet_cli.check import Suite, read_baseline
from sdnet_cli.cli import app
from sdnet_cli.errors import UsageError
from sdnet_cli.models import load_model, state_dict_sha256
from sdnet_cli.models.weights import read_manifest
from sdnet_cli.runtime import Runtime, check_gradients
from sdnet_cli.specs import DataSpec, ModelSpec, RunSpec

BASELINE = Path(__file__).resolve().parents[1] / "reports" / "baseline.json"
CODE_NAMES = ["sys:exit", "builtins:exit", "os:abort", "os:fork", "code:interact"]

CPU = RunSpec(device="cpu")


@pytest.fixture
def no_imports(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any import of a named module through the zoo fails the test: refusals must come before it."""

    def forbidden(name: str, package: str | None = None) -> None:
        raise AssertionError(f"imported {name}")

    monkeypatch.setattr("sdnet_cli.models.zoo.importlib.import_module", forbidden)


@pytest.mark.parametrize("name", CODE_NAMES)
@pytest.mark.parametrize("form", ["name", "object"])
def test_a_suite_naming_code_is_refused_before_any_import(
    name: str, form: str, tmp_path: Path, no_imports: None
) -> None:
    entry = name if form == "name" else {"model": name}
    path = tmp_path / "suite.json"
    path.write_text(json.dumps({"models": ["resnet18", entry]}))
    field = "models[1]" if form == "name" else "models[1].model"
    with pytest.raises(
        UsageError, match=rf"suite .*suite.json: {re.escape(field)} must be a shipped or registered model"
    ):
        Suite.load(path)


@pytest.mark.parametrize("name", ["sys:exit", "builtins:exit"])
def test_the_gate_refuses_a_suite_naming_code_with_exit_2(name: str, tmp_path: Path) -> None:
    """Before: exit 0, no output, nothing compared."""
    suite = tmp_path / "suite.json"
    suite.write_text(json.dumps({"models": [name], "n_examples": 2}))
    result = CliRunner().invoke(app, ["check", "--suite", str(suite), "--baseline", str(BASELINE)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and f"suite {suite}: models[0] must be" in lines[0] and repr(name) in lines[0]
    assert "--allow-code-in-suite" in lines[0]


def test_a_baseline_whose_stored_suite_names_code_is_refused(tmp_path: Path, no_imports: None) -> None:
    path = tmp_path / "baseline.json"
    rows = [{"model": "m", "metric": "clean", "value": 90.0, "n": 10}]
    path.write_text(json.dumps({"meta": {"command": "check", "suite": {"models": ["sys:exit"]}}, "rows": rows}))
    with pytest.raises(UsageError, match=r"baseline .*baseline.json: meta.suite.models\[0\] must be a shipped"):
        read_baseline(path)
    result = CliRunner().invoke(app, ["check", "--baseline", str(path)])
    assert result.exit_code == 2 and "meta.suite.models[0]" in result.output


def test_a_manifest_naming_code_is_refused(tmp_path: Path) -> None:
    entry = {"name": "x", "file": "x.safetensors", "architecture": "os:abort", "dataset": "cifar10", "sha256": "0" * 64}
    (tmp_path / "manifest.json").write_text(json.dumps({"models": [entry]}))
    with pytest.raises(UsageError, match=r"manifest .*: models\[0\].architecture must be a shipped or registered"):
        read_manifest(tmp_path)


def test_robustbench_and_timm_names_and_plain_names_pass_the_file_rule(tmp_path: Path) -> None:
    path = tmp_path / "suite.json"
    path.write_text(json.dumps({"models": ["sdnet18", "robustbench:Standard", "timm:resnet18", {"model": "resnet18"}]}))
    assert [m.model for m in Suite.load(path).models] == [
        "sdnet18",
        "robustbench:Standard",
        "timm:resnet18",
        "resnet18",
    ]


def test_code_in_a_suite_only_with_the_explicit_opt_in(tmp_path: Path) -> None:
    path = tmp_path / "suite.json"
    path.write_text(json.dumps({"models": ["my_models:build"]}))
    with pytest.raises(UsageError):
        Suite.load(path)
    assert Suite.load(path, allow_code=True).models[0].model == "my_models:build"
    shown = " ".join(CliRunner().invoke(app, ["check", "--help"]).output.split())
    assert "--allow-code-in-suite Let the suite" in shown and "this imports and runs the Python code" in shown
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "--allow-code-in-suite" not in readme.split("## ")[0]  # never in the CI example at the top


# -- a factory typed by a person: whatever it does, one usage error ------------------------------------


@pytest.fixture
def factories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "untrusted_factories.py").write_text(
        textwrap.dedent(
            """
            import sys
            import torch
            from torch import nn

            def needs_width(width):
                return nn.Linear(width, 10)

            def raises():
                raise RuntimeError("weights not found")

            def exits():
                sys.exit(3)

            def not_a_module():
                return "resnet"

            def with_batchnorm():
                torch.manual_seed(0)
                return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 30 * 30, 10))

            def tuple_out():
                return TupleOut()

            class TupleOut(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.fc = nn.Linear(3 * 32 * 32, 10)

                def forward(self, x):
                    y = self.fc(x.flatten(1))
                    return y, y
            """
        )
    )
    (tmp_path / "exits_at_import.py").write_text("import sys\nsys.exit(0)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "untrusted_factories"


def test_sys_exit_through_the_api_is_a_usage_error() -> None:
    """Before: SystemExit left the API."""
    with pytest.raises(UsageError, match=r"model sys:exit: calling sys:exit\(\) raised SystemExit"):
        api.evaluate_corruptions(model="sys:exit", run=CPU)


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("needs_width", r"raised TypeError: .*needs_width\(\) missing 1 required positional argument: 'width'"),
        ("raises", "raised RuntimeError: weights not found"),
        ("exits", r"raised SystemExit\(3\)"),
        ("not_a_module", "returned a str, not a torch nn.Module"),
    ],
)
def test_a_factory_that_fails_is_one_usage_error(factories: str, factory: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        load_model(f"{factories}:{factory}")


def test_a_module_that_exits_at_import_is_exit_2_from_eval(factories: str, tmp_path: Path) -> None:
    """Before: exit 0 and no report."""
    result = CliRunner().invoke(app, ["eval", "-m", "exits_at_import:build", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert "importing exits_at_import for --model exits_at_import:build raised SystemExit(0)" in result.output
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_a_factory_model_with_batchnorm_loads_without_a_checkpoint(factories: str) -> None:
    """Before: the zoo's own hash viewed BatchNorm's 0-dim num_batches_tracked as bytes: a traceback."""
    classifier, info = load_model(f"{factories}:with_batchnorm")
    assert isinstance(classifier.network[1], nn.BatchNorm2d)
    assert info.sha256 == state_dict_sha256(classifier.network)


def test_the_state_dict_hash_is_that_of_the_bytes_in_key_order() -> None:
    """An independent reference: sha256 over 'key|dtype|shape|' and the little-endian bytes, keys sorted."""
    import hashlib

    module = nn.BatchNorm1d(2)
    digest = hashlib.sha256()
    for key in sorted(module.state_dict()):
        tensor = module.state_dict()[key]
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.numpy().tobytes())
    assert state_dict_sha256(module) == digest.hexdigest()


# -- one output contract for every model -----------------------------------------------------------


class Flat(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 32 * 32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


class DictOut(Flat):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return {"logits": super().forward(x)}


class BatchShaped(Flat):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)[:2]  # right for 2 images, wrong for any other count


class NaNs(Flat):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * float("nan")


class Integer(Flat):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).long()


class Detached(Flat):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return super().forward(x)


@pytest.mark.parametrize(
    ("module", "message"),
    [
        (Flat(100), r"returns a torch.float32 tensor of shape \(2, 100\) on cpu for 2 images; cifar10 needs"),
        (DictOut(), "returns a dict of 1, not a tensor"),
        (
            BatchShaped(),
            r"shape \(2, 10\) on cpu for 3 images; cifar10 needs a floating-point tensor of shape \(3, 10\)",
        ),
        (NaNs(), "returns NaN or infinite logits"),
        (Integer(), "returns a torch.int64 tensor"),
    ],
)
def test_a_module_breaking_the_contract_is_refused_before_any_work(module: nn.Module, message: str) -> None:
    """Before: 100 outputs on CIFAR-10 gave a report of 0.0%; the others ended in tracebacks mid-run."""
    with pytest.raises(UsageError, match=message) as caught:
        Session.open("eval", model=ModelSpec(module), data=DataSpec(), run=CPU)
    assert "\n" not in str(caught.value)


def test_a_factory_returning_a_tuple_is_refused(factories: str) -> None:
    with pytest.raises(UsageError, match="returns a tuple of 2, not a tensor"):
        Session.open("eval", model=ModelSpec(f"{factories}:tuple_out"), data=DataSpec(), run=CPU)


def test_a_model_on_the_meta_device_is_refused() -> None:
    with torch.device("meta"):
        module = Flat()
    with pytest.raises(UsageError, match="Flat has tensors without values: fc.weight is on the meta device"):
        Session.open("eval", model=ModelSpec(module), data=DataSpec(), run=CPU)
    with pytest.raises(UsageError, match="LazyLinear has tensors without values: weight is a lazy module's"):
        Session.open("eval", model=ModelSpec(nn.LazyLinear(10)), data=DataSpec(), run=CPU)


def test_an_attack_refuses_a_forward_without_gradients() -> None:
    runtime = Runtime.create("cpu")
    check_gradients(Flat(), torch.rand(2, 3, 32, 32), runtime)
    with pytest.raises(UsageError, match="without gradients with respect to its input images"):
        check_gradients(Detached(), torch.rand(2, 3, 32, 32), runtime)


def test_the_probe_leaves_the_random_state_alone() -> None:
    module = Flat()
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    Session.open("eval", model=ModelSpec(module), data=DataSpec(), run=CPU)
    assert torch.equal(torch.rand(3), expected)
