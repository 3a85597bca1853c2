"""CIFAR-10-C natural corruptions: 19 corruptions x 5 severities, and a reader for the
official ``.npy`` release.

The corruptions follow the CIFAR-specific generation script of the CIFAR-10-C benchmark
(Hendrycks & Dietterich, ``make_cifar_c.py``): same operations, same per-severity
parameters (:data:`SEVERITY_PARAMS`; *not* the ImageNet-C strengths), re-implemented on
numpy/scipy/Pillow without OpenCV or ImageMagick.  Where the script calls a library
routine it is reproduced from that routine's definition:

* ``motion_blur`` / ``snow``: ImageMagick's ``MotionBlurImage`` -- a one-sided line
  kernel of ``2*ceil(radius)+1`` taps with Gaussian weights ``exp(-i^2 / 2 sigma^2)``,
  taps offset by ``round(i cos a), round(i sin a)``, edge-replicated borders;
* ``defocus_blur``: anti-aliased disk (3x3 Gaussian of a binary disk) correlated with
  reflect-101 borders (OpenCV ``filter2D``);
* ``spatter``: OpenCV ``Canny`` (3x3 Sobel, L1 magnitude, non-maximum suppression,
  hysteresis), the 5x5 chamfer ``distanceTransform`` (1, 1.4, 2.1969), ``equalizeHist``;
* ``elastic_transform``: OpenCV ``getAffineTransform``/``warpAffine`` (bilinear,
  reflect-101) followed by scipy ``map_coordinates`` (order 1, mode ``reflect``);
* ``frost``: the texture is decimated by 5 exactly as OpenCV's bilinear ``resize`` with
  ``fx = fy = 0.2`` does (sample ``5 i + 2``), then a random crop is blended in;
* ``pixelate`` / ``jpeg_compression``: Pillow (BOX resampling, JPEG at the script's
  qualities);
* ``glass_blur``: the script's local pixel shuffle, vectorised; it reproduces the
  script's actual behaviour, in which the tuple "swap" of numpy views copies the
  neighbour into the pixel (it does not swap) and ``randint(-1, 1)`` draws offsets in
  {-1, 0}.  Because of this every pixel reads an untouched neighbour, so one pass per
  iteration is exact (tests check it against the literal loop).

Quirks of the script that affect the statistics are kept: ``frost`` draws one of the
first five textures only (``randint(5)``), the fog plasma map is 32x32, images are
quantised to 8 bits where the script goes through ``uint8`` (glass blur's intermediate,
the snow layer, JPEG).  The script's final ``np.uint8(...)`` truncation of every output
is optional here (``quantize=True``).

Images are float arrays ``(N, C, H, W)`` with values in ``[0, 1]`` and ``C`` in
{1, 3}; every corruption returns the same shape and dtype, clipped to ``[0, 1]``.
Randomness comes only from the ``numpy.random.Generator`` passed in, so a seed fixes the
result.  ``severity=0`` is the identity for every corruption.

Grayscale images (MNIST 28x28, scikit-learn digits 8x8): every corruption except
``saturate`` applies (:func:`applicable`).  ``saturate`` scales HSV saturation, which is
identically 0 for gray pixels (severities 4-5 would add a red tint), so it is *not
applicable* and :func:`corrupt` refuses it.  Coloured overlays use their luminance
(0.299 R + 0.587 G + 0.114 B) on one channel: the frost texture, spatter's water and mud
colours; ``snow``'s gray image is the image itself; ``brightness`` reduces to adding to
the gray value.  All parameters are in CIFAR pixel units (designed for 32x32) and are
used unchanged at other sizes, except ``elastic_transform``, whose parameters the script
writes as fractions of the image size and which therefore scales with ``min(H, W)``.
For 28x28 MNIST this is close to the CIFAR strength; on 8x8 digits the blurs and
geometric corruptions are much stronger relative to the image.  Images must be at least
8x8; ``frost`` needs them smaller than its textures (at most 62x62).

Corruption list (``CORRUPTIONS`` order: the 15 benchmark corruptions, then the 4 extra
"validation" ones): noise (gaussian_noise, shot_noise, impulse_noise), blur
(defocus_blur, glass_blur, motion_blur, zoom_blur), weather (snow, frost, fog),
digital (brightness, contrast, elastic_transform, pixelate, jpeg_compression), extra
(speckle_noise, gaussian_blur, spatter, saturate).
"""

from __future__ import annotations

import functools
import io
import math
import os
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..errors import EpsimError

__all__ = [
    "CORRUPTIONS",
    "STANDARD_CORRUPTIONS",
    "EXTRA_CORRUPTIONS",
    "SEVERITY_PARAMS",
    "COLOR_ONLY",
    "FROST_FILES",
    "FROST_DIR_ENV",
    "applicable",
    "corrupt",
    "default_frost_dir",
    "load_cifar10c",
]

STANDARD_CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog",
    "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
EXTRA_CORRUPTIONS = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
CORRUPTIONS = STANDARD_CORRUPTIONS + EXTRA_CORRUPTIONS

COLOR_ONLY = frozenset({"saturate"})
"""Corruptions that have no meaning on 1-channel images."""

FROST_DIR_ENV = "EPSIM_FROST_DIR"
FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg", "frost6.jpg")
_FROST_USED = FROST_FILES[:5]  # the script draws np.random.randint(5): frost6 is never used
_FROST_DECIMATE = 5  # cv2.resize(fx=fy=0.2, INTER_LINEAR) samples pixel 5 i + 2
_FROST_MAX_SIDE = 62  # smallest used texture is 560x315 -> 112x63; crops need start < 63 - side

