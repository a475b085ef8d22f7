"""Tests of the CIFAR-10-C-strength corruptions and the imagecorruptions compat layer."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import scipy.ndimage
import skimage.color
import skimage.filters

from sdnet_cli.data import corruptions as C
from sdnet_cli.data.imagecorruptions_compat import load_imagecorruptions

# corruptions whose output does not depend on the random generator
DETERMINISTIC = {
    "defocus_blur",
    "zoom_blur",
    "brightness",
    "contrast",
    "pixelate",
    "jpeg_compression",
    "gaussian_blur",
    "saturate",
}


@pytest.fixture(scope="module")
def images(cifar_test_images: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    return cifar_test_images[0]


def test_names_and_strength_table() -> None:
    assert len(C.BENCHMARK_CORRUPTIONS) == 15 and len(C.EXTRA_CORRUPTIONS) == 4
    assert C.ALL_CORRUPTIONS == C.BENCHMARK_CORRUPTIONS + C.EXTRA_CORRUPTIONS
    assert C.BENCHMARK_CORRUPTIONS[0] == "gaussian_noise" and C.BENCHMARK_CORRUPTIONS[-1] == "jpeg_compression"
    assert set(C.CIFAR_STRENGTHS) == set(C.ALL_CORRUPTIONS) == set(C.CORRUPTIONS)
    assert all(len(v) == 5 for v in C.CIFAR_STRENGTHS.values())
    # spot checks against the strengths of Hendrycks & Dietterich's CIFAR-10-C generation script (ICLR 2019)
    assert C.CIFAR_STRENGTHS["gaussian_noise"] == [0.04, 0.06, 0.08, 0.09, 0.10]
    assert C.CIFAR_STRENGTHS["glass_blur"][3] == (0.25, 1, 2)
    assert C.CIFAR_STRENGTHS["snow"][4] == (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)
    assert C.CIFAR_STRENGTHS["spatter"][0] == (0.62, 0.1, 0.7, 0.7, 0.5, 0)
    assert C.CIFAR_STRENGTHS["elastic_transform"][1] == (0.05, 0.2, 0.07)


@pytest.mark.parametrize("name", C.ALL_CORRUPTIONS)
def test_every_cell_is_uint8_same_shape_and_changes_images(images: np.ndarray, name: str) -> None:
    batch = images[:16]
    before = batch.copy()
    for severity in range(1, 6):
        out = C.corrupt(batch, name, severity, np.random.default_rng(severity))
        assert out.dtype == np.uint8 and out.shape == batch.shape
        assert np.any(out != batch), f"{name} severity {severity} left the images unchanged"
    assert np.array_equal(batch, before), "input was modified in place"


@pytest.mark.parametrize("name", C.ALL_CORRUPTIONS)
def test_seeded(images: np.ndarray, name: str) -> None:
    batch = images[:8]
    first = C.corrupt(batch, name, 4, np.random.default_rng(1))
    again = C.corrupt(batch, name, 4, np.random.default_rng(1))
    other = C.corrupt(batch, name, 4, np.random.default_rng(2))
    assert np.array_equal(first, again)
    assert np.array_equal(first, other) == (name in DETERMINISTIC)


def test_severity_grows_for_noise(images: np.ndarray) -> None:
    change = [
        np.abs(C.gaussian_noise(images, s, np.random.default_rng(0)).astype(int) - images).mean() for s in range(1, 6)
    ]
    assert change == sorted(change)


@pytest.mark.parametrize("severity", [1, 5])
def test_gaussian_noise_std(images: np.ndarray, severity: int) -> None:
    sigma = C.CIFAR_STRENGTHS["gaussian_noise"][severity - 1] * 255
    out = C.gaussian_noise(images, severity, np.random.default_rng(0))
    keep = (images >= 4 * sigma) & (images <= 255 - 4 * sigma)  # never clipped
    diff = out.astype(float)[keep] - images[keep]
    assert keep.sum() > 10_000
    # truncation to uint8 adds a uniform [-1, 0) error: mean -0.5, variance 1/12
    assert np.sqrt(diff.var() - 1 / 12) == pytest.approx(sigma, rel=0.05)
    assert diff.mean() == pytest.approx(-0.5, abs=0.2)


def test_shot_noise_mean_and_variance(images: np.ndarray) -> None:
    photons = C.CIFAR_STRENGTHS["shot_noise"][4]
    out = C.shot_noise(images, 5, np.random.default_rng(0))
    keep = (images >= 50) & (images <= 150)
    x = images[keep].astype(float)
    diff = out.astype(float)[keep] - x
    assert diff.mean() == pytest.approx(-0.5, abs=0.3)
    expected_var = np.mean(x * 255 / photons) + 1 / 12  # Poisson: var(k/c) = x/c, in 0..255 units
    assert diff.var() == pytest.approx(expected_var, rel=0.05)


def test_speckle_noise_variance(images: np.ndarray) -> None:
    sigma = C.CIFAR_STRENGTHS["speckle_noise"][4]
    out = C.speckle_noise(images, 5, np.random.default_rng(0))
    keep = (images >= 50) & (images <= 150)
    x = images[keep].astype(float)
    diff = out.astype(float)[keep] - x
    assert diff.mean() == pytest.approx(-0.5, abs=0.3)
    assert diff.var() == pytest.approx(np.mean((x * sigma) ** 2) + 1 / 12, rel=0.05)


@pytest.mark.parametrize("severity", [1, 5])
def test_impulse_noise_fraction(images: np.ndarray, severity: int) -> None:
    amount = C.CIFAR_STRENGTHS["impulse_noise"][severity - 1]
    out = C.impulse_noise(images, severity, np.random.default_rng(0))
    inner = (images > 0) & (images < 255)  # values that salt or pepper always change
    changed = out != images
    assert changed[inner].mean() == pytest.approx(amount, rel=0.1)
    assert set(np.unique(out[changed])) <= {0, 255}
    assert (out[changed] == 255).mean() == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize(("severity", "white", "black"), [(1, 223, 31), (3, 178, 76), (5, 146, 108)])
def test_contrast_of_a_half_white_half_black_image(severity: int, white: int, black: int) -> None:
    """Worked by hand: the per-channel mean is 0.5, so contrast c sends 1 to 0.5 + c/2 and 0 to 0.5 - c/2
    (c = 0.75, 0.4, 0.15 at severities 1, 3, 5 in CIFAR-10-C); times 255, truncated to uint8."""
    image = np.zeros((1, 2, 2, 3), dtype=np.uint8)
    image[0, 0] = 255
    out = C.contrast(image, severity, np.random.default_rng(0))
    assert (out[0, 0] == white).all() and (out[0, 1] == black).all()


def _hsv_reference(images: np.ndarray, channel: int, change) -> np.ndarray:
    out = []
    for image in images:
        hsv = skimage.color.rgb2hsv(image / 255.0)
        hsv[:, :, channel] = np.clip(change(hsv[:, :, channel]), 0, 1)
        out.append((np.clip(skimage.color.hsv2rgb(hsv), 0, 1) * 255).astype(np.uint8))
    return np.array(out)


@pytest.mark.parametrize("severity", [1, 5])
def test_brightness_matches_skimage_per_image(images: np.ndarray, severity: int) -> None:
    shift = C.CIFAR_STRENGTHS["brightness"][severity - 1]
    expected = _hsv_reference(images[:4], 2, lambda v: v + shift)
    assert np.array_equal(C.brightness(images[:4], severity, np.random.default_rng(0)), expected)


@pytest.mark.parametrize("severity", [2, 5])
def test_saturate_matches_skimage_per_image(images: np.ndarray, severity: int) -> None:
    scale, offset = C.CIFAR_STRENGTHS["saturate"][severity - 1]
    expected = _hsv_reference(images[:4], 1, lambda s: s * scale + offset)
    assert np.array_equal(C.saturate(images[:4], severity, np.random.default_rng(0)), expected)


def test_gaussian_blur_matches_skimage(images: np.ndarray) -> None:
    sigma = C.CIFAR_STRENGTHS["gaussian_blur"][4]
    expected = [
        (np.clip(skimage.filters.gaussian(im / 255.0, sigma=sigma, channel_axis=-1), 0, 1) * 255).astype(np.uint8)
        for im in images[:4]
    ]
    assert np.array_equal(C.gaussian_blur(images[:4], 5, np.random.default_rng(0)), np.array(expected))


def test_glass_blur_copies_rather_than_swaps(images: np.ndarray) -> None:
    """One image through a literal per-image version of the reference loop, same draws."""
    sigma, delta, iterations = C.CIFAR_STRENGTHS["glass_blur"][4]
    image = images[5]
    rng = np.random.default_rng(3)
    x = np.uint8(skimage.filters.gaussian(image / 255.0, sigma=sigma, channel_axis=-1) * 255)
    for _ in range(iterations):
        for h in range(32 - delta, delta, -1):
            for w in range(32 - delta, delta, -1):
                dx, dy = rng.integers(-delta, delta, size=(2,))
                h2, w2 = h + dy, w + dx
                x[h, w], x[h2, w2] = x[h2, w2], x[h, w]  # the reference's "swap" on views
    expected = (np.clip(skimage.filters.gaussian(x / 255.0, sigma=sigma, channel_axis=-1), 0, 1) * 255).astype(np.uint8)
    out = C.glass_blur(image[None], 5, np.random.default_rng(3))[0]
    assert np.array_equal(out, expected)


@pytest.mark.parametrize("factor", [1.0, 1.04, 1.25, 1.75, 2.25])
def test_clipped_zoom_matches_scipy_zoom(images: np.ndarray, factor: float) -> None:
    x = images[:4] / np.float32(255)
    crop = int(np.ceil(32 / factor))
    top = (32 - crop) // 2
    zoomed = scipy.ndimage.zoom(x[:, top : top + crop, top : top + crop], (1, factor, factor, 1), order=1)
    trim = (zoomed.shape[1] - 32) // 2
    expected = zoomed[:, trim : trim + 32, trim : trim + 32]
    assert np.abs(C._clipped_zoom(x, factor) - expected).max() < 1e-5


def test_zoom_blur_factor_counts_follow_reference_arange() -> None:
    counts = [len(np.arange(1, top + 0.01, 0.01)) for top in C.CIFAR_STRENGTHS["zoom_blur"]]
    assert counts == [7, 12, 16, 21, 26]


def test_motion_blur_matches_imagecorruptions(images: np.ndarray) -> None:
    reference = load_imagecorruptions().corruptions._motion_blur
    angles = np.array([-40.0, 3.0, 44.0, -120.0])
    for radius, sigma in [(6, 1), (9, 2.5), (14, 12), (20, 5)]:  # radius 20 leaves the image
        expected = np.stack([reference(images[i], radius, sigma, angles[i]) for i in range(4)])
        assert np.array_equal(C._motion_blur(images[:4], radius, sigma, angles), expected)


def test_plasma_fractal_matches_imagecorruptions() -> None:
    reference = load_imagecorruptions().corruptions.plasma_fractal
    state = np.random.get_state()
    try:
        for decay in (3, 1.75):
            np.random.seed(11)
            expected = reference(mapsize=32, wibbledecay=decay)
            # a RandomState seeded alike replays the global RNG's draws
            assert np.array_equal(C._plasma_fractal(1, 32, decay, np.random.RandomState(11))[0], expected)
    finally:
        np.random.set_state(state)


def test_invalid_arguments(images: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="valid names: gaussian_noise, shot_noise"):
        C.corrupt(images, "gaussian", 1, rng)
    for severity in (0, 6, 2.5, True):
        with pytest.raises(ValueError, match="severity"):
            C.corrupt(images, "fog", severity, rng)
    with pytest.raises(ValueError, match="32x32"):
        C.corrupt(np.zeros((1, 64, 64, 3), np.uint8), "fog", 1, rng)
    with pytest.raises(ValueError, match="uint8"):
        C.corrupt(images.astype(np.float32), "fog", 1, rng)
    with pytest.raises(ValueError, match="strength"):
        C.corrupt(images, "fog", 1, rng, strength="tiny")


def test_compat_layer_patches_only_imagecorruptions() -> None:
    package = load_imagecorruptions()
    assert load_imagecorruptions() is package
    assert package.corruptions.gaussian is not skimage.filters.gaussian
    with pytest.raises(TypeError):  # the removed keyword is translated for imagecorruptions only
        skimage.filters.gaussian(np.zeros((4, 4, 3)), multichannel=True)
    assert not hasattr(np, "float_") or np.__version__.startswith("1.")
    if "pkg_resources" not in sys.modules:
        assert package.corruptions.resource_filename(package.corruptions.__name__, "./frost/frost1.png").endswith(
            "frost1.png"
        )


def test_imagenet_strength_runs_all_through_imagecorruptions(images: np.ndarray) -> None:
    batch = images[:2]
    state = np.random.get_state()
    for name in C.ALL_CORRUPTIONS:
        out = C.corrupt(batch, name, 5, np.random.default_rng(0), strength="imagenet")
        assert out.dtype == np.uint8 and out.shape == batch.shape, name
    after = np.random.get_state()
    assert all(np.array_equal(a, b) for a, b in zip(state[1:3], after[1:3])), "global RNG state leaked"
    first = C.corrupt(batch, "glass_blur", 3, np.random.default_rng(4), strength="imagenet")
    again = C.corrupt(batch, "glass_blur", 3, np.random.default_rng(4), strength="imagenet")
    assert np.array_equal(first, again)
    # ImageNet strengths are much stronger on 32x32 than CIFAR's
    strong = C.corrupt(batch, "gaussian_noise", 5, np.random.default_rng(0), strength="imagenet")
    mild = C.corrupt(batch, "gaussian_noise", 5, np.random.default_rng(0))
    assert np.abs(strong.astype(int) - batch).mean() > 2 * np.abs(mild.astype(int) - batch).mean()
