"""`sdnet attack` and sdnet_cli.attacks: the config (eps parsing, validation), the registry and the
standard AutoAttack settings, the sample-wise worst case, threat-set bounds, the adaptive (per-input
lambda) gradient, diagnostics, seeding, resume, CLI."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchattacks
from torch import nn
from typer.testing import CliRunner

from sdnet_cli.attacks import (
    AttackConfig,
    AttackedModel,
    AttackResults,
    AttackSetting,
    Component,
    Eps,
    attack_names,
    build_components,
    diagnose,
    register,
    registry,
    requantized_robust_accuracy,
    run_attack,
)
from sdnet_cli.cli import app
from sdnet_cli.data.cifar import load_cifar10
from sdnet_cli.errors import UsageError
from sdnet_cli.lam import FEATURES, Calibration, NoiseLevelLambda, ReconErrorLambda
from sdnet_cli.models import Classifier, create_model, load_model
from sdnet_cli.models.checkpoints import sha256_of
from sdnet_cli.runtime import Runtime, count_correct, predict
from sdnet_cli.train import TrainConfig, train

CPU = Runtime.create("cpu", "fp32")
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
Pair = tuple[np.ndarray, np.ndarray]
ROW_KEYS = {
    "model",
    "dataset",
    "attack",
    "norm",
    "eps",
    "eps_text",
    "lam",
    "n",
    "clean_accuracy",
    "robust_accuracy",
    "seconds",
}
SMALL_BUDGETS = {"apgd-ce": 5, "apgd-t": 2, "fab-t": 2, "square": 40}
cli = CliRunner()


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Small forwards on a shared 2-core machine: one thread avoids OpenMP oversubscription stalls."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def config(attack: str, eps: list[str], norm: str = "Linf", **kwargs: object) -> AttackConfig:
    return AttackConfig.create(attack=attack, norm=norm, eps=eps, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def short_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """For the CLI, which has no ``budgets``: AutoAttack's components default to a few iterations each
    (the same code path, seconds instead of minutes)."""
    for name, steps in SMALL_BUDGETS.items():
        monkeypatch.setitem(registry.REGISTRY, name, dataclasses.replace(registry.REGISTRY[name], default_steps=steps))


@pytest.fixture(scope="module")
def trained(data_dir: Path, cifar_test: Pair, tmp_path_factory: pytest.TempPathFactory) -> Classifier:
    """A standard-trained width-8 ResNet-18: about 35% clean accuracy after 3 short epochs."""
    torch.manual_seed(0)
    model = create_model("resnet18", width=8)
    cfg = TrainConfig(model="resnet18", width=8, epochs=3, batch_size=64, lr=0.02, n_train=1280, n_test=64, seed=0)
    train_data = load_cifar10(data_dir, "train", download=False)
    train(model, cfg, train_data, cifar_test, CPU, tmp_path_factory.mktemp("t") / "r.pt")
    return model.eval()


@pytest.fixture(scope="module")
def first128(cifar_test: Pair) -> Pair:
    images, labels = cifar_test
    return np.ascontiguousarray(images[:128]), labels[:128]


@pytest.fixture(scope="module")
def pgd_sweep(trained: Classifier, first128: Pair) -> AttackResults:
    eps = ["8/255", "0", "1/255", "2/255"]  # unsorted on purpose
    return run_attack(
        trained, *first128, config("pgd", eps, steps=20), seed=0, runtime=CPU, batch_size=64, keep_adv=True
    )


def accuracy_by_eps(rows: list[dict], attack: str) -> list[float]:
    return [r["robust_accuracy"] for r in rows if r["attack"] == attack]


BASE = {"model": "m", "dataset": "cifar10", "lam": None}


# -- the config --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "value", "shown"),
    [
        ("8/255", 8 / 255, "8/255"),
        (" 4 / 255 ", 4 / 255, "4/255"),
        ("0.5/255", 0.5 / 255, "0.5/255"),
        ("0.031", 0.031, "0.031"),
        ("0", 0.0, "0"),
        ("1", 1.0, "1"),
        ("1e-2", 0.01, "1e-2"),
        (".25", 0.25, ".25"),
    ],
)
def test_eps_parse_accepts_fractions_and_decimals(text: str, value: float, shown: str) -> None:
    eps = Eps.parse(text)
    assert eps.value == value and eps.text == shown


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("8/0", "divides by zero"),
        ("8/0.0", "divides by zero"),
        ("-8/255", ">= 0"),
        ("-0.1", ">= 0"),
        ("1.5", "at most 1"),
        ("300/255", "at most 1"),
        ("abc", "fraction like 8/255"),
        ("8/", "fraction like 8/255"),
        ("8/255/2", "fraction like 8/255"),
        ("nan", "fraction like 8/255"),
        ("inf", "fraction like 8/255"),
        ("", "fraction"),
    ],
)
def test_eps_parse_rejects_bad_budgets(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as caught:
        Eps.parse(text)
    assert caught.value.parameter == "eps"


def test_config_sorts_and_deduplicates_eps_from_text_numbers_and_eps() -> None:
    made = config("PGD", ["8/255", 0.01, Eps(0.0, "0"), "8 / 255", 1 / 255], norm="l2", steps=3)  # type: ignore[list-item]
    assert (made.attack, made.norm, made.steps, made.restarts) == ("pgd", "L2", 3, None)
    assert [(e.value, e.text) for e in made.eps] == [
        (0.0, "0"),
        (1 / 255, "0.00392156862745098"),
        (0.01, "0.01"),
        (8 / 255, "8/255"),
    ]
    assert made.components == ("pgd",) and made.eot_iter == 1
    assert made.work_units(10, 4) == 40  # 10 images, 4 distinct budgets, one process
    assert made.as_meta() == {
        "attack": "pgd",
        "norm": "L2",
        "version": None,
        "eps": [{"value": e.value, "text": e.text} for e in made.eps],
    }
    auto = config("AutoAttack", ["8/255"], version="RAND")
    assert auto.components == ("apgd-ce", "apgd-dlr") and auto.eot_iter == 20 and auto.as_meta()["version"] == "rand"
    assert [auto.steps_for(c) for c in auto.components] == [100, 100]
    assert config("square", ["8/255"]).steps_for("square") == 5000


@pytest.mark.parametrize(
    ("kwargs", "parameter", "message"),
    [
        ({"attack": "cw"}, "attack", "unknown attack"),
        ({"norm": "L1"}, "norm", "unknown norm"),
        ({"version": "fast"}, "version", "unknown version"),
        ({"eps": []}, "eps", "at least one eps"),
        ({"eps": ["1.5"]}, "eps", "at most 1"),
        ({"eps": [-0.1]}, "eps", ">= 0"),
        ({"eps": [None]}, "eps", "a number"),
        ({"eps": [Eps(2.0, "2")]}, "eps", r"in \[0, 1\]"),
        ({"attack": "autoattack", "steps": 5}, "steps", "standard settings"),
        ({"attack": "autoattack", "restarts": 2}, "restarts", "standard settings"),
        ({"attack": "pgd", "version": "rand"}, "version", "autoattack only"),
        ({"attack": "pgd", "steps": 0}, "steps", ">= 1"),
        ({"attack": "pgd", "restarts": -1}, "restarts", ">= 1"),
        ({"attack": "pgd", "steps": 2.5}, "steps", "integer"),
        ({"attack": "pgd", "budgets": {"pgd": 3}}, "budgets", "single attack takes steps"),
        ({"attack": "autoattack", "budgets": {"pgd": 3}}, "budgets", "not one of"),
        ({"attack": "autoattack", "budgets": {"square": 0}}, "budgets", ">= 1"),
    ],
)
def test_config_validation_names_the_parameter(kwargs: dict, parameter: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as caught:
        AttackConfig.create(**{"attack": "pgd", "eps": ["8/255"], **kwargs})
    assert caught.value.parameter == parameter


def test_attack_names_come_from_the_registry() -> None:
    assert attack_names() == (*registry.REGISTRY, "autoattack")
    assert attack_names() == ("pgd", "apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "square", "autoattack")
    assert {name: entry.default_steps for name, entry in registry.REGISTRY.items()} == {
        "pgd": 20,
        "apgd-ce": 100,
        "apgd-dlr": 100,
        "apgd-t": 100,
        "fab-t": 100,
        "square": 5000,
    }


class Identity(torchattacks.attack.Attack):
    """An "attack" that returns its input: nothing can be fooled by it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__("Identity", model)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return images.clone()