_MIN_SIDE = 8
_CHUNK = 1000  # images per chunk: bounds memory; results depend on it, so it is fixed

_LUMA = np.array([0.299, 0.587, 0.114])

# CIFAR-specific parameters of make_cifar_c.py, severities 1..5.
SEVERITY_PARAMS: dict = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),  # noise std
    "shot_noise": (500, 250, 100, 75, 50),  # photons per unit intensity
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),  # salt & pepper amount
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),  # radius, alias blur
    "glass_blur": ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),  # sigma, delta, iterations
    "motion_blur": ((10, 1), (10, 1.5), (10, 2), (10, 2.5), (12, 3)),  # radius, sigma
    "zoom_blur": tuple(tuple(np.arange(1, top, 0.01)) for top in (1.06, 1.11, 1.16, 1.21, 1.26)),
    "snow": (
        (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
        (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
        (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
    ),  # loc, scale, zoom, threshold, blur radius, blur sigma, image weight
    "frost": ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),  # image, frost weights
    "fog": ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),  # strength, wibble decay
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),  # added to HSV value
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),  # factor about the per-channel mean
    "elastic_transform": (
        (0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03),
    ),  # alpha, sigma, affine jitter -- fractions of the image size (IMSIZE = 32 in the script)
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),  # downscale factor
    "jpeg_compression": (80, 65, 58, 50, 40),  # JPEG quality
    "speckle_noise": (0.06, 0.1, 0.12, 0.16, 0.2),  # multiplicative noise std
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1),  # sigma
    "spatter": (
        (0.62, 0.1, 0.7, 0.7, 0.5, 0),
        (0.65, 0.1, 0.8, 0.7, 0.5, 0),
        (0.65, 0.3, 1, 0.69, 0.5, 0),
        (0.65, 0.1, 0.7, 0.69, 0.6, 1),
        (0.65, 0.1, 0.5, 0.68, 0.6, 1),
    ),  # loc, scale, sigma, threshold, intensity/mud sigma, mode (0 water, 1 mud)
    "saturate": ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)),  # scale, shift of HSV saturation
}


# --------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------


def applicable(name: str, image_shape) -> bool:
    """Whether corruption ``name`` is defined for images of ``image_shape``.

    Args:
        name: one of :data:`CORRUPTIONS`.
        image_shape: ``(C, H, W)`` or ``(N, C, H, W)``.

    Returns:
        False for colour-only corruptions (``saturate``) on 1-channel images, for images
        with ``C`` not in {1, 3} or a side below 8 pixels, and for ``frost`` on images
        larger than 62x62 (larger than its textures); True otherwise.
    """
    _check_name(name)
    shape = tuple(int(s) for s in image_shape)
    if len(shape) == 4:
        shape = shape[1:]
    if len(shape) != 3:
        raise EpsimError(f"image_shape must be (C, H, W) or (N, C, H, W), got {tuple(image_shape)}")
    c, h, w = shape
    if c not in (1, 3) or min(h, w) < _MIN_SIDE:
        return False
    if c == 1 and name in COLOR_ONLY:
        return False
    if name == "frost" and max(h, w) > _FROST_MAX_SIDE:
        return False
    return True


def corrupt(
    x: np.ndarray,
    name: str,
    severity: int,
    rng: np.random.Generator | int | None = None,
    *,
    frost_dir: str | os.PathLike | None = None,
    quantize: bool = False,
) -> np.ndarray:
    """Apply one CIFAR-10-C corruption at one severity.

    Args:
        x: images ``(N, C, H, W)``, float, values in ``[0, 1]``, ``C`` in {1, 3}.
        name: one of :data:`CORRUPTIONS`.
        severity: 0 (identity) to 5.
        rng: ``numpy.random.Generator`` (or an int seed) -- the only source of
            randomness; None draws a fresh unseeded generator.
        frost_dir: folder with the frost textures (``frost``); default
            :func:`default_frost_dir`.
        quantize: truncate the result to 8-bit levels (``floor(255 y) / 255``) as the
            official script does when it stores ``np.uint8(...)``.

    Returns:
        Corrupted images, same shape and dtype as ``x``, values in ``[0, 1]``.

    Raises:
        EpsimError: unknown name, bad severity, bad images, corruption not applicable
            to these images, missing frost textures.
    """
    _check_name(name)
    severity = _check_severity(severity, allow_zero=True)
    x = _check_images(x)
    if not applicable(name, x.shape):
        raise EpsimError(_not_applicable_reason(name, x.shape))
    if severity == 0:
        return x.copy()
    if rng is None or isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        rng = np.random.default_rng(rng)
    if not isinstance(rng, np.random.Generator):
        raise EpsimError(f"rng must be a numpy.random.Generator or an int seed, got {type(rng).__name__}")
    params = SEVERITY_PARAMS[name][severity - 1]
    fn = _FUNCTIONS[name]
    extra = {"frost_dir": frost_dir} if name == "frost" else {}
    out = np.empty_like(x)
    for start in range(0, len(x), _CHUNK):
        chunk = x[start:start + _CHUNK].astype(np.float64)
        y = np.clip(fn(chunk, params, rng, **extra), 0.0, 1.0)
        if quantize:
            y = np.floor(y * 255.0 + 1e-6) / 255.0
        out[start:start + _CHUNK] = y
    return out


