"""Dataset loaders: digits splits, both CIFAR-10 formats (tiny files written here), IDX, and errors."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from dualkit.core import datasets
from dualkit.core.datasets import (
    SPLIT_SEED,
    Dataset,
    find_cifar10,
    load_cifar10,
    load_dataset,
    load_digits_arrays,
    load_idx,
)
from dualkit.core.errors import DataError
from dualkit.core.specs import DataSpec

RECORDS = 5  # per CIFAR file in these tests, instead of the official 10000
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
REAL_CIFAR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "cifar-10-batches-bin"


# --------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset(DataSpec(name="digits", val_fraction=0.1, test_fraction=0.2))


def test_digits_arrays():
    x, y = load_digits_arrays()
    assert x.shape == (1797, 8, 8, 1) and x.dtype == np.uint8
    assert y.shape == (1797,) and y.dtype == np.int64
    assert x.max() == 255 and x.min() == 0
    # 0..16 scaled to 0..255: every value is round(v * 255 / 16) for an integer v.
    levels = np.round(np.arange(17) * 255 / 16)
    assert np.isin(x, levels).all()


def test_digits_splits_disjoint_covering_and_stratified(digits):
    assert digits.name == "digits" and digits.source == "sklearn.datasets.load_digits"
    assert digits.image_shape == (8, 8, 1) and digits.num_classes == 10
    n_train, n_val, n_test = len(digits.x_train), len(digits.x_val), len(digits.x_test)
    assert n_train + n_val + n_test == 1797
    assert 340 <= n_test <= 380 and 130 <= n_val <= 160
    for xs, ys in [(digits.x_train, digits.y_train), (digits.x_val, digits.y_val), (digits.x_test, digits.y_test)]:
        assert xs.dtype == np.uint8 and ys.dtype == np.int64 and len(xs) == len(ys)
        assert xs.flags.c_contiguous
        assert set(ys.tolist()) == set(range(10))  # every class in every split
    # Disjoint and covering: the splits together are exactly the original images, each once.
    x, y = load_digits_arrays()
    key = lambda xs, ys: sorted(a.tobytes() + bytes([b]) for a, b in zip(xs, ys))  # noqa: E731
    merged = key(
        np.concatenate([digits.x_train, digits.x_val, digits.x_test]),
        np.concatenate([digits.y_train, digits.y_val, digits.y_test]),
    )
    assert merged == key(x, y)
    # Stratified: each class's share of the test set is within one image of 20 %.
    for c in range(10):
        assert abs((digits.y_test == c).sum() - 0.2 * (y == c).sum()) <= 1


def test_digits_test_split_is_fixed(digits):
    other = load_dataset(DataSpec(name="digits", val_fraction=0.3, test_fraction=0.2, limit_train=50))
    np.testing.assert_array_equal(other.x_test, digits.x_test)
    np.testing.assert_array_equal(other.y_test, digits.y_test)
    assert len(other.x_train) == 50
    no_val = load_dataset(DataSpec(name="digits", val_fraction=0.0))
    assert no_val.x_val.shape == (0, 8, 8, 1) and no_val.x_val.dtype == np.uint8
    assert no_val.y_val.shape == (0,) and no_val.y_val.dtype == np.int64
    np.testing.assert_array_equal(no_val.x_test, digits.x_test)
    assert len(no_val.x_train) + len(no_val.x_test) == 1797


def test_digits_split_depends_on_split_seed(monkeypatch, digits):
    monkeypatch.setattr(datasets, "SPLIT_SEED", SPLIT_SEED + 1)
    moved = load_dataset(DataSpec(name="digits"))
    assert not np.array_equal(moved.y_test, digits.y_test) or not np.array_equal(moved.x_test, digits.x_test)


def test_limit_train_keeps_val(digits):
    limited = load_dataset(DataSpec(name="digits", val_fraction=0.1, limit_train=10))
    np.testing.assert_array_equal(limited.x_train, digits.x_train[:10])
    np.testing.assert_array_equal(limited.x_val, digits.x_val)


def test_unknown_dataset():
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset(DataSpec(name="svhn"))


# --------------------------------------------------------------------------- CIFAR-10 files


def _cifar_content() -> list[tuple[np.ndarray, np.ndarray]]:
    """Per file (5 train, then test): CHW-flat pixels (RECORDS, 3072) and labels."""
    rng = np.random.default_rng(7)
    out = []
    for f in range(6):
        pixels = rng.integers(0, 256, size=(RECORDS, 3072), dtype=np.uint8)
        labels = (np.arange(RECORDS) + f * RECORDS) % 10
        out.append((pixels, labels.astype(np.int64)))
    return out


def _file_names(binary: bool) -> list[str]:
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    return [n + ".bin" for n in names] if binary else names


def write_cifar_bin(folder: Path, content=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, (pixels, labels) in zip(_file_names(True), content or _cifar_content()):
        records = np.concatenate([labels.astype(np.uint8)[:, None], pixels], axis=1)
        (folder / name).write_bytes(records.tobytes())
    (folder / "batches.meta.txt").write_text("\n".join(CLASSES) + "\n\n")  # official file ends in blank lines
    return folder


def write_cifar_py(folder: Path, content=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, (pixels, labels) in zip(_file_names(False), content or _cifar_content()):
        batch = {b"batch_label": name.encode(), b"labels": labels.tolist(), b"data": pixels, b"filenames": []}
        (folder / name).write_bytes(pickle.dumps(batch))
    meta = {b"label_names": [c.encode() for c in CLASSES], b"num_cases_per_batch": RECORDS, b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    return folder


@pytest.fixture
def tiny_cifar(monkeypatch):
    monkeypatch.setattr(datasets, "CIFAR_RECORDS_PER_FILE", RECORDS)


def test_cifar_binary_layout(tmp_path, tiny_cifar):
    content = _cifar_content()
    write_cifar_bin(tmp_path / "cifar-10-batches-bin", content)
    x_train, y_train, x_test, y_test, classes = load_cifar10(tmp_path)
    assert x_train.shape == (5 * RECORDS, 32, 32, 3) and x_test.shape == (RECORDS, 32, 32, 3)
    assert x_train.dtype == np.uint8 and y_train.dtype == np.int64 and x_train.flags.c_contiguous
    assert classes == CLASSES
    np.testing.assert_array_equal(y_train, np.concatenate([c[1] for c in content[:5]]))
    np.testing.assert_array_equal(y_test, content[5][1])
    # Pixel for pixel: record byte ch*1024 + row*32 + col is x[row, col, ch].
    flat = np.concatenate([c[0] for c in content[:5]])
    for k in range(len(flat)):
        for ch in range(3):
            for row in range(32):
                np.testing.assert_array_equal(
                    x_train[k, row, :, ch], flat[k, ch * 1024 + row * 32 : ch * 1024 + row * 32 + 32]
                )
    assert x_test[2, 5, 7, 1] == content[5][0][2, 1024 + 5 * 32 + 7]


def test_cifar_python_matches_binary(tmp_path, tiny_cifar):
    content = _cifar_content()
    a = load_cifar10(write_cifar_bin(tmp_path / "a" / "cifar-10-batches-bin", content))
    b = load_cifar10(write_cifar_py(tmp_path / "b" / "cifar-10-batches-py", content))
    for left, right in zip(a[:4], b[:4]):
        assert left.dtype == right.dtype
        np.testing.assert_array_equal(left, right)
    assert a[4] == b[4] == CLASSES


def test_find_cifar10_folder_or_parent(tmp_path):
    binary = write_cifar_bin(tmp_path / "x" / "cifar-10-batches-bin")
    python = tmp_path / "y" / "cifar-10-batches-py"
    python.mkdir(parents=True)
    assert find_cifar10(str(binary)) == binary.resolve()
    assert find_cifar10(str(tmp_path / "x")) == binary.resolve()
    assert find_cifar10(str(python)) == python.resolve()
    assert find_cifar10(str(tmp_path / "y")) == python.resolve()


def test_find_cifar10_default_places(tmp_path, monkeypatch):
    home, cwd, env = tmp_path / "home", tmp_path / "cwd", tmp_path / "env"
    for d in (home, cwd, env):
        d.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("DUALKIT_DATA", str(env))
    monkeypatch.chdir(cwd)
    with pytest.raises(DataError) as err:
        find_cifar10("")
    message = str(err.value)
    for place in (env, home / ".keras" / "datasets", Path("data")):
        assert str(place / "cifar-10-batches-bin") in message and str(place / "cifar-10-batches-py") in message
    assert "--set data.root=PATH" in message
    keras = home / ".keras" / "datasets" / "cifar-10-batches-py"
    keras.mkdir(parents=True)
    assert find_cifar10("") == keras.resolve()
    local = cwd / "data" / "cifar-10-batches-bin"
    local.mkdir(parents=True)
    assert find_cifar10("") == keras.resolve()  # keras cache comes before ./data
    mine = env / "cifar-10-batches-bin"
    mine.mkdir()
    assert find_cifar10("") == mine.resolve()  # $DUALKIT_DATA comes first


def test_cifar_missing_folder_names_root(tmp_path):
    with pytest.raises(DataError, match="looked in") as err:
        load_dataset(DataSpec(name="cifar10", root=str(tmp_path / "nowhere")))
    assert str(tmp_path / "nowhere" / "cifar-10-batches-bin") in str(err.value)


@pytest.mark.parametrize("binary", [True, False])
def test_cifar_missing_file(tmp_path, tiny_cifar, binary):
    folder = tmp_path / ("cifar-10-batches-bin" if binary else "cifar-10-batches-py")
    (write_cifar_bin if binary else write_cifar_py)(folder)
    missing = "data_batch_3.bin" if binary else "data_batch_3"
    (folder / missing).unlink()
    with pytest.raises(DataError, match=f"missing {missing}") as err:
        load_cifar10(tmp_path)
    assert str(folder.resolve()) in str(err.value)


def test_cifar_truncated_binary(tmp_path, tiny_cifar):
    folder = write_cifar_bin(tmp_path / "cifar-10-batches-bin")
    path = folder / "data_batch_2.bin"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated") as err:
        load_cifar10(folder)
    message = str(err.value)
    expected = RECORDS * 3073
    assert (
        "data_batch_2.bin" in message
        and f"expected {expected} bytes" in message
        and f"{expected - 100} bytes" in message
    )


def test_cifar_official_size_in_message(tmp_path):
    folder = write_cifar_bin(tmp_path / "cifar-10-batches-bin")  # 5-record files against the real 10000
    with pytest.raises(DataError, match="expected 30730000 bytes"):
        load_cifar10(folder)


def test_cifar_corrupt_pickle(tmp_path, tiny_cifar):
    folder = write_cifar_py(tmp_path / "cifar-10-batches-py")
    (folder / "test_batch").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DataError, match="test_batch"):
        load_cifar10(folder)


def test_cifar_bad_label(tmp_path, tiny_cifar):
    content = _cifar_content()
    content[1][1][3] = 10
    write_cifar_bin(tmp_path / "cifar-10-batches-bin", content)
    with pytest.raises(DataError, match=r"data_batch_2\.bin.*0\.\.9"):
        load_cifar10(tmp_path)


def test_load_dataset_cifar10(tmp_path, tiny_cifar):
    write_cifar_bin(tmp_path / "cifar-10-batches-bin")
    ds = load_dataset(DataSpec(name="cifar10", root=str(tmp_path), val_fraction=0.2))
    assert ds.source == str((tmp_path / "cifar-10-batches-bin").resolve())
    assert len(ds.x_train) + len(ds.x_val) == 5 * RECORDS and len(ds.x_test) == RECORDS
    assert set(ds.y_val.tolist()) == set(range(10))  # stratified: each class has 2 or 3 of the 25
    assert ds.classes == CLASSES and ds.image_shape == (32, 32, 3)


@pytest.mark.skipif(not REAL_CIFAR.is_dir(), reason=f"real CIFAR-10 binary copy not at {REAL_CIFAR}")
def test_real_cifar10_binary():
    x_train, y_train, x_test, y_test, classes = load_cifar10(REAL_CIFAR)
    assert x_train.shape == (50000, 32, 32, 3) and x_test.shape == (10000, 32, 32, 3)
    assert x_train.dtype == np.uint8 and y_train.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(y_train, minlength=10), np.full(10, 5000))
    np.testing.assert_array_equal(np.bincount(y_test, minlength=10), np.full(10, 1000))
    assert classes == CLASSES
    # Natural images: channels are correlated (a wrong CHW->HWC reshape would scramble them).
    r, g = x_train[:500, ..., 0].astype(float).ravel(), x_train[:500, ..., 1].astype(float).ravel()
    assert np.corrcoef(r, g)[0, 1] > 0.8
    # Neighbouring pixels along a row are similar too (a wrong row/column order would break this).
    row_diff = np.abs(np.diff(x_train[:500].astype(int), axis=2)).mean()
    assert row_diff < 30


# --------------------------------------------------------------------------- IDX


def _idx_images(x: np.ndarray, magic: int = 2051) -> bytes:
    return struct.pack(">IIII", magic, *x.shape) + x.tobytes()


def _idx_labels(y: np.ndarray, magic: int = 2049) -> bytes:
    return struct.pack(">II", magic, len(y)) + y.astype(np.uint8).tobytes()


def write_idx(folder: Path, gz: bool = False, n_train: int = 12, n_test: int = 4) -> dict:
    rng = np.random.default_rng(3)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.arange(n_test) % 10,
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        data = _idx_images(arr) if "images" in name else _idx_labels(arr)
        if gz:
            (folder / (name + ".gz")).write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_idx_load(tmp_path, gz):
    arrays = write_idx(tmp_path, gz=gz)
    x_train, y_train, x_test, y_test, classes = load_idx(tmp_path)
    assert x_train.shape == (12, 28, 28, 1) and x_test.shape == (4, 28, 28, 1) and x_train.dtype == np.uint8
    assert y_train.dtype == np.int64
    np.testing.assert_array_equal(x_train[..., 0], arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(y_test, arrays["t10k-labels-idx1-ubyte"])
    assert classes == tuple(str(i) for i in range(10))


def test_idx_via_load_dataset(tmp_path):
    write_idx(tmp_path, n_train=40)
    ds = load_dataset(DataSpec(name="idx", root=str(tmp_path), val_fraction=0.25))
    assert len(ds.x_train) + len(ds.x_val) == 40 and ds.image_shape == (28, 28, 1)
    assert ds.x_train.flags.writeable


def test_idx_needs_root():
    with pytest.raises(DataError, match="data.root"):
        load_dataset(DataSpec(name="idx", root=""))


def test_idx_bad_magic(tmp_path):
    write_idx(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx_labels(np.arange(12) % 10, magic=2051))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.*magic number 2051, expected 2049"):
        load_idx(tmp_path)


def test_idx_truncated(tmp_path):
    write_idx(tmp_path, gz=True)
    data = _idx_images(np.zeros((4, 28, 28), dtype=np.uint8))[:-10]
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(data))
    with pytest.raises(DataError) as err:
        load_idx(tmp_path)
    message = str(err.value)
    assert (
        "t10k-images-idx3-ubyte.gz" in message
        and f"expected {16 + 4 * 784}" in message
        and f"got {16 + 4 * 784 - 10}" in message
    )


def test_idx_count_mismatch_and_missing(tmp_path):
    write_idx(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx_labels(np.arange(3)))
    with pytest.raises(DataError, match="4 images but .* 3 labels"):
        load_idx(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="missing t10k-labels-idx1-ubyte"):
        load_idx(tmp_path)


def test_idx_more_classes(tmp_path):
    write_idx(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx_labels(np.arange(12)))  # labels 0..11
    assert load_idx(tmp_path)[4] == tuple(str(i) for i in range(12))


class _Planted:
    """A pickle payload that runs a shell command when a plain pickle.load reads it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("where", ["data_batch_1", "batches.meta"])
def test_cifar_pickle_that_runs_code_is_refused_without_running(tmp_path, tiny_cifar, where):
    folder = write_cifar_py(tmp_path / "cifar-10-batches-py")
    marker = tmp_path / "pwned"
    payload = {b"batch_label": b"x", b"labels": [0], b"data": _Planted(marker), b"filenames": []}
    if where == "batches.meta":
        payload = {b"label_names": _Planted(marker)}
    (folder / where).write_bytes(pickle.dumps(payload))
    with pytest.raises(DataError, match=rf"{where} asks to run posix.system.*refused without running it"):
        load_cifar10(folder)
    assert not marker.exists()


def test_cifar_pickles_of_numpy_arrays_in_every_protocol_load(tmp_path, tiny_cifar):
    for protocol in (2, 4, 5):
        folder = tmp_path / f"p{protocol}" / "cifar-10-batches-py"
        write_cifar_py(folder)
        for name in _file_names(False):
            batch = pickle.loads((folder / name).read_bytes())
            (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
        x_train, y_train, *_ = load_cifar10(folder)
        np.testing.assert_array_equal(y_train, np.concatenate([c[1] for c in _cifar_content()[:5]]))
        assert x_train.dtype == np.uint8
