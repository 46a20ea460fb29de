"""Masked pretraining through the driver and the CLI: the run folder, evaluation in either backend,
--init-from for the classifier, and clear errors for bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")

from core import checkpoint, registry  # noqa: E402
from core.runs import read_json  # noqa: E402
from core.weights import encoder_shapes, masked_shapes  # noqa: E402
from tasks import presets  # noqa: E402
from tasks.classify import train  # noqa: E402
from tasks.cli import main  # noqa: E402
from tasks.probe import encoder_for_classifier, load_encoder  # noqa: E402

needs_tf = pytest.mark.skipif(not registry.is_installed("tf"), reason="TensorFlow is not installed")
QUICK = ["--set", "train.epochs=2", "--set", "probe.c_grid=[1.0]", "--set", "finetune.fractions=[0.1]",
         "--set", "finetune.epochs=1"]


@pytest.fixture(autouse=True)
def no_backend_env(monkeypatch):
    monkeypatch.delenv(registry.ENV_VAR, raising=False)


@pytest.fixture(scope="module")
def masked_run(tmp_path_factory):
    """A finished 2-epoch masked-digits pretraining in PyTorch through `dualkit pretrain`, shared read-only."""
    run_dir = tmp_path_factory.mktemp("masked") / "run"
    assert main(["pretrain", "masked-digits", "--backend", "torch", "--quiet", "--out", str(run_dir), *QUICK]) == 0
    return run_dir


def refused(capsys, argv: list[str], *needles: str) -> str:
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2, (out, err)
    assert err.startswith("dualkit: error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


# --------------------------------------------------------------------------- the run folder


def test_run_folder_holds_checkpoints_grid_and_results(masked_run):
    names = {p.name for p in masked_run.iterdir()}
    assert {"spec.json", "metrics.jsonl", "model.safetensors", "encoder.safetensors", "reconstructions.png",
            "result.json"} <= names
    spec = presets.load("masked-digits")
    tensors, meta = checkpoint.load(masked_run / "model.safetensors")
    assert set(tensors) == set(masked_shapes(spec.model, spec.decoder, 1)) and meta["kind"] == "masked"
    encoder, emeta = checkpoint.load(masked_run / "encoder.safetensors")
    assert set(encoder) == set(encoder_shapes(spec.model, 1)) and emeta["kind"] == "encoder"
    assert emeta["backend"] == "torch" and emeta["patch_size"] == 4
    for name, value in encoder.items():
        np.testing.assert_array_equal(value, tensors[name])
    assert (masked_run / "reconstructions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    lines = [json.loads(line) for line in (masked_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2] and all(np.isfinite(r["val_loss"]) for r in lines)
    res = read_json(masked_run / "result.json")
    assert res["task"] == "masked" and res["backend"] == "torch" and res["seed"] == 0
    assert res["final_train_loss"] < lines[0]["train_loss"] or res["epochs"] == 2
    probe = res["evaluation"]["probe"]
    assert 0.5 < probe["pretrained"]["accuracy"] <= 1.0 and 0.5 < probe["random"]["accuracy"] <= 1.0
    assert probe["margin_points"] == pytest.approx(100 * (probe["pretrained"]["accuracy"] - probe["random"]["accuracy"]))
    ft = res["evaluation"]["finetune"]["0.1"]
    assert ft["pretrained"]["train_images"] == ft["random"]["train_images"] == round(0.1 * probe["pretrained"]["train_images"])


def test_train_dispatches_a_masked_preset_to_pretraining(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "masked-digits", "--quiet", "--out", str(out), "--set", "max_steps=3", "--set", "probe.enabled=false",
            "--set", "finetune.fractions=[]"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "masked loss" in printed and "reconstructions:" in printed
    res = read_json(out / "result.json")
    assert res["steps"] == 3 and res["evaluation"] == {"backend": "torch", "seed": 0}


@needs_tf
def test_eval_probes_a_torch_encoder_in_tf_with_the_same_accuracy(masked_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(masked_run, run)
    assert main(["eval", str(run), "--backend", "tf", "--no-finetune", "--quiet"]) == 0
    assert "linear probe" in capsys.readouterr().out
    got = read_json(run / "eval-tf.json")
    assert got["trained_in"] == "torch" and got["backend"] == "tf" and "finetune" not in got
    want = read_json(run / "result.json")["evaluation"]["probe"]
    assert got["probe"]["pretrained"]["accuracy"] == want["pretrained"]["accuracy"]
    assert got["probe"]["random"]["accuracy"] == want["random"]["accuracy"]


# --------------------------------------------------------------------------- --init-from


def test_init_from_starts_the_classifier_from_the_pretrained_encoder(masked_run):
    spec = presets.load("cnn-digits", ["train.epochs=1", "optim.name=sgd", "optim.lr=1e-12", "schedule.warmup_steps=0"])
    encoder = encoder_for_classifier(masked_run, spec)
    assert encoder.keys() == load_encoder(masked_run / "encoder.safetensors")[0].keys()
    weights = train(spec, "torch", progress=False, init_weights=encoder).weights
    for name, value in encoder.items():
        if ".conv" in name:  # trained with lr 1e-12: still the pretrained kernels
            np.testing.assert_allclose(weights[name], value, atol=1e-9, err_msg=name)


def test_init_from_through_the_cli(masked_run, tmp_path):
    out = tmp_path / "clf"
    assert main(["train", "cnn-digits", "--init-from", str(masked_run), "--quiet", "--out", str(out),
                 "--set", "train.epochs=1"]) == 0
    assert (out / "model.safetensors").is_file()


def test_init_from_an_encoder_that_does_not_fit_names_the_tensors(masked_run, tmp_path, capsys):
    out = tmp_path / "clf"
    refused(capsys, ["train", "cnn-digits", "--init-from", str(masked_run), "--quiet", "--out", str(out),
                     "--set", "model.channels=[16,64]", "--set", "model.convs_per_block=2"],
            "does not fit the classifier's encoder",
            "encoder.block0.conv0.weight: checkpoint (32, 1, 3, 3), model (16, 1, 3, 3)",
            "missing: encoder.block0.conv1.weight")
    assert not out.exists()


def test_init_from_a_folder_without_checkpoints(tmp_path, capsys):
    refused(capsys, ["train", "cnn-digits", "--init-from", str(tmp_path), "--quiet", "--out", str(tmp_path / "x")],
            "holds neither encoder.safetensors nor model.safetensors")


def test_init_from_is_only_for_classifiers(masked_run, tmp_path, capsys):
    refused(capsys, ["train", "masked-digits", "--init-from", str(masked_run), "--out", str(tmp_path / "x")],
            "--init-from starts a classifier", "'masked' task")


def test_port_of_a_masked_run_points_to_the_encoder(masked_run, tmp_path, capsys):
    refused(capsys, ["port", str(masked_run), "--to", "tf", "--out", str(tmp_path / "m.keras")],
            "masked-pretraining run", "encoder.safetensors", "--init-from")
    assert not (tmp_path / "m.keras").exists()


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("ratio", ["0", "1.0", "1.5", "-0.2"])
def test_mask_ratio_outside_0_1_is_refused(ratio, tmp_path, capsys):
    refused(capsys, ["pretrain", "masked-digits", "--out", str(tmp_path / "x"), "--set", f"mask.ratio={ratio}"],
            "mask.ratio must be in (0, 1)")
    assert not (tmp_path / "x").exists()


def test_patch_size_that_does_not_match_the_downsampling_is_refused(tmp_path, capsys):
    refused(capsys, ["pretrain", "masked-digits", "--out", str(tmp_path / "x"), "--set", "mask.patch_size=2"],
            "mask.patch_size=2 does not match the encoder's downsampling", "set mask.patch_size=4")


def test_patch_size_that_does_not_divide_the_image_is_refused(tmp_path, capsys):
    refused(capsys, ["pretrain", "masked-digits", "--quiet", "--out", str(tmp_path / "x"),
                     "--set", "model.channels=[8,8,8,8]", "--set", "decoder.channels=[8,8,8,8]"],
            "mask patch size 16", "does not divide the 8x8 images")
    assert not (tmp_path / "x").exists()


def test_pretrain_refuses_a_classifier_preset(tmp_path, capsys):
    refused(capsys, ["pretrain", "cnn-digits", "--out", str(tmp_path / "x")], "use `dualkit train cnn-digits`")


def test_parity_dispatches_to_the_masked_levels(capsys):
    assert main(["parity", "masked-digits", "--levels", "L0", "--dtype", "float64"]) == 0
    out = capsys.readouterr().out
    assert "masked MSE norm_pix=true" in out and "4 passed, 0 failed" in out