def default_frost_dir() -> Path:
    """``$EPSIM_FROST_DIR``, else ``<data dir>/frost`` (data dir: ``$EPSIM_DATA_DIR``, else ``./data``)."""
    env = os.environ.get(FROST_DIR_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    data = os.environ.get("EPSIM_DATA_DIR", "").strip()
    return (Path(data).expanduser() if data else Path("data")) / "frost"


def load_cifar10c(
    directory: str | os.PathLike | None,
    corruption: str,
    severity: int,
) -> tuple:
    """Read one corruption at one severity from the official CIFAR-10-C ``.npy`` release.

    The release holds ``<corruption>.npy`` ``(50000, 32, 32, 3)`` uint8 -- the 10000
    test images at severity 1, then 2, ..., 5 -- and ``labels.npy`` ``(50000,)``.  Files
    with another multiple of 5 images (subsets) are read the same way.

    Args:
        directory: folder holding the ``.npy`` files, or a folder with a ``CIFAR-10-C``
            sub-folder; None: ``$EPSIM_DATA_DIR`` (else ``./data``) ``/CIFAR-10-C``.
        corruption: one of :data:`CORRUPTIONS`.
        severity: 1 to 5.

    Returns:
        ``(x, y)``: images ``(n, 3, 32, 32)`` float32 in ``[0, 1]`` and labels ``(n,)``
        int64, ``n`` = images per severity (10000 in the release).

    Raises:
        EpsimError: unknown corruption, bad severity, missing/invalid files.
    """
    _check_name(corruption)
    severity = _check_severity(severity, allow_zero=False)
    folder = _cifar10c_folder(directory)
    images = _load_npy(folder / f"{corruption}.npy")
    labels = _load_npy(folder / "labels.npy")
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3):
        raise EpsimError(
            f"{folder / (corruption + '.npy')} holds {images.dtype} {images.shape}; expected uint8 (5*n, 32, 32, 3)"
        )
    total = images.shape[0]
    if total == 0 or total % 5:
        raise EpsimError(f"{folder / (corruption + '.npy')} holds {total} images; expected a positive multiple of 5")
    n = total // 5
    if labels.ndim != 1 or labels.shape[0] not in (total, n) or not np.issubdtype(labels.dtype, np.integer):
        raise EpsimError(
            f"{folder / 'labels.npy'} holds {labels.dtype} {labels.shape}; expected integer ({total},) to match"
            f" {corruption}.npy"
        )
    lo = (severity - 1) * n
    x = np.asarray(images[lo:lo + n]).transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0)
    y = np.asarray(labels[lo:lo + n] if labels.shape[0] == total else labels[:]).astype(np.int64)
    if y.min(initial=0) < 0 or y.max(initial=0) > 9:
        raise EpsimError(f"{folder / 'labels.npy'} has labels outside 0..9")
    return np.ascontiguousarray(x), y


# --------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------


def _check_name(name) -> None:
    if not isinstance(name, str) or name not in SEVERITY_PARAMS:
        raise EpsimError(f"unknown corruption {name!r}; choose one of: {', '.join(CORRUPTIONS)}")


def _check_severity(severity, *, allow_zero: bool) -> int:
    lo = 0 if allow_zero else 1
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or not lo <= severity <= 5:
        hint = "" if allow_zero or severity != 0 else " (severity 0 is the clean test set: load it with epsim.data)"
        raise EpsimError(f"severity must be an integer {lo}..5, got {severity!r}{hint}")
    return int(severity)


def _check_images(x) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 4:
        raise EpsimError(f"images must be (N, C, H, W), got shape {x.shape}; add a batch axis with x[None]")
    if not np.issubdtype(x.dtype, np.floating):
        raise EpsimError(f"images must be float in [0, 1], got {x.dtype}; divide 8-bit images by 255")
    if x.size:
        lo, hi = float(np.min(x)), float(np.max(x))
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0.0 or hi > 1.0:
            raise EpsimError(f"image values must lie in [0, 1], got min {lo:g} max {hi:g}")
    return x


def _not_applicable_reason(name: str, shape) -> str:
    _, c, h, w = shape
    if c not in (1, 3):
        return f"{name} needs 1 or 3 channels, got images of shape {tuple(shape)}"
    if min(h, w) < _MIN_SIDE:
        return f"{name} needs images of at least {_MIN_SIDE}x{_MIN_SIDE} pixels, got {h}x{w}"
    if c == 1 and name in COLOR_ONLY:
        return f"{name} changes colour saturation and is not applicable to 1-channel images"
    return f"frost needs images at most {_FROST_MAX_SIDE}x{_FROST_MAX_SIDE} (its textures), got {h}x{w}"


# --------------------------------------------------------------------------
# building blocks (all on float64 (N, C, H, W) unless stated)
# --------------------------------------------------------------------------


def _gaussian(x: np.ndarray, sigma: float, mode: str = "nearest", truncate: float = 4.0) -> np.ndarray:
    """skimage.filters.gaussian over the last two axes (the script's ``gaussian``)."""
    if sigma <= 0:
        return x.copy()
    sig = (0.0,) * (x.ndim - 2) + (float(sigma), float(sigma))
    return ndimage.gaussian_filter(x, sigma=sig, mode=mode, truncate=truncate)


def _luma(x: np.ndarray) -> np.ndarray:
    """Gray value (N, 1, H, W) of (N, C, H, W) images (OpenCV RGB2GRAY weights)."""
    if x.shape[1] == 1:
        return x
    return np.tensordot(_LUMA, x, axes=([0], [1]))[:, None]


def _color(rgb, channels: int) -> np.ndarray:
    """An RGB colour in [0, 1] as (1, C, 1, 1); its luminance on one channel."""
    rgb = np.asarray(rgb, dtype=np.float64)
    v = rgb if channels == 3 else np.array([_LUMA @ rgb])
    return v[None, :, None, None]


