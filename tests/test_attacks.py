"""`sdnet attack` and sdnet_cli.attacks: eps parsing, the standard AutoAttack settings, the sample-wise
worst case, threat-set bounds, the adaptive (per-input lambda) gradient, diagnostics, resume, CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchattacks
from torch import nn
from typer.testing import CliRunner

from sdnet_cli import attacks
from sdnet_cli.attacks import AttackedModel, AttackResults, StandardAutoAttack, diagnose, parse_eps, run_attack
from sdnet_cli.cli import app
from sdnet_cli.data.cifar import load_cifar10
from sdnet_cli.evaluate import Runtime, count_correct
from sdnet_cli.lam import AutoLambda, Calibration, NoiseLevelLambda
from sdnet_cli.models import Classifier, create_model
from sdnet_cli.models.checkpoints import sha256_of
from sdnet_cli.train import TrainConfig, train

CPU = Runtime.create("cpu", "fp32")
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
Pair = tuple[np.ndarray, np.ndarray]
ROW_KEYS = {"model", "dataset", "attack", "norm", "eps", "eps_text", "lam", "n", "clean_accuracy", "robust_accuracy",
            "seconds"}
SMALL_BUDGETS = {"apgd-ce": 5, "apgd-t": 2, "fab-t": 2, "square": 40}
cli = CliRunner()


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Small forwards on a shared 2-core machine: one thread avoids OpenMP oversubscription stalls."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def small_budgets(monkeypatch: pytest.MonkeyPatch) -> None:
    """AutoAttack's components with a few iterations each: the same code path, seconds instead of minutes."""
    for name, steps in SMALL_BUDGETS.items():
        monkeypatch.setitem(attacks.DEFAULT_STEPS, name, steps)


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
    eps = [parse_eps(t) for t in ("8/255", "0", "1/255", "2/255")]  # unsorted on purpose
    return run_attack(trained, *first128, "pgd", "Linf", eps, steps=20, seed=0, runtime=CPU, batch_size=64, keep_adv=True)


def accuracy_by_eps(rows: list[dict], attack: str) -> list[float]:
    return [r["robust_accuracy"] for r in rows if r["attack"] == attack]


BASE = {"model": "m", "dataset": "cifar10", "lam": None}


# -- eps parsing ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "value", "shown"),
    [("8/255", 8 / 255, "8/255"), (" 4 / 255 ", 4 / 255, "4/255"), ("0.5/255", 0.5 / 255, "0.5/255"),
     ("0.031", 0.031, "0.031"), ("0", 0.0, "0"), ("1", 1.0, "1"), ("1e-2", 0.01, "1e-2"), (".25", 0.25, ".25")],
)
def test_parse_eps_accepts_fractions_and_decimals(text: str, value: float, shown: str) -> None:
    eps = parse_eps(text)
    assert eps.value == value and eps.text == shown


