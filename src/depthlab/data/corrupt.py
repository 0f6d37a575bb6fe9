"""Corrupted test sets: MNIST-C's 15 corruptions and CIFAR-10-C's 15 + 4, severities 1-5, written in numpy,
scipy and Pillow.

Parameters are those of the reference generators, cited per corruption:

- MNIST-C: Mu & Gilmer (2019), `google-research/mnist-c`, corruptions.py. Its benchmark uses ONE severity per
  corruption (the default argument of each function there, `MNISTC_SEVERITY` here); the tables of five levels
  are that file's too. stripe, dotted_line, zigzag and canny_edges have no levels: their severity is 0.
- CIFAR-10-C: Hendrycks & Dietterich (2019), `hendrycks/robustness`, ImageNet-C/create_c/make_cifar_c.py: the 15
  corruptions of the benchmark plus the 4 extra ones (speckle noise, gaussian blur, spatter, saturate), whose
  parameters differ from ImageNet-C's.

The code is depthlab's own. Where the reference calls ImageMagick (motion blur, snow) the blur is built as its
kernel: MagickMotionBlurImage's one-sided Gaussian of 2·⌈radius⌉+1 taps along the angle. scikit-image's Gaussian,
affine warp, salt-and-pepper noise, HSV conversion and Canny detector, and OpenCV's disk-kernel blur and affine
warp, are reimplemented with scipy.ndimage. Two things remain behind the optional `corrupt` extra (OpenCV) or
data files: CIFAR-10-C spatter at severities 1-3 (its water drops use OpenCV's Canny, distance transform and
histogram equalisation) and frost (its six texture photographs, read from `frost_dir()` when present). Without
them `available` says why and the corruption is skipped.

Determinism: image i of a set is corrupted with its own generator, seeded by (seed, corruption, severity, i),
so a corrupted image does not depend on which other images are corrupted with it. Values are rounded to uint8
(the reference truncates with np.uint8; rounding makes a zero-strength corruption exactly the identity).
"""

from __future__ import annotations

import io
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import ndimage

from depthlab.data import registry
from depthlab.errors import DepthlabError, SpecError

CORRUPT_VERSION = 1  # bumped with any change that alters a corrupted image (cached sets of another version are stale)
SEVERITIES = (1, 2, 3, 4, 5)
NO_LEVELS = 0  # the severity of a corruption without levels (MNIST-C's stripe, dotted_line, zigzag, canny_edges)
EXTRA_HINT = "pip install 'depthlab[corrupt]'"


class CorruptionUnavailable(DepthlabError):
    """A corruption needs what is not installed here (OpenCV) or data that is missing (frost textures)."""


# -- helpers (each a small piece of image processing the corruptions share) ------------------------------------


def gaussian(x: np.ndarray, sigma: float, mode: str = "nearest", truncate: float = 4.0) -> np.ndarray:
    """Gaussian blur of an H×W(×C) image over its two spatial axes: scikit-image's `filters.gaussian` defaults
    (mode 'nearest', truncate 4, channels blurred separately)."""
    if sigma <= 0:
        return x.astype(np.float64, copy=True)
    sigmas = (sigma, sigma) + (0,) * (x.ndim - 2)
    return ndimage.gaussian_filter(x.astype(np.float64), sigmas, mode=mode, truncate=truncate)


def warp_affine(x: np.ndarray, matrix: np.ndarray, mode: str = "grid-constant") -> np.ndarray:
    """Output pixel (x=col, y=row) reads the input at `matrix` @ (x, y, 1) (a 2×3 matrix in x, y order: the
    inverse map of scikit-image's `transform.warp`), bilinear, per channel. 'grid-constant' pads with 0 and
    interpolates across the border like scikit-image's constant mode; 'mirror' is OpenCV's BORDER_REFLECT_101."""
    a = np.asarray(matrix, dtype=np.float64)
    rc = np.array([[a[1, 1], a[1, 0]], [a[0, 1], a[0, 0]]])  # the same map in (row, col) order
    offset = np.array([a[1, 2], a[0, 2]])
    return np.stack([ndimage.affine_transform(x[..., c], rc, offset, order=1, mode=mode, cval=0.0)
                     for c in range(x.shape[-1])], axis=-1)


def centred(matrix2x2, h: int, w: int) -> np.ndarray:
    """The 2×3 affine inverse map of a linear map that keeps the image centre fixed (MNIST-C's translation
    a3 = 13.5·(1 - a1 - a2), b3 = 13.5·(1 - b1 - b2) for 28×28, written for any size)."""
    (a1, a2), (b1, b2) = matrix2x2
    cx, cy = (w - 1) / 2, (h - 1) / 2
    return np.array([[a1, a2, cx - a1 * cx - a2 * cy], [b1, b2, cy - b1 * cx - b2 * cy]])