@pytest.mark.slow
def test_one_registered_builder_adds_an_attack(
    monkeypatch: pytest.MonkeyPatch, trained: Classifier, first128: Pair
) -> None:
    monkeypatch.setattr(registry, "REGISTRY", dict(registry.REGISTRY))  # registered for this test only

    @register("identity", default_steps=1)
    def identity(model: nn.Module, setting: AttackSetting) -> Component:
        return Component("identity", Identity(model))

    assert "identity" in attack_names()
    result = run_attack(trained, *first128, config("IDENTITY", ["8/255"]), runtime=CPU, batch_size=64)
    assert (result.robust(0) == result.clean).all() and result.settings[0]["class"] == "Identity"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--eps", "8/0"], "divides by zero"),
        (["--eps", "-1/255"], ">= 0"),
        (["--eps", "2"], "at most 1"),
        (["--eps", "abc"], "fraction like 8/255"),
        (["--attack", "cw"], "unknown --attack"),
        (["--norm", "L1"], "unknown --norm"),
        (["--attack", "autoattack", "--steps", "5"], "standard settings"),
        (["--attack", "pgd", "--version", "rand"], "autoattack only"),
        (["--save-adv", "adv.pt"], "must end in .npz"),
    ],
)
def test_cli_usage_errors_exit_2(
    tiny_checkpoint: Path, data_dir: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    result = cli.invoke(
        app,
        [
            "attack",
            "--model",
            "sdnet18",
            "--checkpoint",
            str(tiny_checkpoint),
            "-n",
            "4",
            "--data-dir",
            str(data_dir),
            "--out",
            str(tmp_path),
            *args,
        ],
    )
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert list(tmp_path.iterdir()) == []


# -- robust accuracy behaves -------------------------------------------------------------------
@pytest.mark.slow
def test_eps_zero_gives_the_clean_accuracy(pgd_sweep: AttackResults, trained: Classifier, first128: Pair) -> None:
    rows = pgd_sweep.rows(BASE)
    assert [r["eps_text"] for r in rows] == ["0", "1/255", "2/255", "8/255"]
    independent = count_correct(trained, *first128, CPU, batch_size=64)
    # rows keep 4 decimals
    assert rows[0]["robust_accuracy"] == rows[0]["clean_accuracy"] == pytest.approx(independent.accuracy, abs=1e-4)


@pytest.mark.slow
def test_robust_accuracy_never_rises_with_eps(pgd_sweep: AttackResults) -> None:
    accuracies = accuracy_by_eps(pgd_sweep.rows(BASE), "pgd")
    assert accuracies == sorted(accuracies, reverse=True)
    assert accuracies[1] < accuracies[0] and accuracies[3] < accuracies[1]  # the attack does something at each step
    for e in range(len(pgd_sweep.eps) - 1):  # per sample: robust at a larger eps implies robust at the smaller one
        assert not (pgd_sweep.robust(e + 1) & ~pgd_sweep.robust(e)).any()


@pytest.mark.slow
def test_pgd20_breaks_a_standard_trained_model(pgd_sweep: AttackResults) -> None:
    row = pgd_sweep.rows(BASE)[-1]
    assert row["eps_text"] == "8/255" and row["clean_accuracy"] > 25.0
    assert row["robust_accuracy"] < 5.0


@pytest.mark.slow
def test_linf_examples_stay_in_the_threat_set(pgd_sweep: AttackResults, first128: Pair) -> None:
    clean = first128[0].astype(np.float32) / 255
    assert pgd_sweep.adv is not None and pgd_sweep.adv.shape == (4, 128, 32, 32, 3)
    for e, eps in enumerate(pgd_sweep.eps):
        adv = pgd_sweep.adv[e]
        assert np.abs(adv - clean).max() <= eps.value + 1e-6
        assert adv.min() >= 0 and adv.max() <= 1
        fooled = pgd_sweep.clean & ~pgd_sweep.robust(e)
        assert (np.abs(adv - clean).reshape(128, -1).max(1)[fooled] > 0).all()
    assert pgd_sweep.diagnostics.max_excess < 1e-5  # torchattacks' raw outputs already respected the ball


@pytest.mark.parametrize(("attack", "steps"), [("pgd", 10), ("apgd-ce", 10), ("fab-t", 3), ("square", 50)])
@pytest.mark.slow
def test_l2_examples_stay_in_the_threat_set(trained: Classifier, first128: Pair, attack: str, steps: int) -> None:
    images, labels = first128[0][:32], first128[1][:32]
    result = run_attack(
        trained, images, labels, config(attack, ["0.5"], norm="L2", steps=steps), runtime=CPU, keep_adv=True
    )
    assert result.adv is not None
    delta = (result.adv[0] - images.astype(np.float32) / 255).reshape(32, -1)
    assert np.linalg.norm(delta, axis=1).max() <= 0.5 + 1e-5
    assert result.adv.min() >= 0 and result.adv.max() <= 1
    assert result.robust(0).sum() < result.clean.sum()  # it did find adversarial examples
    assert result.diagnostics.max_excess < 1e-4


@pytest.mark.slow
def test_worst_case_is_never_above_any_single_attack(trained: Classifier, first128: Pair) -> None:
    images, labels = first128[0][:64], first128[1][:64]
    auto = run_attack(
        trained,
        images,
        labels,
        config("autoattack", ["1/255"], budgets=SMALL_BUDGETS),
        runtime=CPU,
        batch_size=64,
        keep_adv=True,
    )
    rows = auto.rows(BASE)
    assert [r["attack"] for r in rows] == ["apgd-ce", "apgd-t", "fab-t", "square", "worst"]
    after_each = [r["robust_accuracy"] for r in rows]
    assert after_each == sorted(after_each, reverse=True)
    # the worst case, judged again from scratch: the model's own forward on the kept examples (the
    # fooling example where one was found, else the input) must be right exactly on the robust points
    assert auto.adv is not None
    x = torch.from_numpy(auto.adv[0]).permute(0, 3, 1, 2).contiguous()
    again = (predict(trained, x, CPU) == torch.from_numpy(labels)).numpy()
    assert (again == auto.robust(0)).all()
    assert rows[-1]["robust_accuracy"] == pytest.approx(100 * again.mean(), abs=1e-4)
    # per sample: robust = correct and fooled by none; each attack only fooled points that were still standing
    assert (auto.robust(0) == (auto.clean & ~auto.fooled[0].any(axis=0))).all()
    for k in range(1, 4):
        assert not (auto.fooled[0, k] & auto.fooled[0, :k].any(axis=0)).any()
    assert not (auto.fooled[0] & ~auto.clean).any()
    for name in ("apgd-ce", "apgd-t", "fab-t", "square"):
        single = run_attack(
            trained, images, labels, config(name, ["1/255"], steps=SMALL_BUDGETS[name]), runtime=CPU, batch_size=64
        )
        assert rows[-1]["robust_accuracy"] <= single.rows(BASE)[0]["robust_accuracy"], name
    assert rows[-1]["robust_accuracy"] < rows[0]["clean_accuracy"]


# -- standard AutoAttack is configured as in Croce & Hein (ICML 2020) ----------------------------
@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_autoattack_components_have_the_original_settings(norm: str) -> None:
    model = AttackedModel(create_model("resnet18", width=8).eval(), CPU)
    components = build_components(model, config("autoattack", ["8/255"], norm=norm), 8 / 255, num_classes=10)
    apgd, apgdt, fab, square = (c.attack for c in components)
    assert [c.name for c in components] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert all(c.attack.model is model and c.runs == 1 for c in components)  # they attack the deployed pipeline
    assert all(a.norm == norm and a.eps == 8 / 255 for a in (apgd, apgdt, fab, square))
    assert isinstance(apgd, torchattacks.APGD)
    assert (apgd.loss, apgd.steps, apgd.n_restarts, apgd.eot_iter) == ("ce", 100, 1, 1)
    assert isinstance(apgdt, torchattacks.APGDT) and (apgdt.steps, apgdt.n_target_classes, apgdt.n_restarts) == (
        100,
        9,
        1,
    )
    assert isinstance(fab, torchattacks.FAB) and fab.multi_targeted
    assert (fab.steps, fab.n_target_classes, fab.n_restarts) == (100, 9, 1)
    assert isinstance(square, torchattacks.Square)
    assert (square.n_queries, square.p_init, square.rescale_schedule) == (5000, 0.8, False)
    assert (square.n_restarts, square.loss) == (1, "margin")


def test_autoattack_rand_version_uses_eot() -> None:
    model = AttackedModel(create_model("resnet18", width=8).eval(), CPU)
    components = build_components(model, config("autoattack", ["8/255"], version="rand"), 8 / 255, num_classes=10)
    assert [c.name for c in components] == ["apgd-ce", "apgd-dlr"]
    assert [(c.attack.loss, c.attack.steps, c.attack.eot_iter, c.attack.n_restarts) for c in components] == [
        ("ce", 100, 20, 1),
        ("dlr", 100, 20, 1),
    ]


@pytest.mark.slow
def test_autoattack_rand_runs_on_a_randomised_model(cifar_test: Pair) -> None:
    """A model whose forward adds noise, labelled with its own noiseless predictions so every point
    starts correct: the rand version attacks it with EOT, and the seed makes the run repeat exactly."""
    images = np.ascontiguousarray(cifar_test[0][:4])
    noisy = Classifier(Small("random"), CIFAR_MEAN, CIFAR_STD)
    with torch.no_grad():
        labels = Classifier(Small(), CIFAR_MEAN, CIFAR_STD)(CPU.to_input(images)).argmax(1).numpy()
    made = config("autoattack", ["16/255"], version="rand", budgets={"apgd-ce": 3, "apgd-dlr": 3})
    first, again = (run_attack(noisy, images, labels, made, seed=1, runtime=CPU) for _ in range(2))
    assert [r["attack"] for r in first.rows(BASE)] == ["apgd-ce", "apgd-dlr", "worst"]
    assert [(s["name"], s["eot_iter"], s["steps"]) for s in first.settings] == [("apgd-ce", 20, 3), ("apgd-dlr", 20, 3)]
    assert first.diagnostics.nondeterministic and first.clean.sum() >= 3
    assert first.robust(0).sum() < first.clean.sum()  # EOT-averaged gradients still find examples
    assert (first.fooled == again.fooled).all() and (first.clean == again.clean).all()


# -- adaptive attack on a per-input lambda -----------------------------------------------------
@pytest.mark.parametrize("rule", [ReconErrorLambda, NoiseLevelLambda])
def test_adaptive_gradient_flows_through_lambda_and_matches_finite_differences(rule: type) -> None:
    """Per-input lambda(x) inside the clamp. An 8x8 input, float32 throughout: the CSC solve runs in
    float32 by design, so a float64 check is not available; a scalar of the logits keeps FD noise low."""
    torch.manual_seed(0)
    model = create_model("sdnet18", width=8).eval()
    x, weights = torch.rand(1, 3, 8, 8), torch.randn(10)

    def f(net: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        return (net(inputs) * weights).sum()

    def input_grad(net: nn.Module) -> torch.Tensor:
        xg = x.clone().requires_grad_(True)
        return torch.autograd.grad(f(net, xg), xg)[0]

    feature = float(FEATURES[rule.terms[0][1]](model, model.normalize(x)).detach())
    deployed = rule(a=0.5 / feature, b=0.3, lo=0.0, hi=10.0)  # lambda(x) = 0.8
    with model.using(deployed):
        attacked = AttackedModel(model, CPU)
        with torch.no_grad():
            assert torch.allclose(
                attacked(x), model(x), rtol=1e-5, atol=1e-6
            )  # the attacked function is the deployed one
        grad = input_grad(attacked)
        frozen = deployed(model, model.normalize(x)).detach()
        with model.using(type("Frozen", (), {"name": "frozen", "__call__": lambda self, m, xn: frozen})()):
            frozen_grad = input_grad(model)  # the same lambda value, without its dependence on x

        h, tolerance = 1e-3, 0.01 * float(grad.norm())
        for direction in (grad - frozen_grad, torch.randn_like(x)):
            direction = direction / direction.norm()
            with torch.no_grad():
                numeric = (f(model, x + h * direction) - f(model, x - h * direction)) / (2 * h)
            assert abs(float(numeric) - float((grad * direction).sum())) <= tolerance
    assert float((grad - frozen_grad).norm()) > 5 * tolerance  # lambda's own path is far above the FD error


def test_clamped_lambda_still_passes_a_straight_through_gradient() -> None:
    torch.manual_seed(0)
    model = create_model("sdnet18", width=8).eval()
    policy = ReconErrorLambda(a=100.0, b=0.0, lo=0.0, hi=0.2)  # every input clamped at hi
    x = torch.rand(2, 3, 8, 8)

    def input_grad(net: nn.Module) -> torch.Tensor:
        xg = x.clone().requires_grad_(True)
        return torch.autograd.grad(net(xg)[:, 0].sum(), xg)[0]

    with model.using(policy):
        attacked = AttackedModel(model, CPU)
        assert torch.equal(policy(model, model.normalize(x)), torch.full((2,), 0.2))
        with torch.no_grad():
            assert torch.allclose(attacked(x), model(x), atol=1e-5)
        bpda, deployed = (
            input_grad(attacked),
            input_grad(model),
        )  # the clamp kills lambda's gradient in the deployed model
        assert model.lam_policy is policy  # the attack's view swaps the policy only inside its own forward
        assert (bpda - deployed).abs().max() > 1e-3 * deployed.abs().max()
        assert "straight-through (BPDA)" in attacked.lambda_gradient(x)
    assert model.lam_policy is None


# -- diagnostics -------------------------------------------------------------------------------
class Small(nn.Module):
    """A tiny [0,1]-input CNN; ``mode`` makes it deliberately bad in one way."""

    def __init__(self, mode: str = "normal") -> None:
        super().__init__()
        torch.manual_seed(0)
        self.mode = mode
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.linear = nn.Linear(8, 10)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(F.adaptive_avg_pool2d(torch.relu(self.conv(x)), 1).flatten(1)) * 10

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "quantised":  # a step function: zero gradient everywhere
            x = torch.floor(x * 4) / 4
        if self.mode == "random":
            x = x + 0.05 * torch.randn_like(x)
        if self.mode == "test-time-optimisation":
            with torch.enable_grad():
                z = x.detach().requires_grad_(True)
                (g,) = torch.autograd.grad(self.logits(z).logsumexp(1).sum(), z)
            x = x - 0.01 * g
        out = self.logits(x)
        return out.softmax(1) if self.mode == "softmax" else out


@pytest.mark.parametrize(
    ("mode", "field", "warning"),
    [
        ("softmax", "looks_like_probabilities", "probabilities"),
        ("random", "nondeterministic", "randomised"),
        ("quantised", "zero_gradient_fraction", "all-zero input gradient"),
        ("test-time-optimisation", "forward_calls_autograd", "computes gradients"),
    ],
)
def test_diagnostics_fire_on_bad_models(mode: str, field: str, warning: str) -> None:
    x, y = torch.rand(8, 3, 16, 16), torch.arange(8)
    found = diagnose(AttackedModel(Small(mode), CPU), x, y)
    assert getattr(found, field)
    assert len(found.warnings()) == 1 and warning in found.warnings()[0]


def test_diagnostics_stay_quiet_on_normal_models() -> None:
    x, y = torch.rand(8, 3, 16, 16), torch.arange(8)
    assert diagnose(AttackedModel(Small(), CPU), x, y).warnings() == []
    sdnet = create_model("sdnet18", width=8).eval()
    with sdnet.using(ReconErrorLambda(a=0.01, b=0.1, lo=0.0, hi=2.0)):
        found = diagnose(AttackedModel(sdnet, CPU), torch.rand(4, 3, 32, 32), torch.arange(4))
    assert found.warnings() == [] and found.output_difference == 0.0 and found.zero_gradient_fraction == 0.0


@pytest.mark.slow
def test_square_beating_the_white_box_attacks_is_flagged(cifar_test: Pair) -> None:
    """On a zero-gradient model the white-box attacks cannot move; Square (black-box) still can."""
    images, labels = cifar_test[0][:48], cifar_test[1][:48]
    model = Classifier(Small("quantised"), CIFAR_MEAN, CIFAR_STD)
    result = run_attack(
        model, images, labels, config("autoattack", ["16/255"], budgets=SMALL_BUDGETS), runtime=CPU, batch_size=48
    )
    assert result.fooled[0, :3].sum() == 0 and result.fooled[0, 3].sum() > 0
    warnings = result.diagnostics.warnings()
    assert any("all-zero input gradient" in w for w in warnings)
    assert any("Square attack fooled" in w for w in warnings)
    assert result.diagnostics.square_gain["16/255"] == pytest.approx(100 * result.fooled[0, 3].sum() / 48)


# -- seeding, precision, unusual models ------------------------------------------------------
def test_the_callers_global_rng_is_left_as_it_was(cifar_test: Pair) -> None:
    """The run seeds itself (PGD's random start, a noisy model's forwards) without touching the caller's stream."""
    images = np.ascontiguousarray(cifar_test[0][:8])
    noisy = Classifier(Small("random"), CIFAR_MEAN, CIFAR_STD)
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    expected_next = torch.rand(3)
    torch.set_rng_state(before)
    first = run_attack(
        noisy,
        images,
        cifar_test[1][:8],
        config("pgd", ["8/255"], steps=2, restarts=2),
        seed=5,
        runtime=CPU,
        batch_size=4,
    )
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(torch.rand(3), expected_next)
    torch.manual_seed(99)  # another caller state: the run's own draws do not depend on it
    second = run_attack(
        noisy,
        images,
        cifar_test[1][:8],
        config("pgd", ["8/255"], steps=2, restarts=2),
        seed=5,
        runtime=CPU,
        batch_size=4,
    )
    assert (first.fooled == second.fooled).all() and (first.clean == second.clean).all()


@pytest.mark.slow
def test_bf16_attack_runs_and_is_judged_in_bf16(trained: Classifier, first128: Pair) -> None:
    bf16 = Runtime.create("cpu", "bf16")
    images, labels = first128[0][:32], first128[1][:32]
    result = run_attack(
        trained, images, labels, config("pgd", ["0", "8/255"], steps=3), runtime=bf16, batch_size=16, keep_adv=True
    )
    independent = count_correct(trained, images, labels, bf16, batch_size=16)  # the clean judge, also in bf16
    assert int(result.clean.sum()) == independent.correct > 0
    assert result.robust(1).sum() < result.clean.sum()
    assert result.adv is not None
    assert np.abs(result.adv[1] - images.astype(np.float32) / 255).max() <= 8 / 255 + 1e-6


class EntropyMinimiser(nn.Module):
    """A defence that, at every forward, takes a few gradient steps on its own input (under
    ``enable_grad``, even when called under ``no_grad``) to lower the entropy of its prediction."""

    def __init__(self) -> None:
        super().__init__()
        self.net = Small()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            z = x.detach().clone().requires_grad_(True)
            for _ in range(3):
                p = self.net.logits(z).softmax(1)
                entropy = -(p * p.clamp_min(1e-12).log()).sum()
                (g,) = torch.autograd.grad(entropy, z)
                z = (z - 0.01 * g.sign()).detach().requires_grad_(True)
        return self.net.logits(x + (z - x).detach())  # the attack sees the path through x only


def test_a_test_time_optimising_model_is_attacked_and_flagged(cifar_test: Pair) -> None:
    images = np.ascontiguousarray(cifar_test[0][:8])
    model = Classifier(EntropyMinimiser(), CIFAR_MEAN, CIFAR_STD)
    with torch.no_grad():
        labels = model(CPU.to_input(images)).argmax(1).numpy()  # every point starts correct
    result = run_attack(model, images, labels, config("pgd", ["16/255"], steps=3), runtime=CPU, batch_size=8)
    assert result.clean.all() and result.robust(0).sum() < 8
    assert result.diagnostics.forward_calls_autograd
    assert any("test-time optimisation" in w for w in result.diagnostics.warnings())


@pytest.mark.slow
def test_requantized_accuracy_at_eps_zero_is_the_clean_accuracy(
    pgd_sweep: AttackResults, trained: Classifier, first128: Pair
) -> None:
    """At eps 0 the kept examples are the inputs, and rounding them gives back the uint8 images exactly."""
    requantized = requantized_robust_accuracy(trained, pgd_sweep, first128[1], CPU, batch_size=50)
    assert list(requantized) == ["0", "1/255", "2/255", "8/255"]
    assert requantized["0"] == pytest.approx(count_correct(trained, *first128, CPU).accuracy, abs=1e-4)
    with pytest.raises(UsageError, match="kept no adversarial examples"):
        requantized_robust_accuracy(trained, dataclasses.replace(pgd_sweep, adv=None), first128[1], CPU)


# -- resume ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_resume_skips_finished_pools_and_repeats_the_run(trained: Classifier, first128, tmp_path: Path) -> None:
    images, labels = first128[0][:48], first128[1][:48]
    args = (trained, images, labels, config("pgd", ["1/255", "2/255"], steps=5))
    kwargs = dict(
        seed=3, runtime=CPU, batch_size=16, pool_batches=1, keep_adv=True, fingerprint={"checkpoint_sha256": "aaa"}
    )
    straight = run_attack(*args, **kwargs)  # type: ignore[arg-type]
    state = tmp_path / "run.state.json"

    class Stop(Exception):
        pass

    seen: list[int] = []

    def stop_in_the_third_pool(k: int) -> None:  # progress moves per attack iteration, in whole images
        seen.append(k)
        if sum(seen) >= 16 * 5:  # 16 images per pool, once per budget: two pools done, the third under way
            raise Stop

    with pytest.raises(Stop):
        run_attack(*args, **kwargs, state_path=state, progress=stop_in_the_third_pool)  # type: ignore[arg-type]
    assert sum(seen) == 16 * 5 and len(seen) > 5  # never more than the work done, and more often than per pool
    assert sorted(json.loads(state.read_text())["pools"]) == ["0", "1"]
    with pytest.raises(UsageError, match="resume=True"):
        run_attack(*args, **kwargs, state_path=state)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match=r"different settings \(seed\)"):
        run_attack(*args, **{**kwargs, "seed": 4}, state_path=state, resume=True)  # type: ignore[arg-type]
    other_checkpoint = {**kwargs, "fingerprint": {"checkpoint_sha256": "bbb"}}
    with pytest.raises(UsageError, match=r"different settings \(checkpoint_sha256\)"):
        run_attack(*args, **other_checkpoint, state_path=state, resume=True)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match=r"different settings \(steps\)"):
        run_attack(
            trained,
            images,
            labels,
            config("pgd", ["1/255", "2/255"], steps=6),
            **kwargs,  # type: ignore[arg-type]
            state_path=state,
            resume=True,
        )
    resumed = run_attack(*args, **kwargs, state_path=state, resume=True)  # type: ignore[arg-type]
    assert (resumed.fooled == straight.fooled).all() and (resumed.clean == straight.clean).all()
    assert np.array_equal(resumed.adv, straight.adv)
    assert resumed.rows(BASE)[1]["robust_accuracy"] == straight.rows(BASE)[1]["robust_accuracy"]


