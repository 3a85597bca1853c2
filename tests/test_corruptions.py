"""Tests for epsim.robustness.corruptions (CIFAR-10-C corruptions and the release reader).

Offline and fast: frost textures and CIFAR-10-C ``.npy`` files are written into tmp_path;
the real-CIFAR check runs only when a CIFAR-10 test batch is found and skips otherwise.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from epsim.errors import EpsimError
from epsim.robustness import corruptions as cc
from epsim.robustness.corruptions import (
    CORRUPTIONS,
    EXTRA_CORRUPTIONS,
    FROST_FILES,
    SEVERITY_PARAMS,
    STANDARD_CORRUPTIONS,
    applicable,
    corrupt,
    load_cifar10c,
)

RANDOM = {"gaussian_noise", "shot_noise", "impulse_noise", "glass_blur", "motion_blur", "snow", "frost",
          "fog", "elastic_transform", "speckle_noise", "spatter"}


# --------------------------------------------------------------------------
# fixtures: synthetic images and frost textures
# --------------------------------------------------------------------------


def smooth_images(n, c, h, w, seed=0):
    """Natural-ish test images (n, c, h, w) in [0.05, 0.95]: smooth colour fields plus a bright square."""
    rng = np.random.default_rng(seed)
    x = ndimage.gaussian_filter(rng.normal(size=(n, c, h, w)), sigma=(0, 0, h / 8, w / 8), mode="wrap")
    x = (x - x.min(axis=(1, 2, 3), keepdims=True)) / np.ptp(x, axis=(1, 2, 3), keepdims=True)
    x[:, :, h // 4:h // 2, w // 4:w // 2] = 0.9 * x[:, :, h // 4:h // 2, w // 4:w // 2] + 0.1
    return 0.05 + 0.9 * x


@pytest.fixture(autouse=True)
def frost_dir(tmp_path_factory, monkeypatch):
    """Synthetic frost textures (the sizes of the real ones), pointed to by $EPSIM_FROST_DIR."""
    folder = tmp_path_factory.getbasetemp() / "frost"
    if not folder.is_dir():
        folder.mkdir()
        rng = np.random.default_rng(5)
        sizes = [(900, 600), (560, 315), (560, 315), (527, 350), (660, 495), (485, 323)]
        for name, (w, h) in zip(FROST_FILES, sizes):
            small = rng.integers(120, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
            Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR).save(folder / name)
    monkeypatch.setenv(cc.FROST_DIR_ENV, str(folder))
    return folder


@pytest.fixture(scope="module")
def rgb():
    return smooth_images(4, 3, 32, 32, seed=1)


def find_cifar_test_batch():
    candidates = []
    if os.environ.get("EPSIM_DATA_DIR"):
        candidates.append(Path(os.environ["EPSIM_DATA_DIR"]) / "cifar-10-batches-py" / "test_batch")
    candidates.append(Path(__file__).resolve().parents[2] / "data-cache" / "cifar10" / "cifar-10-batches-py" / "test_batch")
    return next((p for p in candidates if p.is_file()), None)


# --------------------------------------------------------------------------
# API and argument checks
# --------------------------------------------------------------------------


def test_corruption_list():
    assert len(CORRUPTIONS) == 19 and len(set(CORRUPTIONS)) == 19
    assert CORRUPTIONS == STANDARD_CORRUPTIONS + EXTRA_CORRUPTIONS and len(STANDARD_CORRUPTIONS) == 15
    assert set(EXTRA_CORRUPTIONS) == {"speckle_noise", "gaussian_blur", "spatter", "saturate"}
    assert all(len(SEVERITY_PARAMS[name]) == 5 for name in CORRUPTIONS)
    # the script's np.arange(1, 1.06, 0.01) etc.: float rounding includes the end point twice
    assert [len(z) for z in SEVERITY_PARAMS["zoom_blur"]] == [7, 12, 16, 21, 26]
    assert all(z[0] == 1.0 and np.allclose(np.diff(z), 0.01) for z in SEVERITY_PARAMS["zoom_blur"])


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_severity_zero_is_identity(name, rgb):
    out = corrupt(rgb, name, 0, np.random.default_rng(0))
    np.testing.assert_array_equal(out, rgb)
    assert out is not rgb
    gray = smooth_images(2, 1, 8, 8)
    if applicable(name, gray.shape):
        np.testing.assert_array_equal(corrupt(gray, name, 0, 0), gray)


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_shape_dtype_range_and_change(name, rgb):
    for dtype in (np.float32, np.float64):
        x = rgb.astype(dtype)
        for severity in range(1, 6):
            y = corrupt(x, name, severity, np.random.default_rng(severity))
            assert y.shape == x.shape and y.dtype == dtype
            assert np.isfinite(y).all() and y.min() >= 0.0 and y.max() <= 1.0
            assert np.abs(y - x).mean() > 1e-4, (name, severity)  # smooth images: blurs change little


@pytest.mark.parametrize("shape", [(3, 1, 28, 28), (3, 1, 8, 8), (2, 3, 20, 24)])
def test_grayscale_and_other_sizes(shape):
    x = smooth_images(*shape)
    for name in CORRUPTIONS:
        if not applicable(name, shape):
            assert name == "saturate" and shape[1] == 1
            continue
        for severity in (1, 5):
            y = corrupt(x, name, severity, np.random.default_rng(0))
            assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
            assert not np.array_equal(y, x), (name, shape, severity)


def test_applicable():
    assert all(applicable(n, (3, 32, 32)) for n in CORRUPTIONS)
    assert [n for n in CORRUPTIONS if not applicable(n, (10, 1, 28, 28))] == ["saturate"]
    assert not applicable("gaussian_noise", (2, 32, 32))  # 2 channels
    assert not applicable("gaussian_noise", (1, 4, 4))  # too small
    assert not applicable("frost", (3, 64, 64)) and applicable("frost", (3, 62, 62))
    assert applicable("fog", (1, 1, 64, 64))
    with pytest.raises(EpsimError, match="not applicable to 1-channel"):
        corrupt(smooth_images(1, 1, 28, 28), "saturate", 3, 0)
    with pytest.raises(EpsimError, match="at most 62x62"):
        corrupt(smooth_images(1, 3, 64, 64), "frost", 1, 0)
    with pytest.raises(EpsimError, match="image_shape"):
        applicable("fog", (32, 32))


def test_bad_arguments(rgb):
    rng = np.random.default_rng(0)
    with pytest.raises(EpsimError, match="unknown corruption 'blur'.*gaussian_noise"):
        corrupt(rgb, "blur", 1, rng)
    for bad in (6, -1, 1.5, True, "2"):
        with pytest.raises(EpsimError, match="severity must be an integer 0..5"):
            corrupt(rgb, "fog", bad, rng)
    with pytest.raises(EpsimError, match="divide 8-bit images by 255"):
        corrupt((rgb * 255).astype(np.uint8), "fog", 1, rng)
    with pytest.raises(EpsimError, match=r"\[0, 1\]"):
        corrupt(rgb * 2, "fog", 1, rng)
    with pytest.raises(EpsimError, match=r"\[0, 1\]"):
        corrupt(np.full((1, 3, 32, 32), np.nan), "fog", 1, rng)
    with pytest.raises(EpsimError, match=r"\(N, C, H, W\)"):
        corrupt(rgb[0], "fog", 1, rng)
    with pytest.raises(EpsimError, match="rng must be"):
        corrupt(rgb, "fog", 1, "seed")
    with pytest.raises(EpsimError, match="needs 1 or 3 channels"):
        corrupt(rgb[:, :2], "fog", 1, rng)


# --------------------------------------------------------------------------
# determinism and degradation
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_deterministic_under_seed(name, rgb):
    a = corrupt(rgb, name, 3, np.random.default_rng(42))
    b = corrupt(rgb, name, 3, np.random.default_rng(42))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(corrupt(rgb, name, 3, 42), a)  # an int seed means the same
    c = corrupt(rgb, name, 3, np.random.default_rng(43))
    assert (not np.array_equal(a, c)) == (name in RANDOM)


def test_chunking_is_seamless(rgb, monkeypatch):
    """Deterministic corruptions do not depend on the chunk size; random ones stay reproducible."""
    x = np.concatenate([rgb, rgb[:1]])
    full = corrupt(x, "zoom_blur", 2, 0)
    monkeypatch.setattr(cc, "_CHUNK", 2)
    np.testing.assert_allclose(corrupt(x, "zoom_blur", 2, 0), full, atol=1e-12)
    np.testing.assert_array_equal(corrupt(x, "snow", 4, 7), corrupt(x, "snow", 4, 7))


def mean_abs_change(x, seed=0):
    """(19, 5) mean |x' - x| per corruption and severity."""
    return np.array([[np.abs(corrupt(x, name, s, np.random.default_rng(seed + s)) - x).mean()
                      for s in range(1, 6)] for name in CORRUPTIONS])


