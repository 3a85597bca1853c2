"""Datasets for epsim: scikit-learn digits, MNIST, CIFAR-10 and CIFAR-100.

Every loader returns a :class:`Dataset` whose images are ``(N, C, H, W)``
arrays of pixel intensities scaled to ``[0, 1]`` (dimensionless) and whose
labels are ``(N,)`` ``int64`` class indices.

* ``digits``   -- scikit-learn's bundled 8x8 digits, no files needed; a fixed
  stratified 80/20 train/test split (``random_state=0``).  float64.
* ``mnist``    -- the official IDX files (raw or ``.gz``).  float64.
* ``cifar10`` / ``cifar100`` -- the official "python version" pickles, or the
  official ``.tar.gz`` archive, which is extracted on first use.  float32, to
  halve the memory footprint (50000 x 3 x 32 x 32 float64 would be 1.2 GB).

Files are looked up in ``data_dir`` (argument, else the ``EPSIM_DATA_DIR``
environment variable, else ``./data``) and in the dataset's usual sub-folder
below it.  Nothing is ever downloaded unless ``download=True``; downloads are
checked against the published MD5 sums and written atomically.

All user-facing problems (unknown name, missing or corrupt files, bad subset
sizes, failed downloads) raise :class:`DataError` with a one-line message.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import math
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import EpsimError

__all__ = [
    "DATASETS",
    "DataError",
    "Dataset",
    "default_data_dir",
    "load_dataset",
    "read_idx",
]

DATASETS = ("digits", "mnist", "cifar10", "cifar100")
# per dataset: the shape (C, H, W) of one image and the number of classes
DATASET_GEOMETRY = {"digits": ((1, 8, 8), 10), "mnist": ((1, 28, 28), 10),
                    "cifar10": ((3, 32, 32), 10), "cifar100": ((3, 32, 32), 100)}

DATA_DIR_ENV = "EPSIM_DATA_DIR"
_FALLBACK_DATA_DIR = Path("data")
_DOWNLOAD_TIMEOUT_S = 60.0
_CHUNK = 1 << 20


class DataError(EpsimError):
    """User-facing data problem; message is one actionable line."""


@dataclass
class Dataset:
    """An image-classification dataset split into train and test parts.

    Attributes:
        name: dataset name, one of :data:`DATASETS`.
        x_train: ``(N_train, C, H, W)`` float pixel intensities in ``[0, 1]``.
        y_train: ``(N_train,)`` int64 class indices in ``[0, num_classes)``.
        x_test: ``(N_test, C, H, W)`` float pixel intensities in ``[0, 1]``.
        y_test: ``(N_test,)`` int64 class indices.
        num_classes: number of classes.
    """

    name: str
    x_train: np.ndarray = field(repr=False)
    y_train: np.ndarray = field(repr=False)
    x_test: np.ndarray = field(repr=False)
    y_test: np.ndarray = field(repr=False)
    num_classes: int

    @property
    def image_shape(self) -> tuple:
        """Shape ``(C, H, W)`` of one image."""
        return tuple(int(d) for d in self.x_train.shape[1:])

    def __str__(self) -> str:
        c, h, w = self.image_shape
        return (
            f"{self.name}: {len(self.y_train)} train / {len(self.y_test)} test "
            f"images of {c}x{h}x{w}, {self.num_classes} classes"
        )


def random_shifts(x: np.ndarray, max_shift: int, rng: np.random.Generator, flip: bool = False) -> np.ndarray:
    """Each image of ``x`` (B, C, H, W) translated by its own random whole-pixel offset in
    ``[-max_shift, max_shift]`` along each axis, the edge pixels repeated into the uncovered
    border (a random ``H x W`` crop of the edge-padded image), and with ``flip`` mirrored
    left-right with probability 1/2 (for natural images, not digits). Returns a new array
    (``x`` itself when there is nothing to do)."""
    if max_shift <= 0 and not flip:
        return x
    b, _, h, w = x.shape
    s = max(int(max_shift), 0)
    padded = np.pad(x, ((0, 0), (0, 0), (s, s), (s, s)), mode="edge")
    offsets = rng.integers(0, 2 * s + 1, size=(b, 2))
    out = np.stack([padded[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offsets)])
    if flip:
        mirrored = rng.random(b) < 0.5
        out[mirrored] = out[mirrored, :, :, ::-1]
    return out


def default_data_dir() -> Path | None:
    """Data directory from the ``EPSIM_DATA_DIR`` environment variable, else None."""
    value = os.environ.get(DATA_DIR_ENV, "").strip()
    return Path(value).expanduser() if value else None


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool = False,
    train_subset: int | None = None,
    test_subset: int | None = None,
    seed: int = 0,
) -> Dataset:
    """Load a dataset by name.

    Args:
        name: one of :data:`DATASETS` (case-insensitive).
        data_dir: directory holding the dataset files (ignored by ``digits``).
            Defaults to ``$EPSIM_DATA_DIR``, else ``./data``.  An explicitly
            given directory must exist.
        download: fetch missing files from the public mirrors.
        train_subset, test_subset: if given, keep only this many examples,
            chosen as the first N of a permutation seeded by ``seed``.
        seed: seed for the subset permutations (train and test use
            independent streams).

    Returns:
        The :class:`Dataset`.

    Raises:
        DataError: for any user-fixable problem.
    """
    key = _normalise_name(name)
    base = _resolve_data_dir(data_dir, needs_files=key != "digits", download=download)
    if key == "digits":
        ds = _load_digits()
    elif key == "mnist":
        ds = _load_mnist(base, download)
    else:
        ds = _load_cifar(key, base, download)
    return _apply_subsets(ds, train_subset, test_subset, seed)


def dataset_geometry(name: str) -> tuple:
    """``(image_shape, num_classes)`` of dataset ``name`` without loading it: ``image_shape`` is
    ``(C, H, W)``. Lets a command check a network against its data before any file is read."""
    return DATASET_GEOMETRY[_normalise_name(name)]


# --------------------------------------------------------------------------
# argument handling
# --------------------------------------------------------------------------


def _normalise_name(name) -> str:
    key = str(name).strip().lower().replace("-", "").replace("_", "")
    if key not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    return key


def _resolve_data_dir(data_dir, *, needs_files: bool, download: bool) -> Path:
    """Pick the base data directory and check that it is usable."""
    if data_dir is not None:
        base = Path(data_dir).expanduser()
        if not base.is_dir():
            what = "is not a directory" if base.exists() else "does not exist"
            raise DataError(f"data directory {base} {what}; create it or pass an existing --data-dir")
        return base
    env = default_data_dir()
    if env is not None and needs_files and not env.is_dir() and not download:
        raise DataError(
            f"data directory {env} (from ${DATA_DIR_ENV}) does not exist; "
            f"fix ${DATA_DIR_ENV}, pass --data-dir, or use --download"
        )
    return env if env is not None else _FALLBACK_DATA_DIR.absolute()


def _check_subset_size(n, available: int, which: str) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise DataError(f"{which} must be a positive integer, got {n!r}")
    n = int(n)
    if n <= 0:
        raise DataError(f"{which} must be a positive integer, got {n}")
    if n > available:
        raise DataError(f"{which}={n} is larger than the {available} examples available")
    return n


def _subset(x: np.ndarray, y: np.ndarray, n, rng: np.random.Generator, which: str):
    """First ``n`` examples of a random permutation of ``(x, y)``; all if ``n`` is None."""
    if n is None:
        return x, y
    n = _check_subset_size(n, len(y), which)
    idx = rng.permutation(len(y))[:n]
    return x[idx], y[idx]


def _apply_subsets(ds: Dataset, train_subset, test_subset, seed: int) -> Dataset:
    try:
        seed = int(seed)
    except (TypeError, ValueError):
        raise DataError(f"seed must be an integer, got {seed!r}") from None
    if seed < 0:
        raise DataError(f"seed must be non-negative, got {seed}")
    x_tr, y_tr = _subset(ds.x_train, ds.y_train, train_subset, np.random.default_rng([seed, 0]), "train_subset")
    x_te, y_te = _subset(ds.x_test, ds.y_test, test_subset, np.random.default_rng([seed, 1]), "test_subset")
    return Dataset(ds.name, x_tr, y_tr, x_te, y_te, ds.num_classes)


# --------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------


def _load_digits() -> Dataset:
    """scikit-learn digits: 1437 train / 360 test images, (N, 1, 8, 8) float64."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.images.astype(np.float64) / 16.0)[:, None, :, :]
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    return Dataset("digits", x_tr, y_tr, x_te, y_te, 10)


