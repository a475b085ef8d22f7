"""The salt-and-pepper feature and the two-feature ``noise`` rule against independent references: pixel
counts of hand-built images, a float64 numpy median over 3x3 windows, the rule's line in float64, and
accuracy curves whose best (a, c, b) is known by construction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdnet_cli.data.corruptions import corrupt
from sdnet_cli.lam import (
    FEATURES,
    NoiseLevelLambda,
    estimate_impulse_fraction,
    estimate_noise_sigma,
    fit_line_for_accuracy,
    fit_rule_for_accuracy,
    fit_rules,
)
from sdnet_cli.models import create_model


def median_reference(images: np.ndarray) -> np.ndarray:
    """[B] the definition, in float64: values within 1.5/255 of 0 or 1 whose 3x3 same-channel median
    (edge-replicated) lies more than 0.5 away, as a fraction of all channel values."""
    x = images.astype(np.float64)
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(2, 3))
    median = np.median(windows.reshape(*x.shape, 9), axis=-1)
    extreme = (x <= 1.5 / 255) | (x >= 1 - 1.5 / 255)
    return (extreme & (np.abs(x - median) > 0.5)).reshape(len(x), -1).mean(axis=1)


def hand_built() -> tuple[torch.Tensor, int]:
    """One 3x16x16 image: left half dark (0.25), right half bright (0.75), with 10 impulse values and
    extreme bands that are not impulses. Returns the image and its impulse count."""
    x = torch.full((3, 16, 16), 0.25)
    x[:, :, 8:] = 0.75
    x[:, 2:6, :8] = 1.0  # a white band on the dark side: every white value has white neighbours
    x[:, 10:14, 8:] = 0.0  # a black band on the bright side
    x[0, 12, 3] = 1.0  # salt on the dark side, one channel
    x[1, 8, 5] = 254 / 255  # salt of 8-bit value 254
    x[2, 0, 0] = 1.0  # salt in a corner (edge replication repeats it, still a minority of its window)
    x[0, 4, 12], x[1, 4, 12] = 0.0, 0.0  # pepper on the bright side in two channels: 2 values
    x[2, 15, 12] = 0.0  # pepper on the bottom edge
    x[0, 3, 4] = 0.0  # pepper inside the white band: far from its white neighbours
    x[1, 12, 4] = 1.0  # salt in another channel
    x[2, 8, 2], x[2, 8, 3] = 1.0, 1.0  # a pair of salt values: each has one extreme neighbour, 7 far ones
    return x, 1 + 1 + 1 + 2 + 1 + 1 + 1 + 2


def test_impulse_fraction_counts_isolated_extremes_only() -> None:
    image, count = hand_built()
    flat = torch.full((3, 16, 16), 1.0)  # an all-white image: extreme everywhere, no impulse
    flat[:, :, :4] = 0.0
    x = torch.stack([image, flat, image.clamp(0.02, 0.98)])  # the last: no extreme value left
    fraction = estimate_impulse_fraction(x)
    assert fraction.tolist() == pytest.approx([count / (3 * 16 * 16), 0.0, 0.0], abs=1e-9)
    np.testing.assert_allclose(fraction.numpy(), median_reference(x.numpy()), atol=1e-9)


@pytest.mark.parametrize("corruption", ["impulse_noise", "gaussian_noise", "contrast"])
def test_impulse_fraction_matches_the_median_definition(
    cifar_test_images: tuple[np.ndarray, np.ndarray], corruption: str
) -> None:
    images = corrupt(cifar_test_images[0][:6], corruption, 5, np.random.default_rng(0), "cifar")
    x = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float() / 255
    fraction = estimate_impulse_fraction(x).numpy()
    np.testing.assert_allclose(fraction, median_reference(x.numpy()), atol=1e-9)
    if corruption == "impulse_noise":  # severity 5 salts about 9% of the pixels (some land on extremes already)
        assert fraction.min() > 0.01


def test_two_feature_rule_is_the_clamped_line_in_float64(cifar_test_images: tuple[np.ndarray, np.ndarray]) -> None:
    model = create_model("sdnet18", width=8).eval()
    rng = np.random.default_rng(1)
    images = np.concatenate(
        [
            cifar_test_images[0][:2],
            corrupt(cifar_test_images[0][2:5], "impulse_noise", 5, rng, "cifar"),
            corrupt(cifar_test_images[0][5:8], "gaussian_noise", 3, rng, "cifar"),
        ]
    )
    x = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float() / 255
    rule = NoiseLevelLambda(a=9.0, b=-0.05, lo=0.1, hi=0.6, c=8.0)
    with torch.no_grad():
        lam = rule(model, model.normalize(x)).numpy()
    sigma = estimate_noise_sigma(x.double()).numpy()
    expected = np.clip(9.0 * sigma + 8.0 * median_reference(x.numpy()) - 0.05, 0.1, 0.6)
    np.testing.assert_allclose(lam, expected, atol=1e-5)
    assert lam.min() == pytest.approx(0.1) and lam.max() == pytest.approx(0.6)  # both clamps reached
    assert rule.formula == "clamp(9*noise_sigma(x)+8*impulse_fraction(x)-0.05, 0.1, 0.6)"
    # the impulse term moves lambda only through a constant: the line's gradient is the sigma term's
    xn = model.normalize(x).requires_grad_(True)
    (grad,) = torch.autograd.grad(rule.line(model, xn).sum(), xn)
    xn_plain = model.normalize(x).requires_grad_(True)
    sigma_only = NoiseLevelLambda(a=9.0, b=-0.05, lo=0.1, hi=0.6)
    (plain,) = torch.autograd.grad(sigma_only.line(model, xn_plain).sum(), xn_plain)
    torch.testing.assert_close(grad, plain)


def test_a_zero_impulse_coefficient_never_computes_the_feature(monkeypatch: pytest.MonkeyPatch) -> None:
    model = create_model("sdnet18", width=8).eval()

    def refuse(*args: object) -> torch.Tensor:
        raise AssertionError("the impulse feature was computed for c = 0")

    monkeypatch.setitem(FEATURES, "impulse", refuse)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    rule = NoiseLevelLambda(a=9.0, b=-0.05, lo=0.1, hi=1.4)
    with torch.no_grad():
        lam = rule(model, model.normalize(x))
    expected = np.clip(9.0 * estimate_noise_sigma(x.double()).numpy() - 0.05, 0.1, 1.4)
    np.testing.assert_allclose(lam.numpy(), expected, atol=1e-6)
    assert rule.formula == "clamp(9*noise_sigma(x)-0.05, 0.1, 1.4)"


GRID = np.round(np.arange(0.1, 1.41, 0.1), 2)


def peaked(peak: float) -> np.ndarray:
    return 80 - 40 * np.abs(GRID - peak)


# Five groups whose accuracy peaks at lambda = 10 * sigma + 20 * impulse + 0: three without impulses
# (peaks 0.1, 0.5, 0.9) and two with (0.1 + 0.4 = 0.5, 0.3 + 0.8 = 1.1). The plane meets every peak, so
# it is the unique best; no line in sigma alone can (sigma 0.01 asks for both 0.1 and 0.5).
SIGMA = [0.01, 0.05, 0.09, 0.01, 0.03]
IMPULSE = [0.0, 0.0, 0.0, 0.02, 0.04]
CURVES = np.stack([peaked(10 * s + 20 * i) for s, i in zip(SIGMA, IMPULSE)])


@pytest.mark.slow
def test_two_feature_fit_finds_the_plane_through_every_peak() -> None:
    (a, c), b = fit_rule_for_accuracy(np.array([SIGMA, IMPULSE]).T, CURVES, GRID)
    assert (a, c, b) == pytest.approx((10.0, 20.0, 0.0), abs=1e-9)
    points = [
        {"corruption": "x", "severity": k, "noise": s, "impulse": i, "error": 1.0 + k, "curve": list(curve)}
        for k, (s, i, curve) in enumerate(zip(SIGMA, IMPULSE, CURVES))
    ]
    noise = fit_rules(points, GRID)["noise"]
    assert (noise.a, noise.c, noise.b, noise.lo, noise.hi) == pytest.approx((10.0, 20.0, 0.0, 0.1, 1.4), abs=1e-9)
    # without the impulse means (a calibration measured before them) the same groups give a line in sigma
    old = fit_rules([{k: v for k, v in p.items() if k != "impulse"} for p in points], GRID)["noise"]
    assert old.c == 0.0 and (old.a, old.b) == pytest.approx(fit_line_for_accuracy(SIGMA, CURVES, GRID), abs=1e-12)


def test_a_further_feature_that_is_zero_everywhere_changes_nothing() -> None:
    sigma, curves = SIGMA[:3], CURVES[:3]
    (a, c), b = fit_rule_for_accuracy(np.array([sigma, [0.0] * 3]).T, curves, GRID)
    assert c == 0.0 and (a, b) == fit_line_for_accuracy(sigma, curves, GRID)
