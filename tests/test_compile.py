"""``Runtime(compile=True)``: the CSC layer traces into one graph, and compiled inference gives eager's
logits for every lambda policy without recompiling, while gradient passes and stale step sizes run eagerly.

The reference is always the same model run eagerly (a deep copy made before compiling). Tolerance:
inductor fuses and reorders the float32 element-wise work of the solve and the head, so logits move by a
few float32 roundings (eps 1.2e-7) accumulated over ~30-term convolutions and a few FISTA steps; 1e-5
on logits of order 1 is ~100 eps, far below any change a wrong lambda or step size makes (> 1e-3 here).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch._dynamo
from torch import nn
from torch._dynamo.utils import counters

from sdnet_cli.errors import UsageError
from sdnet_cli.lam import FixedLambda
from sdnet_cli.models import create_model
from sdnet_cli.models.classifier import Classifier
from sdnet_cli.models.csc import CSCLayer, DictConv
from sdnet_cli.runtime import Runtime

TOL = {"rtol": 1e-5, "atol": 1e-5}


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()  # earlier compiles must not count against this test's recompile limit
    yield
    torch._dynamo.reset()


def tiny_classifier() -> Classifier:
    """A CSC stem with momentum steps (n_steps=3) and a linear head: the smallest model that compiles fast."""
    torch.manual_seed(0)
    network = nn.Sequential(
        DictConv(3, 4, 3, padding=1, n_steps=3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, 10),
    )
    with torch.no_grad():
        network[1].running_mean.uniform_(-0.1, 0.1)
        network[1].running_var.uniform_(0.5, 2.0)
    return Classifier(network, mean=[0.5, 0.4, 0.3], std=[0.25, 0.25, 0.25]).eval()


class PerInput:
    """A per-input policy: lambda grows with the input's mean brightness."""

    name = "per-input"

    def __call__(self, model: Classifier, x_normalized: torch.Tensor) -> torch.Tensor:
        return 0.05 + 0.3 * x_normalized.flatten(1).mean(dim=1).sigmoid()


def graphs_compiled() -> int:
    return counters["stats"]["unique_graphs"]


@pytest.mark.parametrize("lam", [None, 0.3, "tensor"])
def test_csc_layer_traces_into_one_graph(lam) -> None:
    layer = CSCLayer(3, 8, 3, padding=1, n_steps=4, fista="textbook").eval()
    x = torch.randn(2, 3, 10, 10)
    layer(x)  # eager: fills the step-size cache a compiled forward reads
    layer.test_lam = torch.tensor([0.1, 0.4]) if lam == "tensor" else lam
    with layer.recording_error():
        explained = torch._dynamo.explain(layer)(x)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


@pytest.mark.slow
def test_sdnet18_traces_into_one_graph() -> None:
    torch.manual_seed(0)
    model = create_model("sdnet18", width=4).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        model(x)
        explained = torch._dynamo.explain(model)(x)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


@pytest.mark.slow
def test_compiled_inference_matches_eager_for_every_policy_with_one_compile() -> None:
    eager = Runtime.create("cpu").prepare(tiny_classifier())
    model = Runtime.create("cpu", compile=True).prepare(copy.deepcopy(eager))
    x = torch.rand(6, 3, 12, 12).contiguous(memory_format=torch.channels_last)
    before = graphs_compiled()
    with torch.no_grad():
        model(x)  # the first forward runs eagerly, fixing the compiled shape
        for policy in (None, FixedLambda(0.2), PerInput(), FixedLambda(1.5)):
            with model.using(policy), eager.using(policy):
                torch.testing.assert_close(model(x), eager(x), **TOL)
                assert model._runs_compiled(model.normalize(x))
        with model.test_lambda(0.7), eager.test_lambda(0.7):  # a lambda set on the layers, no policy
            torch.testing.assert_close(model(x), eager(x), **TOL)
        assert graphs_compiled() - before == 1  # one graph for every policy and lambda value
        # lambda really matters at this tolerance, so the comparisons above could fail
        with eager.using(FixedLambda(1.5)):
            assert (eager(x) - model(x)).abs().max() > 1e-3
        torch.testing.assert_close(model(x[:4]), eager(x[:4]), **TOL)  # another batch size: eager, no recompile
        assert graphs_compiled() - before == 1


@pytest.mark.slow
def test_gradient_passes_and_stale_step_sizes_run_eagerly() -> None:
    eager = Runtime.create("cpu").prepare(tiny_classifier())
    model = Runtime.create("cpu", compile=True).prepare(copy.deepcopy(eager))
    x = torch.rand(4, 3, 12, 12)
    with torch.no_grad():
        model(x), model(x)
    # an attack's forward-backward: eager, so its input gradient is eager's exactly
    grads = []
    for m in (model, eager):
        xg = x.clone().requires_grad_(True)
        m(xg).logsumexp(dim=1).sum().backward()
        grads.append(xg.grad)
    assert torch.equal(grads[0], grads[1])
    # new weights: the next forward re-estimates the step size eagerly; compiled ones then use it
    with torch.no_grad():
        for m in (model, eager):
            m.network[0].dn.weight.mul_(torch.linspace(0.5, 2.0, 4).view(4, 1, 1, 1))
        assert not model.network[0].dn.step_size_is_current()
        torch.testing.assert_close(model(x), eager(x), rtol=0, atol=0)  # eager run: bit-for-bit
        assert model._runs_compiled(model.normalize(x))
        torch.testing.assert_close(model(x), eager(x), **TOL)
        assert model.network[0].dn.step_size == eager.network[0].dn.step_size


def test_compiled_forward_records_the_reconstruction_error() -> None:
    eager = Runtime.create("cpu").prepare(tiny_classifier())
    model = Runtime.create("cpu", compile=True).prepare(copy.deepcopy(eager))
    x = torch.rand(4, 3, 12, 12)
    records = []
    with torch.no_grad():
        model(x)
        for m in (model, eager):
            with m.network[0].dn.recording_error() as record:
                m(x)
            records.append(record.error)
    torch.testing.assert_close(records[0], records[1], **TOL)


def test_compile_needs_a_classifier() -> None:
    with pytest.raises(UsageError) as info:
        Runtime.create("cpu", compile=True).prepare(nn.Linear(2, 2))
    assert info.value.parameter == "compile"