# --------------------------------------------------------------------------
# downloads (shared)
# --------------------------------------------------------------------------


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(urls, dest: Path, md5: str) -> None:
    """Fetch ``dest`` from the first working URL; verify its MD5; write atomically.

    The file is streamed into a temporary file next to ``dest`` and moved into
    place with ``os.replace`` only after the checksum matches.  Files already
    on disk are never checksummed (re-compressed copies are fine); the IDX and
    pickle readers validate their contents instead.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for url in urls:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as resp:
                shutil.copyfileobj(resp, out, _CHUNK)
            got = _md5(tmp)
            if got != md5:
                errors.append(f"{url}: MD5 {got} != expected {md5}")
                continue
            os.replace(tmp, dest)
            return
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
            errors.append(f"{url}: {exc}")
        finally:
            if tmp.exists():
                tmp.unlink()
    raise DataError(f"could not download {dest.name} into {dest.parent} ({'; '.join(errors)})")


# --------------------------------------------------------------------------
# MNIST
# --------------------------------------------------------------------------

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
MNIST_MD5 = {  # of the official .gz files
    "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
}
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (raw, or gzip-compressed if the name ends in ``.gz``).

    The header is two zero bytes, a type code, the number of dimensions, then
    one big-endian uint32 per dimension; the payload must have exactly the
    size the dimensions imply.

    Returns:
        Array of the stored shape and type (native byte order).

    Raises:
        DataError: naming the file, if it is unreadable or malformed.
    """
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError) as exc:  # includes gzip.BadGzipFile
        raise DataError(f"cannot read IDX file {path}: {exc}") from None
    return _parse_idx(raw, path)


