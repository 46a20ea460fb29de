"""Dataset loading into NHWC uint8 numpy arrays, with fixed (seed-independent) splits.

Supported: ``digits`` (scikit-learn's bundled 8x8 digits), ``cifar10`` (both official formats,
binary and python) and ``idx`` (MNIST / Fashion-MNIST files). Nothing here downloads.
"""

from __future__ import annotations

import gzip
import importlib
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dualkit.core.batches import make_rng
from dualkit.core.errors import DataError
from dualkit.core.specs import DataSpec

# The test and validation splits use this seed, never the training seed: every run of every seed
# is evaluated on the same images.
SPLIT_SEED = 20240601

CIFAR_BIN_DIR = "cifar-10-batches-bin"
CIFAR_PY_DIR = "cifar-10-batches-py"
CIFAR_RECORDS_PER_FILE = 10000  # the official batch size; tests shrink it to write tiny files
CIFAR_PIXELS = 3 * 32 * 32
CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_FILE = "test_batch"

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]


@dataclass(frozen=True, eq=False)  # eq=False: arrays have no single truth value for ==
class Dataset:
    name: str
    x_train: np.ndarray  # (N, H, W, C) uint8
    y_train: np.ndarray  # (N,) int64
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple[str, ...]
    source: str  # where it was loaded from: a path, or "sklearn.datasets.load_digits"

    @property
    def image_shape(self) -> tuple[int, int, int]:
        h, w, c = self.x_train.shape[1:]
        return (int(h), int(w), int(c))

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# --------------------------------------------------------------------------- splits


def _stratified_take(y: np.ndarray, fraction: float, stream: str) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (rest, taken): ``round(fraction * n_c)`` of each class, at least one when
    the class has two or more examples and ``fraction > 0``. Both index arrays are sorted."""
    if fraction <= 0:
        return np.arange(len(y)), np.zeros(0, dtype=np.int64)
    rng = make_rng(SPLIT_SEED, stream)
    taken = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        k = int(round(fraction * len(idx)))
        if len(idx) >= 2:
            k = min(max(k, 1), len(idx) - 1)
        taken.append(rng.permutation(idx)[:k])
    take = np.sort(np.concatenate(taken)).astype(np.int64)
    rest = np.setdiff1d(np.arange(len(y)), take, assume_unique=True)
    return rest, take


def _finish(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    classes: tuple[str, ...],
    source: str,
    spec: DataSpec,
) -> Dataset:
    """Carve the validation split out of the training part, then apply ``limit_train``."""
    rest, val = _stratified_take(y, spec.val_fraction, "split/val")
    x_train, y_train = x[rest], y[rest]
    if spec.limit_train > 0:  # after the split, so the validation set does not move with it
        x_train, y_train = x_train[: spec.limit_train], y_train[: spec.limit_train]
    return Dataset(
        name=name,
        x_train=np.ascontiguousarray(x_train),
        y_train=y_train.astype(np.int64),
        x_val=np.ascontiguousarray(x[val]),
        y_val=y[val].astype(np.int64),
        x_test=np.ascontiguousarray(x_test),
        y_test=y_test.astype(np.int64),
        classes=classes,
        source=source,
    )


def load_dataset(spec: DataSpec) -> Dataset:
    """Load ``spec.name`` with its train / val / test splits."""
    if spec.name == "digits":
        x, y = load_digits_arrays()
        rest, test = _stratified_take(y, spec.test_fraction, "split/test")
        classes = tuple(str(i) for i in range(10))
        return _finish("digits", x[rest], y[rest], x[test], y[test], classes, "sklearn.datasets.load_digits", spec)
    if spec.name == "cifar10":
        folder = find_cifar10(spec.root)
        return _finish("cifar10", *load_cifar10(folder), str(folder), spec)
    if spec.name == "idx":
        if not spec.root:
            raise DataError(
                "data.name=idx needs the folder holding the IDX files: --set data.root=PATH "
                f"(with {', '.join(IDX_FILES.values())}, optionally .gz)"
            )
        return _finish("idx", *load_idx(spec.root), str(Path(spec.root).expanduser().resolve()), spec)
    raise DataError(f"unknown dataset {spec.name!r}: use digits, cifar10 or idx")


# --------------------------------------------------------------------------- digits


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1797 8x8 digits as (1797, 8, 8, 1) uint8 (0..16 scaled to 0..255) and int64."""
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    bunch = load_digits()
    x = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return np.ascontiguousarray(x), bunch.target.astype(np.int64)


# --------------------------------------------------------------------------- CIFAR-10


def _cifar_candidates(root: str | Path) -> list[Path]:
    if str(root):
        return [Path(root).expanduser()]
    places = []
    if os.environ.get("DUALKIT_DATA"):
        places.append(Path(os.environ["DUALKIT_DATA"]).expanduser())
    places.append(Path.home() / ".keras" / "datasets")  # where keras.datasets.cifar10 caches it
    places.append(Path("data"))
    return places


