"""Each backend's export module on its own: the inference model of standard layers built from tasks/export.py's
ops gives the training model's eval-mode output, each format it writes loads back in its runtime with the same
output for any batch size, and the files need nothing of dualkit (.pt: weights_only; .keras: standard layers).
Every test runs for both backends (the ``backend`` fixture, conftest.py) unless it checks one framework's own
artifact."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from dualkit.core.errors import BackendError
from dualkit.core.specs import DecoderSpec, ModelSpec, OptimSpec, QNetSpec
from dualkit.core.weights import QNET_PREFIX, init_classifier, init_masked, init_qnet, is_buffer
from dualkit.tasks.export import OPSET, cnn_ops, mlp_ops

# Non-square, 3-channel images, two convs per block and a flatten head catch any H/W/C or in/out mix-up.
IMAGE = (8, 6, 3)
MASKED_IMAGE = (8, 12, 3)  # masks tile the image: 2^blocks divides H and W
MODELS = {
    "bn-flatten": ModelSpec(channels=(4, 8), convs_per_block=2, batchnorm=True, head="flatten", hidden=(16,)),
    "plain-gap": ModelSpec(channels=(4, 8), batchnorm=False, head="gap", num_classes=3),
}
QNET = QNetSpec(hidden=(16, 8), activation="tanh")
OBS_DIM, ACTIONS = 5, 3
ADAM = OptimSpec(name="adam")


def images(n: int, seed: int = 1, shape: tuple[int, int, int] = IMAGE) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, *shape)).astype(np.float32)


def trained_like(weights: dict[str, np.ndarray], seed: int = 2) -> dict[str, np.ndarray]:
    """BatchNorm running statistics and scales away from their identity init, so eval mode is really tested."""
    rng = np.random.default_rng(seed)
    out = dict(weights)
    for name, value in weights.items():
        if is_buffer(name) or ".bn" in name:
            shift = rng.uniform(0.5, 1.5, value.shape) if name.endswith(("running_var", "weight")) else 0.0
            out[name] = (value * shift + (rng.normal(0, 0.3, value.shape) if "mean" in name else 0)).astype(np.float32)
    return out


def classifier(backend: ModuleType, variant: str):
    model = MODELS[variant]
    weights = trained_like(init_classifier(model, IMAGE, 0))
    clf = backend.Classifier(model, IMAGE, weights, ADAM, 0.0, "float32", "cpu")
    exported = backend.export.inference_model(cnn_ops(model, IMAGE, head=True), IMAGE, weights, "images", "logits")
    return clf, exported


def native_formats(backend: ModuleType) -> list[str]:
    return [f for f in backend.export.FORMATS if f != "onnx"]


def roundtrip(backend: ModuleType, model, fmt: str, tmp_path: Path, metadata=None):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / f"artifact-{fmt}{'' if fmt == 'savedmodel' else '.' + fmt}"
    backend.export.save(model, fmt, path, OPSET, metadata or {"task": "test"})
    return path, backend.export.load(fmt, path)


@pytest.mark.parametrize("variant", sorted(MODELS))
def test_artifacts_give_the_training_models_logits(backend, variant, tmp_path):
    clf, exported = classifier(backend, variant)
    x = images(9)
    want = clf.predict(x)
    for fmt in native_formats(backend):
        _, run = roundtrip(backend, exported, fmt, tmp_path)
        got = run(x)
        assert got.shape == want.shape, fmt
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5, err_msg=fmt)
        assert np.array_equal(got.argmax(1), want.argmax(1)), fmt


def test_artifacts_take_any_batch_size(backend, tmp_path):
    clf, exported = classifier(backend, "bn-flatten")
    for fmt in native_formats(backend):
        _, run = roundtrip(backend, exported, fmt, tmp_path)
        for n in (1, 2, 13):
            x = images(n, seed=n)
            np.testing.assert_allclose(run(x), clf.predict(x), rtol=0, atol=1e-5, err_msg=f"{fmt}, batch {n}")


def test_encoder_features_and_q_values(backend, tmp_path):
    model = MODELS["bn-flatten"]
    weights = trained_like(init_masked(model, DecoderSpec(), MASKED_IMAGE[2], 0))
    mae = backend.MaskedAutoencoder(model, DecoderSpec(), MASKED_IMAGE, weights, ADAM, True, "float32", "cpu")
    encoder = {k: v for k, v in weights.items() if k.startswith("encoder.")}
    ops = cnn_ops(model, MASKED_IMAGE, head=False)
    feats = backend.export.inference_model(ops, MASKED_IMAGE, encoder, "images", "features")
    qw = init_qnet(QNET.hidden, OBS_DIM, ACTIONS, 0)
    agent = backend.DQNAgent(QNET, OBS_DIM, ACTIONS, qw, ADAM)
    qnet = backend.export.inference_model(
        mlp_ops(QNET, OBS_DIM, ACTIONS, QNET_PREFIX), (OBS_DIM,), qw, "observations", "q_values"
    )
    x, obs = images(7, shape=MASKED_IMAGE), np.random.default_rng(3).normal(size=(11, OBS_DIM)).astype(np.float32)
    for fmt in native_formats(backend):
        _, run = roundtrip(backend, feats, fmt, tmp_path / "f")
        np.testing.assert_allclose(run(x), mae.features(x), rtol=0, atol=1e-5, err_msg=fmt)
        _, run = roundtrip(backend, qnet, fmt, tmp_path / "q")
        np.testing.assert_allclose(run(obs), agent.act_values(obs), rtol=0, atol=1e-5, err_msg=fmt)


def test_float64_weights_export_as_float32(backend, tmp_path):
    model = MODELS["plain-gap"]
    w64 = init_classifier(model, IMAGE, 0, "float64")
    clf = backend.Classifier(model, IMAGE, w64, ADAM, 0.0, "float64", "cpu")
    exported = backend.export.inference_model(cnn_ops(model, IMAGE, head=True), IMAGE, w64, "images", "logits")
    x = images(5)
    for fmt in native_formats(backend):
        _, run = roundtrip(backend, exported, fmt, tmp_path)
        got = run(x)
        assert got.dtype == np.float32, fmt
        np.testing.assert_allclose(got, clf.predict(x.astype(np.float64)), rtol=0, atol=1e-5, err_msg=fmt)


def test_a_format_of_the_other_framework_is_refused(backend, tmp_path):
    _, exported = classifier(backend, "plain-gap")
    other = "savedmodel" if "pt2" in backend.export.FORMATS else "pt2"
    with pytest.raises(BackendError, match="exports"):
        backend.export.save(exported, other, tmp_path / "x", OPSET, {})
    with pytest.raises(BackendError, match="loads"):
        backend.export.load(other, tmp_path / "x")


@pytest.mark.slow
def test_onnx_runs_in_onnxruntime_with_named_nhwc_input_and_dynamic_batch(backend, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript" if "pt2" in backend.export.FORMATS else "tf2onnx")
    clf, exported = classifier(backend, "bn-flatten")
    path = tmp_path / "model.onnx"
    backend.export.save(exported, "onnx", path, OPSET, {})
    proto = onnx.load(str(path))
    assert {o.domain: o.version for o in proto.opset_import}[""] == OPSET
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.shape[1:] == list(IMAGE)  # NHWC, as core's batches
    assert not isinstance(inp.shape[0], int)  # the batch dimension is dynamic
    for n in (1, 6):
        x = images(n, seed=n)
        got = session.run(None, {inp.name: x})[0]
        np.testing.assert_allclose(got, clf.predict(x), rtol=0, atol=1e-5)


@pytest.mark.backend_only("torch", reason="the .pt state dict is torch's")
def test_pt_is_a_state_dict_of_standard_modules_that_loads_with_weights_only(backend, tmp_path):
    import torch

    clf, exported = classifier(backend, "bn-flatten")
    path, _ = roundtrip(backend, exported, "pt", tmp_path, {"normalizer": {"mean": [0.5], "std": [0.25]}})
    payload = torch.load(path, weights_only=True)
    assert payload["input"] == {"name": "images", "layout": "NCHW"} and payload["output"] == "logits"
    assert payload["meta"]["normalizer"] == {"mean": [0.5], "std": [0.25]}
    body = torch.nn.Sequential(*(getattr(torch.nn, name)(**args) for name, args in payload["layers"]))
    body.load_state_dict(payload["state_dict"])  # strict: every tensor has its module
    body.eval()
    x = images(4)
    with torch.no_grad():
        got = body(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(got, clf.predict(x), rtol=0, atol=1e-5)


@pytest.mark.backend_only("torch", reason="torch.export's .pt2 is torch's")
def test_pt2_carries_the_metadata(backend, tmp_path):
    import torch

    _, exported = classifier(backend, "plain-gap")
    path, _ = roundtrip(backend, exported, "pt2", tmp_path, {"env": "CartPole-v1"})
    extra = {"dualkit.json": ""}
    torch.export.load(str(path), extra_files=extra)
    assert json.loads(extra["dualkit.json"]) == {"env": "CartPole-v1"}


@pytest.mark.backend_only("tf", reason="the .keras archive and the SavedModel are Keras's")
def test_keras_archive_has_standard_layers_only_and_savedmodel_a_named_signature(backend, tmp_path):
    import tensorflow as tf

    _, exported = classifier(backend, "bn-flatten")
    path, _ = roundtrip(backend, exported, "keras", tmp_path)
    config = zipfile.ZipFile(path).read("config.json").decode()
    assert "dualkit" not in config  # no registered custom layer: keras.saving.load_model needs nothing else
    assert "BatchNormalization" in config
    path, _ = roundtrip(backend, exported, "savedmodel", tmp_path)
    signature = tf.saved_model.load(str(path)).signatures["serving_default"]
    assert list(signature.structured_input_signature[1]) == ["images"]
    assert list(signature.structured_outputs) == ["logits"]