def _parse_idx(raw: bytes, path: Path) -> np.ndarray:
    def bad(why: str) -> DataError:
        return DataError(f"corrupt IDX file {path}: {why}; delete it and re-download (--download)")

    if len(raw) < 4:
        raise bad(f"only {len(raw)} bytes")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise bad(f"bad magic number 0x{raw[:4].hex()}")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise bad(f"truncated header ({ndim} dimensions, {len(raw)} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise bad(f"size {len(raw)} bytes, expected {expected} for shape {shape}")
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def _find_mnist_file(base: Path, stem: str) -> Path | None:
    for folder in (base, base / "mnist"):
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def _locate_mnist(base: Path, download: bool) -> dict:
    """Map each MNIST file stem to an existing path, downloading if allowed."""
    found = {stem: _find_mnist_file(base, stem) for stem in MNIST_FILES.values()}
    missing = [stem for stem, p in found.items() if p is None]
    if missing and download:
        for stem in missing:
            dest = base / "mnist" / (stem + ".gz")
            _download([m + dest.name for m in MNIST_MIRRORS], dest, MNIST_MD5[stem])
            found[stem] = dest
        missing = []
    if missing:
        names = ", ".join(s + "[.gz]" for s in missing)
        raise DataError(
            f"MNIST files not found: {names} (searched {base} and {base / 'mnist'}); "
            f"pass --data-dir pointing at them or use --download"
        )
    return found


def _mnist_images(path: Path) -> np.ndarray:
    arr = read_idx(path)
    if arr.ndim != 3 or arr.shape[1:] != (28, 28) or arr.dtype != np.uint8:
        raise DataError(f"corrupt MNIST image file {path}: expected uint8 (N, 28, 28), got {arr.dtype} {arr.shape}")
    return (arr.astype(np.float64) / 255.0)[:, None, :, :]


def _mnist_labels(path: Path, n_images: int) -> np.ndarray:
    arr = read_idx(path)
    if arr.ndim != 1 or arr.dtype != np.uint8:
        raise DataError(f"corrupt MNIST label file {path}: expected uint8 (N,), got {arr.dtype} {arr.shape}")
    if len(arr) != n_images:
        raise DataError(f"MNIST label file {path} has {len(arr)} labels but the image file has {n_images} images")
    if arr.size and arr.max() > 9:
        raise DataError(f"corrupt MNIST label file {path}: label {int(arr.max())} out of range 0..9")
    return arr.astype(np.int64)


def _load_mnist(base: Path, download: bool) -> Dataset:
    """MNIST: (N, 1, 28, 28) float64 in [0, 1]; 60000 train / 10000 test."""
    paths = _locate_mnist(base, download)
    x_tr = _mnist_images(paths[MNIST_FILES["train_images"]])
    y_tr = _mnist_labels(paths[MNIST_FILES["train_labels"]], len(x_tr))
    x_te = _mnist_images(paths[MNIST_FILES["test_images"]])
    y_te = _mnist_labels(paths[MNIST_FILES["test_labels"]], len(x_te))
    return Dataset("mnist", x_tr, y_tr, x_te, y_te, 10)


# --------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _CifarSpec:
    folder: str  # directory inside the archive
    archive: str
    md5: str
    train_files: tuple
    test_file: str
    label_key: bytes
    num_classes: int


_CIFAR = {
    "cifar10": _CifarSpec(
        folder="cifar-10-batches-py",
        archive="cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_file="test_batch",
        label_key=b"labels",
        num_classes=10,
    ),
    "cifar100": _CifarSpec(
        folder="cifar-100-python",
        archive="cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        train_files=("train",),
        test_file="test",
        label_key=b"fine_labels",
        num_classes=100,
    ),
}
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"


def _cifar_files(spec: _CifarSpec) -> tuple:
    return spec.train_files + (spec.test_file,)


def _find_cifar_folder(base: Path, spec: _CifarSpec) -> Path | None:
    for folder in (base / spec.folder, base):
        if all((folder / f).is_file() for f in _cifar_files(spec)):
            return folder
    return None


def _safe_members(tar: tarfile.TarFile, archive: Path) -> list:
    """Archive members, refusing absolute paths, ``..`` and links."""
    members = tar.getmembers()
    for m in members:
        p = Path(m.name)
        if p.is_absolute() or ".." in p.parts or not (m.isfile() or m.isdir()):
            raise DataError(f"refusing to extract suspicious member {m.name!r} from {archive}")
    return members


def _extract_cifar(archive: Path, base: Path, spec: _CifarSpec) -> None:
    """Extract ``archive`` into ``base`` via a temporary directory and ``os.replace``."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.folder}.", dir=base))
    try:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                tar.extractall(tmp, members=_safe_members(tar, archive))
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise DataError(f"cannot extract {archive}: {exc}; delete it and re-download (--download)") from None
        extracted = tmp / spec.folder
        if not extracted.is_dir():
            raise DataError(f"archive {archive} has no {spec.folder}/ folder; is it the official {spec.archive}?")
        target = base / spec.folder
        if target.exists():
            shutil.rmtree(target)
        os.replace(extracted, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _locate_cifar(base: Path, spec: _CifarSpec, download: bool) -> Path:
    """Folder with the CIFAR pickles; extracts or downloads the archive if needed."""
    folder = _find_cifar_folder(base, spec)
    if folder is not None:
        return folder
    archive = base / spec.archive
    if not archive.is_file() and download:
        _download([CIFAR_URL + spec.archive], archive, spec.md5)
    if archive.is_file():
        _extract_cifar(archive, base, spec)
        folder = _find_cifar_folder(base, spec)
        if folder is not None:
            return folder
        raise DataError(f"archive {archive} lacks some of: {', '.join(_cifar_files(spec))}")
    raise DataError(
        f"{spec.folder} files not found: {', '.join(_cifar_files(spec))} or {spec.archive} "
        f"(searched {base} and {base / spec.folder}); pass --data-dir pointing at them or use --download"
    )


def _get(batch: dict, key: bytes):
    """Value for ``key`` in a CIFAR batch dict pickled with bytes or str keys."""
    if key in batch:
        return batch[key]
    return batch.get(key.decode())


def _read_cifar_batch(path: Path, label_key: bytes) -> tuple:
    """One CIFAR pickle -> ``(x, y)``: (n, 3, 32, 32) float32 in [0, 1], (n,) int64.

    Note: pickles can run code when loaded; only load files from the official source.
    """
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError) as exc:
        raise DataError(f"cannot read CIFAR batch {path}: {exc}") from None
    if not isinstance(batch, dict):
        raise DataError(f"corrupt CIFAR batch {path}: expected a dict, got {type(batch).__name__}")
    data, labels = _get(batch, b"data"), _get(batch, label_key)
    if data is None or labels is None:
        raise DataError(f"corrupt CIFAR batch {path}: missing key b'data' or {label_key!r}")
    data = np.asarray(data)
    labels = np.asarray(labels, dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"corrupt CIFAR batch {path}: data must be uint8 (n, 3072), got {data.dtype} {data.shape}")
    if labels.shape != (len(data),):
        raise DataError(f"corrupt CIFAR batch {path}: {labels.size} labels for {len(data)} images")
    x = data.reshape(-1, 3, 32, 32).astype(np.float32) / np.float32(255.0)
    return x, labels


def _read_cifar_split(folder: Path, files, spec: _CifarSpec) -> tuple:
    parts = [_read_cifar_batch(folder / f, spec.label_key) for f in files]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    if y.size and (y.min() < 0 or y.max() >= spec.num_classes):
        raise DataError(f"corrupt {spec.folder} labels in {folder}: outside 0..{spec.num_classes - 1}")
    return x, y


def _load_cifar(key: str, base: Path, download: bool) -> Dataset:
    """CIFAR-10/100: (N, 3, 32, 32) float32 in [0, 1]; 50000 train / 10000 test."""
    spec = _CIFAR[key]
    if download:
        base.mkdir(parents=True, exist_ok=True)
    folder = _locate_cifar(base, spec, download)
    x_tr, y_tr = _read_cifar_split(folder, spec.train_files, spec)
    x_te, y_te = _read_cifar_split(folder, (spec.test_file,), spec)
    return Dataset(key, x_tr, y_tr, x_te, y_te, spec.num_classes)