def find_cifar10(root: str | Path) -> Path:
    """The CIFAR-10 folder: ``root`` itself if it is ``cifar-10-batches-bin`` / ``-py``, or that
    folder inside ``root``. With an empty root, look in $DUALKIT_DATA, ~/.keras/datasets, ./data."""
    looked: list[str] = []
    for base in _cifar_candidates(root):
        if base.name in (CIFAR_BIN_DIR, CIFAR_PY_DIR):
            looked.append(str(base))
            if base.is_dir():
                return base.resolve()
            continue
        for sub in (CIFAR_BIN_DIR, CIFAR_PY_DIR):  # binary first: no pickle, and faster to read
            looked.append(str(base / sub))
            if (base / sub).is_dir():
                return (base / sub).resolve()
    raise DataError(
        "CIFAR-10 not found; looked in:\n  "
        + "\n  ".join(looked)
        + f"\nFix: --set data.root=PATH pointing at the folder holding {CIFAR_BIN_DIR} or {CIFAR_PY_DIR}"
        " (or at that folder itself)"
    )


def _require(folder: Path, names: list[str]) -> None:
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise DataError(
            f"CIFAR-10 folder {folder} is incomplete: missing {', '.join(missing)}; "
            "re-extract the official archive there"
        )


def _check_labels(labels: np.ndarray, path: Path, num_classes: int = 10) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"{path}: labels must be in 0..{num_classes - 1}, found {int(labels.min())}..{int(labels.max())}; "
            "the file is corrupt"
        )


def _read_cifar_bin(path: Path) -> tuple[np.ndarray, np.ndarray]:
    record = 1 + CIFAR_PIXELS
    expected = CIFAR_RECORDS_PER_FILE * record
    size = path.stat().st_size
    if size != expected:
        raise DataError(
            f"{path} has {size} bytes, expected {expected} bytes ({CIFAR_RECORDS_PER_FILE} records of "
            f"{record}); it looks truncated or corrupt: re-extract cifar-10-binary.tar.gz"
        )
    rows = np.frombuffer(path.read_bytes(), dtype=np.uint8).reshape(CIFAR_RECORDS_PER_FILE, record)
    labels = rows[:, 0].astype(np.int64)
    _check_labels(labels, path)
    return rows[:, 1:], labels


# What the official CIFAR-10 python files (and the same data pickled again by numpy 1 or 2 in any protocol) refer
# to: numpy's array reconstruction. Nothing else is ever looked up, so a planted file cannot run code (pickle calls only
# what find_class returns).
_PICKLE_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),  # how Python 3's protocols 0-2 write bytes: encodes a string, runs nothing else
}


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that admits dicts, lists, bytes, str, numbers and numpy arrays, and refuses every other
    global (a ``__reduce__`` that names os.system, eval, ...) before it is looked up."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _PICKLE_GLOBALS:
            raise _Forbidden(f"{module}.{name}")
        if module.startswith("numpy.core"):  # numpy 2 moved numpy.core to numpy._core
            module = "numpy._core" + module[len("numpy.core") :] if hasattr(np, "_core") else module
        return getattr(importlib.import_module(module), name)


class _Forbidden(pickle.UnpicklingError):
    pass


def _unpickle(path: Path) -> dict:
    """Read a CIFAR-10 python-format file (a pickle written by Python 2, hence ``encoding="bytes"``) without
    executing anything it asks for beyond numpy's array reconstruction."""
    try:
        with open(path, "rb") as fh:
            obj = _CifarUnpickler(fh, encoding="bytes").load()
    except _Forbidden as exc:
        raise DataError(
            f"{path} asks to run {exc}, which no CIFAR-10 file contains; refused without running it. The file is "
            f"not an official CIFAR-10 batch (it may be malicious): re-extract the official archive, or use the "
            f"binary version ({CIFAR_BIN_DIR})"
        ) from None
    except Exception as exc:  # any unpickling failure means a damaged file
        raise DataError(
            f"{path} is not a readable CIFAR-10 pickle ({type(exc).__name__}: {exc}); re-extract it"
        ) from exc
    if not isinstance(obj, dict):
        raise DataError(f"{path} is not a CIFAR-10 pickle: it holds a {type(obj).__name__}, not a dict")
    return obj


def _read_cifar_py(path: Path) -> tuple[np.ndarray, np.ndarray]:
    d = _unpickle(path)
    try:
        data = np.asarray(d[b"data"])
        labels = np.asarray(d[b"labels"], dtype=np.int64)
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{path} is not a CIFAR-10 batch: it lacks b'data' / b'labels' ({exc})") from exc
    want = (CIFAR_RECORDS_PER_FILE, CIFAR_PIXELS)
    if data.dtype != np.uint8 or data.shape != want or labels.shape != want[:1]:
        raise DataError(
            f"{path}: expected data uint8 {want} and {want[0]} labels, got data {data.dtype} {data.shape} "
            f"and {labels.shape[0] if labels.ndim else 0} labels; the file looks truncated or corrupt"
        )
    _check_labels(labels, path)
    return data, labels


