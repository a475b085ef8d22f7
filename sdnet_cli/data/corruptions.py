"""The 19 common corruptions at CIFAR-10-C strengths, batched and seeded.

These follow Hendrycks & Dietterich's CIFAR-10-C generation code ("Benchmarking Neural Network
Robustness to Common Corruptions and Perturbations", ICLR 2019), with its CIFAR strength table
(``CIFAR_STRENGTHS``). The ``imagecorruptions`` package has
the same algorithms but only ImageNet-C strengths, which are far too strong for 32x32
images, so here it only supplies the defocus disk kernel and the frost textures, and
runs ``strength="imagenet"``. Its plasma fractal and motion blur are re-done batched
(same arithmetic), drawing from a Generator instead of numpy's global RNG.

Contract of every corruption: ``fn(images uint8 [N,H,W,3], severity 1..5,
numpy Generator) -> uint8 [N,H,W,3]``; all randomness comes from the Generator, so
one Generator state always gives the same output. Values are computed in float,
clipped to [0, 255] and truncated to uint8, as in the reference code.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any, cast

import cv2
import numpy as np
import scipy.ndimage
import skimage.color
from PIL import Image

from sdnet_cli.data.imagecorruptions_compat import load_imagecorruptions

BENCHMARK_CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)
EXTRA_CORRUPTIONS: tuple[str, ...] = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
ALL_CORRUPTIONS: tuple[str, ...] = BENCHMARK_CORRUPTIONS + EXTRA_CORRUPTIONS

# CIFAR-10-C strengths for severities 1..5, as in Hendrycks & Dietterich's CIFAR generation script; pixel values in [0, 1].
# This table is the single source: the generator also copies it into its metadata.
CIFAR_STRENGTHS: dict[str, list[Any]] = {
    "gaussian_noise": [0.04, 0.06, 0.08, 0.09, 0.10],  # sigma
    "shot_noise": [500, 250, 100, 75, 50],  # photons c: poisson(x*c)/c
    "impulse_noise": [0.01, 0.02, 0.03, 0.05, 0.07],  # salt-and-pepper amount
    "speckle_noise": [0.06, 0.10, 0.12, 0.16, 0.20],  # sigma: x + x*N(0, sigma)
    "gaussian_blur": [0.4, 0.6, 0.7, 0.8, 1.0],  # sigma (px)
    # (sigma, max_delta, iterations)
    "glass_blur": [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)],
    # (disk radius, alias blur)
    "defocus_blur": [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],
    # (radius, sigma); angle U(-45, 45)
    "motion_blur": [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)],
    "zoom_blur": [1.05, 1.10, 1.15, 1.20, 1.25],  # largest zoom factor, step 0.01 from 1.00
    # (mean, std, zoom, threshold, blur radius, blur sigma, blend)
    "snow": [
        (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
        (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
        (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
    ],
    # (image weight, frost weight)
    "frost": [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)],
    # (strength, wibble decay)
    "fog": [(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)],
    "brightness": [0.05, 0.10, 0.15, 0.20, 0.30],  # added to HSV value
    "contrast": [0.75, 0.5, 0.4, 0.3, 0.15],  # factor about the per-channel mean
    # HSV saturation s*a + b, (a, b)
    "saturate": [(0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)],
    "jpeg_compression": [80, 65, 58, 50, 40],  # JPEG quality
    "pixelate": [0.95, 0.90, 0.85, 0.75, 0.65],  # BOX down to size*f, then BOX up
    # (alpha, sigma, affine) as fractions of the 32 px image size
    "elastic_transform": [
        (0, 0, 0.08),
        (0.05, 0.2, 0.07),
        (0.08, 0.06, 0.06),
        (0.1, 0.04, 0.05),
        (0.1, 0.03, 0.03),
    ],
    # (mean, std, sigma, threshold, intensity, mode 0=water 1=mud)
    "spatter": [
        (0.62, 0.1, 0.7, 0.7, 0.5, 0),
        (0.65, 0.1, 0.8, 0.7, 0.5, 0),
        (0.65, 0.3, 1, 0.69, 0.5, 0),
        (0.65, 0.1, 0.7, 0.69, 0.6, 1),
        (0.65, 0.1, 0.5, 0.68, 0.6, 1),
    ],
}

CIFAR_SIZE = 32
_FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")
_WATER_RGB = np.array([175, 238, 238], dtype=np.float32) / 255.0  # pale turquoise
_MUD_RGB = np.array([63, 42, 20], dtype=np.float32) / 255.0  # mud brown
_EMBOSS = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]], dtype=np.float32)

Corruption = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]


# ---------------------------------------------------------------- helpers


def _check_severity(severity: int) -> None:
    valid = isinstance(severity, (int, np.integer)) and not isinstance(severity, bool)
    if not valid or not 1 <= severity <= 5:
        raise ValueError(f"severity must be an integer in 1..5, got {severity!r}")


def _params(name: str, severity: int) -> Any:
    """The CIFAR-10-C parameters of one corruption at one severity."""
    _check_severity(severity)
    return CIFAR_STRENGTHS[name][severity - 1]


def _unit(images: np.ndarray) -> np.ndarray:
    return images / 255.0


def _finish(x: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> uint8 by clipping then truncating, as the reference does."""
    return cast(np.ndarray, (np.clip(x, 0, 1) * 255).astype(np.uint8))


