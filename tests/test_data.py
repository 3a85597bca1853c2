"""Tests for epsim.data.  Fast and offline: every file is written into tmp_path,
except the optional real-MNIST check, which skips when the copy is absent."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest

from epsim import data
from epsim.data import DATASETS, DataError, Dataset, default_data_dir, load_dataset, read_idx


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Fail loudly if anything tries to download."""

    def refuse(*args, **kwargs):
        raise AssertionError("tests must not use the network")

    monkeypatch.setattr(data.urllib.request, "urlopen", refuse)
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)


# --------------------------------------------------------------------------
# helpers that write files in the official formats
# --------------------------------------------------------------------------


def idx_bytes(arr: np.ndarray) -> bytes:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(">i2"): 0x0B,
             np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}
    big = arr.astype(arr.dtype.newbyteorder(">")) if arr.dtype.itemsize > 1 else arr
    header = bytes([0, 0, codes[big.dtype], arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + big.tobytes()


def write_idx(path: Path, arr: np.ndarray) -> Path:
    raw = idx_bytes(arr)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)
    return path


def write_fake_mnist(folder: Path, n_train=12, n_test=7, gz=True, seed=0):
    """Tiny MNIST-format files; returns the uint8 arrays written."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    arrays["train-images-idx3-ubyte"][0, 0, 0] = 255  # make sure the max is hit
    for stem, arr in arrays.items():
        write_idx(folder / (stem + (".gz" if gz else "")), arr)
    return arrays


def write_cifar_batch(path: Path, n: int, label_key: bytes, num_classes: int, seed: int):
    rng = np.random.default_rng(seed)
    batch = {
        b"batch_label": b"fake",
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        label_key: [int(v) for v in rng.integers(0, num_classes, n)],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(batch, f)
    return batch


def write_fake_cifar10(folder: Path, n=4):
    batches = [write_cifar_batch(folder / f"data_batch_{i}", n, b"labels", 10, i) for i in range(1, 6)]
    test = write_cifar_batch(folder / "test_batch", n, b"labels", 10, 99)
    return batches, test


# --------------------------------------------------------------------------
# general API
# --------------------------------------------------------------------------


def test_dataset_names():
    assert DATASETS == ("digits", "mnist", "cifar10", "cifar100")


def test_unknown_dataset_lists_choices():
    with pytest.raises(DataError) as err:
        load_dataset("imagenet")
    msg = str(err.value)
    assert "imagenet" in msg and all(name in msg for name in DATASETS)
    assert "\n" not in msg


def test_missing_data_dir(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("mnist", missing)


def test_default_data_dir_env(monkeypatch, tmp_path):
    assert default_data_dir() is None
    monkeypatch.setenv("EPSIM_DATA_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path
    write_fake_mnist(tmp_path)
    assert load_dataset("mnist").x_train.shape == (12, 1, 28, 28)


# --------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------


def test_digits_shapes_and_range():
    ds = load_dataset("digits")
    assert isinstance(ds, Dataset) and ds.name == "digits" and ds.num_classes == 10
    assert ds.image_shape == (1, 8, 8)
    assert ds.x_train.shape == (1437, 1, 8, 8) and ds.x_test.shape == (360, 1, 8, 8)
    assert ds.y_train.shape == (1437,) and ds.y_test.shape == (360,)
    assert ds.x_train.dtype == np.float64 and ds.y_train.dtype == np.int64
    for x in (ds.x_train, ds.x_test):
        assert x.min() == 0.0 and x.max() == 1.0
    assert set(np.unique(ds.y_test)) == set(range(10))
    # stratified: every class gets 20 % (+-1) of its examples in the test set
    counts_tr, counts_te = np.bincount(ds.y_train), np.bincount(ds.y_test)
    assert np.all(np.abs(counts_te - 0.2 * (counts_tr + counts_te)) <= 1)


def test_digits_split_is_deterministic():
    a, b = load_dataset("digits", seed=1), load_dataset("digits", seed=2)
    np.testing.assert_array_equal(a.x_test, b.x_test)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    np.testing.assert_array_equal(a.x_train, b.x_train)


def test_digits_ignores_data_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("EPSIM_DATA_DIR", str(tmp_path / "absent"))
    assert load_dataset("digits").x_train.shape[0] == 1437


# --------------------------------------------------------------------------
# IDX parser and MNIST
# --------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_round_trip(tmp_path, suffix, dtype):
    arr = (np.arange(2 * 3 * 5) - 7).reshape(2, 3, 5).astype(dtype)
    if dtype == np.uint8:
        arr = np.arange(30, dtype=np.uint8).reshape(2, 3, 5)
    path = write_idx(tmp_path / f"x-idx3{suffix}", arr)
    got = read_idx(path)
    assert got.shape == arr.shape and got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got, arr)


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_loads_small_files(tmp_path, gz):
    arrays = write_fake_mnist(tmp_path, gz=gz)
    ds = load_dataset("mnist", tmp_path)
    assert ds.name == "mnist" and ds.num_classes == 10 and ds.image_shape == (1, 28, 28)
    assert ds.x_train.shape == (12, 1, 28, 28) and ds.x_test.shape == (7, 1, 28, 28)
    assert ds.x_train.dtype == np.float64 and ds.y_train.dtype == np.int64
    assert ds.x_train.max() == 1.0 and ds.x_train.min() >= 0.0
    np.testing.assert_allclose(ds.x_train[:, 0], arrays["train-images-idx3-ubyte"] / 255.0)
    np.testing.assert_array_equal(ds.y_test, arrays["t10k-labels-idx1-ubyte"])


def test_mnist_found_in_mnist_subfolder(tmp_path):
    write_fake_mnist(tmp_path / "mnist")
    assert load_dataset("mnist", tmp_path).y_train.shape == (12,)


@pytest.mark.parametrize("gz", [True, False])
def test_corrupt_idx_magic(tmp_path, gz):
    write_fake_mnist(tmp_path, gz=gz)
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    raw = idx_bytes(np.zeros((2, 28, 28), np.uint8))
    bad = b"\x12\x34" + raw[2:]
    if gz:
        bad = gzip.compress(bad)
    (tmp_path / name).write_bytes(bad)
    with pytest.raises(DataError, match="magic") as err:
        load_dataset("mnist", tmp_path)
    assert name in str(err.value)


def test_truncated_idx(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(idx_bytes(np.arange(10, dtype=np.uint8))[:-3])
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        read_idx(path)


def test_not_gzip(tmp_path):
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(b"definitely not gzip")
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz"):
        read_idx(path)


def test_mnist_label_count_mismatch(tmp_path):
    write_fake_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(3, np.uint8))
    with pytest.raises(DataError, match="3 labels"):
        load_dataset("mnist", tmp_path)


def test_mnist_missing_files_message(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset("mnist", tmp_path)
    msg = str(err.value)
    for stem in data.MNIST_FILES.values():
        assert stem in msg
    assert str(tmp_path) in msg and "--data-dir" in msg and "--download" in msg
    assert "\n" not in msg


def test_mnist_partially_missing_names_only_missing(tmp_path):
    write_fake_mnist(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError) as err:
        load_dataset("mnist", tmp_path)
    assert "t10k-images-idx3-ubyte" in str(err.value)
    assert "train-images" not in str(err.value)


def test_download_verifies_md5_and_is_atomic(tmp_path, monkeypatch):
    payload = b"hello mnist"

    def fake_urlopen(url, timeout=None):
        return io.BytesIO(payload)

    monkeypatch.setattr(data.urllib.request, "urlopen", fake_urlopen)
    dest = tmp_path / "sub" / "file.gz"
    with pytest.raises(DataError, match="MD5"):
        data._download(["http://mirror/a", "http://mirror/b"], dest, "0" * 32)
    assert not dest.exists() and list(dest.parent.iterdir()) == []  # no partial files left
    data._download(["http://mirror/a"], dest, hashlib.md5(payload).hexdigest())
    assert dest.read_bytes() == payload


def test_mnist_download_uses_mirrors(tmp_path, monkeypatch):
    """download=True fetches only the missing files, from the mirror list, with MD5 check."""
    write_fake_mnist(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    labels = gzip.compress(idx_bytes(np.zeros(12, np.uint8)))
    monkeypatch.setitem(data.MNIST_MD5, "train-labels-idx1-ubyte", hashlib.md5(labels).hexdigest())
    urls = []

    def fake_urlopen(url, timeout=None):
        urls.append(url)
        if len(urls) == 1:
            raise data.urllib.error.URLError("mirror down")
        return io.BytesIO(labels)

    monkeypatch.setattr(data.urllib.request, "urlopen", fake_urlopen)
    ds = load_dataset("mnist", tmp_path, download=True)
    assert urls == [m + "train-labels-idx1-ubyte.gz" for m in data.MNIST_MIRRORS[:2]]
    assert (tmp_path / "mnist" / "train-labels-idx1-ubyte.gz").is_file()
    assert np.all(ds.y_train == 0)


def _real_mnist_dir() -> Path | None:
    for cand in (Path("/work/shared/data/mnist"), Path(__file__).resolve().parents[1].parent / "shared/data/mnist"):
        if all(data._find_mnist_file(cand, stem) for stem in data.MNIST_FILES.values()):
            return cand
    return None


def test_real_mnist():
    folder = _real_mnist_dir()
    if folder is None:
        pytest.skip("offline MNIST copy not found under shared/data/mnist")
    ds = load_dataset("mnist", folder)
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert ds.y_train.shape == (60000,) and ds.y_test.shape == (10000,)
    assert 0.0 == ds.x_train.min() and ds.x_train.max() == 1.0
    assert set(np.unique(ds.y_train)) == set(range(10))
    raw_path = data._find_mnist_file(folder, "train-images-idx3-ubyte")
    opener = gzip.open if raw_path.suffix == ".gz" else open
    with opener(raw_path, "rb") as f:
        assert hashlib.md5(f.read()).hexdigest() == "6bbc9ace898e44ae57da46a324031adb"


# --------------------------------------------------------------------------
# CIFAR
# --------------------------------------------------------------------------


def test_cifar10_from_pickles(tmp_path):
    batches, test = write_fake_cifar10(tmp_path / "cifar-10-batches-py")
    ds = load_dataset("cifar10", tmp_path)
    assert ds.name == "cifar10" and ds.num_classes == 10 and ds.image_shape == (3, 32, 32)
    assert ds.x_train.shape == (20, 3, 32, 32) and ds.x_test.shape == (4, 3, 32, 32)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    expected = np.concatenate([b[b"data"] for b in batches]).reshape(-1, 3, 32, 32) / 255.0
    np.testing.assert_allclose(ds.x_train, expected, rtol=1e-6)
    np.testing.assert_array_equal(ds.y_test, test[b"labels"])
    assert 0.0 <= ds.x_test.min() and ds.x_test.max() <= 1.0


def test_cifar10_pickles_directly_in_data_dir(tmp_path):
    write_fake_cifar10(tmp_path)
    assert load_dataset("cifar10", tmp_path).x_train.shape[0] == 20


def test_cifar100_from_pickles(tmp_path):
    folder = tmp_path / "cifar-100-python"
    train = write_cifar_batch(folder / "train", 6, b"fine_labels", 100, 1)
    write_cifar_batch(folder / "test", 3, b"fine_labels", 100, 2)
    ds = load_dataset("cifar100", tmp_path)
    assert ds.num_classes == 100 and ds.x_train.shape == (6, 3, 32, 32) and ds.x_test.shape == (3, 3, 32, 32)
    np.testing.assert_array_equal(ds.y_train, train[b"fine_labels"])


def test_cifar10_from_tarball(tmp_path):
    src = tmp_path / "src"
    write_fake_cifar10(src / "cifar-10-batches-py")
    root = tmp_path / "root"
    root.mkdir()
    with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    ds = load_dataset("cifar10", root)
    assert ds.x_train.shape == (20, 3, 32, 32)
    assert (root / "cifar-10-batches-py" / "test_batch").is_file()
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]


def test_cifar_tarball_with_path_traversal_is_refused(tmp_path):
    with tarfile.open(tmp_path / "cifar-100-python.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("../evil")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(DataError, match="suspicious"):
        load_dataset("cifar100", tmp_path)
    assert not (tmp_path.parent / "evil").exists()


@pytest.mark.parametrize("name, files", [("cifar10", ["data_batch_1", "test_batch"]), ("cifar100", ["train", "test"])])
def test_cifar_missing_files_message(tmp_path, name, files):
    with pytest.raises(DataError) as err:
        load_dataset(name, tmp_path)
    msg = str(err.value)
    assert all(f in msg for f in files) and ".tar.gz" in msg
    assert str(tmp_path) in msg and "--data-dir" in msg and "--download" in msg


def test_cifar_corrupt_batch(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_fake_cifar10(folder)
    (folder / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(DataError, match="data_batch_3"):
        load_dataset("cifar10", tmp_path)


def test_cifar_bad_shape(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_fake_cifar10(folder)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(DataError, match="test_batch"):
        load_dataset("cifar10", tmp_path)


# --------------------------------------------------------------------------
# subsets
# --------------------------------------------------------------------------


def test_subsets_sizes_and_membership():
    full = load_dataset("digits")
    sub = load_dataset("digits", train_subset=100, test_subset=50, seed=3)
    assert sub.x_train.shape == (100, 1, 8, 8) and sub.y_test.shape == (50,)
    # every subset example is an example of the full set with the same label
    flat = {row.tobytes(): lab for row, lab in zip(full.x_train.reshape(len(full.y_train), -1), full.y_train)}
    for row, lab in zip(sub.x_train.reshape(100, -1), sub.y_train):
        assert flat[row.tobytes()] == lab


def test_subsets_seeded():
    a = load_dataset("digits", train_subset=30, test_subset=20, seed=5)
    b = load_dataset("digits", train_subset=30, test_subset=20, seed=5)
    c = load_dataset("digits", train_subset=30, test_subset=20, seed=6)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.x_train, c.x_train)


def test_subset_prefix_property():
    """A smaller subset is the prefix of a larger one for the same seed."""
    small = load_dataset("digits", train_subset=10, seed=7)
    big = load_dataset("digits", train_subset=40, seed=7)
    np.testing.assert_array_equal(small.x_train, big.x_train[:10])
    assert big.x_test.shape[0] == 360  # test set untouched


def test_full_subset_is_permutation():
    ds = load_dataset("digits", test_subset=360)
    assert sorted(ds.y_test.tolist()) == sorted(load_dataset("digits").y_test.tolist())


@pytest.mark.parametrize("kw", [{"train_subset": 1438}, {"test_subset": 361}])
def test_subset_too_large(kw):
    with pytest.raises(DataError, match="larger than"):
        load_dataset("digits", **kw)


@pytest.mark.parametrize("bad", [0, -3, 2.5, "10", True])
def test_subset_invalid(bad):
    with pytest.raises(DataError, match="train_subset"):
        load_dataset("digits", train_subset=bad)


def test_subset_on_mnist_files(tmp_path):
    write_fake_mnist(tmp_path, n_train=12, n_test=7)
    ds = load_dataset("mnist", tmp_path, train_subset=5, test_subset=7)
    assert ds.x_train.shape == (5, 1, 28, 28) and ds.y_test.shape == (7,)
    with pytest.raises(DataError, match="13"):
        load_dataset("mnist", tmp_path, train_subset=13)