def clipped_zoom(x: np.ndarray, factor: float) -> np.ndarray:
    """Zoom into the centre by `factor` (bilinear) and crop back to the input size."""
    h = x.shape[0]
    ch = int(np.ceil(h / factor))
    top = (h - ch) // 2
    zoomed = ndimage.zoom(x[top:top + ch, top:top + ch], (factor, factor) + (1,) * (x.ndim - 2), order=1)
    trim = (zoomed.shape[0] - h) // 2
    return zoomed[trim:trim + h, trim:trim + h]


def plasma_fractal(rng: np.random.Generator, mapsize: int, decay: float) -> np.ndarray:
    """A mapsize×mapsize height map in [0, 1] by the diamond-square algorithm (the references' fog texture):
    each new point is the mean of its four neighbours plus noise whose amplitude shrinks by `decay` per level."""
    if mapsize & (mapsize - 1):
        raise ValueError(f"mapsize must be a power of two, got {mapsize}")
    grid = np.zeros((mapsize, mapsize))
    step, wibble = mapsize, 100.0

    def noisy_mean(total):
        return total / 4 + wibble * rng.uniform(-wibble, wibble, total.shape)

    while step >= 2:
        half = step // 2
        corners = grid[0:mapsize:step, 0:mapsize:step]
        square = corners + np.roll(corners, -1, axis=0)
        square = square + np.roll(square, -1, axis=1)
        grid[half:mapsize:step, half:mapsize:step] = noisy_mean(square)  # centres of the squares
        centres = grid[half:mapsize:step, half:mapsize:step]
        corners = grid[0:mapsize:step, 0:mapsize:step]
        across = centres + np.roll(centres, 1, axis=0) + corners + np.roll(corners, -1, axis=1)
        grid[0:mapsize:step, half:mapsize:step] = noisy_mean(across)  # edge midpoints (diamonds)
        down = centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=0)
        grid[half:mapsize:step, 0:mapsize:step] = noisy_mean(down)
        step //= 2
        wibble /= decay
    grid -= grid.min()
    return grid / grid.max()


def motion_blur_kernel(radius: float, sigma: float, angle: float) -> list[tuple[float, int, int]]:
    """ImageMagick's MotionBlurImage kernel as (weight, row offset, col offset) taps: width = 2·⌈radius⌉+1
    (GetOptimalKernelWidth1D), weights exp(-i²/2σ²) normalised, tap i at i·(cos θ, sin θ) in (x, y), rounded."""
    width = int(2 * math.ceil(radius) + 1) if radius > 0 else 1
    weights = np.exp(-np.arange(width) ** 2 / (2 * sigma * sigma))
    weights /= weights.sum()
    theta = math.radians(angle)
    return [(float(weights[i]), int(math.ceil(i * math.sin(theta) - 0.5)), int(math.ceil(i * math.cos(theta) - 0.5)))
            for i in range(width)]


def motion_blur(x: np.ndarray, radius: float, sigma: float, angle: float) -> np.ndarray:
    """Blur along `angle` (degrees): each pixel averages the pixels behind it with the motion kernel's weights;
    beyond the border the edge pixel repeats (ImageMagick's default virtual pixels)."""
    taps = motion_blur_kernel(radius, sigma, angle)
    pad = max(max(abs(dy), abs(dx)) for _, dy, dx in taps)
    h, w = x.shape[:2]
    padded = np.pad(x, ((pad, pad), (pad, pad)) + ((0, 0),) * (x.ndim - 2), mode="edge")
    out = np.zeros_like(x, dtype=np.float64)
    for weight, dy, dx in taps:
        out += weight * padded[pad + dy:pad + dy + h, pad + dx:pad + dx + w]
    return out


def to_uint8(x: np.ndarray) -> np.ndarray:
    """[0, 1] floats to uint8, rounded."""
    return np.rint(np.clip(x, 0, 1) * 255).astype(np.uint8)


def _pil(x: np.ndarray):
    from PIL import Image

    img = to_uint8(x)
    return Image.fromarray(img[..., 0], mode="L") if img.shape[-1] == 1 else Image.fromarray(img, mode="RGB")


