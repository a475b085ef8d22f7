"""Lambda policies against independent references: per-input lambda vs per-sample runs, the noise
estimator vs known noise, the line fit vs numpy.polyfit, and the calibration file round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sdnet_cli.lam import (
    AutoLambda,
    Calibration,
    FixedLambda,
    NoiseLevelLambda,
    estimate_noise_sigma,
    fit_line,
    fit_line_for_accuracy,
    load_calibration,
    parse_grid,
    parse_lambda,
    store_calibration,
)
from sdnet_cli.models import ModelInfo, create_model
from sdnet_cli.models.csc import normalize_atoms


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("sdnet18", width=8).eval()


@pytest.fixture(scope="module")
def mixed_batch(cifar_test_images: tuple[np.ndarray, np.ndarray]) -> torch.Tensor:
    """8 test images, half with gaussian noise of growing strength: reconstruction errors that differ."""
    images = torch.from_numpy(cifar_test_images[0][:8]).permute(0, 3, 1, 2).float() / 255
    sigmas = torch.tensor([0, 0, 0, 0, 0.03, 0.06, 0.1, 0.2]).view(-1, 1, 1, 1)
    return (images + sigmas * torch.randn(images.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)


def reference_stem_error(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    """||xn - A^T z||^2 from the stem's ordinary forward (hooked), re-synthesised with F.conv_transpose2d."""
    stem = model.stem_csc
    seen = {}
    handle = stem.register_forward_hook(lambda m, inp, out: seen.update(x=inp[0], z=out))
    with torch.no_grad():
        model(x)
    handle.remove()
    atoms = normalize_atoms(stem.weight.detach().double())
    recon = F.conv_transpose2d(seen["z"].double(), atoms, padding=1)
    return (seen["x"].double() - recon).pow(2).flatten(1).sum(1).numpy()