# -- the command line --------------------------------------------------------------------------
def test_cli_attack_end_to_end(tiny_checkpoint: Path, data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "reports"
    result = cli.invoke(
        app,
        [
            "attack",
            "--model",
            "sdnet18",
            "--checkpoint",
            str(tiny_checkpoint),
            "--attack",
            "pgd",
            "--steps",
            "3",
            "--eps",
            "8/255",
            "--eps",
            "0",
            "--eps",
            "0.01",
            "-n",
            "16",
            "--batch-size",
            "8",
            "--seed",
            "2",
            "--data-dir",
            str(data_dir),
            "--out",
            str(out),
            "--save-adv",
            str(tmp_path / "adv.npz"),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "attack-sdnet18-pgd.json").read_text())
    rows, meta = report["rows"], report["meta"]
    assert [set(r) for r in rows] == [ROW_KEYS] * 3
    assert [(r["eps"], r["eps_text"]) for r in rows] == [(0.0, "0"), (0.01, "0.01"), (8 / 255, "8/255")]
    assert all(r["attack"] == "pgd" and r["norm"] == "Linf" and r["n"] == 16 and r["lam"] == 0.1 for r in rows)
    assert rows[0]["robust_accuracy"] == rows[0]["clean_accuracy"]
    assert meta["command"] == "attack" and meta["seed"] == 2 and len(meta["checkpoint_sha256"]) == 64
    assert meta["components"][0]["steps"] == 3 and meta["precision"] == "fp32"
    assert meta["diagnostics"]["warnings"] == [] and "constant lambda" in meta["lambda_gradient"]
    assert set(meta["saved_adversarials"]["uint8_robust_accuracy"]) == {"0", "0.01", "8/255"}
    assert (out / "attack-sdnet18-pgd.csv").read_text().count("\n") == 4
    assert "| pgd" in (out / "attack-sdnet18-pgd.md").read_text()
    assert not (out / "attack-sdnet18-pgd.state.json").exists()  # removed once the report is written
    saved = np.load(tmp_path / "adv.npz")
    assert saved["images"].shape == (3, 16, 32, 32, 3) and saved["images"].dtype == np.float32
    assert list(saved["eps_text"]) == ["0", "0.01", "8/255"] and saved["robust"].shape == (3, 16)


@pytest.mark.slow
def test_cli_autoattack_against_auto_lambda(
    short_defaults: None, tiny_checkpoint: Path, data_dir: Path, tmp_path: Path, cifar_test: Pair
) -> None:
    checkpoint = tmp_path / "sdnet18-w8.safetensors"
    shutil.copy(tiny_checkpoint, checkpoint)
    calibration = Calibration(
        recon=ReconErrorLambda(0.01, 0.1, 0.05, 2.0),
        noise=NoiseLevelLambda(1.0, 0.1, 0.05, 2.0),
        recommended="recon",
        grid=[0.1, 0.2],
        points=[],
        corruptions=["gaussian_noise"],
        severities=[1],
        n=10,
        seed=0,
        training_lam=0.1,
        checkpoint_sha256=sha256_of(checkpoint),
    )
    calibration.save(checkpoint.with_name("sdnet18-w8.lambda.json"))
    out = tmp_path / "reports"
    result = cli.invoke(
        app,
        [
            "attack",
            "--model",
            "sdnet18",
            "--checkpoint",
            str(checkpoint),
            "--lam",
            "auto",
            "--eps",
            "8/255",
            "-n",
            "8",
            "--data-dir",
            str(data_dir),
            "--out",
            str(out),
            "--name",
            "aa",
            "--save-adv",
            str(tmp_path / "aa.npz"),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "aa.json").read_text())
    rows, meta = report["rows"], report["meta"]
    assert [r["attack"] for r in rows] == ["apgd-ce", "apgd-t", "fab-t", "square", "worst"]
    assert all(set(r) == ROW_KEYS and r["lam"] == "auto:recon" for r in rows)
    # the worst case, judged again by a freshly loaded deployed model on the saved examples
    saved = np.load(tmp_path / "aa.npz")
    fresh, _ = load_model("sdnet18", checkpoint, "cifar10")
    with fresh.using(calibration.policy("auto")):
        again = (
            predict(fresh, torch.from_numpy(saved["images"][0]).permute(0, 3, 1, 2).contiguous(), CPU).numpy()
            == cifar_test[1][:8]
        )
    assert (again == saved["robust"][0]).all()
    assert rows[-1]["robust_accuracy"] == pytest.approx(100 * again.mean(), abs=1e-4)
    assert "straight-through (BPDA)" in meta["lambda_gradient"] and meta["version"] == "standard"
    assert [c["name"] for c in meta["components"]] == ["apgd-ce", "apgd-t", "fab-t", "square"]


# -- pooling ---------------------------------------------------------------------------------------
class _BrightnessJudge:
    """Stand-in for AttackedModel: says class 1 when an image's mean exceeds 0.5, else class 0."""

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return (x.flatten(1).mean(dim=1) > 0.5).long()


class _Brighten:
    """An 'attack' that adds eps to every pixel and records the size of each batch it is handed."""

    def __init__(self, eps: float) -> None:
        self.eps, self.calls = eps, []

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.calls.append(len(x))
        return x + self.eps


def test_later_attacks_get_the_pools_survivors_in_full_batches() -> None:
    from sdnet_cli.attacks.runner import SampleWise

    # 32 images of class 0, alternately at brightness 0.49 (one 0.02 step from class 1) and 0.30 (out of reach)
    levels = torch.tensor([0.49, 0.30] * 16)
    x = levels.view(-1, 1, 1, 1).expand(-1, 3, 4, 4).clone()
    y = torch.zeros(32, dtype=torch.long)
    first, second = _Brighten(0.02), _Brighten(0.02)
    components = [registry.Component("first", first), registry.Component("second", second)]  # type: ignore[arg-type]
    result = SampleWise(_BrightnessJudge(), components, "Linf", 0.02, batch_size=8)(  # type: ignore[arg-type]
        x, y, torch.ones(32, dtype=torch.bool), seed=0
    )
    assert first.calls == [8, 8, 8, 8]
    assert second.calls == [8, 8]  # the 16 survivors of the whole pool, not four half-empty batches of 4
    assert result.fooled[0].tolist() == [True, False] * 16 and not result.fooled[1].any()
    assert torch.equal(result.adv[0], x[0] + 0.02) and torch.equal(result.adv[1], x[1])