def _reflect_index(i: np.ndarray, n: int, mode: str) -> np.ndarray:
    """Map integer indices into 0..n-1: ``'mirror'`` = reflect-101, ``'reflect'`` = half-sample."""
    if mode == "mirror":
        if n == 1:
            return np.zeros_like(i)
        period = 2 * n - 2
        i = np.mod(i, period)
        return np.where(i >= n, period - i, i)
    period = 2 * n
    i = np.mod(i, period)
    return np.where(i >= n, period - 1 - i, i)


def _bilinear(x: np.ndarray, rows: np.ndarray, cols: np.ndarray, mode: str) -> np.ndarray:
    """Sample images (N, C, H, W) at per-image coordinates rows, cols (N, H, W), bilinearly."""
    n, _, h, w = x.shape
    r0 = np.floor(rows)
    c0 = np.floor(cols)
    fr = (rows - r0)[:, None]
    fc = (cols - c0)[:, None]
    r0 = r0.astype(np.int64)
    c0 = c0.astype(np.int64)
    ra, rb = _reflect_index(r0, h, mode), _reflect_index(r0 + 1, h, mode)
    ca, cb = _reflect_index(c0, w, mode), _reflect_index(c0 + 1, w, mode)
    b = np.arange(n)[:, None, None]

    def at(r, c):
        return x[b, :, r, c].transpose(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)

    top = at(ra, ca) * (1 - fc) + at(ra, cb) * fc
    bottom = at(rb, ca) * (1 - fc) + at(rb, cb) * fc
    return top * (1 - fr) + bottom * fr


@functools.lru_cache(maxsize=64)
def _zoom_matrix(crop: int, zoom: float, size: int) -> np.ndarray:
    """(size, crop) matrix of scipy.ndimage.zoom(order=1) by ``zoom``, centre-trimmed to size."""
    m = ndimage.zoom(np.eye(crop), (zoom, 1.0), order=1)
    top = (m.shape[0] - size) // 2
    return m[top:top + size]


def _clipped_zoom(x: np.ndarray, zoom: float) -> np.ndarray:
    """The script's ``clipped_zoom``: centre crop of ceil(H/zoom), zoomed back (bilinear), trimmed."""
    h, w = x.shape[-2:]
    ch, cw = int(np.ceil(h / zoom)), int(np.ceil(w / zoom))
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = x[..., top:top + ch, left:left + cw]
    a, b = _zoom_matrix(ch, float(zoom), h), _zoom_matrix(cw, float(zoom), w)
    return a @ crop @ b.T


def _motion_blur(x: np.ndarray, radius: float, sigma: float, angles: np.ndarray) -> np.ndarray:
    """ImageMagick MotionBlurImage(radius, sigma, angle) per image; angles (N,) in degrees."""
    n, _, h, w = x.shape
    width = int(2 * math.ceil(radius) + 1)
    i = np.arange(width, dtype=np.float64)
    kernel = np.exp(-(i ** 2) / (2.0 * sigma * sigma))
    kernel /= kernel.sum()
    a = np.deg2rad(np.asarray(angles, dtype=np.float64))
    dcol = np.ceil(i[None, :] * np.cos(a)[:, None] - 0.5).astype(np.int64)  # (N, width)
    drow = np.ceil(i[None, :] * np.sin(a)[:, None] - 0.5).astype(np.int64)
    rows, cols = np.arange(h), np.arange(w)
    flat = x.reshape(n, x.shape[1], h * w)
    out = np.zeros_like(flat)
    for t in range(width):
        if kernel[t] < 1e-12:  # weights only decrease; the rest changes nothing at 8-bit precision
            break
        r = np.clip(rows[None, :] + drow[:, t, None], 0, h - 1)  # edge pixels
        c = np.clip(cols[None, :] + dcol[:, t, None], 0, w - 1)
        idx = (r[:, :, None] * w + c[:, None, :]).reshape(n, 1, h * w)
        out += kernel[t] * np.take_along_axis(flat, idx, axis=2)
    return out.reshape(x.shape)


def _rgb_to_hsv(x: np.ndarray) -> np.ndarray:
    """skimage.color.rgb2hsv on (N, 3, H, W): returns (N, 3, H, W) with H, S, V in [0, 1]."""
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    v = x.max(axis=1)
    delta = v - x.min(axis=1)
    safe = np.where(delta == 0, 1.0, delta)
    s = np.where(v == 0, 0.0, delta / np.where(v == 0, 1.0, v))
    hue = np.where(r == v, (g - b) / safe, 0.0)
    hue = np.where(g == v, 2.0 + (b - r) / safe, hue)
    hue = np.where(b == v, 4.0 + (r - g) / safe, hue)
    hue = np.where(delta == 0, 0.0, (hue / 6.0) % 1.0)
    return np.stack([hue, s, v], axis=1)


def _hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """skimage.color.hsv2rgb on (N, 3, H, W)."""
    h, s, v = hsv[:, 0], hsv[:, 1], hsv[:, 2]
    hi = np.floor(h * 6.0)
    f = h * 6.0 - hi
    p = v * (1 - s)
    q = v * (1 - f * s)
    t = v * (1 - (1 - f) * s)
    hi = hi.astype(np.int64) % 6
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = [np.select([hi == k for k in range(6)], [c[ch] for c in choices]) for ch in range(3)]
    return np.stack(out, axis=1)