def _finish_255(x: np.ndarray) -> np.ndarray:
    """[0, 255] floats -> uint8 by clipping then truncating."""
    return cast(np.ndarray, np.clip(x, 0, 255).astype(np.uint8))


def _gaussian(x: np.ndarray, sigma: float, mode: str = "nearest", truncate: float = 4.0) -> np.ndarray:
    """``skimage.filters.gaussian`` (same defaults) over the H, W axes of every image.

    ``x`` is [N, H, W] or [N, H, W, C]; N and C are not blurred, exactly like
    calling skimage's gaussian with ``channel_axis=-1`` on each image in turn.
    """
    sigmas = (0.0, sigma, sigma) + (0.0,) * (x.ndim - 3)
    return cast(np.ndarray, scipy.ndimage.gaussian_filter(x, sigmas, mode=mode, truncate=truncate))


def _resample_positions(n_in: int, n_out: int, first: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Where outputs ``first..first+count-1`` of ``scipy.ndimage.zoom(order=1)`` sample.

    scipy maps output i to input i*(n_in-1)/(n_out-1) (grid_mode=False); returns the
    left neighbour index and the interpolation weight of the right neighbour.
    """
    pos = np.arange(first, first + count) * ((n_in - 1) / (n_out - 1))
    left = np.minimum(np.floor(pos).astype(np.intp), n_in - 2)
    return left, pos - left


def _clipped_zoom(x: np.ndarray, factor: float) -> np.ndarray:
    """Zoom the centre of every image by ``factor`` and centre-trim back to H x W.

    Same result as the reference (scipy.ndimage.zoom order=1 on the central
    ceil(H/factor) crop, then the centre H x W), but computed as two separable
    linear interpolations over the whole batch and only for the kept pixels, which
    is what keeps zoom blur (up to 26 zooms per image) fast.
    """
    size = x.shape[1]
    crop = int(np.ceil(size / factor))
    top = (size - crop) // 2
    x = x[:, top : top + crop, top : top + crop]
    zoomed = int(round(crop * factor))
    trim = (zoomed - size) // 2
    left, weight = _resample_positions(crop, zoomed, trim, size)
    for axis in (1, 2):
        shape = [1] * x.ndim
        shape[axis] = size
        w = weight.reshape(shape).astype(x.dtype)
        lo = np.take(x, left, axis=axis)
        hi = np.take(x, left + 1, axis=axis)
        x = lo + (hi - lo) * w
    return x


def _motion_blur(x: np.ndarray, radius: int, sigma: float, angles: np.ndarray) -> np.ndarray:
    """ImageMagick-style motion blur of each image along its own angle (degrees).

    The algorithm of imagecorruptions' ``_motion_blur`` (a one-sided Gaussian of
    width 2*radius+1 whose taps are the image shifted along the angle, edges
    replicated) with the same arithmetic, so results are identical; the shifted
    copies are views into one edge-padded image instead of two np.roll per tap.
    """
    width = 2 * radius + 1
    taps = np.arange(width)
    kernel = np.exp(-(taps**2) / (2 * sigma**2)) / (np.sqrt(2 * np.pi) * sigma)
    kernel = kernel / np.sum(kernel)
    h, w = x.shape[1:3]
    pad = [(width, width), (width, width)] + [(0, 0)] * (x.ndim - 3)
    out = np.empty(x.shape, dtype=np.float64)
    for i, angle in enumerate(angles):
        padded = np.pad(x[i].astype(np.float64), pad, mode="edge")
        along_y = width * np.sin(np.deg2rad(angle))
        along_x = width * np.cos(np.deg2rad(angle))
        length = math.hypot(along_y, along_x)
        dys = -np.ceil(taps * along_y / length - 0.5).astype(np.intp)
        dxs = -np.ceil(taps * along_x / length - 0.5).astype(np.intp)
        # like the reference, stop at the first tap that leaves the image
        inside = (np.abs(dys) < h) & (np.abs(dxs) < w)
        count = width if inside.all() else int(np.argmin(inside))
        acc = np.zeros(x.shape[1:], dtype=np.float64)
        for k in range(count):
            top, left = width - dys[k], width - dxs[k]
            acc = acc + kernel[k] * padded[top : top + h, left : left + w]
        out[i] = acc
    return out


def _plasma_fractal(n: int, mapsize: int, decay: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` diamond-square height maps in [0, 1], [n, mapsize, mapsize], drawn from rng.

    Hendrycks' ``plasma_fractal`` (as in imagecorruptions) run for the whole batch at
    once: the same steps and draws per map, with the random numbers taken from
    ``rng`` instead of numpy's global RNG.
    """
    maps = np.zeros((n, mapsize, mapsize))
    step = mapsize
    wibble = 100.0

    def wibbled_mean(total: np.ndarray) -> np.ndarray:
        return total / 4 + wibble * rng.uniform(-wibble, wibble, total.shape)

    while step >= 2:
        half = step // 2
        corners = maps[:, 0:mapsize:step, 0:mapsize:step]
        squares = corners + np.roll(corners, -1, axis=1)
        squares += np.roll(squares, -1, axis=2)
        maps[:, half:mapsize:step, half:mapsize:step] = wibbled_mean(squares)
        centres = maps[:, half:mapsize:step, half:mapsize:step]
        left = centres + np.roll(centres, 1, axis=1) + (corners + np.roll(corners, -1, axis=2))
        maps[:, 0:mapsize:step, half:mapsize:step] = wibbled_mean(left)
        top = centres + np.roll(centres, 1, axis=2) + (corners + np.roll(corners, -1, axis=1))
        maps[:, half:mapsize:step, 0:mapsize:step] = wibbled_mean(top)
        step //= 2
        wibble /= decay
    maps -= maps.min(axis=(1, 2), keepdims=True)
    return cast(np.ndarray, maps / maps.max(axis=(1, 2), keepdims=True))