# By the published parameters these are not monotone in pixel change: saturate desaturates
# at severities 1-2 and saturates at 3-5; spatter switches from water to mud at 4; elastic
# shrinks its affine jitter as its warp grows; frost and glass blur trade terms.
NON_MONOTONE = {"saturate", "spatter", "elastic_transform", "frost", "glass_blur"}


def check_degradation(x):
    mad = mean_abs_change(x)
    assert np.all(np.diff(mad.mean(axis=0)) > 0), mad.mean(axis=0)  # average over corruptions
    for name, row in zip(CORRUPTIONS, mad):
        if name not in NON_MONOTONE:
            assert np.all(np.diff(row) >= -0.05 * row[-1]), (name, row)
            assert row[-1] > 1.3 * row[0], (name, row)
        if name != "elastic_transform":
            assert row[-1] > row[0], (name, row)
    monotone = sum(np.all(np.diff(row) > 0) for row in mad)
    assert monotone >= 12, mad


def test_degradation_grows_with_severity(rgb):
    check_degradation(rgb)


def test_degradation_grows_with_severity_on_cifar():
    path = find_cifar_test_batch()
    if path is None:
        pytest.skip("no CIFAR-10 test batch ($EPSIM_DATA_DIR/cifar-10-batches-py or ../data-cache/cifar10)")
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    x = batch[b"data"][:6].reshape(-1, 3, 32, 32).astype(np.float32) / 255.0
    check_degradation(x)


