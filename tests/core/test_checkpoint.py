"""Checkpoints: safetensors with dualkit metadata, written atomically, refused clearly when foreign."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
from safetensors.numpy import save_file

import dualkit.core.runs
from dualkit.core import checkpoint
from dualkit.core.errors import CheckpointError


def tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "encoder.block0.conv0.weight": rng.normal(size=(4, 1, 3, 3)).astype(np.float32),
        "encoder.block0.bn0.running_var": np.ones(4, np.float32),
        "head.out.weight": rng.normal(size=(10, 4)),  # float64
        "head.out.bias": np.arange(10, dtype=np.float32),
    }


META = {"kind": "classifier", "spec": {"model": {"channels": [4]}}, "epoch": 3, "classes": ["a", "b"]}


def test_round_trip(tmp_path):
    path = tmp_path / "model.safetensors"
    original = tensors()
    checkpoint.save(path, original, META)
    loaded, meta = checkpoint.load(path)
    assert set(loaded) == set(original)
    for name, value in original.items():
        assert loaded[name].dtype == value.dtype
        np.testing.assert_array_equal(loaded[name], value)
    assert meta == {"format_version": checkpoint.FORMAT_VERSION, **META}


def test_round_trip_of_non_contiguous_arrays(tmp_path):
    path = tmp_path / "m.safetensors"
    a = np.arange(12, dtype=np.float32).reshape(3, 4).T  # a transposed view
    checkpoint.save(path, {"a": a}, {})
    np.testing.assert_array_equal(checkpoint.load(path)[0]["a"], a)


def test_write_leaves_no_temp_files(tmp_path):
    path = tmp_path / "model.safetensors"
    checkpoint.save(path, tensors(), META)
    checkpoint.save(path, tensors(), {**META, "epoch": 4})  # overwrite
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]
    assert checkpoint.load(path)[1]["epoch"] == 4


def test_failed_write_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    checkpoint.save(path, tensors(), META)
    before = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(dualkit.core.runs.os, "replace", broken_replace)
    bigger = {**tensors(), "extra": np.zeros((100, 100), np.float32)}
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(path, bigger, {**META, "epoch": 9})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # the temp file was removed
    assert checkpoint.load(path)[1]["epoch"] == 3


def test_failed_write_while_writing_data(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    checkpoint.save(path, tensors(), META)
    before = path.read_bytes()

    def broken_fsync(fd):
        raise OSError("I/O error")

    monkeypatch.setattr(dualkit.core.runs.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="I/O error"):
        checkpoint.save(path, tensors(), {**META, "epoch": 9})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


@pytest.mark.parametrize(
    "content",
    [
        os.urandom(256),
        pickle.dumps({"head.out.weight": np.zeros(3)}),
        b"",
        b"abc",
        b'{"not": "safetensors"}',
    ],
    ids=["random", "pickle", "empty", "short", "json"],
)
def test_non_safetensors_file(tmp_path, content):
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a safetensors file") as err:
        checkpoint.load(path)
    assert str(path) in str(err.value)


def test_truncated_file(tmp_path):
    path = tmp_path / "model.safetensors"
    checkpoint.save(path, tensors(), META)
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(CheckpointError, match="safetensors"):
        checkpoint.load(path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoint.load(tmp_path / "nope.safetensors")


def test_safetensors_without_dualkit_metadata(tmp_path):
    path = tmp_path / "foreign.safetensors"
    save_file({"w": np.zeros(3, np.float32)}, str(path))
    with pytest.raises(CheckpointError, match="not written by dualkit"):
        checkpoint.load(path)
    save_file({"w": np.zeros(3, np.float32)}, str(path), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="not written by dualkit"):
        checkpoint.load(path)


@pytest.mark.parametrize("meta_text", ["not json", "[1, 2]", "3"])
def test_damaged_dualkit_metadata(tmp_path, meta_text):
    path = tmp_path / "m.safetensors"
    save_file({"w": np.zeros(3, np.float32)}, str(path), metadata={"dualkit": meta_text})
    with pytest.raises(CheckpointError, match="metadata"):
        checkpoint.load(path)


def test_newer_format_version(tmp_path):
    path = tmp_path / "m.safetensors"
    meta = json.dumps({"format_version": checkpoint.FORMAT_VERSION + 1, "kind": "classifier"})
    save_file({"w": np.zeros(3, np.float32)}, str(path), metadata={"dualkit": meta})
    with pytest.raises(CheckpointError, match=r"newer.*upgrade"):
        checkpoint.load(path)


def test_check_fits_accepts_a_fitting_checkpoint():
    t = tensors()
    checkpoint.check_fits(t, {n: v.shape for n, v in t.items()})


def test_check_fits_names_every_problem():
    t = tensors()
    expected = {n: v.shape for n, v in t.items()}
    del expected["encoder.block0.bn0.running_var"]  # -> unexpected in the checkpoint
    expected["encoder.block0.conv0.bias"] = (4,)  # -> missing from the checkpoint
    expected["head.fc0.weight"] = (8, 4)  # -> missing too
    expected["head.out.weight"] = (3, 4)  # -> wrong shape
    with pytest.raises(CheckpointError) as err:
        checkpoint.check_fits(t, expected, "the test model")
    msg = str(err.value)
    assert "the test model" in msg
    assert "missing: encoder.block0.conv0.bias, head.fc0.weight" in msg
    assert "unexpected: encoder.block0.bn0.running_var" in msg
    assert "head.out.weight: checkpoint (10, 4), model (3, 4)" in msg
    assert "head.out.bias" not in msg and "conv0.weight" not in msg  # fitting tensors are not named


def test_check_fits_shape_only():
    with pytest.raises(CheckpointError, match=r"wrong shape: a: checkpoint \(2, 3\), model \(3, 2\)") as err:
        checkpoint.check_fits({"a": np.zeros((2, 3))}, {"a": (3, 2)})
    assert "missing" not in str(err.value) and "unexpected" not in str(err.value)