def test_fit_line_equals_polyfit() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 50, 12)
    y = 0.02 * x + 0.1 + rng.normal(0, 0.05, 12)
    np.testing.assert_allclose(fit_line(x, y), np.polyfit(x, y, 1), rtol=1e-10)
    with pytest.raises(ValueError, match="different x"):
        fit_line([1.0, 1.0, 1.0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="two points"):
        fit_line([1.0], [0.1])


def test_auto_lambda_is_the_clamped_line_of_the_stem_error(model: torch.nn.Module, mixed_batch: torch.Tensor) -> None:
    errors = reference_stem_error(model, mixed_batch)
    assert np.ptp(errors) > 0.1 * errors.mean()  # the noise levels really give different errors
    # a line whose raw values run from -0.1 to 1.1 over the batch, so both clamps are hit
    a = 1.2 / np.ptp(errors)
    b = -0.1 - a * errors.min()
    policy = AutoLambda(a, b, lo=0.2, hi=1.0)
    with torch.no_grad():
        lam = policy(model, model.normalize(mixed_batch)).numpy()
    expected = np.clip(a * errors + b, 0.2, 1.0)
    np.testing.assert_allclose(lam, expected, rtol=1e-4, atol=1e-5)
    assert lam.min() == pytest.approx(0.2) and lam.max() == pytest.approx(1.0)
    order = np.argsort(errors)
    assert np.all(np.diff(lam[order]) >= 0)  # monotone in the reconstruction error


def test_per_input_lambda_equals_each_sample_alone(model: torch.nn.Module, mixed_batch: torch.Tensor) -> None:
    errors = reference_stem_error(model, mixed_batch)
    policy = AutoLambda(a=1.0 / np.ptp(errors), b=0.1 - errors.min() / np.ptp(errors), lo=0.1, hi=1.4)
    lams = np.clip(policy.a * errors + policy.b, 0.1, 1.4)
    assert len(np.unique(lams.round(3))) >= 4
    try:
        model.lam_policy = policy
        with torch.no_grad():
            batched = model(mixed_batch)
        alone = []
        for i, value in enumerate(lams):
            model.lam_policy = FixedLambda(float(value))
            with torch.no_grad():
                alone.append(model(mixed_batch[i : i + 1]))
    finally:
        model.lam_policy = None
    torch.testing.assert_close(batched, torch.cat(alone), rtol=1e-4, atol=1e-4)
    # and the lambda really matters: the training lambda gives other logits
    with torch.no_grad():
        assert not torch.allclose(batched, model(mixed_batch), atol=1e-3)


def test_auto_lambda_keeps_the_graph_for_attacks(model: torch.nn.Module, mixed_batch: torch.Tensor) -> None:
    x = mixed_batch.clone().requires_grad_(True)
    lam = AutoLambda(a=1e-3, b=0.1, lo=0.0, hi=float("inf"))(model, model.normalize(x))
    assert lam.requires_grad
    (grad,) = torch.autograd.grad(lam.sum(), x)
    assert grad.abs().sum() > 0


def smooth_images(n: int = 4) -> torch.Tensor:
    """Ramps plus gentle sinusoids: almost no high-frequency content."""
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    images = []
    for i in range(n):
        channels = [
            0.2 + 0.01 * (i + 1) * xx + 0.1 * torch.sin(2 * torch.pi * yy / 32 + c)
            + 0.05 * torch.sin(2 * torch.pi * xx / 32) * torch.cos(2 * torch.pi * yy / 32)
            for c in range(3)
        ]
        images.append(torch.stack(channels) * 0.5)
    return torch.stack(images)


@pytest.mark.parametrize("sigma", [0.02, 0.05, 0.1])
def test_noise_estimator_recovers_gaussian_sigma(sigma: float) -> None:
    clean = smooth_images()
    noisy = clean + sigma * torch.randn(clean.shape, generator=torch.Generator().manual_seed(2))
    estimate = estimate_noise_sigma(noisy)
    assert estimate.shape == (4,)
    np.testing.assert_allclose(estimate.numpy(), sigma, rtol=0.2)
    assert float(estimate_noise_sigma(clean).max()) < 0.1 * sigma


def test_noise_lambda_is_the_clamped_line_of_the_estimate(model: torch.nn.Module) -> None:
    clean = smooth_images(1).expand(4, -1, -1, -1)
    sigmas = torch.tensor([0.0, 0.03, 0.06, 0.12]).view(-1, 1, 1, 1)
    x = clean + sigmas * torch.randn(clean.shape, generator=torch.Generator().manual_seed(3))
    policy = NoiseLevelLambda(a=10.0, b=0.1, lo=0.1, hi=1.0)
    with torch.no_grad():
        lam = policy(model, model.normalize(x))
    expected = (10.0 * estimate_noise_sigma(x) + 0.1).clamp(0.1, 1.0)
    torch.testing.assert_close(lam, expected, rtol=1e-5, atol=1e-6)
    assert torch.all(torch.diff(lam) > 0)


def test_parse_grid() -> None:
    grid = parse_grid("0.1:1.4:0.1")
    assert len(grid) == 14 and grid[0] == 0.1 and grid[-1] == 1.4 and grid[2] == 0.3
    assert parse_grid("0.5, 0.1,0.5") == [0.1, 0.5]
    for bad in ("1:0:0.1", "a,b", "0.1:1", "-1,0.2", ""):
        with pytest.raises(ValueError, match="--lams"):
            parse_grid(bad)


def make_calibration(sha: str) -> Calibration:
    return Calibration(
        auto=AutoLambda(0.01, 0.05, 0.1, 1.4), noise=NoiseLevelLambda(8.0, 0.1, 0.1, 1.4), grid=[0.1, 0.7, 1.4],
        points=[{"corruption": "clean", "severity": 0, "best_lam": 0.1, "accuracy": 90.0, "error": 5.0, "noise": 0.01}],
        corruptions=["gaussian_noise"], severities=[1, 5], n=100, seed=4, training_lam=0.1, checkpoint_sha256=sha,
    )


def test_calibration_is_stored_beside_a_shipped_checkpoint_and_named_in_its_manifest(tmp_path: Path) -> None:
    weights = tmp_path / "weights"
    weights.mkdir()
    entry = {"name": "sdnet18-w8", "file": "sdnet18-w8.safetensors", "architecture": "sdnet18", "dataset": "cifar10", "sha256": "ab" * 32}
    (weights / "manifest.json").write_text(json.dumps({"models": [entry]}))
    info = ModelInfo("sdnet18-w8", "sdnet18", "cifar10", 8, 10, 0.1, 2, True, "cifar",
                     checkpoint=str(weights / entry["file"]), sha256=entry["sha256"], manifest_entry=entry)
    path = store_calibration(make_calibration(entry["sha256"]), info)
    assert path == weights / "sdnet18-w8.lambda.json"
    saved = json.loads(path.read_text())
    assert {"a", "b", "lo", "hi", "grid", "points", "corruptions", "severities", "n", "seed", "checkpoint_sha256"} <= set(saved)
    assert saved["noise"] == {"a": 8.0, "b": 0.1, "lo": 0.1, "hi": 1.4} and saved["split"] == "train"
    manifest = json.loads((weights / "manifest.json").read_text())["models"]
    assert manifest == [{**entry, "calibration": "sdnet18-w8.lambda.json"}]
    # found through the manifest entry, and round-trips
    shipped = ModelInfo(**{**info.__dict__, "manifest_entry": manifest[0]})
    assert load_calibration(shipped) == make_calibration(entry["sha256"])
    model = create_model("sdnet18", width=8)
    assert parse_lambda("auto", model, shipped) == AutoLambda(0.01, 0.05, 0.1, 1.4)
    assert parse_lambda("noise", model, shipped) == NoiseLevelLambda(8.0, 0.1, 0.1, 1.4)
    # a calibration of another checkpoint is refused
    other = ModelInfo(**{**shipped.__dict__, "sha256": "cd" * 32})
    with pytest.raises(ValueError, match="another checkpoint"):
        load_calibration(other)
    # written elsewhere: the manifest is left alone
    elsewhere = store_calibration(make_calibration(entry["sha256"]), info, tmp_path / "x.json")
    assert elsewhere.is_file() and json.loads((weights / "manifest.json").read_text())["models"] == manifest


def test_missing_calibration_says_how_to_make_one(tmp_path: Path) -> None:
    info = ModelInfo("sdnet18", "sdnet18", "cifar10", 8, 10, 0.1, 2, True, "cifar",
                     checkpoint=str(tmp_path / "m.safetensors"), sha256="ab" * 32)
    with pytest.raises(ValueError, match="sweep-lambda .*--fit"):
        parse_lambda("auto", create_model("sdnet18", width=8), info)


def _peaked(grid: np.ndarray, peak: float, height: float, steepness: float) -> np.ndarray:
    return height - steepness * np.abs(grid - peak)


def test_accuracy_fit_reaches_every_peak_a_line_can_reach() -> None:
    grid = np.round(np.arange(0.1, 1.41, 0.1), 2)
    features = [1.0, 2.0, 3.0]
    curves = np.stack([_peaked(grid, peak, 80, 20) for peak in (0.2, 0.6, 1.0)])  # collinear peaks
    a, b = fit_line_for_accuracy(features, curves, grid)
    np.testing.assert_allclose(a * np.array(features) + b, [0.2, 0.6, 1.0], atol=1e-9)


def test_accuracy_fit_weighs_misses_by_their_cost_unlike_least_squares() -> None:
    grid = np.round(np.arange(0.1, 1.41, 0.1), 2)
    features = [1.0, 2.0, 3.0]
    # group 3 peaks at 0.2 but hardly cares; groups 1 and 2 fall steeply away from 0.1 and 0.8
    curves = np.stack([_peaked(grid, 0.1, 85, 40), _peaked(grid, 0.8, 40, 40), _peaked(grid, 0.2, 80, 0.5)])
    a, b = fit_line_for_accuracy(features, curves, grid)

    def mean_accuracy(slope: float, intercept: float) -> float:
        lams = np.clip(slope * np.array(features) + intercept, 0.1, 1.4)
        return float(np.mean([np.interp(lam, grid, c) for lam, c in zip(lams, curves)]))

    ls = fit_line(features, [0.1, 0.8, 0.2])
    assert mean_accuracy(a, b) > mean_accuracy(*ls) + 5
    np.testing.assert_allclose(np.clip([a * 1 + b, a * 2 + b], 0.1, 1.4), [0.1, 0.8], atol=1e-9)  # the steep groups' best
    rng = np.random.default_rng(0)  # and no random line in range does better
    for start, end in rng.uniform(0.1, 1.4, size=(500, 2)):  # the line through (1, start) and (3, end)
        assert mean_accuracy(a, b) >= mean_accuracy((end - start) / 2, start - (end - start) / 2) - 1e-9