def _from_pil(img, channels: int) -> np.ndarray:
    arr = np.asarray(img, dtype=np.float64) / 255
    return arr[..., None] if channels == 1 and arr.ndim == 2 else arr


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """scikit-image's `color.rgb2hsv`: V = max, S = (max - min)/max (0 where max = 0), H in [0, 1)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = rgb.max(-1)
    delta = v - rgb.min(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(v > 0, delta / np.where(v > 0, v, 1), 0.0)
        safe = np.where(delta > 0, delta, 1)
        h = np.where(r == v, (g - b) / safe, np.where(g == v, 2 + (b - r) / safe, 4 + (r - g) / safe))
    h = np.where(delta > 0, (h / 6) % 1.0, 0.0)
    return np.stack([h, s, v], axis=-1)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """The inverse of `rgb_to_hsv` (scikit-image's `color.hsv2rgb`)."""
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    i = np.floor(h * 6).astype(int) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = np.zeros(hsv.shape)
    for k, (r, g, b) in enumerate(choices):
        sel = i == k
        out[sel] = np.stack([r[sel], g[sel], b[sel]], axis=-1)
    return out


def gray(x: np.ndarray) -> np.ndarray:
    """OpenCV's RGB → gray (0.299 R + 0.587 G + 0.114 B), H×W×1 (a gray image as it is)."""
    if x.shape[-1] == 1:
        return x
    return (x[..., :3] @ np.array([0.299, 0.587, 0.114]))[..., None]


def glass_shuffle(x: np.ndarray, delta: int, iterations: int, rng: np.random.Generator, coin: bool) -> np.ndarray:
    """The references' local pixel shuffle: for every position (h, w) from the bottom-right inwards, swap the
    pixel with one up to `delta` away (offsets in [-delta, delta)); MNIST-C swaps only where a coin says so.
    Done on a list of source indices (a sequence of swaps is a permutation), not on the pixels."""
    h, w = x.shape[:2]
    if delta <= 0 or iterations <= 0:
        return x
    order = list(range(h * w))
    positions = [(r, c) for r in range(h - delta, delta, -1) for c in range(w - delta, delta, -1)]
    for _ in range(iterations):
        offsets = rng.integers(-delta, delta, size=(len(positions), 2)).tolist()
        flips = rng.random(len(positions)) < 0.5 if coin else None
        for k, (r, c) in enumerate(positions):
            if coin and not flips[k]:
                continue
            dx, dy = offsets[k]
            a, b = r * w + c, (r + dy) * w + (c + dx)
            order[a], order[b] = order[b], order[a]
    return x.reshape(h * w, -1)[order].reshape(x.shape)


def line_from_points(c0: float, r0: float, c1: float, r1: float, h: int, w: int) -> np.ndarray:
    """MNIST-C's anti-aliased line from (col c0, row r0) to (c1, r1): intensity log(1 - d/2.3) + 1 at vertical
    distance d from the line, zero outside the columns [floor(c0), ceil(c1))."""
    if c1 == c0:
        return np.zeros((h, w))
    cc, rr = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64), sparse=True)
    slope = (r1 - r0) / (c1 - c0)
    dist = np.clip(np.abs(rr - (slope * (cc - c0) + r0)), 0, 2.3 - 1e-10)
    line = np.clip(np.log(1 - dist / 2.3) + 1, 0, 1)
    line[:, :int(np.floor(c0))] = 0
    line[:, int(np.ceil(c1)):] = 0
    return line