def _to_nhwc(flat: np.ndarray) -> np.ndarray:
    """CIFAR rows are CHW planes (1024 R, then G, then B; rows of 32) -> (N, 32, 32, 3)."""
    return np.ascontiguousarray(flat.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def load_cifar10(root: str | Path) -> Arrays:
    """(x_train, y_train, x_test, y_test, classes) from either official CIFAR-10 format."""
    folder = find_cifar10(root)
    binary = folder.name == CIFAR_BIN_DIR or (folder / "data_batch_1.bin").is_file()
    if binary:
        names = [f + ".bin" for f in CIFAR_TRAIN_FILES] + [CIFAR_TEST_FILE + ".bin"]
        _require(folder, names + ["batches.meta.txt"])
        parts = [_read_cifar_bin(folder / n) for n in names]
        classes = tuple(line.strip() for line in (folder / "batches.meta.txt").read_text().splitlines() if line.strip())
    else:
        names = list(CIFAR_TRAIN_FILES) + [CIFAR_TEST_FILE]
        _require(folder, names + ["batches.meta"])
        parts = [_read_cifar_py(folder / n) for n in names]
        meta = _unpickle(folder / "batches.meta")
        try:
            classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in meta[b"label_names"])
        except KeyError as exc:
            raise DataError(f"{folder / 'batches.meta'} lacks b'label_names'") from exc
    meta_name = "batches.meta.txt" if binary else "batches.meta"
    if len(classes) != 10:
        raise DataError(f"{folder / meta_name} names {len(classes)} classes, CIFAR-10 has 10")
    x_train = _to_nhwc(np.concatenate([p[0] for p in parts[:-1]]))
    y_train = np.concatenate([p[1] for p in parts[:-1]])
    return x_train, y_train, _to_nhwc(parts[-1][0]), parts[-1][1], classes


# --------------------------------------------------------------------------- IDX (MNIST layout)


def _read_idx_bytes(folder: Path, base: str) -> tuple[Path, bytes]:
    raw, gz = folder / base, folder / (base + ".gz")
    if raw.is_file():
        return raw, raw.read_bytes()
    if gz.is_file():
        try:
            with gzip.open(gz, "rb") as fh:
                return gz, fh.read()
        except (OSError, EOFError) as exc:
            raise DataError(f"{gz} is not a readable gzip file ({exc}); re-download it") from exc
    raise DataError(f"IDX folder {folder} is missing {base} (or {base}.gz)")


def _parse_idx(path: Path, data: bytes, magic: int) -> np.ndarray:
    ndim = 3 if magic == IDX_IMAGES_MAGIC else 1
    header = 4 * (1 + ndim)
    if len(data) < header:
        raise DataError(f"{path}: {len(data)} bytes is shorter than the {header}-byte IDX header; it looks truncated")
    fields = np.frombuffer(data, dtype=">u4", count=1 + ndim)
    if int(fields[0]) != magic:
        kind = "images" if magic == IDX_IMAGES_MAGIC else "labels"
        raise DataError(f"{path}: magic number {int(fields[0])}, expected {magic} (IDX {kind}); wrong or corrupt file")
    dims = [int(d) for d in fields[1:]]
    expected = header + int(np.prod(dims))
    if len(data) != expected:
        note = " (after gunzip)" if path.suffix == ".gz" else ""
        raise DataError(
            f"{path}: expected {expected} bytes for dims {dims}, got {len(data)}{note}; it looks truncated or corrupt"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _load_idx_pair(folder: Path, images: str, labels: str) -> tuple[np.ndarray, np.ndarray]:
    ipath, idata = _read_idx_bytes(folder, images)
    lpath, ldata = _read_idx_bytes(folder, labels)
    x = _parse_idx(ipath, idata, IDX_IMAGES_MAGIC)
    y = _parse_idx(lpath, ldata, IDX_LABELS_MAGIC).astype(np.int64)
    if len(x) != len(y):
        raise DataError(f"{ipath} has {len(x)} images but {lpath} has {len(y)} labels")
    return x[..., None].copy(), y  # copy: frombuffer arrays are read-only views of the file bytes


def load_idx(root: str | Path) -> Arrays:
    """(x_train, y_train, x_test, y_test, classes) from MNIST-layout IDX files (raw or .gz)."""
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise DataError(
            f"IDX folder {folder} does not exist; fix: --set data.root=PATH (the folder holding the IDX files)"
        )
    x_train, y_train = _load_idx_pair(folder, IDX_FILES["train_images"], IDX_FILES["train_labels"])
    x_test, y_test = _load_idx_pair(folder, IDX_FILES["test_images"], IDX_FILES["test_labels"])
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(
            f"IDX train images are {x_train.shape[1:3]} but test images are {x_test.shape[1:3]} in {folder}"
        )
    top = max([int(y.max()) for y in (y_train, y_test) if y.size], default=0)
    classes = tuple(str(i) for i in range(max(10, top + 1)))
    return x_train, y_train, x_test, y_test, classes