def test_quantize_gives_8bit_levels(rgb):
    y = corrupt(rgb, "fog", 2, 0, quantize=True)
    np.testing.assert_allclose(y * 255, np.round(y * 255), atol=1e-9)
    assert np.abs(y - corrupt(rgb, "fog", 2, 0)).max() <= 1 / 255 + 1e-9


# --------------------------------------------------------------------------
# individual operations against their definitions
# --------------------------------------------------------------------------


def test_simple_corruptions_match_formulas(rgb):
    c = SEVERITY_PARAMS["contrast"][2]
    m = rgb.mean(axis=(2, 3), keepdims=True)
    np.testing.assert_allclose(corrupt(rgb, "contrast", 3, 0), (rgb - m) * c + m)
    rng = np.random.default_rng(3)
    noise = rng.normal(scale=SEVERITY_PARAMS["gaussian_noise"][4], size=rgb.shape)
    np.testing.assert_allclose(corrupt(rgb, "gaussian_noise", 5, 3), np.clip(rgb + noise, 0, 1))
    sigma = SEVERITY_PARAMS["gaussian_blur"][1]
    ref = ndimage.gaussian_filter(rgb, sigma=(0, 0, sigma, sigma), mode="nearest")
    np.testing.assert_allclose(corrupt(rgb, "gaussian_blur", 2, 0), ref)
    imp = corrupt(rgb, "impulse_noise", 5, 0)
    changed = imp != rgb
    assert set(np.unique(imp[changed])) <= {0.0, 1.0}
    assert abs(changed.mean() - SEVERITY_PARAMS["impulse_noise"][4]) < 0.02


