"""Test-time adaptation (BN adaptation, TENT): hand-worked batch statistics, restoration after a cell,
TENT's single Adam step against a float64 reference, order independence, SDNet lambda policies."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sdnet_cli.adapt import BatchNormAdaptation, Tent, make_adaptation, mean_entropy
from sdnet_cli.data.cells import Cell
from sdnet_cli.errors import UsageError
from sdnet_cli.evaluate import evaluate_cells
from sdnet_cli.lam import FixedLambda
from sdnet_cli.models import Classifier, create_model
from sdnet_cli.runtime import Runtime

CPU = Runtime.create("cpu")


def hand_model() -> Classifier:
    """x -> 2x (1x1 conv) -> BatchNorm (running mean 0, var 1; eps 1e-5) -> logits (z, -z)."""
    conv = nn.Conv2d(1, 1, 1, bias=False)
    bn = nn.BatchNorm2d(1)
    head = nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        conv.weight.fill_(2.0)
        head.weight.copy_(torch.tensor([[1.0], [-1.0]]))
    return Classifier(nn.Sequential(conv, bn, nn.Flatten(), head), mean=[0.0], std=[1.0]).eval()


class FakeSource:
    """Cells whose uint8 NHWC images are given outright."""

    def __init__(self, cells: dict[Cell, tuple[np.ndarray, np.ndarray]]) -> None:
        self.cells = cells

    def load(self, cell: Cell) -> tuple[np.ndarray, np.ndarray]:
        return self.cells[cell]


BASE = {"model": "m", "dataset": "cifar10", "lam": None}


def test_bn_uses_the_test_batch_statistics_worked_by_hand() -> None:
    # pixels 51/255 = 0.2 and 153/255 = 0.6 -> conv 0.4, 1.2. Stored statistics (0, 1): z = 0.4, 1.2,
    # both class 0. Batch statistics: mean 0.8, biased variance 0.16 -> z = -+0.4 / sqrt(0.16 + 1e-5) = -+0.99997
    # -> classes 1, 0.
    images = np.array([51, 153], dtype=np.uint8).reshape(2, 1, 1, 1)
    labels = np.array([1, 0])
    model = hand_model()
    x = CPU.to_input(images)
    with torch.no_grad():
        torch.testing.assert_close(model(x), torch.tensor([[0.4, -0.4], [1.2, -1.2]]), rtol=0, atol=1e-5)
        with BatchNormAdaptation(batch_size=2).cell(model) as forward:
            z = 0.4 / (0.16 + 1e-5) ** 0.5
            torch.testing.assert_close(forward(x), torch.tensor([[-z, z], [z, -z]]), rtol=0, atol=1e-5)
    source = FakeSource({Cell("clean", 0): (images, labels)})
    plain = evaluate_cells(model, [Cell("clean", 0)], source, CPU, BASE, batch_size=2)
    adapted = evaluate_cells(model, [Cell("clean", 0)], source, CPU, BASE, adapt=make_adaptation("bn", 2))
    assert plain[0]["correct"] == 1 and "adapt" not in plain[0]
    assert adapted[0]["correct"] == 2
    assert (adapted[0]["adapt"], adapted[0]["uses_test_batches"], adapted[0]["adapt_batch_size"]) == ("bn", True, 2)


def test_bn_restores_the_model_after_a_cell() -> None:
    model = hand_model()
    bn = model.network[1]
    mean, var = bn.running_mean, bn.running_var
    x = torch.tensor([0.2, 0.6]).view(2, 1, 1, 1)
    with torch.no_grad(), BatchNormAdaptation().cell(model):
        assert bn.running_mean is None
        model(x)
    assert bn.running_mean is mean and bn.running_var is var and bn.track_running_stats
    assert torch.equal(mean, torch.zeros(1)) and torch.equal(var, torch.ones(1))  # nothing was accumulated
    with torch.no_grad():
        torch.testing.assert_close(model(x), torch.tensor([[0.4, -0.4], [1.2, -1.2]]), rtol=0, atol=1e-5)


def small_net(seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )
    for m in net.modules():  # stored statistics unlike any test batch's, affine parameters not (1, 0)
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    return Classifier(net, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25]).eval()


def test_tent_takes_one_adam_step_on_the_batchnorm_affine_parameters_only() -> None:
    model = small_net()
    x = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # reference gradient: a float64 copy in train mode (torch's own batch-statistics path)
    reference = copy.deepcopy(model).double().train()
    mean_entropy(reference(x.double())).backward()
    grads = {n: p.grad for n, p in reference.named_parameters()}
    with torch.no_grad():
        entropy_before = float(mean_entropy(reference(x.double())))
    with torch.no_grad(), Tent(batch_size=16).cell(model) as forward:
        forward(x)
        changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
        bn_affine = {f"network.{i}.{p}" for i in (1, 4) for p in ("weight", "bias")}
        assert changed == bn_affine
        for name in bn_affine:
            # Adam's first step moves each parameter by lr * g / (|g| + eps): -1e-3 * sign(g) for |g| >> 1e-8
            g = grads[name].float()
            expected = before[name] - 1e-3 * g / (g.abs() + 1e-8)
            torch.testing.assert_close(model.state_dict()[name], expected, rtol=0, atol=1e-6)
        entropy_after = float(mean_entropy(forward.model(x)))
    assert entropy_after < entropy_before
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # reset on exit
    assert all(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())


def test_tent_cells_do_not_depend_on_their_order() -> None:
    rng = np.random.default_rng(0)
    cells = [Cell("gaussian_noise", 3), Cell("fog", 5)]
    data = {c: (rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8), rng.integers(0, 10, 12)) for c in cells}
    model = small_net()
    tent = Tent(batch_size=4)  # 3 batches per cell: later batches see the parameters earlier ones moved
    forward_order = evaluate_cells(model, cells, FakeSource(data), CPU, BASE, adapt=tent)
    reverse_order = evaluate_cells(model, cells[::-1], FakeSource(data), CPU, BASE, adapt=tent)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in forward_order[:2]]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in reverse_order[1::-1]]
    # the state carried within a cell matters: TENT's third batch differs from BN adaptation's, its first does not
    x = CPU.to_input(data[cells[0]][0])
    with torch.no_grad(), tent.cell(model) as forward:
        streamed = [forward(x[i : i + 4]) for i in (0, 4, 8)]
    with torch.no_grad(), BatchNormAdaptation().cell(model):
        torch.testing.assert_close(streamed[0], model(x[0:4]))
        assert not torch.allclose(streamed[2], model(x[8:12]))


def test_bn_with_an_sdnet_lambda_policy_equals_train_mode_batchnorm() -> None:
    torch.manual_seed(0)
    model = create_model("sdnet18", width=8).eval()
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(2))

    class PerInput:
        """A per-input policy: lambda from each image's mean pixel (tests only)."""

        name = "per-input"

        def __call__(self, model: Classifier, xn: torch.Tensor) -> torch.Tensor:
            return 0.05 + 0.1 * xn.mean(dim=(1, 2, 3)).abs()

    reference = copy.deepcopy(model)
    for m in reference.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.train()
    with torch.no_grad(), model.using(PerInput()), BatchNormAdaptation().cell(model) as forward:
        adapted = forward(x)
    with torch.no_grad(), reference.using(PerInput()):
        expected = reference(x)
    with torch.no_grad(), model.using(FixedLambda(0.1)), BatchNormAdaptation().cell(model) as forward:
        other_lambda = forward(x)
    torch.testing.assert_close(adapted, expected)
    assert not torch.allclose(adapted, other_lambda)  # the policy is in force under adaptation

    images = (x.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    source = FakeSource({Cell("clean", 0): (images, np.zeros(6, dtype=np.int64))})
    with model.using(PerInput()):
        rows = evaluate_cells(model, [Cell("clean", 0)], source, CPU, BASE, adapt=Tent(batch_size=3))
    assert {"lam_mean", "adapt", "uses_test_batches", "adapt_batch_size"} <= rows[0].keys()
    assert rows[0]["adapt"] == "tent" and rows[0]["adapt_batch_size"] == 3


def test_bad_adapt_values_are_refused() -> None:
    with pytest.raises(UsageError, match="unknown adapt"):
        make_adaptation("tta")
    assert make_adaptation("none") is None
    assert make_adaptation("tent").batch_size == 200
    no_bn = Classifier(nn.Sequential(nn.Flatten(), nn.Linear(3, 2)), mean=[0.0] * 3, std=[1.0] * 3)
    with pytest.raises(UsageError, match="BatchNorm"):
        make_adaptation("bn").check(no_bn)


def test_cli_eval_adapt_with_lambda(tiny_checkpoint: Path, data_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from sdnet_cli.cli import app

    args = ["eval", "--model", "sdnet18", "--checkpoint", str(tiny_checkpoint), "-c", "none"]
    args += ["-n", "20", "--batch-size", "10", "--lam", "0.2", "--data-dir", str(data_dir)]
    args += ["--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path), "--device", "cpu"]
    result = CliRunner().invoke(app, [*args, "--adapt", "tent"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "eval-sdnet18.json").read_text())
    assert all(r["adapt"] == "tent" and r["uses_test_batches"] and r["adapt_batch_size"] == 10 for r in report["rows"])
    assert report["meta"]["adaptation"]["lr"] == 1e-3 and report["rows"][0]["lam"] == 0.2
    refused = CliRunner().invoke(app, [*args, "--adapt", "bn", "--compile"])
    assert refused.exit_code == 2 and "compile" in refused.output