# --------------------------------------------------------------------------
# the corruptions: f(x (N, C, H, W) float64 in [0, 1], params, rng) -> (N, C, H, W)
# --------------------------------------------------------------------------


def _gaussian_noise(x, c, rng):
    return x + rng.normal(scale=c, size=x.shape)


def _shot_noise(x, c, rng):
    return rng.poisson(x * c) / c


def _impulse_noise(x, c, rng):
    # skimage.util.random_noise(mode='s&p', amount=c, salt_vs_pepper=0.5): per value
    flipped = rng.random(x.shape) < c
    salted = rng.random(x.shape) < 0.5
    out = x.copy()
    out[flipped & salted] = 1.0
    out[flipped & ~salted] = 0.0
    return out


def _speckle_noise(x, c, rng):
    return x + x * rng.normal(scale=c, size=x.shape)


def _gaussian_blur(x, c, rng):
    return _gaussian(x, c)


@functools.lru_cache(maxsize=16)
def _disk(radius: float, alias_blur: float) -> np.ndarray:
    """The script's anti-aliased disk kernel, with its all-zero border rows/cols trimmed."""
    if radius <= 8:
        grid = np.arange(-8, 8 + 1)
        ksize = 3
    else:
        grid = np.arange(-radius, radius + 1)
        ksize = 5
    xx, yy = np.meshgrid(grid, grid)
    disk = np.asarray(xx ** 2 + yy ** 2 <= radius ** 2, dtype=np.float32)
    disk /= disk.sum()
    # cv2.GaussianBlur(ksize, sigmaX=alias_blur), reflect-101 borders
    k = np.exp(-((np.arange(ksize) - (ksize - 1) / 2) ** 2) / (2 * alias_blur ** 2))
    k /= k.sum()
    disk = ndimage.correlate1d(disk.astype(np.float64), k, axis=0, mode="mirror")
    disk = ndimage.correlate1d(disk, k, axis=1, mode="mirror")
    rows = np.flatnonzero(disk.any(axis=1))
    cols = np.flatnonzero(disk.any(axis=0))
    lo = min(rows[0], cols[0], disk.shape[0] - 1 - rows[-1], disk.shape[1] - 1 - cols[-1])
    return disk[lo:disk.shape[0] - lo, lo:disk.shape[1] - lo]  # keep it centred


def _defocus_blur(x, c, rng):
    k = _disk(float(c[0]), float(c[1]))
    return ndimage.correlate(x, k[None, None], mode="mirror")


def _glass_shuffle(img: np.ndarray, offsets: np.ndarray, delta: int) -> np.ndarray:
    """The script's pixel "swap" loop on (N, C, H, W); offsets (iters, nh, nw, 2, N) = (dx, dy).

    Rows h = H-delta .. delta+1 (descending) and likewise columns; the script's
    ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` on numpy views sets x[h, w] = x[h', w'] and
    leaves x[h', w'].  With delta = 1 the offsets are in {-1, 0}, every source pixel is
    visited after its reader, so one gather per iteration is exact; other deltas use the loop.
    """
    n, _, h, w = img.shape
    hs = np.arange(h - delta, delta, -1)
    ws = np.arange(w - delta, delta, -1)
    out = img.copy()
    if delta == 1:
        for it in range(offsets.shape[0]):
            dx, dy = offsets[it, :, :, 0], offsets[it, :, :, 1]  # (nh, nw, N)
            src_r = (hs[:, None, None] + dy).transpose(2, 0, 1)
            src_c = (ws[None, :, None] + dx).transpose(2, 0, 1)
            vals = out[np.arange(n)[:, None, None], :, src_r, src_c]  # (N, nh, nw, C)
            out[:, :, hs[0]:hs[-1] - 1:-1, ws[0]:ws[-1] - 1:-1] = vals.transpose(0, 3, 1, 2)
        return out
    b = np.arange(n)
    for it in range(offsets.shape[0]):
        for i, hh in enumerate(hs):
            for j, ww in enumerate(ws):
                dx, dy = offsets[it, i, j, 0], offsets[it, i, j, 1]
                out[b, :, hh, ww] = out[b, :, hh + dy, ww + dx]
    return out


def _glass_blur(x, c, rng):
    sigma, delta, iters = c
    n, _, h, w = x.shape
    img = np.floor(np.clip(_gaussian(x, sigma), 0, 1) * 255.0)  # np.uint8(... * 255)
    nh, nw = len(range(h - delta, delta, -1)), len(range(w - delta, delta, -1))
    offsets = rng.integers(-delta, delta, size=(iters, nh, nw, 2, n))  # randint: high exclusive
    img = _glass_shuffle(img, offsets, delta)
    return _gaussian(img / 255.0, sigma)


def _motion_blur_corruption(x, c, rng):
    angles = rng.uniform(-45, 45, size=len(x))
    return _motion_blur(x, c[0], c[1], angles)


def _zoom_blur(x, c, rng):
    out = np.zeros_like(x)
    for z in c:
        out += _clipped_zoom(x, z)
    return (x + out) / (len(c) + 1)


def _snow(x, c, rng):
    n, ch, h, w = x.shape
    layer = rng.normal(loc=c[0], scale=c[1], size=(n, 1, h, w))
    layer = _clipped_zoom(layer, c[2])
    layer[layer < c[3]] = 0
    layer = np.floor(np.clip(layer, 0, 1) * 255.0)  # PIL 'L' image
    angles = rng.uniform(-135, -45, size=n)
    layer = np.rint(_motion_blur(layer, c[4], c[5], angles)) / 255.0  # 8-bit PNG back
    x = c[6] * x + (1 - c[6]) * np.maximum(x, _luma(x) * 1.5 + 0.5)
    return x + layer + layer[:, :, ::-1, ::-1]