def test_brightness_and_saturate_through_hsv():
    x = smooth_images(3, 3, 16, 16)
    np.testing.assert_allclose(cc._hsv_to_rgb(cc._rgb_to_hsv(x)), x, atol=1e-12)
    gray = smooth_images(2, 1, 16, 16)
    one = corrupt(gray, "brightness", 4, 0)
    three = corrupt(np.repeat(gray, 3, axis=1), "brightness", 4, 0)
    np.testing.assert_allclose(one, np.clip(gray + SEVERITY_PARAMS["brightness"][3], 0, 1))
    np.testing.assert_allclose(three, np.repeat(one, 3, axis=1), atol=1e-12)
    # HSV value = max channel goes up by c, hue and saturation stay
    y = corrupt(x, "brightness", 2, 0)
    np.testing.assert_allclose(y.max(axis=1), np.minimum(x.max(axis=1) + 0.1, 1), atol=1e-12)
    # saturate severity 2 scales saturation by 0.1: channels move towards their max
    s = cc._rgb_to_hsv(corrupt(x, "saturate", 2, 0))[:, 1]
    np.testing.assert_allclose(s, 0.1 * cc._rgb_to_hsv(x)[:, 1], atol=1e-12)


def script_glass_loop(img_chw, offsets, delta):
    """The generation script's loop, literally, on an (H, W, C) array (one image)."""
    x = img_chw.transpose(1, 2, 0).copy()
    h_size, w_size = x.shape[:2]
    for it in range(offsets.shape[0]):
        for i, h in enumerate(range(h_size - delta, delta, -1)):
            for j, w in enumerate(range(w_size - delta, delta, -1)):
                dx, dy = offsets[it, i, j]
                h_prime, w_prime = h + dy, w + dx
                x[h, w], x[h_prime, w_prime] = x[h_prime, w_prime], x[h, w]
    return x.transpose(2, 0, 1)


@pytest.mark.parametrize("delta,iters", [(1, 2), (2, 1)])
def test_glass_shuffle_matches_script_loop(delta, iters):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (3, 3, 12, 10)).astype(np.float64)
    nh, nw = len(range(12 - delta, delta, -1)), len(range(10 - delta, delta, -1))
    offsets = rng.integers(-delta, delta, size=(iters, nh, nw, 2, 3))
    fast = cc._glass_shuffle(img, offsets, delta)
    for k in range(3):
        np.testing.assert_array_equal(fast[k], script_glass_loop(img[k], offsets[..., k], delta))
    assert not np.array_equal(fast, img)


def test_bilinear_sampler_matches_scipy():
    rng = np.random.default_rng(1)
    x = rng.random((2, 3, 9, 11))
    rows = rng.uniform(-1.4, 9.4, size=(2, 9, 11))
    cols = rng.uniform(-1.4, 11.4, size=(2, 9, 11))
    for mode in ("mirror", "reflect"):
        got = cc._bilinear(x, rows, cols, mode)
        for k in range(2):
            for c in range(3):
                ref = ndimage.map_coordinates(x[k, c], [rows[k], cols[k]], order=1, mode=mode)
                np.testing.assert_allclose(got[k, c], ref, atol=1e-12)


def test_clipped_zoom_matches_scipy_zoom():
    img = np.random.default_rng(2).random((32, 32, 3))
    for z in (1.0, 1.07, 1.25):
        ch = int(np.ceil(32 / z))
        top = (32 - ch) // 2
        big = ndimage.zoom(img[top:top + ch, top:top + ch], (z, z, 1), order=1)
        trim = (big.shape[0] - 32) // 2
        ref = big[trim:trim + 32, trim:trim + 32].transpose(2, 0, 1)
        np.testing.assert_allclose(cc._clipped_zoom(img.transpose(2, 0, 1)[None], z)[0], ref, atol=1e-12)