def canny(image: np.ndarray, sigma: float = 1.0, low: float = 0.1, high: float = 0.2) -> np.ndarray:
    """Canny (1986) edges of a 2-D image in [0, 1], with the defaults of scikit-image's `feature.canny` that
    MNIST-C calls: Gaussian smoothing σ = 1 normalised by the smoothed mask (no dark rim), Sobel gradients, a
    one-pixel border dropped, non-maximum suppression along the gradient (interpolated between the two nearest
    neighbours), hysteresis between thresholds 0.1 and 0.2 with 8-connected components."""
    mask = np.ones_like(image, dtype=np.float64)
    smoothed = gaussian(image, sigma, mode="constant") / (gaussian(mask, sigma, mode="constant") + 1e-12)
    gi, gj = ndimage.sobel(smoothed, axis=0), ndimage.sobel(smoothed, axis=1)
    mag = np.hypot(gi, gj)
    inner = np.zeros(image.shape, dtype=bool)
    inner[1:-1, 1:-1] = True
    # The neighbours along the gradient: one step (gi, gj)/max(|gi|, |gj|) either way. One coordinate of the
    # step is ±1, so bilinear sampling there is the linear interpolation between the axis neighbour and the
    # diagonal one that scikit-image does octant by octant.
    step = np.maximum(np.abs(gi), np.abs(gj))
    step = np.where(step > 0, step, 1)
    rows, cols = np.indices(image.shape, dtype=np.float64)
    maxima = inner & (mag > 0)
    for sign in (1, -1):
        ahead = ndimage.map_coordinates(mag, [rows + sign * gi / step, cols + sign * gj / step], order=1,
                                        mode="constant")
        maxima &= mag >= ahead
    strong = maxima & (mag >= high)
    weak = maxima & (mag >= low)
    labels, count = ndimage.label(weak, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return np.zeros(image.shape, dtype=bool)
    keep = np.zeros(count + 1, dtype=bool)
    keep[np.unique(labels[strong])] = True
    keep[0] = False
    return keep[labels]


def affine_from_points(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2×3 affine map taking three (x, y) points `src` to `dst` (OpenCV's getAffineTransform)."""
    a = np.hstack([src, np.ones((3, 1))])
    return np.linalg.solve(a, dst).T


def resize_linear(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear resize with OpenCV's INTER_LINEAR geometry (pixel centres: src = (dst + 0.5)/scale - 0.5)."""
    rows = np.clip((np.arange(h) + 0.5) * x.shape[0] / h - 0.5, 0, x.shape[0] - 1)
    cols = np.clip((np.arange(w) + 0.5) * x.shape[1] / w - 0.5, 0, x.shape[1] - 1)
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    return np.stack([ndimage.map_coordinates(x[..., c], [rr, cc], order=1) for c in range(x.shape[-1])], -1)


# -- corruptions shared by both suites (parameters passed in; the tables live with each suite) ------------------
# Each takes x: H×W×C float64 in [0, 1], the severity's parameter p, and a generator; returns H×W×C.


def gaussian_noise(x, p, rng):
    return x + rng.normal(size=x.shape, scale=p)


def shot_noise(x, p, rng):
    """Poisson noise with p photons at full intensity (fewer photons, more noise)."""
    return rng.poisson(x * p) / float(p)


def impulse_noise(x, p, rng):
    """Salt and pepper on a fraction p of the values, half each (scikit-image's `random_noise(mode='s&p')`)."""
    hit = rng.random(x.shape) < p
    salt = rng.random(x.shape) < 0.5
    out = x.copy()
    out[hit & salt] = 1.0
    out[hit & ~salt] = 0.0
    return out


def speckle_noise(x, p, rng):
    return x + x * rng.normal(size=x.shape, scale=p)


def gaussian_blur(x, p, rng):
    return gaussian(x, p)


def contrast(x, p, rng):
    means = x.mean(axis=(0, 1), keepdims=True)
    return (x - means) * p + means


def zoom_blur(x, p, rng):
    """The mean of the image and its centre zoomed by each factor of p."""
    out = np.zeros_like(x)
    for factor in p:
        out += clipped_zoom(x, factor)
    return (x + out) / (len(p) + 1)


def pixelate(x, p, rng):
    """Box-downsample to a fraction p of the side, and back (Pillow BOX)."""
    from PIL import Image

    h, w = x.shape[:2]
    small = _pil(x).resize((int(w * p), int(h * p)), Image.BOX)
    return _from_pil(small.resize((w, h), Image.BOX), x.shape[-1])


def jpeg_compression(x, p, rng):
    from PIL import Image

    buf = io.BytesIO()
    _pil(x).save(buf, "JPEG", quality=p)
    return _from_pil(Image.open(buf), x.shape[-1])


def mud_spatter(x, p, rng, color):
    """Spatter as mud (both references' branch c[5] = 1): thresholded blurred noise masks the image with a mud
    colour. p = (loc, scale, sigma, threshold, mask sigma, kind)."""
    liquid = gaussian(rng.normal(size=x.shape[:2], loc=p[0], scale=p[1]), p[2])
    liquid[liquid < p[3]] = 0
    mask = gaussian((liquid > p[3]).astype(np.float64), p[4])
    mask[mask < 0.8] = 0
    mask = mask[..., None]
    return x * (1 - mask) + np.asarray(color, dtype=np.float64) * mask


def fog(x, p, rng, mapsize):
    """Add a plasma-fractal haze of strength p[0] (decay p[1]) and rescale by the image maximum."""
    top = x.max()
    h, w = x.shape[:2]
    haze = plasma_fractal(rng, mapsize, p[1])[:h, :w][..., None]
    return (x + p[0] * haze) * top / (top + p[0]) if top + p[0] > 0 else x


# -- MNIST-C (google-research/mnist-c, corruptions.py) -----------------------------------------------------------


def mnist_glass_blur(x, p, rng):
    """p = (sigma, max_delta, iterations): blur, shuffle pixels locally (a coin per position), blur again."""
    blurred = to_uint8(gaussian(x, p[0])) / 255.0
    return gaussian(glass_shuffle(blurred, p[1], p[2], rng, coin=True), p[0])


def mnist_motion_blur(x, p, rng):
    """p = (radius, sigma); angle uniform in [-45, 45] degrees."""
    return motion_blur(x, p[0], p[1], rng.uniform(-45, 45))


def mnist_shear(x, p, rng):
    """Shear by p (a random sign) about the centre: scikit-image's AffineTransform(shear=p) of that time,
    [[1, -sin p], [0, cos p]], as an inverse map."""
    s = p * rng.choice([-1, 1])
    return warp_affine(x, centred([[1.0, -math.sin(s)], [0.0, math.cos(s)]], *x.shape[:2]))


def mnist_rotate(x, p, rng):
    """Rotate by p radians (a random sign) about the centre, inverse map."""
    r = p * rng.choice([-1, 1])
    return warp_affine(x, centred([[math.cos(r), -math.sin(r)], [math.sin(r), math.cos(r)]], *x.shape[:2]))


def mnist_scale(x, p, rng):
    """Inverse map scaled by p > 1 about the centre: the digit shrinks to 1/p of its size."""
    return warp_affine(x, centred([[p, 0.0], [0.0, p]], *x.shape[:2]))


def mnist_translate(x, p, rng):
    """Shift by p pixels along each axis, each in a random direction."""
    dx, dy = p * rng.choice([-1, 1], 2)
    return warp_affine(x, np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]]))


def mnist_brightness(x, p, rng):
    """MNIST-C raises V in HSV by p on the gray image made RGB; for a gray pixel V is the pixel, so: x + p."""
    return x + p


def mnist_fog(x, p, rng):
    return fog(x, p, rng, mapsize=256)


def mnist_spatter(x, p, rng):
    return mud_spatter(x, p, rng, color=[63 / 255])


def stripe(x, p, rng):
    """Invert the left and right quarters (columns [0, W/4) and [3W/4, W))."""
    w = x.shape[1]
    out = x.copy()
    out[:, :w // 4] = 1 - out[:, :w // 4]
    out[:, w - w // 4:] = 1 - out[:, w - w // 4:]
    return out


def dotted_line(x, p, rng):
    """A line across the image between two random rows, every other pair of columns left out."""
    h, w = x.shape[:2]
    r0, r1 = rng.integers(0, h - 1, size=2)
    line = line_from_points(0, r0, w - 1, r1, h, w)
    for start in range(0, w, 4):
        line[:, start:start + 2] = 0
    return x + line[..., None]


def zigzag(x, p, rng):
    """MNIST-C's zigzag: segments of length 2 and amplitude 2 along a random, slightly tilted line from column 2
    to 25 (scaled to the width)."""
    h, w = x.shape[:2]
    a = b = 2.0
    c0, c1 = 2, w - 3
    r0 = int(rng.integers(0, h - 1))
    r1 = r0 + int(rng.integers(-5, 5))
    theta = math.atan((r1 - r0) / (c1 - c0))
    length = (c1 - c0) / math.cos(theta)
    points = [(0.0, 0.0)]
    r_i = 0.0
    for i in range(int((length - a) // (2 * a)) + 1):
        r_i = (-1) ** i * b
        points.append(((2 * i + 1) * a, r_i))
    last = 2 * a * (length // (2 * a))
    if length != last:
        points.append((length, r_i / (2 * (length - last))))
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    cs, rs = rot @ np.array(points).T
    cs, rs = cs + c0, rs + r0
    out = x[..., 0].copy()
    for i in range(1, len(cs)):
        out = np.clip(out + line_from_points(cs[i - 1], rs[i - 1], cs[i], rs[i], h, w), 0, 1)
    return out[..., None]


def canny_edges(x, p, rng):
    return canny(x[..., 0]).astype(np.float64)[..., None]


# -- CIFAR-10-C (hendrycks/robustness, ImageNet-C/create_c/make_cifar_c.py) --------------------------------------


def cifar_glass_blur(x, p, rng):
    blurred = to_uint8(gaussian(x, p[0])) / 255.0
    return gaussian(glass_shuffle(blurred, p[1], p[2], rng, coin=False), p[0])


def disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """A normalised disk of `radius` on a 17×17 grid (wider above radius 8), antialiased by a 3×3 Gaussian of
    σ = alias_blur (OpenCV GaussianBlur, reflect-101 border)."""
    half = 8 if radius <= 8 else int(radius)
    grid = np.arange(-half, half + 1)
    xx, yy = np.meshgrid(grid, grid)
    disk = ((xx ** 2 + yy ** 2) <= radius ** 2).astype(np.float64)
    disk /= disk.sum()
    size = 3 if radius <= 8 else 5
    taps = np.exp(-(np.arange(size) - size // 2) ** 2 / (2 * alias_blur ** 2))
    taps /= taps.sum()
    return ndimage.correlate1d(ndimage.correlate1d(disk, taps, axis=0, mode="mirror"), taps, axis=1, mode="mirror")


def cifar_defocus_blur(x, p, rng):
    kernel = disk_kernel(*p)
    return np.stack([ndimage.correlate(x[..., c], kernel, mode="mirror") for c in range(x.shape[-1])], -1)


def cifar_motion_blur(x, p, rng):
    return motion_blur(x, p[0], p[1], rng.uniform(-45, 45))


def cifar_snow(x, p, rng):
    """p = (loc, scale, zoom, threshold, blur radius, blur sigma, image weight): a layer of zoomed, thresholded
    noise, motion-blurred (angle in [-135, -45]) and added twice (once rotated by 180°) to a brightened image."""
    layer = rng.normal(size=x.shape[:2], loc=p[0], scale=p[1])
    layer = clipped_zoom(layer[..., None], p[2])
    layer[layer < p[3]] = 0
    layer = np.clip(layer, 0, 1).astype(np.float32)
    layer = np.floor(layer * 255) / 255  # the reference passes the layer through an 8-bit PNG
    layer = to_uint8(motion_blur(layer, p[4], p[5], rng.uniform(-135, -45))) / 255.0
    x = p[6] * x + (1 - p[6]) * np.maximum(x, gray(x) * 1.5 + 0.5)
    return x + layer + np.rot90(layer, k=2)


def cifar_fog(x, p, rng):
    return fog(x, p, rng, mapsize=32)


def frost_dir() -> Path:
    """Where the frost textures are looked for: $DEPTHLAB_FROST, else the data directory's corrupt/frost."""
    env = os.environ.get("DEPTHLAB_FROST")
    if env:
        return Path(env).expanduser()
    from depthlab.data.download import default_data_dir

    return default_data_dir() / "corrupt" / "frost"


FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg", "frost6.jpg")


def _frost_textures() -> list[Path]:
    folder = frost_dir()
    return [folder / f for f in FROST_FILES if (folder / f).is_file()]


def cifar_frost(x, p, rng):
    """p = (image weight, frost weight): a random 32×32 crop of one of the first five frost photographs, scaled
    to a fifth (the reference draws randint(5) of six files), added to the image."""
    from PIL import Image

    textures = _frost_textures()
    pool = [t for t in textures if t.name in FROST_FILES[:5]] or textures
    if not pool:
        raise CorruptionUnavailable(f"frost needs the texture photographs {', '.join(FROST_FILES)} (from "
                                    f"hendrycks/robustness, ImageNet-C/create_c) in {frost_dir()}")
    with Image.open(pool[int(rng.integers(len(pool)))]) as img:
        texture = np.asarray(img.convert("RGB"), dtype=np.float64) / 255
    texture = resize_linear(texture, max(1, round(texture.shape[0] * 0.2)), max(1, round(texture.shape[1] * 0.2)))
    h, w = x.shape[:2]
    top, left = int(rng.integers(0, texture.shape[0] - h)), int(rng.integers(0, texture.shape[1] - w))
    crop = texture[top:top + h, left:left + w]
    if x.shape[-1] == 1:
        crop = gray(crop)
    return p[0] * x + p[1] * crop


def cifar_brightness(x, p, rng):
    hsv = rgb_to_hsv(x)
    hsv[..., 2] = np.clip(hsv[..., 2] + p, 0, 1)
    return hsv_to_rgb(hsv)


def cifar_saturate(x, p, rng):
    hsv = rgb_to_hsv(x)
    hsv[..., 1] = np.clip(hsv[..., 1] * p[0] + p[1], 0, 1)
    return hsv_to_rgb(hsv)


def cifar_elastic(x, p, rng):
    """p = (alpha, sigma, affine jitter) in pixels: a random affine warp of three points (reflect-101 border),
    then a smooth random displacement field (σ = sigma, truncate 3) scaled by alpha, bilinear, reflect border."""
    h, w = x.shape[:2]
    centre = np.array([h, w], dtype=np.float64) // 2
    size = min(h, w) // 3
    src = np.array([centre + size, [centre[0] + size, centre[1] - size], centre - size])
    dst = src + rng.uniform(-p[2], p[2], size=src.shape)
    forward = np.vstack([affine_from_points(src, dst), [0, 0, 1]])
    x = warp_affine(x, np.linalg.inv(forward)[:2], mode="mirror")
    dx = gaussian(rng.uniform(-1, 1, size=(h, w)), p[1], mode="reflect", truncate=3) * p[0]
    dy = gaussian(rng.uniform(-1, 1, size=(h, w)), p[1], mode="reflect", truncate=3) * p[0]
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return np.stack([ndimage.map_coordinates(x[..., c], [rows + dy, cols + dx], order=1, mode="reflect")
                     for c in range(x.shape[-1])], -1)


def cifar_spatter(x, p, rng):
    """p = (loc, scale, sigma, threshold, strength, kind): kind 1 is mud (numpy), kind 0 water drops, whose
    edges and shading the reference makes with OpenCV (Canny, distance transform, histogram equalisation,
    an emboss kernel); the water branch needs the `corrupt` extra."""
    if p[5] == 1:
        return mud_spatter(x, p, rng, color=[63 / 255, 42 / 255, 20 / 255][:x.shape[-1]])
    cv2 = _opencv("spatter at severities 1-3 (water drops)")
    liquid = gaussian(rng.normal(size=x.shape[:2], loc=p[0], scale=p[1]), p[2])
    liquid[liquid < p[3]] = 0
    layer = (liquid * 255).astype(np.uint8)
    dist = 255 - cv2.Canny(layer, 50, 150)
    dist = cv2.distanceTransform(dist, cv2.DIST_L2, 5)
    _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
    dist = cv2.equalizeHist(cv2.blur(dist, (3, 3)).astype(np.uint8))
    emboss = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]])
    dist = cv2.blur(cv2.filter2D(dist, cv2.CV_8U, emboss), (3, 3)).astype(np.float32)
    shade = liquid.astype(np.float32) * dist
    shade = shade / shade.max() * p[4] if shade.max() > 0 else shade
    color = np.array([175, 238, 238][:x.shape[-1]], dtype=np.float64) / 255  # pale turquoise, RGB
    return x + shade[..., None] * color


def _opencv(what: str):
    try:
        import cv2
    except ImportError:
        raise CorruptionUnavailable(f"{what} needs OpenCV: {EXTRA_HINT}") from None
    return cv2


# -- the suites -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Corruption:
    name: str
    fn: Callable  # (x, p, rng) -> x
    levels: tuple | None  # the parameter of each severity 1-5; None: a corruption without levels
    identity: object = None  # a parameter at which the corruption leaves the image unchanged, where one exists
    needs: Callable[[int], str | None] = lambda severity: None  # why a severity cannot be made here, or None

    def param(self, severity: int):
        if self.levels is None:
            if severity != NO_LEVELS:
                raise SpecError("severity", severity, f"{NO_LEVELS} ({self.name} has no levels)")
            return None
        if severity not in SEVERITIES:
            raise SpecError("severity", severity, "1, 2, 3, 4 or 5")
        return self.levels[severity - 1]

    def severities(self, wanted=SEVERITIES) -> list[int]:
        """Of the severities `wanted`, those this corruption has (its one severity 0 when it has no levels)."""
        return [NO_LEVELS] if self.levels is None else [s for s in wanted if s in SEVERITIES]


def _needs_opencv(severities, what):
    def check(severity):
        if severity not in severities:
            return None
        try:
            import cv2  # noqa: F401
        except ImportError:
            return f"{what} needs OpenCV ({EXTRA_HINT})"
        return None

    return check


def _needs_frost(severity):
    return None if _frost_textures() else (f"frost needs its texture photographs ({', '.join(FROST_FILES)}, from "
                                           f"hendrycks/robustness) in {frost_dir()} or $DEPTHLAB_FROST")


MNIST_C = {c.name: c for c in [
    Corruption("shot_noise", shot_noise, (60, 25, 12, 5, 3)),
    Corruption("impulse_noise", impulse_noise, (.03, .06, .09, .17, .27), identity=0.0),
    Corruption("glass_blur", mnist_glass_blur, ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)),
               identity=(0.0, 0, 0)),
    Corruption("motion_blur", mnist_motion_blur, ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)), identity=(0, 1)),
    Corruption("shear", mnist_shear, (0.2, 0.4, 0.6, 0.8, 1.0), identity=0.0),
    Corruption("scale", mnist_scale, (1 / .9, 1 / .8, 1 / .7, 1 / .6, 1 / .5), identity=1.0),
    Corruption("rotate", mnist_rotate, (0.2, 0.4, 0.6, 0.8, 1.0), identity=0.0),
    Corruption("brightness", mnist_brightness, (.1, .2, .3, .4, .5), identity=0.0),
    Corruption("translate", mnist_translate, (1, 2, 3, 4, 5), identity=0),
    Corruption("stripe", stripe, None),
    Corruption("fog", mnist_fog, ((1.5, 2), (2., 2), (2.5, 1.7), (2.5, 1.5), (3., 1.4)), identity=(0.0, 2)),
    Corruption("spatter", mnist_spatter, ((0.65, 0.3, 4, 0.69, 0.6, 0), (0.65, 0.3, 3, 0.68, 0.6, 0),
                                          (0.65, 0.3, 2, 0.68, 0.5, 0), (0.65, 0.3, 1, 0.65, 1.5, 1),
                                          (0.67, 0.4, 1, 0.65, 1.5, 1))),
    Corruption("dotted_line", dotted_line, None),
    Corruption("zigzag", zigzag, None),
    Corruption("canny_edges", canny_edges, None),
]}
# The one severity of each corruption in the MNIST-C benchmark (the default arguments in corruptions.py).
MNISTC_SEVERITY = {"shot_noise": 5, "impulse_noise": 4, "glass_blur": 1, "motion_blur": 1, "shear": 2, "scale": 3,
                   "rotate": 2, "brightness": 5, "translate": 3, "stripe": 0, "fog": 5, "spatter": 4,
                   "dotted_line": 0, "zigzag": 0, "canny_edges": 0}

CIFAR10_C = {c.name: c for c in [
    # the 15 of the benchmark, in make_cifar_c.py's order
    Corruption("gaussian_noise", gaussian_noise, (0.04, 0.06, .08, .09, .10), identity=0.0),
    Corruption("shot_noise", shot_noise, (500, 250, 100, 75, 50)),
    Corruption("impulse_noise", impulse_noise, (.01, .02, .03, .05, .07), identity=0.0),
    Corruption("defocus_blur", cifar_defocus_blur, ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1))),
    Corruption("glass_blur", cifar_glass_blur, ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2),
                                                (0.4, 1, 2)), identity=(0.0, 0, 0)),
    Corruption("motion_blur", cifar_motion_blur, ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)), identity=(0, 1)),
    Corruption("zoom_blur", zoom_blur, tuple(np.arange(1, stop, step) for stop, step in
                                             ((1.06, .01), (1.11, .01), (1.16, .01), (1.21, .01), (1.26, .01))),
               identity=(1.0,)),
    Corruption("snow", cifar_snow, ((0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
                                    (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9), (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
                                    (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8))),
    Corruption("frost", cifar_frost, ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),
               needs=_needs_frost),
    Corruption("fog", cifar_fog, ((.2, 3), (.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)), identity=(0.0, 3)),
    Corruption("brightness", cifar_brightness, (.05, .1, .15, .2, .3), identity=0.0),
    Corruption("contrast", contrast, (.75, .5, .4, .3, 0.15), identity=1.0),
    Corruption("elastic_transform", cifar_elastic, tuple((32 * a, 32 * s, 32 * j) for a, s, j in
                                                         ((0, 0, .08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06),
                                                          (0.1, 0.04, 0.05), (0.1, 0.03, 0.03))),
               identity=(0.0, 0.0, 0.0)),
    Corruption("pixelate", pixelate, (0.95, 0.9, 0.85, 0.75, 0.65), identity=1.0),
    Corruption("jpeg_compression", jpeg_compression, (80, 65, 58, 50, 40)),
    # the 4 extra ones
    Corruption("speckle_noise", speckle_noise, (.06, .1, .12, .16, .2), identity=0.0),
    Corruption("gaussian_blur", gaussian_blur, (.4, .6, 0.7, .8, 1), identity=0.0),
    Corruption("spatter", cifar_spatter, ((0.62, 0.1, 0.7, 0.7, 0.5, 0), (0.65, 0.1, 0.8, 0.7, 0.5, 0),
                                          (0.65, 0.3, 1, 0.69, 0.5, 0), (0.65, 0.1, 0.7, 0.69, 0.6, 1),
                                          (0.65, 0.1, 0.5, 0.68, 0.6, 1)),
               needs=_needs_opencv((1, 2, 3), "spatter at severities 1-3 (water drops)")),
    Corruption("saturate", cifar_saturate, ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)), identity=(1.0, 0)),
]}