@functools.lru_cache(maxsize=4)
def _frost_textures(folder: str, stamp: tuple) -> tuple:
    """Decimated frost textures (h, w, 3) float in 0..255, in FROST_FILES order (used ones)."""
    from PIL import Image

    out = []
    for name in _FROST_USED:
        path = Path(folder) / name
        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB"), dtype=np.float64)
        except Exception as exc:  # unreadable image file
            raise EpsimError(f"cannot read frost texture {path}: {exc}") from None
        d = _FROST_DECIMATE
        rows = np.arange(int(round(arr.shape[0] / d))) * d + d // 2
        cols = np.arange(int(round(arr.shape[1] / d))) * d + d // 2
        out.append(arr[np.minimum(rows, arr.shape[0] - 1)][:, np.minimum(cols, arr.shape[1] - 1)])
    return tuple(out)


def _load_frost(frost_dir) -> tuple:
    folder = Path(frost_dir).expanduser() if frost_dir is not None else default_frost_dir()
    missing = [f for f in _FROST_USED if not (folder / f).is_file()]
    if missing:
        raise EpsimError(
            f"frost textures missing in {folder}: {', '.join(missing)} (needs {', '.join(_FROST_USED)};"
            f" set ${FROST_DIR_ENV} or pass frost_dir)"
        )
    stamp = tuple((folder / f).stat().st_mtime_ns for f in _FROST_USED)
    return _frost_textures(str(folder.resolve()), stamp)


def _frost(x, c, rng, frost_dir=None):
    textures = _load_frost(frost_dir)
    n, ch, h, w = x.shape
    idx = rng.integers(5, size=n)
    heights = np.array([t.shape[0] for t in textures])[idx]
    widths = np.array([t.shape[1] for t in textures])[idx]
    if (heights <= h).any() or (widths <= w).any():
        raise EpsimError(f"frost textures in the frost folder are too small for {h}x{w} images")
    r0 = rng.integers(0, heights - h)
    c0 = rng.integers(0, widths - w)
    crops = np.stack([textures[k][r:r + h, q:q + w] for k, r, q in zip(idx, r0, c0)]).transpose(0, 3, 1, 2)
    crops = crops / 255.0
    if ch == 1:
        crops = _luma(crops)
    return c[0] * x + c[1] * crops


def _plasma_fractal(n: int, mapsize: int, wibbledecay: float, rng) -> np.ndarray:
    """The script's diamond-square plasma fractal, (n, mapsize, mapsize) in [0, 1]."""
    maps = np.zeros((n, mapsize, mapsize))
    step = mapsize
    wibble = 100.0

    def wibbled_mean(a):
        return a / 4 + wibble * rng.uniform(-wibble, wibble, a.shape)

    while step >= 2:
        half = step // 2
        corners = maps[:, 0::step, 0::step]
        sq = corners + np.roll(corners, -1, axis=1)
        sq = sq + np.roll(sq, -1, axis=2)
        maps[:, half::step, half::step] = wibbled_mean(sq)
        dr = maps[:, half::step, half::step]
        ul = maps[:, 0::step, 0::step]
        lt = dr + np.roll(dr, 1, axis=1) + ul + np.roll(ul, -1, axis=2)
        maps[:, 0::step, half::step] = wibbled_mean(lt)
        tt = dr + np.roll(dr, 1, axis=2) + ul + np.roll(ul, -1, axis=1)
        maps[:, half::step, 0::step] = wibbled_mean(tt)
        step //= 2
        wibble /= wibbledecay
    maps -= maps.min(axis=(1, 2), keepdims=True)
    return maps / maps.max(axis=(1, 2), keepdims=True)


def _fog(x, c, rng):
    n, _, h, w = x.shape
    mapsize = max(32, 1 << (max(h, w) - 1).bit_length())
    max_val = x.max(axis=(1, 2, 3), keepdims=True)
    plasma = _plasma_fractal(n, mapsize, c[1], rng)[:, None, :h, :w]
    x = x + c[0] * plasma
    return x * max_val / (max_val + c[0])


def _brightness(x, c, rng):
    if x.shape[1] == 1:  # V = gray value, S = 0
        return np.clip(x + c, 0, 1)
    hsv = _rgb_to_hsv(x)
    hsv[:, 2] = np.clip(hsv[:, 2] + c, 0, 1)
    return _hsv_to_rgb(hsv)


def _saturate(x, c, rng):
    hsv = _rgb_to_hsv(x)
    hsv[:, 1] = np.clip(hsv[:, 1] * c[0] + c[1], 0, 1)
    return _hsv_to_rgb(hsv)


def _contrast(x, c, rng):
    means = x.mean(axis=(2, 3), keepdims=True)
    return (x - means) * c + means