def test_motion_blur_kernel():
    x = np.zeros((2, 1, 31, 31))
    x[:, 0, 15, 15] = 1.0
    out = cc._motion_blur(x, 10, 2, np.array([0.0, 90.0]))
    i = np.arange(21)
    k = np.exp(-i ** 2 / 8.0)
    k /= k.sum()
    np.testing.assert_allclose(out[0, 0, 15, 15 - i], k, atol=1e-12)  # angle 0: trail along a row
    np.testing.assert_allclose(out[1, 0, 15 - i, 15], k, atol=1e-12)  # angle 90: along a column
    np.testing.assert_allclose(out.sum(axis=(1, 2, 3)), 1.0, atol=1e-9)
    flat = np.full((1, 3, 8, 8), 0.3)
    np.testing.assert_allclose(cc._motion_blur(flat, 12, 3, np.array([33.0])), flat)  # edges replicated


def test_pixelate_matches_pillow():
    x = smooth_images(1, 1, 32, 32)
    img = Image.fromarray(x[0, 0].astype(np.float32))
    ref = np.asarray(img.resize((24, 24), Image.Resampling.BOX).resize((32, 32), Image.Resampling.BOX))
    np.testing.assert_allclose(corrupt(x, "pixelate", 4, 0)[0, 0], ref, atol=1e-6)


def test_jpeg_matches_pillow(rgb):
    import io

    u8 = np.rint(rgb[0] * 255).astype(np.uint8).transpose(1, 2, 0)
    buf = io.BytesIO()
    Image.fromarray(u8).save(buf, "JPEG", quality=SEVERITY_PARAMS["jpeg_compression"][4])
    ref = np.asarray(Image.open(buf)).transpose(2, 0, 1) / 255.0
    np.testing.assert_allclose(corrupt(rgb[:1], "jpeg_compression", 5, 0)[0], ref, atol=1e-12)


def test_spatter_helpers():
    step = np.zeros((1, 12, 12))
    step[:, :, 6:] = 200
    edges = cc._canny(step, 50, 150)
    assert edges.any() and set(np.nonzero(edges)[2]) <= {5, 6}  # a thin line at the step
    zero = np.zeros((1, 9, 9), dtype=bool)
    zero[0, 4, 4] = True
    d = cc._chamfer5(zero)
    assert d[0, 4, 4] == 0 and d[0, 4, 7] == 3 and d[0, 5, 5] == pytest.approx(1.4)
    assert d[0, 6, 5] == pytest.approx(2.1969)
    exact = ndimage.distance_transform_edt(~zero[0])
    assert np.abs(d[0] - exact).max() < 0.1
    eq = cc._equalize_hist(np.array([[[0, 0, 1, 1], [2, 2, 3, 3]]]))
    np.testing.assert_array_equal(eq, [[[0, 0, 85, 85], [170, 170, 255, 255]]])
    np.testing.assert_array_equal(cc._equalize_hist(np.full((1, 2, 2), 7)), np.full((1, 2, 2), 7))


# --------------------------------------------------------------------------
# frost textures
# --------------------------------------------------------------------------


def test_frost_blends_texture(rgb, frost_dir):
    y = corrupt(rgb, "frost", 1, 0, frost_dir=frost_dir)
    assert np.all(y >= rgb - 1e-12)  # severity 1 keeps the image (weight 1) and adds frost
    gray = corrupt(smooth_images(2, 1, 28, 28), "frost", 5, 0)
    assert gray.shape == (2, 1, 28, 28)