@pytest.mark.parametrize(
    ("text", "message"),
    [("8/0", "divides by zero"), ("8/0.0", "divides by zero"), ("-8/255", ">= 0"), ("-0.1", ">= 0"),
     ("1.5", "at most 1"), ("300/255", "at most 1"), ("abc", "fraction like 8/255"), ("8/", "fraction like 8/255"),
     ("8/255/2", "fraction like 8/255"), ("nan", "fraction like 8/255"), ("inf", "fraction like 8/255"), ("", "fraction")],
)
def test_parse_eps_rejects_bad_budgets(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_eps(text)


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--eps", "8/0"], "divides by zero"), (["--eps", "-1/255"], ">= 0"), (["--eps", "2"], "at most 1"),
     (["--eps", "abc"], "fraction like 8/255"), (["--attack", "cw"], "unknown attack"), (["--norm", "L1"], "unknown norm"),
     (["--attack", "autoattack", "--steps", "5"], "standard settings"),
     (["--attack", "pgd", "--version", "rand"], "autoattack only"),
     (["--save-adv", "adv.pt"], "must end in .npz")],
)
def test_cli_usage_errors_exit_2(
    tiny_checkpoint: Path, data_dir: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    result = cli.invoke(app, ["attack", "--model", "sdnet18", "--checkpoint", str(tiny_checkpoint), "-n", "4",
                              "--data-dir", str(data_dir), "--out", str(tmp_path), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert list(tmp_path.iterdir()) == []


# -- robust accuracy behaves -------------------------------------------------------------------
def test_eps_zero_gives_the_clean_accuracy(pgd_sweep: AttackResults, trained: Classifier, first128: Pair) -> None:
    rows = pgd_sweep.rows(BASE)
    assert [r["eps_text"] for r in rows] == ["0", "1/255", "2/255", "8/255"]
    independent = count_correct(trained, *first128, CPU, batch_size=64)
    # rows keep 4 decimals
    assert rows[0]["robust_accuracy"] == rows[0]["clean_accuracy"] == pytest.approx(independent.accuracy, abs=1e-4)


def test_robust_accuracy_never_rises_with_eps(pgd_sweep: AttackResults) -> None:
    accuracies = accuracy_by_eps(pgd_sweep.rows(BASE), "pgd")
    assert accuracies == sorted(accuracies, reverse=True)
    assert accuracies[1] < accuracies[0] and accuracies[3] < accuracies[1]  # the attack does something at each step
    for e in range(len(pgd_sweep.eps) - 1):  # per sample: robust at a larger eps implies robust at the smaller one
        assert not (pgd_sweep.robust(e + 1) & ~pgd_sweep.robust(e)).any()


def test_pgd20_breaks_a_standard_trained_model(pgd_sweep: AttackResults) -> None:
    row = pgd_sweep.rows(BASE)[-1]
    assert row["eps_text"] == "8/255" and row["clean_accuracy"] > 25.0
    assert row["robust_accuracy"] < 5.0


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
def test_l2_examples_stay_in_the_threat_set(trained: Classifier, first128: Pair, attack: str, steps: int) -> None:
    images, labels = first128[0][:32], first128[1][:32]
    result = run_attack(trained, images, labels, attack, "L2", [parse_eps("0.5")], steps=steps, runtime=CPU, keep_adv=True)
    assert result.adv is not None
    delta = (result.adv[0] - images.astype(np.float32) / 255).reshape(32, -1)
    assert np.linalg.norm(delta, axis=1).max() <= 0.5 + 1e-5
    assert result.adv.min() >= 0 and result.adv.max() <= 1
    assert result.robust(0).sum() < result.clean.sum()  # it did find adversarial examples
    assert result.diagnostics.max_excess < 1e-4


def test_worst_case_is_never_above_any_single_attack(small_budgets: None, trained: Classifier, first128: Pair) -> None:
    images, labels = first128[0][:64], first128[1][:64]
    eps = [parse_eps("1/255")]
    auto = run_attack(trained, images, labels, "autoattack", "Linf", eps, runtime=CPU, batch_size=64)
    rows = auto.rows(BASE)
    assert [r["attack"] for r in rows] == ["apgd-ce", "apgd-t", "fab-t", "square", "worst"]
    after_each = [r["robust_accuracy"] for r in rows]
    assert after_each == sorted(after_each, reverse=True) and after_each[-1] == after_each[-2]
    # per sample: robust = correct and fooled by none; each attack only fooled points that were still standing
    assert (auto.robust(0) == (auto.clean & ~auto.fooled[0].any(axis=0))).all()
    for k in range(1, 4):
        assert not (auto.fooled[0, k] & auto.fooled[0, :k].any(axis=0)).any()
    assert not (auto.fooled[0] & ~auto.clean).any()
    for name in ("apgd-ce", "apgd-t", "fab-t", "square"):
        single = run_attack(trained, images, labels, name, "Linf", eps, steps=SMALL_BUDGETS[name], runtime=CPU,
                            batch_size=64)
        assert rows[-1]["robust_accuracy"] <= single.rows(BASE)[0]["robust_accuracy"], name
    assert rows[-1]["robust_accuracy"] < rows[0]["clean_accuracy"]


# -- standard AutoAttack is configured to the SPEC ---------------------------------------------
@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_autoattack_components_have_the_original_settings(norm: str) -> None:
    model = AttackedModel(create_model("resnet18", width=8).eval(), CPU)
    runner = StandardAutoAttack(model, norm, 8 / 255)
    apgd, apgdt, fab, square = (c.attack for c in runner.components)
    assert [c.name for c in runner.components] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert all(c.attack.model is model and c.runs == 1 for c in runner.components)  # they attack the deployed pipeline
    assert all(getattr(a, "norm") == norm and a.eps == 8 / 255 for a in (apgd, apgdt, fab, square))
    assert isinstance(apgd, torchattacks.APGD)
    assert (apgd.loss, apgd.steps, apgd.n_restarts, apgd.eot_iter) == ("ce", 100, 1, 1)
    assert isinstance(apgdt, torchattacks.APGDT) and (apgdt.steps, apgdt.n_target_classes, apgdt.n_restarts) == (100, 9, 1)
    assert isinstance(fab, torchattacks.FAB) and fab.multi_targeted
    assert (fab.steps, fab.n_target_classes, fab.n_restarts) == (100, 9, 1)
    assert isinstance(square, torchattacks.Square)
    assert (square.n_queries, square.p_init, square.rescale_schedule) == (5000, 0.8, False)
    assert (square.n_restarts, square.loss) == (1, "margin")


def test_autoattack_rand_version_uses_eot() -> None:
    model = AttackedModel(create_model("resnet18", width=8).eval(), CPU)
    runner = StandardAutoAttack(model, "Linf", 8 / 255, version="rand")
    assert [c.name for c in runner.components] == ["apgd-ce", "apgd-dlr"]
    assert [(c.attack.loss, c.attack.steps, c.attack.eot_iter, c.attack.n_restarts) for c in runner.components] == [
        ("ce", 100, 20, 1), ("dlr", 100, 20, 1)]


# -- adaptive attack on a per-input lambda -----------------------------------------------------
@pytest.mark.parametrize("rule", [AutoLambda, NoiseLevelLambda])
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

    feature = float(rule.feature(model, model.normalize(x)).detach())
    deployed = rule(a=0.5 / feature, b=0.3, lo=0.0, hi=10.0)  # lambda(x) = 0.8
    model.lam_policy = deployed
    attacked = AttackedModel(model, CPU)
    with torch.no_grad():
        assert torch.allclose(attacked(x), model(x), rtol=1e-5, atol=1e-6)  # the attacked function is the deployed one
    grad = input_grad(attacked)
    frozen = deployed(model, model.normalize(x)).detach()
    model.lam_policy = type("Frozen", (), {"name": "frozen", "__call__": lambda self, m, xn: frozen})()
    frozen_grad = input_grad(model)  # the same lambda value, without its dependence on x
    model.lam_policy = deployed

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
    model.lam_policy = AutoLambda(a=100.0, b=0.0, lo=0.0, hi=0.2)  # every input clamped at hi
    attacked = AttackedModel(model, CPU)
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(model.lam_policy(model, model.normalize(x)), torch.full((2,), 0.2))
    with torch.no_grad():
        assert torch.allclose(attacked(x), model(x), atol=1e-5)

    def input_grad(net: nn.Module) -> torch.Tensor:
        xg = x.clone().requires_grad_(True)
        return torch.autograd.grad(net(xg)[:, 0].sum(), xg)[0]

    bpda, deployed = input_grad(attacked), input_grad(model)  # the clamp kills lambda's gradient in the deployed model
    assert (bpda - deployed).abs().max() > 1e-3 * deployed.abs().max()
    assert "straight-through (BPDA)" in attacked.lambda_gradient(x)


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
    [("softmax", "looks_like_probabilities", "probabilities"), ("random", "nondeterministic", "randomised"),
     ("quantised", "zero_gradient_fraction", "all-zero input gradient"),
     ("test-time-optimisation", "forward_calls_autograd", "computes gradients")],
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
    sdnet.lam_policy = AutoLambda(a=0.01, b=0.1, lo=0.0, hi=2.0)
    found = diagnose(AttackedModel(sdnet, CPU), torch.rand(4, 3, 32, 32), torch.arange(4))
    assert found.warnings() == [] and found.output_difference == 0.0 and found.zero_gradient_fraction == 0.0


def test_square_beating_the_white_box_attacks_is_flagged(small_budgets: None, cifar_test: Pair) -> None:
    """On a zero-gradient model the white-box attacks cannot move; Square (black-box) still can."""
    images, labels = cifar_test[0][:48], cifar_test[1][:48]
    model = Classifier(Small("quantised"), CIFAR_MEAN, CIFAR_STD)
    result = run_attack(model, images, labels, "autoattack", "Linf", [parse_eps("16/255")], runtime=CPU, batch_size=48)
    assert result.fooled[0, :3].sum() == 0 and result.fooled[0, 3].sum() > 0
    warnings = result.diagnostics.warnings()
    assert any("all-zero input gradient" in w for w in warnings)
    assert any("Square attack fooled" in w for w in warnings)
    assert result.diagnostics.square_gain["16/255"] == pytest.approx(100 * result.fooled[0, 3].sum() / 48)


# -- resume ------------------------------------------------------------------------------------
def test_resume_skips_finished_batches_and_repeats_the_run(trained: Classifier, first128, tmp_path: Path) -> None:
    images, labels = first128[0][:48], first128[1][:48]
    args = (trained, images, labels, "pgd", "Linf", [parse_eps("1/255"), parse_eps("2/255")])
    kwargs = dict(steps=5, seed=3, runtime=CPU, batch_size=16, keep_adv=True)
    straight = run_attack(*args, **kwargs)  # type: ignore[arg-type]
    state = tmp_path / "run.state.json"

    class Stop(Exception):
        pass

    def stop_after_two_batches(k: int, seen: list[int] = []) -> None:
        seen.append(k)
        if len(seen) == 2:
            raise Stop

    with pytest.raises(Stop):
        run_attack(*args, **kwargs, state_path=state, progress=stop_after_two_batches)  # type: ignore[arg-type]
    assert sorted(json.loads(state.read_text())["batches"]) == ["0", "1"]
    with pytest.raises(ValueError, match="--resume"):
        run_attack(*args, **kwargs, state_path=state)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="different settings"):
        run_attack(*args, **{**kwargs, "seed": 4}, state_path=state, resume=True)  # type: ignore[arg-type]
    resumed = run_attack(*args, **kwargs, state_path=state, resume=True)  # type: ignore[arg-type]
    assert (resumed.fooled == straight.fooled).all() and (resumed.clean == straight.clean).all()
    assert np.array_equal(resumed.adv, straight.adv)
    assert resumed.rows(BASE)[1]["robust_accuracy"] == straight.rows(BASE)[1]["robust_accuracy"]


# -- the command line --------------------------------------------------------------------------
def test_cli_attack_end_to_end(tiny_checkpoint: Path, data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "reports"
    result = cli.invoke(app, [
        "attack", "--model", "sdnet18", "--checkpoint", str(tiny_checkpoint), "--attack", "pgd", "--steps", "3",
        "--eps", "8/255", "--eps", "0", "--eps", "0.01", "-n", "16", "--batch-size", "8", "--seed", "2",
        "--data-dir", str(data_dir), "--out", str(out), "--save-adv", str(tmp_path / "adv.npz"),
    ])
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


def test_cli_autoattack_against_auto_lambda(
    small_budgets: None, tiny_checkpoint: Path, data_dir: Path, tmp_path: Path
) -> None:
    checkpoint = tmp_path / "sdnet18-w8.safetensors"
    shutil.copy(tiny_checkpoint, checkpoint)
    calibration = Calibration(
        auto=AutoLambda(0.01, 0.1, 0.05, 2.0), noise=NoiseLevelLambda(1.0, 0.1, 0.05, 2.0), grid=[0.1, 0.2], points=[],
        corruptions=["gaussian_noise"], severities=[1], n=10, seed=0, training_lam=0.1,
        checkpoint_sha256=sha256_of(checkpoint),
    )
    calibration.save(checkpoint.with_name("sdnet18-w8.lambda.json"))
    out = tmp_path / "reports"
    result = cli.invoke(app, [
        "attack", "--model", "sdnet18", "--checkpoint", str(checkpoint), "--lam", "auto", "--eps", "8/255",
        "-n", "8", "--data-dir", str(data_dir), "--out", str(out), "--name", "aa",
    ])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "aa.json").read_text())
    rows, meta = report["rows"], report["meta"]
    assert [r["attack"] for r in rows] == ["apgd-ce", "apgd-t", "fab-t", "square", "worst"]
    assert all(set(r) == ROW_KEYS and r["lam"] == "auto" for r in rows)
    assert rows[-1]["robust_accuracy"] == min(r["robust_accuracy"] for r in rows)
    assert "straight-through (BPDA)" in meta["lambda_gradient"] and meta["version"] == "standard"
    assert [c["name"] for c in meta["components"]] == ["apgd-ce", "apgd-t", "fab-t", "square"]