def _elastic_transform(x, c, rng):
    n, _, h, w = x.shape
    size = min(h, w)
    alpha, sigma, jitter = (f * size for f in c)
    # random affine: cv2.getAffineTransform(pts1, pts2) + warpAffine(reflect-101, bilinear)
    cx, cy, sq = w // 2, h // 2, size // 3
    pts1 = np.array([[cx + sq, cy + sq], [cx + sq, cy - sq], [cx - sq, cy - sq]], dtype=np.float64)
    pts2 = pts1[None] + rng.uniform(-jitter, jitter, size=(n, 3, 2)).astype(np.float32)
    src = np.concatenate([pts1, np.ones((3, 1))], axis=1)  # (3, 3): rows [x, y, 1]
    m = np.linalg.solve(src[None], pts2)  # (N, 3, 2): [x y 1] @ m = pts2 -> forward map
    a = m[:, :2, :].transpose(0, 2, 1)  # (N, 2, 2) acting on column (x, y)
    t = m[:, 2, :]  # (N, 2)
    a_inv = np.linalg.inv(a)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    d = np.stack([xx, yy])[None] - t[:, :, None, None]  # (N, 2, H, W)
    s = np.einsum("nij,njhw->nihw", a_inv, d)
    x = _bilinear(x, s[:, 1], s[:, 0], mode="mirror")
    # smooth random displacement: skimage gaussian(mode='reflect', truncate=3) * alpha
    dx = _gaussian(rng.uniform(-1, 1, size=(n, h, w)), sigma, mode="reflect", truncate=3) * alpha
    dy = _gaussian(rng.uniform(-1, 1, size=(n, h, w)), sigma, mode="reflect", truncate=3) * alpha
    dx, dy = dx.astype(np.float32), dy.astype(np.float32)
    return _bilinear(x, yy[None] + dy, xx[None] + dx, mode="reflect")


@functools.lru_cache(maxsize=32)
def _box_matrix(n: int, m: int) -> np.ndarray:
    """(m, n) matrix of Pillow's BOX resize of a length-n signal to length m."""
    from PIL import Image

    img = Image.fromarray(np.eye(n, dtype=np.float32))
    return np.asarray(img.resize((m, n), Image.Resampling.BOX), dtype=np.float64).T


def _pixelate(x, c, rng):
    _, _, h, w = x.shape
    h2, w2 = int(h * c), int(w * c)  # the script: int(32 * c) for both sides
    rows = _box_matrix(h2, h) @ _box_matrix(h, h2)
    cols = _box_matrix(w2, w) @ _box_matrix(w, w2)
    return rows @ x @ cols.T


def _jpeg_compression(x, c, rng):
    from PIL import Image

    u8 = np.rint(x * 255.0).astype(np.uint8).transpose(0, 2, 3, 1)
    out = np.empty(u8.shape, dtype=np.float64)
    for k, img in enumerate(u8):
        buf = io.BytesIO()
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(buf, "JPEG", quality=int(c))
        buf.seek(0)
        with Image.open(buf) as im:
            dec = np.asarray(im, dtype=np.float64)
        out[k] = dec.reshape(img.shape)
    return out.transpose(0, 3, 1, 2) / 255.0


# ---- spatter: OpenCV pieces on (N, H, W) uint8-valued arrays ------------------------

_TG22 = int(0.4142135623730950488016887242097 * (1 << 15) + 0.5)
_PLANE8 = np.zeros((3, 3, 3), dtype=bool)
_PLANE8[1] = True  # 8-connectivity inside each image, none across the batch


def _canny(img: np.ndarray, low: float, high: float) -> np.ndarray:
    """cv2.Canny(img, low, high) (aperture 3, L1 gradient) on (N, H, W); boolean edges."""
    img = img.astype(np.int64)
    sob = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]])
    dx = ndimage.correlate(img, sob[None], mode="nearest")  # BORDER_REPLICATE
    dy = ndimage.correlate(img, sob.T[None], mode="nearest")
    mag = np.abs(dx) + np.abs(dy)
    p = np.pad(mag, ((0, 0), (1, 1), (1, 1)))  # zero magnitude outside

    def nb(dr, dc):
        h, w = mag.shape[1:]
        return p[:, 1 + dr:1 + dr + h, 1 + dc:1 + dc + w]

    ax, ay = np.abs(dx), np.abs(dy) << 15
    tg22 = ax * _TG22
    tg67 = tg22 + (ax << 16)
    horiz = ay < tg22
    vert = ~horiz & (ay > tg67)
    diag = ~horiz & ~vert
    pos = (dx ^ dy) >= 0  # s = +1
    keep = np.where(horiz, (mag > nb(0, -1)) & (mag >= nb(0, 1)), False)
    keep |= vert & (mag > nb(-1, 0)) & (mag >= nb(1, 0))
    keep |= diag & pos & (mag > nb(-1, -1)) & (mag > nb(1, 1))
    keep |= diag & ~pos & (mag > nb(-1, 1)) & (mag > nb(1, -1))
    cand = keep & (mag > low)
    labels, count = ndimage.label(cand, structure=_PLANE8)
    strong = np.zeros(count + 1, dtype=bool)
    strong[np.unique(labels[cand & (mag > high)])] = True
    strong[0] = False
    return strong[labels]


def _chamfer5(zero: np.ndarray) -> np.ndarray:
    """cv2.distanceTransform(DIST_L2, 5): 5x5 chamfer distance to the nearest ``zero`` pixel."""
    a, b, c = 1.0, 1.4, 2.1969
    n, h, w = zero.shape
    inf = 1e9
    d = np.full((n, h + 4, w + 4), inf)
    z = np.pad(zero, ((0, 0), (2, 2), (2, 2)))
    ramp = np.arange(w) * a
    for y in range(2, h + 2):  # forward pass
        pr = d[:, y - 1]
        pr2 = d[:, y - 2]
        cand = np.minimum.reduce([
            pr2[:, 1:w + 1] + c, pr2[:, 3:w + 3] + c, pr[:, 0:w] + c, pr[:, 1:w + 1] + b,
            pr[:, 2:w + 2] + a, pr[:, 3:w + 3] + b, pr[:, 4:w + 4] + c,
        ])
        cand = np.where(z[:, y, 2:w + 2], 0.0, cand)
        d[:, y, 2:w + 2] = np.minimum.accumulate(cand - ramp, axis=1) + ramp  # left neighbour + a
    for y in range(h + 1, 1, -1):  # backward pass
        nx = d[:, y + 1]
        nx2 = d[:, y + 2]
        cand = np.minimum.reduce([
            d[:, y, 2:w + 2], nx2[:, 3:w + 3] + c, nx2[:, 1:w + 1] + c, nx[:, 4:w + 4] + c,
            nx[:, 3:w + 3] + b, nx[:, 2:w + 2] + a, nx[:, 1:w + 1] + b, nx[:, 0:w] + c,
        ])
        rev = cand[:, ::-1]
        d[:, y, 2:w + 2] = (np.minimum.accumulate(rev - ramp, axis=1) + ramp)[:, ::-1]
    return d[:, 2:h + 2, 2:w + 2]