SUITES = {"mnist-c": MNIST_C, "cifar10-c": CIFAR10_C}


def suite_of(dataset: str) -> str:
    """The corruption suite of `dataset` (its registry entry says); SpecError for one without a suite."""
    suite = registry.entry(dataset).suite
    if suite is None:
        raise SpecError("dataset", dataset, f"one with a corruption suite: {', '.join(registry.with_suite())}")
    return suite


def corruption(suite: str, name: str) -> Corruption:
    """A corruption by name; a bad name is refused with the suite's names."""
    if suite not in SUITES:
        raise SpecError("suite", suite, ", ".join(SUITES))
    if name not in SUITES[suite]:
        raise SpecError("corruption", name, f"{', '.join(SUITES[suite])} (the {suite} suite), or all")
    return SUITES[suite][name]


def unavailable(suite: str, name: str, severity: int) -> str | None:
    """Why (suite, name, severity) cannot be generated here, or None."""
    return corruption(suite, name).needs(severity)


def _generator(seed: int, suite: str, name: str, severity: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(f"{suite}/{name}".encode()), int(severity), int(index)])


def corrupt_image(image: np.ndarray, suite: str, name: str, severity: int, seed: int, index: int = 0,
                  param=None) -> np.ndarray:
    """One image (uint8 C×H×W) corrupted, as uint8 C×H×W. `param` overrides the severity's parameter (e.g. a
    zero-strength one); image `index` of a set draws from its own generator."""
    spec = corruption(suite, name)
    reason = spec.needs(severity)
    if reason:
        raise CorruptionUnavailable(reason)
    p = spec.param(severity) if param is None else param
    x = np.moveaxis(np.asarray(image), 0, -1).astype(np.float64) / 255
    out = spec.fn(x, p, _generator(seed, suite, name, severity, index))
    if out.shape != x.shape:
        raise AssertionError(f"{suite}/{name} changed the shape {x.shape} -> {out.shape}")
    return np.moveaxis(to_uint8(out), -1, 0)


def corrupt_images(images, suite: str, name: str, severity: int, seed: int) -> np.ndarray:
    """A set of images (uint8 N×C×H×W, numpy or torch) corrupted, uint8 N×C×H×W; image i uses generator
    (seed, corruption, severity, i)."""
    arr = images.cpu().numpy() if hasattr(images, "cpu") else np.asarray(images)
    if arr.dtype != np.uint8 or arr.ndim != 4:
        raise SpecError("images", f"{arr.dtype}{arr.shape}", "uint8 N×C×H×W")
    out = np.empty_like(arr)
    for i in range(len(arr)):
        out[i] = corrupt_image(arr[i], suite, name, severity, seed, i)
    return out


def psnr(clean: np.ndarray, corrupted: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of uint8 images (inf when equal)."""
    mse = np.mean((clean.astype(np.float64) - corrupted.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)
