"""The CSC layer against independent float64 references (explicit matrices, long projected gradient,
plain-loop transcriptions of the authors' and of textbook FISTA)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from sdnet_cli.errors import UsageError
from sdnet_cli.models import create_model
from sdnet_cli.models.csc import CSCLayer, normalize_atoms


def make_layer(cin=2, cout=4, k=3, stride=1, padding=1, **kw) -> CSCLayer:
    torch.manual_seed(0)
    return CSCLayer(cin, cout, k, stride=stride, padding=padding, **kw)


def synthesis_matrix(layer: CSCLayer, in_hw: tuple[int, int]) -> np.ndarray:
    """The explicit float64 matrix D of z -> A^T z, built column by column from basis codes."""
    atoms = normalize_atoms(layer.weight.detach().double())
    code_hw = [(in_hw[i] + 2 * layer.padding - layer.kernel_size) // layer.stride + 1 for i in range(2)]
    n_code = layer.out_channels * code_hw[0] * code_hw[1]
    basis = torch.eye(n_code, dtype=torch.float64).view(n_code, layer.out_channels, *code_hw)
    columns = layer.synthesis(basis, atoms, in_hw).reshape(n_code, -1)
    return columns.T.numpy()


def projected_gradient_lasso(D: np.ndarray, x: np.ndarray, lam: float, iters: int = 20000) -> np.ndarray:
    """argmin_{z>=0} lam*|z|_1 + 1/2|x - Dz|^2 by plain projected gradient in float64."""
    step = 1.0 / np.linalg.norm(D, 2) ** 2
    z = np.zeros(D.shape[1])
    for _ in range(iters):
        z = np.maximum(z - step * (D.T @ (D @ z - x) + lam), 0.0)
    return z


@pytest.mark.parametrize("stride", [1, 2])
def test_synthesis_is_adjoint_of_analysis(stride: int) -> None:
    layer = make_layer(cin=3, cout=5, stride=stride)
    atoms = normalize_atoms(layer.weight.detach().double())
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64)
    Ax = layer.analysis(x, atoms)
    z = torch.randn_like(Ax)
    lhs = (layer.synthesis(z, atoms, (9, 8)) * x).sum()
    rhs = (z * Ax).sum()
    assert torch.isclose(lhs, rhs, rtol=1e-10), (float(lhs), float(rhs))


@pytest.mark.slow
def test_many_steps_converge_to_nonnegative_lasso_solution() -> None:
    # fewer atoms than pixels: D has full column rank, so the solution is unique
    layer = make_layer(cin=4, cout=2, n_steps=1500, fista="textbook").eval()
    x = torch.randn(1, 4, 6, 6)
    lam = 0.1
    with torch.no_grad():
        z, error = layer.solve(x, lam)
    D = synthesis_matrix(layer, (6, 6))
    reference = projected_gradient_lasso(D, x.double().flatten().numpy(), lam)
    np.testing.assert_allclose(z.double().flatten().numpy(), reference, atol=2e-4)
    ref_error = np.sum((x.double().flatten().numpy() - D @ reference) ** 2)
    assert float(error[0]) == pytest.approx(ref_error, rel=1e-3)
    assert (z >= 0).all() and (z == 0).any()  # non-negative and actually sparse


def test_two_steps_are_two_ista_steps() -> None:
    """Two unrolled steps from z0 = 0 (the first step's momentum is zero, Beck & Teboulle 2009):
    z1 = prox(eta A x), z2 = prox(z1 + eta A (x - A^T z1)), prox = relu(u - lam*eta)."""
    layer = make_layer(n_steps=2).eval()
    x = torch.randn(2, 2, 7, 7)
    with torch.no_grad():
        z, _ = layer.solve(x, 0.2)
    atoms = normalize_atoms(layer.weight.detach())
    eta = float(layer.step_size)
    z1 = torch.relu(eta * layer.analysis(x, atoms) - 0.2 * eta)
    z2 = torch.relu(z1 + eta * layer.analysis(x - layer.synthesis(z1, atoms, (7, 7)), atoms) - 0.2 * eta)
    torch.testing.assert_close(z, z2)


def authors_fista(D: np.ndarray, x: np.ndarray, lam: float, eta: float, n_steps: int, square_noise: bool) -> np.ndarray:
    """The update order of the authors' released CSC layer, in float64 on explicit matrices, step by step
    as they wrote it: a soft-threshold followed by a ReLU; t set to the golden ratio after the second
    step; from the third step on, the point a = ((t_pre + t - 1) c + (1 - t_pre) c_pre) / t, the gradient
    taken at the current iterate c and the step made from a."""

    def shrink(v: np.ndarray) -> np.ndarray:
        return np.maximum(np.sign(v) * np.maximum(np.abs(v) - lam * eta, 0.0), 0.0)

    def gradient_at(c: np.ndarray) -> np.ndarray:
        r = x - D @ c
        if not square_noise:
            r = 0.5 * r / max(np.linalg.norm(r), 1e-12)
        return D.T @ r

    c = c_pre = np.zeros(D.shape[1])
    t = 1.0
    for i in range(n_steps):
        if i == 0:
            c = shrink(eta * (D.T @ x))
        elif i == 1:
            c_pre, c = c, shrink(c + eta * gradient_at(c))
            t = (np.sqrt(5.0) + 1.0) / 2.0
        else:
            t_pre = t
            t = (np.sqrt(1.0 + 4.0 * t_pre * t_pre) + 1.0) / 2.0
            a = (t_pre + t - 1.0) / t * c + (1.0 - t_pre) / t * c_pre
            c_pre, c = c, shrink(a + eta * gradient_at(c))
    return c


def textbook_fista(D: np.ndarray, x: np.ndarray, lam: float, eta: float, n_steps: int) -> np.ndarray:
    """FISTA as in Beck & Teboulle (2009): x_0 = y_1 = 0, t_1 = 1; x_k = prox(y_k - eta grad(y_k)),
    t_{k+1} = (1 + sqrt(1 + 4 t_k^2)) / 2, y_{k+1} = x_k + (t_k - 1) / t_{k+1} (x_k - x_{k-1})."""
    x_prev = y = np.zeros(D.shape[1])
    t = 1.0
    for _ in range(n_steps):
        x_k = np.maximum(y + eta * (D.T @ (x - D @ y)) - lam * eta, 0.0)
        t_next = (1.0 + np.sqrt(1.0 + 4.0 * t * t)) / 2.0
        y = x_k + (t - 1.0) / t_next * (x_k - x_prev)
        x_prev, t = x_k, t_next
    return x_prev


def codes_in_float64(layer: CSCLayer, x: torch.Tensor, lam: float) -> tuple[np.ndarray, float]:
    """The layer's codes [B, n_code] computed in float64, and the step size it used."""
    layer = layer.double()
    with torch.no_grad():
        z, _ = layer.solve(x.double(), lam)
    assert z.dtype == torch.float64
    return z.flatten(1).numpy(), float(layer.step_size)


@pytest.mark.parametrize("square_noise", [True, False])
@pytest.mark.parametrize("n_steps", [3, 5, 10])
def test_default_update_order_is_the_authors(n_steps: int, square_noise: bool) -> None:
    layer = make_layer(cin=2, cout=3, stride=2, n_steps=n_steps, square_noise=square_noise).eval()
    x = torch.randn(2, 2, 7, 7, generator=torch.Generator().manual_seed(n_steps))
    lam = 0.05
    codes, eta = codes_in_float64(layer, x, lam)
    D = synthesis_matrix(layer, (7, 7))
    for i in range(2):
        reference = authors_fista(D, x[i].double().flatten().numpy(), lam, eta, n_steps, square_noise)
        assert (reference > 0).any() and (reference == 0).any()  # a non-trivial sparse code
        np.testing.assert_allclose(codes[i], reference, rtol=0, atol=1e-10)
        textbook = textbook_fista(D, x[i].double().flatten().numpy(), lam, eta, n_steps)
        if square_noise:  # the two orders really differ from the third step on
            assert np.abs(textbook - reference).max() > 1e-3


@pytest.mark.parametrize("n_steps", [2, 3, 5, 10])
def test_textbook_update_order_is_beck_and_teboulle(n_steps: int) -> None:
    layer = make_layer(cin=2, cout=3, n_steps=n_steps, fista="textbook").eval()
    x = torch.randn(2, 2, 6, 6, generator=torch.Generator().manual_seed(n_steps))
    codes, eta = codes_in_float64(layer, x, 0.05)
    D = synthesis_matrix(layer, (6, 6))
    for i in range(2):
        reference = textbook_fista(D, x[i].double().flatten().numpy(), 0.05, eta, n_steps)
        np.testing.assert_allclose(codes[i], reference, rtol=0, atol=1e-10)


def test_both_orders_agree_bit_for_bit_at_two_steps() -> None:
    x = torch.randn(3, 2, 8, 8)
    authors, textbook = make_layer(n_steps=2).eval(), make_layer(n_steps=2, fista="textbook").eval()
    assert torch.equal(authors.solve(x, 0.1)[0], textbook.solve(x, 0.1)[0])


def test_unknown_fista_order_is_refused() -> None:
    with pytest.raises(UsageError, match="FISTA order") as info:
        make_layer(fista="nesterov")  # type: ignore[arg-type]
    assert info.value.parameter == "fista"


def test_step_size_is_point_nine_over_largest_eigenvalue() -> None:
    layer = make_layer(cin=2, cout=3).eval()
    D = synthesis_matrix(layer, (5, 5))
    largest = np.linalg.eigvalsh(D.T @ D).max()  # A A^T as an operator on code maps
    atoms = normalize_atoms(layer.weight.detach())
    # reference settings (<= 50 iterations, tol 1e-5) reach the top eigenvalue within 0.1%, from below
    estimate = layer.lipschitz(atoms, (5, 5))
    assert estimate == pytest.approx(largest, rel=1e-3) and estimate <= largest * (1 + 1e-6)
    layer.solve(torch.randn(1, 2, 5, 5))
    assert float(layer.step_size) == pytest.approx(0.9 / largest, rel=1e-3)


def test_step_size_is_cached_in_eval_and_refreshed_after_weight_change() -> None:
    layer = make_layer().eval()
    x = torch.randn(1, 2, 6, 6)
    layer.solve(x)
    calls = []
    original = layer.lipschitz
    layer.lipschitz = lambda *a: calls.append(1) or original(*a)  # type: ignore[method-assign]
    layer.solve(x)
    assert calls == []  # cached: no power iteration per batch
    with torch.no_grad():
        layer.weight.mul_(torch.linspace(0.5, 2.0, layer.weight.numel()).view_as(layer.weight))
    layer.solve(x)
    assert calls == [1]
    layer.train()
    layer.solve(x)
    layer.solve(x)
    assert len(calls) == 3  # re-estimated every training forward


def test_atoms_have_unit_norm() -> None:
    w = torch.randn(6, 3, 3, 3) * 7
    norms = normalize_atoms(w).flatten(1).norm(dim=1)
    torch.testing.assert_close(norms, torch.ones(6))


def test_per_sample_lambda_equals_running_each_sample_alone() -> None:
    layer = make_layer(n_steps=3).eval()
    x = torch.randn(3, 2, 8, 8)
    lams = torch.tensor([0.05, 0.3, 1.0])
    z, err = layer.solve(x, lams)
    for i in range(3):
        zi, erri = layer.solve(x[i : i + 1], float(lams[i]))
        torch.testing.assert_close(z[i : i + 1], zi)
        torch.testing.assert_close(err[i : i + 1], erri)
    assert not torch.allclose(z[0], layer.solve(x[:1], 1.0)[0][0])  # lambda really changes the code


def test_wrong_lambda_shape_is_refused() -> None:
    layer = make_layer()
    with pytest.raises(UsageError, match="shape"):
        layer.solve(torch.randn(2, 2, 6, 6), torch.tensor([0.1, 0.2, 0.3]))


def test_solve_stays_float32_under_bf16_autocast_and_hands_on_bf16() -> None:
    layer = make_layer().eval()
    x = torch.randn(2, 2, 6, 6)
    reference = layer(x.bfloat16().float())  # no autocast: float32 throughout
    with torch.autocast("cpu", dtype=torch.bfloat16):
        solved, _ = layer.solve(x.bfloat16())
        handed_on = layer(x.bfloat16())
    assert solved.dtype == torch.float32 and handed_on.dtype == torch.bfloat16
    torch.testing.assert_close(solved, reference)
    assert torch.equal(handed_on, reference.bfloat16())  # the float32 code, rounded once at the end


def test_sqrt_lasso_variant_uses_normalised_residual() -> None:
    x = torch.randn(2, 2, 6, 6)
    square, sqrt = make_layer(n_steps=2).eval(), make_layer(n_steps=2, square_noise=False).eval()
    z_sq, _ = square.solve(x, 0.1)
    z_rt, _ = sqrt.solve(x, 0.1)
    atoms = normalize_atoms(sqrt.weight.detach())
    eta = float(sqrt.step_size)
    z1 = torch.relu(eta * sqrt.analysis(x, atoms) - 0.1 * eta)
    r = x - sqrt.synthesis(z1, atoms, (6, 6))
    r = 0.5 * r / r.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    torch.testing.assert_close(z_rt, torch.relu(z1 + eta * sqrt.analysis(r, atoms) - 0.1 * eta))
    assert not torch.allclose(z_sq, z_rt)


def test_gradients_flow_to_dictionary_and_input() -> None:
    layer = make_layer().train()
    x = torch.randn(2, 2, 6, 6, requires_grad=True)
    layer(x).sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    assert x.grad is not None and x.grad.abs().sum() > 0


def tensors_held(obj: Any, path: str = "") -> dict[str, torch.Tensor]:
    """Every tensor an object's attributes reach (through containers and plain objects), by path."""
    if isinstance(obj, torch.Tensor):
        return {path: obj}
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    elif hasattr(obj, "__dict__") and not isinstance(obj, (torch.nn.Module, type)):
        items = vars(obj).items()
    else:
        return {}
    found: dict[str, torch.Tensor] = {}
    for key, value in items:
        found.update(tensors_held(value, f"{path}.{key}" if path else str(key)))
    return found


def layer_tensors(layer: CSCLayer) -> dict[str, torch.Tensor]:
    return tensors_held({k: v for k, v in vars(layer).items() if k != "_modules"})


@pytest.mark.parametrize("grad", [False, True])
def test_forward_keeps_no_reference_to_its_input(grad: bool) -> None:
    torch.manual_seed(0)
    model = create_model("sdnet18", width=4).eval()
    x = torch.rand(3, 3, 32, 32, requires_grad=grad)
    with torch.set_grad_enabled(grad):
        model(x)
    for layer in model.csc_layers:
        held = layer_tensors(layer)
        # the dictionary, its step size, and the power iteration's warm start: nothing batch-sized
        assert set(held) == {"_parameters.weight", "_buffers.step_size", "_power_vector"}, set(held)
        assert held["_power_vector"].shape[0] == 1
        assert layer.test_lam is None


def test_recording_error_gives_the_float64_reconstruction_error_of_the_last_batch() -> None:
    layer = make_layer(cin=2, cout=3).eval()
    D = synthesis_matrix(layer, (5, 5))
    lams = torch.tensor([0.05, 0.4, 1.5])
    layer.test_lam = lams
    first, second = torch.randn(3, 2, 5, 5), torch.randn(1, 2, 5, 5).expand(3, -1, -1, -1)
    with layer.recording_error() as record:
        assert record.error is None
        layer(first)
        z = layer(second)
    layer(first)  # after the block: no longer recorded
    layer.test_lam = None
    codes = z.detach().double().flatten(1).numpy()
    reference = ((second.double().flatten(1).numpy() - codes @ D.T) ** 2).sum(axis=1)
    np.testing.assert_allclose(record.error.double().numpy(), reference, rtol=1e-5)
    assert not record.error.requires_grad
    assert reference[0] < reference[1] < reference[2]  # a larger lambda fits the input less closely
    assert set(layer_tensors(layer)) == {"_parameters.weight", "_buffers.step_size", "_power_vector"}


def test_recording_error_blocks_nest() -> None:
    layer = make_layer().eval()
    x = torch.randn(2, 2, 6, 6)
    with layer.recording_error() as outer:
        layer(x)
        seen_by_outer = outer.error
        with layer.recording_error() as inner:
            layer(2 * x)
        assert outer.error is seen_by_outer and inner.error is not None
        layer(3 * x)
    assert not torch.equal(inner.error, outer.error) and not torch.equal(seen_by_outer, outer.error)