def _box3(img: np.ndarray) -> np.ndarray:
    """cv2.blur(img, (3, 3)) (reflect-101) on (N, H, W), float result."""
    return ndimage.uniform_filter(img.astype(np.float64), size=(1, 3, 3), mode="mirror")


def _equalize_hist(img: np.ndarray) -> np.ndarray:
    """cv2.equalizeHist on (N, H, W) integer arrays in 0..255."""
    n = img.shape[0]
    flat = img.reshape(n, -1).astype(np.int64)
    total = flat.shape[1]
    hist = np.bincount((np.arange(n)[:, None] * 256 + flat).ravel(), minlength=n * 256).reshape(n, 256)
    out = np.empty_like(flat)
    for k in range(n):
        first = int(np.flatnonzero(hist[k])[0])
        if hist[k, first] == total:
            out[k] = first
            continue
        scale = 255.0 / (total - hist[k, first])
        lut = np.zeros(256)
        lut[first + 1:] = np.cumsum(hist[k, first + 1:]) * np.float32(scale)
        out[k] = np.clip(np.rint(lut), 0, 255)[flat[k]]
    return out.reshape(img.shape)


def _spatter(x, c, rng):
    n, ch, h, w = x.shape
    liquid = rng.normal(loc=c[0], scale=c[1], size=(n, h, w))
    liquid = _gaussian(liquid, c[2])
    liquid[liquid < c[3]] = 0
    if c[5] == 0:  # water drops
        layer = np.floor(np.clip(liquid, 0, 1) * 255.0)  # (liquid * 255).astype(uint8)
        edges = _canny(layer, 50, 150)
        dist = np.minimum(_chamfer5(edges), 20.0)  # distance to edges, THRESH_TRUNC 20
        dist = np.floor(_box3(dist))
        dist = _equalize_hist(dist)
        ker = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]], dtype=np.float64)
        dist = np.clip(np.rint(ndimage.correlate(dist.astype(np.float64), ker[None], mode="mirror")), 0, 255)
        dist = np.rint(_box3(dist))
        m = layer * dist
        peak = m.max(axis=(1, 2), keepdims=True)
        m = np.divide(m, peak, out=np.zeros_like(m), where=peak > 0) * c[4]
        return x + m[:, None] * _color((175 / 255, 238 / 255, 238 / 255), ch)  # pale turquoise
    m = (liquid > c[3]).astype(np.float64)  # mud
    m = _gaussian(m, c[4])
    m[m < 0.8] = 0
    m = m[:, None]
    return x * (1 - m) + m * _color((63 / 255, 42 / 255, 20 / 255), ch)


_FUNCTIONS: dict = {
    "gaussian_noise": _gaussian_noise,
    "shot_noise": _shot_noise,
    "impulse_noise": _impulse_noise,
    "defocus_blur": _defocus_blur,
    "glass_blur": _glass_blur,
    "motion_blur": _motion_blur_corruption,
    "zoom_blur": _zoom_blur,
    "snow": _snow,
    "frost": _frost,
    "fog": _fog,
    "brightness": _brightness,
    "contrast": _contrast,
    "elastic_transform": _elastic_transform,
    "pixelate": _pixelate,
    "jpeg_compression": _jpeg_compression,
    "speckle_noise": _speckle_noise,
    "gaussian_blur": _gaussian_blur,
    "spatter": _spatter,
    "saturate": _saturate,
}
assert tuple(_FUNCTIONS) == CORRUPTIONS == tuple(SEVERITY_PARAMS)


# --------------------------------------------------------------------------
# CIFAR-10-C release reader helpers
# --------------------------------------------------------------------------


def _cifar10c_folder(directory) -> Path:
    if directory is None:
        data = os.environ.get("EPSIM_DATA_DIR", "").strip()
        base = Path(data).expanduser() if data else Path("data")
        folder = base / "CIFAR-10-C"
    else:
        base = Path(directory).expanduser()
        if not base.is_dir():
            what = "is not a directory" if base.exists() else "does not exist"
            raise EpsimError(f"CIFAR-10-C directory {base} {what}")
        folder = base if (base / "labels.npy").is_file() or not (base / "CIFAR-10-C").is_dir() else base / "CIFAR-10-C"
    if not folder.is_dir():
        raise EpsimError(
            f"CIFAR-10-C folder {folder} does not exist; unpack the official release (CIFAR-10-C.tar from"
            " zenodo.org/record/2535967) there or pass its directory"
        )
    return folder


def _load_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise EpsimError(f"missing CIFAR-10-C file {path}; expected the official release's <corruption>.npy and labels.npy")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise EpsimError(f"cannot read {path} as a .npy array: {exc}") from None