def test_missing_frost_files(rgb, tmp_path, monkeypatch):
    with pytest.raises(EpsimError, match="frost1.png, frost2.png.*EPSIM_FROST_DIR"):
        corrupt(rgb, "frost", 2, 0, frost_dir=tmp_path)
    (tmp_path / "frost1.png").write_bytes(b"")
    with pytest.raises(EpsimError, match=r"missing in .*: frost2.png, frost3.png, frost4.jpg, frost5.jpg \("):
        corrupt(rgb, "frost", 2, 0, frost_dir=tmp_path)
    monkeypatch.setenv(cc.FROST_DIR_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(EpsimError, match="nowhere"):
        corrupt(rgb, "frost", 2, 0)
    monkeypatch.delenv(cc.FROST_DIR_ENV)
    monkeypatch.setenv("EPSIM_DATA_DIR", str(tmp_path))
    assert cc.default_frost_dir() == tmp_path / "frost"


def test_unreadable_frost_file(rgb, tmp_path, frost_dir):
    for name in FROST_FILES:
        (tmp_path / name).write_bytes((frost_dir / name).read_bytes())
    (tmp_path / "frost3.png").write_bytes(b"not an image")
    with pytest.raises(EpsimError, match="cannot read frost texture .*frost3.png"):
        corrupt(rgb, "frost", 2, 0, frost_dir=tmp_path)


# --------------------------------------------------------------------------
# official CIFAR-10-C release reader
# --------------------------------------------------------------------------


def write_release(folder: Path, per_severity=4, names=("fog", "snow"), seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    labels = np.tile(rng.integers(0, 10, per_severity), 5).astype(np.int64)
    np.save(folder / "labels.npy", labels)
    arrays = {}
    for name in names:
        arrays[name] = rng.integers(0, 256, (5 * per_severity, 32, 32, 3), dtype=np.uint8)
        np.save(folder / f"{name}.npy", arrays[name])
    return arrays, labels


def test_load_cifar10c_round_trip(tmp_path):
    arrays, labels = write_release(tmp_path / "CIFAR-10-C")
    for directory in (tmp_path / "CIFAR-10-C", tmp_path):
        for severity in (1, 3, 5):
            x, y = load_cifar10c(directory, "fog", severity)
            lo = (severity - 1) * 4
            assert x.shape == (4, 3, 32, 32) and x.dtype == np.float32 and y.dtype == np.int64
            np.testing.assert_array_equal(np.rint(x * 255).astype(np.uint8),
                                          arrays["fog"][lo:lo + 4].transpose(0, 3, 1, 2))
            np.testing.assert_array_equal(y, labels[lo:lo + 4])


def test_load_cifar10c_default_dir(tmp_path, monkeypatch):
    arrays, _ = write_release(tmp_path / "CIFAR-10-C", names=("snow",))
    monkeypatch.setenv("EPSIM_DATA_DIR", str(tmp_path))
    x, _ = load_cifar10c(None, "snow", 2)
    assert np.array_equal(np.rint(x[0] * 255).astype(np.uint8), arrays["snow"][4].transpose(2, 0, 1))


def test_load_cifar10c_errors(tmp_path):
    folder = tmp_path / "CIFAR-10-C"
    write_release(folder)
    with pytest.raises(EpsimError, match="missing CIFAR-10-C file .*frost.npy"):
        load_cifar10c(folder, "frost", 1)
    with pytest.raises(EpsimError, match="unknown corruption"):
        load_cifar10c(folder, "rain", 1)
    with pytest.raises(EpsimError, match="clean test set"):
        load_cifar10c(folder, "fog", 0)
    with pytest.raises(EpsimError, match="severity must be an integer 1..5"):
        load_cifar10c(folder, "fog", 6)
    with pytest.raises(EpsimError, match="does not exist"):
        load_cifar10c(tmp_path / "absent", "fog", 1)
    np.save(folder / "fog.npy", np.zeros((10, 32, 32), dtype=np.uint8))
    with pytest.raises(EpsimError, match=r"expected uint8 \(5\*n, 32, 32, 3\)"):
        load_cifar10c(folder, "fog", 1)
    np.save(folder / "fog.npy", np.zeros((12, 32, 32, 3), dtype=np.uint8))
    with pytest.raises(EpsimError, match="multiple of 5"):
        load_cifar10c(folder, "fog", 1)
    np.save(folder / "fog.npy", np.zeros((15, 32, 32, 3), dtype=np.uint8))
    with pytest.raises(EpsimError, match="labels.npy holds"):
        load_cifar10c(folder, "fog", 1)
    (folder / "snow.npy").write_bytes(b"garbage")
    with pytest.raises(EpsimError, match="cannot read .*snow.npy"):
        load_cifar10c(folder, "snow", 1)