@functools.lru_cache(maxsize=1)
def _frost_textures() -> tuple[np.ndarray, ...]:
    """The first five frost images of imagecorruptions, BGR, resized by 0.2 (CIFAR)."""
    folder = Path(str(load_imagecorruptions().__file__)).parent / "frost"
    textures = []
    for name in _FROST_FILES:
        image = cv2.imread(str(folder / name))
        if image is None:
            raise FileNotFoundError(f"frost texture {folder / name} is missing from the imagecorruptions package")
        textures.append(cv2.resize(image, (0, 0), fx=0.2, fy=0.2))
    return tuple(textures)


# ---------------------------------------------------------------- noise


def gaussian_noise(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Additive Gaussian noise: clip(x + N(0, sigma))."""
    sigma = _params("gaussian_noise", severity)
    x = _unit(images)
    return _finish(x + rng.normal(0.0, sigma, size=x.shape))


def shot_noise(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Poisson (photon) noise: poisson(x*c)/c."""
    photons = _params("shot_noise", severity)
    x = _unit(images)
    return _finish(rng.poisson(x * photons) / photons)


def impulse_noise(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Salt-and-pepper noise with skimage's ``random_noise(mode='s&p')`` semantics.

    A fraction ``amount`` of all values (each channel separately) is replaced, half
    by 1 (salt) and half by 0 (pepper); drawn from ``rng`` for the whole batch.
    """
    amount = _params("impulse_noise", severity)
    x = _unit(images)
    hit = rng.random(x.shape) < amount
    salt = rng.random(x.shape) < 0.5
    return _finish(np.where(hit, salt.astype(x.dtype), x))


def speckle_noise(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative noise: x + x*N(0, sigma)."""
    sigma = _params("speckle_noise", severity)
    x = _unit(images)
    return _finish(x + x * rng.normal(0.0, sigma, size=x.shape))


# ---------------------------------------------------------------- blur


def gaussian_blur(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """skimage Gaussian filter (mode 'nearest', truncate 4) per image and channel."""
    sigma = _params("gaussian_blur", severity)
    return _finish(_gaussian(_unit(images), sigma))


def glass_blur(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Blur, locally shuffle pixels, blur again.

    The reference code's "swap" ``x[h,w], x[h',w'] = x[h',w'], x[h,w]`` acts on numpy
    views: the right side is two views, so x[h,w] first receives x[h',w'] and then
    x[h',w'] receives the (already overwritten) x[h,w], i.e. x[h',w'] is only copied
    into x[h,w]. That copy is what generated the released CIFAR-10-C, so it is what
    we do, for all N images at once per position.
    """
    sigma, delta, iterations = _params("glass_blur", severity)
    size = images.shape[1]
    x = (_gaussian(_unit(images), sigma) * 255).astype(np.uint8)
    batch = np.arange(len(x))
    for _ in range(iterations):
        for h in range(size - delta, delta, -1):
            for w in range(size - delta, delta, -1):
                dx, dy = rng.integers(-delta, delta, size=(2, len(x)))
                x[batch, h, w] = x[batch, h + dy, w + dx]
    return _finish(_gaussian(x / 255.0, sigma))


def defocus_blur(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Convolution with an anti-aliased disk (imagecorruptions' ``disk``), per channel."""
    radius, alias_blur = _params("defocus_blur", severity)
    kernel = load_imagecorruptions().corruptions.disk(radius=radius, alias_blur=alias_blur)
    x = _unit(images)
    # filter2D filters each channel of a 3-channel image with the same kernel
    out = np.stack([cv2.filter2D(image, -1, kernel) for image in x])
    return _finish(out)


def motion_blur(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """ImageMagick-style motion blur along a random angle in U(-45, 45) degrees."""
    radius, sigma = _params("motion_blur", severity)
    angles = rng.uniform(-45, 45, size=len(images))
    return _finish_255(_motion_blur(images, radius, sigma, angles))


def zoom_blur(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Average of the image and its centre zooms by 1.00, 1.01, ... up to the table value."""
    top = _params("zoom_blur", severity)
    # Same expression as the reference code; float rounding makes severities 1 and 2
    # end at 1.06 and 1.11 (7 and 12 factors) there too.
    factors = np.arange(1, top + 0.01, 0.01)
    x = _unit(images).astype(np.float32)
    out = np.zeros_like(x)
    for factor in factors:
        out += _clipped_zoom(x, factor)
    return _finish((x + out) / (len(factors) + 1))


# ---------------------------------------------------------------- weather


def snow(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Zoomed, thresholded and motion-blurred noise flakes over a brightened image."""
    mean, std, zoom, threshold, radius, sigma, blend = _params("snow", severity)
    n, h, w, _ = images.shape
    x = _unit(images).astype(np.float32)
    flakes = rng.normal(mean, std, size=(n, h, w, 1))
    flakes = _clipped_zoom(flakes, zoom)
    flakes[flakes < threshold] = 0
    flakes = np.clip(flakes[..., 0], 0, 1)
    angles = np.asarray(rng.uniform(-135, -45, size=n))
    flakes = _motion_blur(flakes, radius, sigma, angles)
    # the reference blurs an 8-bit image, so the layer is quantised to 1/255 steps
    flakes = (np.round(np.clip(flakes, 0, 1) * 255) / 255.0)[..., None]
    gray = (x @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]
    x = blend * x + (1 - blend) * np.maximum(x, gray * 1.5 + 0.5)
    return _finish(x + flakes + np.rot90(flakes, k=2, axes=(1, 2)))


def frost(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Blend with a random crop of one of five frost textures (resized by 0.2)."""
    image_weight, frost_weight = _params("frost", severity)
    textures = _frost_textures()
    n, h, w, _ = images.shape
    which = np.asarray(rng.integers(len(textures), size=n))
    heights = np.array([textures[k].shape[0] for k in which])
    widths = np.array([textures[k].shape[1] for k in which])
    tops = rng.integers(0, heights - h)
    lefts = rng.integers(0, widths - w)
    layer = np.stack(
        [textures[k][t : t + h, left : left + w, ::-1] for k, t, left in zip(which, tops, lefts)]  # BGR -> RGB
    )
    return _finish_255(image_weight * images.astype(np.float64) + frost_weight * layer)


def fog(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Add a plasma-fractal haze, rescaled so the image keeps its maximum."""
    strength, decay = _params("fog", severity)
    n, h, w, _ = images.shape
    haze = _plasma_fractal(n, CIFAR_SIZE, decay, rng)[:, :h, :w]
    x = _unit(images)
    peak = x.max(axis=(1, 2, 3), keepdims=True)
    x = x + strength * haze[..., None]
    return _finish(x * peak / (peak + strength))


# ---------------------------------------------------------------- digital


def brightness(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Raise the HSV value channel."""
    shift = _params("brightness", severity)
    hsv = skimage.color.rgb2hsv(_unit(images))
    hsv[..., 2] = np.clip(hsv[..., 2] + shift, 0, 1)
    return _finish(skimage.color.hsv2rgb(hsv))


def saturate(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Scale and shift the HSV saturation channel."""
    scale, offset = _params("saturate", severity)
    hsv = skimage.color.rgb2hsv(_unit(images))
    hsv[..., 1] = np.clip(hsv[..., 1] * scale + offset, 0, 1)
    return _finish(skimage.color.hsv2rgb(hsv))


def contrast(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Shrink each channel towards its per-image mean."""
    factor = _params("contrast", severity)
    x = _unit(images)
    means = x.mean(axis=(1, 2), keepdims=True)
    return _finish((x - means) * factor + means)


def jpeg_compression(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Round trip through PIL's JPEG encoder at the table's quality."""
    quality = _params("jpeg_compression", severity)
    out = np.empty_like(images)
    for i, image in enumerate(images):
        buffer = BytesIO()
        Image.fromarray(image).save(buffer, "JPEG", quality=quality)
        buffer.seek(0)
        out[i] = np.asarray(Image.open(buffer).convert("RGB"))
    return out


def pixelate(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """PIL BOX downscale to int(size*f), then BOX upscale back."""
    factor = _params("pixelate", severity)
    n, h, w, _ = images.shape
    small = (int(w * factor), int(h * factor))
    out = np.empty_like(images)
    for i, image in enumerate(images):
        pil = Image.fromarray(image).resize(small, Image.Resampling.BOX)
        out[i] = np.asarray(pil.resize((w, h), Image.Resampling.BOX))
    return out


def elastic_transform(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Random affine warp followed by a smooth random displacement field.

    Table values are fractions of the 32 px CIFAR image size.
    """
    alpha, sigma, affine = (v * CIFAR_SIZE for v in _params("elastic_transform", severity))
    n, h, w, c = images.shape
    x = _unit(images).astype(np.float32)

    # three points around the centre, each moved by U(-affine, affine)
    centre = np.array([h, w], dtype=np.float32) // 2
    half = min(h, w) // 3
    src = np.array([centre + half, [centre[0] + half, centre[1] - half], centre - half], dtype=np.float32)
    moves = rng.uniform(-affine, affine, size=(n, 3, 2)).astype(np.float32)

    fields = rng.uniform(-1, 1, size=(2, n, h, w))
    dx = (_gaussian(fields[0], sigma, mode="reflect", truncate=3) * alpha).astype(np.float32)
    dy = (_gaussian(fields[1], sigma, mode="reflect", truncate=3) * alpha).astype(np.float32)

    rows, cols, chans = np.meshgrid(np.arange(h), np.arange(w), np.arange(c), indexing="ij")
    out = np.empty_like(x)
    for i in range(n):
        matrix = cv2.getAffineTransform(src, src + moves[i])
        warped = cv2.warpAffine(x[i], matrix, (w, h), borderMode=cv2.BORDER_REFLECT_101)
        coords = (rows + dy[i][..., None], cols + dx[i][..., None], chans)
        out[i] = scipy.ndimage.map_coordinates(warped, coords, order=1, mode="reflect")
    return _finish(out)


def spatter(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Water drops (mode 0) or mud splashes (mode 1) from thresholded smooth noise."""
    mean, std, sigma, threshold, intensity, mode = _params("spatter", severity)
    n, h, w, _ = images.shape
    x = _unit(images).astype(np.float32)
    liquid = _gaussian(rng.normal(mean, std, size=(n, h, w)), sigma)
    liquid[liquid < threshold] = 0
    if mode == 0:
        # The reference casts liquid*255 straight to uint8; clipping first only
        # differs for the (practically unseen) values above 1, where a bare cast wraps.
        liquid8 = (np.clip(liquid, 0, 1) * 255).astype(np.uint8)
        mask = np.empty((n, h, w), dtype=np.float32)
        for i, layer in enumerate(liquid8):
            dist = 255 - cv2.Canny(layer, 50, 150)
            dist = cv2.distanceTransform(dist, cv2.DIST_L2, 5)
            _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
            dist = cv2.blur(dist, (3, 3)).astype(np.uint8)
            dist = cv2.equalizeHist(dist)
            dist = cv2.filter2D(dist, cv2.CV_8U, _EMBOSS)
            dist = cv2.blur(dist, (3, 3)).astype(np.float32)
            mask[i] = layer * dist
        peak = mask.max(axis=(1, 2), keepdims=True)
        # an image without any drop would divide 0 by 0 (NaN) in the reference
        mask = np.divide(mask, peak, out=np.zeros_like(mask), where=peak > 0) * intensity
        return _finish(x + mask[..., None] * _WATER_RGB)
    mask = _gaussian((liquid > threshold).astype(np.float32), intensity)
    mask[mask < 0.8] = 0
    mask = mask[..., None]
    return _finish(x * (1 - mask) + _MUD_RGB * mask)


# ---------------------------------------------------------------- dispatch

CORRUPTIONS: dict[str, Corruption] = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "defocus_blur": defocus_blur,
    "glass_blur": glass_blur,
    "motion_blur": motion_blur,
    "zoom_blur": zoom_blur,
    "snow": snow,
    "frost": frost,
    "fog": fog,
    "brightness": brightness,
    "contrast": contrast,
    "elastic_transform": elastic_transform,
    "pixelate": pixelate,
    "jpeg_compression": jpeg_compression,
    "speckle_noise": speckle_noise,
    "gaussian_blur": gaussian_blur,
    "spatter": spatter,
    "saturate": saturate,
}


def _imagenet_strength(images: np.ndarray, name: str, severity: int, rng: np.random.Generator) -> np.ndarray:
    """imagecorruptions (ImageNet-C strengths) per image, its global RNG seeded from rng."""
    package = load_imagecorruptions()
    out = np.empty_like(images)
    caller_state = np.random.get_state()
    try:
        for i, image in enumerate(images):
            np.random.seed(int(rng.integers(0, 2**32)))
            out[i] = package.corrupt(image, severity=severity, corruption_name=name)
    finally:
        np.random.set_state(caller_state)  # leave the rest of the process's global RNG alone
    return out


def corrupt(
    images: np.ndarray,
    name: str,
    severity: int,
    rng: np.random.Generator,
    strength: str = "cifar",
) -> np.ndarray:
    """Apply one named corruption to a uint8 [N,H,W,3] batch.

    ``strength="cifar"`` uses the CIFAR-10-C table (32x32 images only);
    ``"imagenet"`` uses imagecorruptions' ImageNet-C strengths (images >= 32 px).
    """
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; valid names: {', '.join(ALL_CORRUPTIONS)}")
    _check_severity(severity)
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise ValueError("images must be a uint8 array of shape [N, H, W, 3]")
    if strength == "cifar":
        if images.shape[1:3] != (CIFAR_SIZE, CIFAR_SIZE):
            raise ValueError(f"CIFAR-10-C strengths are defined for 32x32 images, got {images.shape[1:3]}")
        return CORRUPTIONS[name](images, severity, rng)
    if strength == "imagenet":
        return _imagenet_strength(images, name, severity, rng)
    raise ValueError(f"strength must be 'cifar' or 'imagenet', got {strength!r}")
