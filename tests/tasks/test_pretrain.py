"""Masked pretraining through the driver and the CLI: the run folder, evaluation in either backend,
--init-from for the classifier, clear errors for bad input, and interrupt-safe resume and hand-over."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from dualkit.cli import main  # noqa: E402
from dualkit.core import checkpoint, registry, runstate  # noqa: E402
from dualkit.core.errors import CheckpointError, DataError, Interrupted, RunError, SpecError  # noqa: E402
from dualkit.core.runs import read_json  # noqa: E402
from dualkit.core.specs import apply_overrides, load_json, save_json
from dualkit.core.weights import encoder_shapes, masked_shapes  # noqa: E402
from dualkit.tasks import parity, presets  # noqa: E402
from dualkit.tasks import pretrain as pretrain_module  # noqa: E402
from dualkit.tasks.classify import train  # noqa: E402
from dualkit.tasks.classify_spec import ClassifyRunSpec
from dualkit.tasks.dqn_spec import DQNRunSpec
from dualkit.tasks.pretrain import pretrain, resume  # noqa: E402
from dualkit.tasks.probe import encoder_for_classifier, load_encoder  # noqa: E402
from tests.runfolders import sigint_after, snapshot  # noqa: E402

needs_tf = pytest.mark.skipif(not registry.is_installed("tf"), reason="TensorFlow is not installed")
QUICK = [
    "--set",
    "train.epochs=2",
    "--set",
    "probe.c_grid=[1.0]",
    "--set",
    "finetune.fractions=[0.1]",
    "--set",
    "finetune.epochs=1",
]


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
    assert {
        "spec.json",
        "metrics.jsonl",
        "model.safetensors",
        "encoder.safetensors",
        "reconstructions.png",
        "result.json",
    } <= names
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
    assert probe["margin_points"] == pytest.approx(
        100 * (probe["pretrained"]["accuracy"] - probe["random"]["accuracy"])
    )
    ft = res["evaluation"]["finetune"]["0.1"]
    assert (
        ft["pretrained"]["train_images"]
        == ft["random"]["train_images"]
        == round(0.1 * probe["pretrained"]["train_images"])
    )


def test_train_dispatches_a_masked_preset_to_pretraining(tmp_path, capsys):
    out = tmp_path / "run"
    argv = [
        "train",
        "masked-digits",
        "--quiet",
        "--out",
        str(out),
        "--set",
        "max_steps=3",
        "--set",
        "probe.enabled=false",
        "--set",
        "finetune.fractions=[]",
    ]
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
    assert (
        main(
            [
                "train",
                "cnn-digits",
                "--init-from",
                str(masked_run),
                "--quiet",
                "--out",
                str(out),
                "--set",
                "train.epochs=1",
            ]
        )
        == 0
    )
    assert (out / "model.safetensors").is_file()


def test_init_from_an_encoder_that_does_not_fit_names_the_tensors(masked_run, tmp_path, capsys):
    out = tmp_path / "clf"
    refused(
        capsys,
        [
            "train",
            "cnn-digits",
            "--init-from",
            str(masked_run),
            "--quiet",
            "--out",
            str(out),
            "--set",
            "model.channels=[16,64]",
            "--set",
            "model.convs_per_block=2",
        ],
        "does not fit the classifier's encoder",
        "encoder.block0.conv0.weight: checkpoint (32, 1, 3, 3), model (16, 1, 3, 3)",
        "missing: encoder.block0.conv1.weight",
    )
    assert not out.exists()


def test_init_from_a_folder_without_checkpoints(tmp_path, capsys):
    refused(
        capsys,
        ["train", "cnn-digits", "--init-from", str(tmp_path), "--quiet", "--out", str(tmp_path / "x")],
        "holds neither encoder.safetensors nor model.safetensors",
    )


def test_init_from_is_only_for_classifiers(masked_run, tmp_path, capsys):
    refused(
        capsys,
        ["train", "masked-digits", "--init-from", str(masked_run), "--out", str(tmp_path / "x")],
        "--init-from starts a classifier",
        "'masked' task",
    )


def test_port_of_a_masked_run_points_to_the_encoder(masked_run, tmp_path, capsys):
    refused(
        capsys,
        ["port", str(masked_run), "--to", "tf", "--out", str(tmp_path / "m.keras")],
        "masked-pretraining run",
        "encoder.safetensors",
        "--init-from",
    )
    assert not (tmp_path / "m.keras").exists()


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("ratio", ["0", "1.0", "1.5", "-0.2"])
def test_mask_ratio_outside_0_1_is_refused(ratio, tmp_path, capsys):
    refused(
        capsys,
        ["pretrain", "masked-digits", "--out", str(tmp_path / "x"), "--set", f"mask.ratio={ratio}"],
        "mask.ratio must be in (0, 1)",
    )
    assert not (tmp_path / "x").exists()


def test_patch_size_that_does_not_match_the_downsampling_is_refused(tmp_path, capsys):
    refused(
        capsys,
        ["pretrain", "masked-digits", "--out", str(tmp_path / "x"), "--set", "mask.patch_size=2"],
        "mask.patch_size=2 does not match the encoder's downsampling",
        "set mask.patch_size=4",
    )


def test_more_pooling_blocks_than_the_image_allows_are_refused(tmp_path, capsys):
    refused(
        capsys,
        [
            "pretrain",
            "masked-digits",
            "--quiet",
            "--out",
            str(tmp_path / "x"),
            "--set",
            "model.channels=[8,8,8,8]",
            "--set",
            "decoder.channels=[8,8,8,8]",
        ],
        "model.channels has 4 blocks",
        "8x8 images can be halved only 3 times",
    )
    assert not (tmp_path / "x").exists()


def test_pretrain_refuses_a_classifier_preset(tmp_path, capsys):
    refused(capsys, ["pretrain", "cnn-digits", "--out", str(tmp_path / "x")], "use `dualkit train cnn-digits`")


def test_parity_dispatches_to_the_masked_levels(capsys):
    assert main(["parity", "masked-digits", "--levels", "L0", "--dtype", "float64"]) == 0
    out = capsys.readouterr().out
    assert "masked MSE norm_pix=true" in out and "4 passed, 0 failed" in out


# --------------------------------------------------------------------------- resume and hand-over
# 5 steps per epoch, 3 epochs cut at step 13 by max_steps (so the run ends inside epoch 3); crop and flip
# so that the batch stream draws per batch, the mask stream per step. Optimizer and schedule as the masked
# L4 level's (tasks/masked_parity.py), so that the same runs serve the hand-over bound. No evaluation and,
# but in the CLI test, no reconstruction grid: both come after pretraining, from the final weights, are
# covered above, and would take most of these tests' time (matplotlib draws 32 panels a second or two).
HAS_TF = registry.is_installed("tf")
BACKENDS = ["torch", pytest.param("tf", marks=needs_tf)]
TIMING = ("epoch_s", "images_per_s")  # wall-clock fields of a history record: the only ones allowed to differ
RESUME = [
    "data.limit_train=160",
    "train.epochs=3",
    "max_steps=13",
    "data.flip=true",
    "data.crop_padding=1",
    "optim.lr=1e-3",
    "optim.eps=1e-4",
    "schedule.warmup_steps=3",
    "train.checkpoint_every_steps=4",
    "train.keep_checkpoints=20",
    "train.checkpoint_every_minutes=0",
    "probe.enabled=false",
    "finetune.fractions=[]",
]


def strip(history):
    return [{k: v for k, v in h.items() if k not in TIMING} for h in history]


def assert_same_run(got, ref):
    """Bit-identical: every per-step loss, every history value but timing, every weight (BatchNorm statistics too)."""
    assert got.step_losses == ref.step_losses
    assert strip(got.history) == strip(ref.history)
    assert set(got.weights) == set(ref.weights)
    for name, value in ref.weights.items():
        np.testing.assert_array_equal(got.weights[name], value, err_msg=name)


def keep_checkpoints_up_to(run_dir: Path, step: int) -> None:
    """As if the run had stopped right after its checkpoint at ``step``."""
    for s, path in runstate.list_checkpoints(run_dir):
        if s > step:
            path.unlink()
    (run_dir / "result.json").unlink(missing_ok=True)


def _no_grid(path: Path, *args) -> Path:
    return path


@pytest.fixture
def no_grid(monkeypatch):
    monkeypatch.setattr(pretrain_module, "write_grid", _no_grid)


@pytest.fixture
def sigint_at(monkeypatch):
    """Deliver a real SIGINT to this process right after the ``n``-th masked train step of ``backend``."""
    return lambda backend, n: sigint_after(
        monkeypatch, registry.get_backend(backend).MaskedAutoencoder, "train_step", n
    )


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The RESUME pretraining straight through in each backend (cached), with checkpoints every 4 steps."""
    cache = {}

    def get(backend: str):
        if backend not in cache:
            run_dir = tmp_path_factory.mktemp("straight") / backend
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(pretrain_module, "write_grid", _no_grid)
                cache[backend] = pretrain(
                    presets.load("masked-digits", RESUME), backend, run_dir=run_dir, progress=False
                )
        return cache[backend]

    return get


@pytest.mark.parametrize("backend", BACKENDS)
def test_interrupted_twice_and_resumed_equals_straight(backend, straight, sigint_at, no_grid, tmp_path):
    """SIGINT at an epoch boundary (step 5), then mid-epoch (step 7): the resumed run is the straight run."""
    ref = straight(backend)
    spec = presets.load("masked-digits", RESUME)
    run_dir = tmp_path / "run"
    restore = sigint_at(backend, 5)
    with pytest.raises(Interrupted) as err:
        pretrain(spec, backend, run_dir=run_dir, progress=False)
    restore()
    assert err.value.exit_code == 130 and f"dualkit train --resume {run_dir}" in str(err.value)
    st = runstate.latest(run_dir).state
    assert (st.step, st.epoch, st.batch, len(st.history)) == (5, 1, 0, 1)
    assert not (run_dir / "result.json").exists()

    restore = sigint_at(backend, 2)  # two steps into the resumed session: mid-epoch 2
    with pytest.raises(Interrupted):
        resume(run_dir, progress=False)
    restore()
    st = runstate.latest(run_dir).state
    assert (st.step, st.epoch, st.batch) == (7, 1, 2) and set(st.rngs) == {"batches", "masks"}

    got = resume(run_dir, progress=False)
    assert_same_run(got, ref)
    assert got.extra["resumed_step"] == 7
    assert [(s["backend"], s["from_step"]) for s in got.extra["segments"]] == [(backend, 0), (backend, 5), (backend, 7)]
    assert [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == got.history
    res = read_json(run_dir / "result.json")
    assert res["steps"] == 13 and res["epochs"] == 3 and len(res["segments"]) == 3
    assert strip(res["history"]) == strip(read_json(ref.run_dir / "result.json")["history"])
    weights, meta = checkpoint.load(run_dir / "model.safetensors")
    assert meta["step"] == 13 and meta["kind"] == "masked"
    for name, value in ref.weights.items():
        np.testing.assert_array_equal(weights[name], value, err_msg=name)
    encoder, _ = checkpoint.load(run_dir / "encoder.safetensors")
    assert encoder.keys() == {k for k in ref.weights if k.startswith("encoder.")}


def test_more_steps_continue_the_same_trajectory(no_grid, tmp_path):
    """max_steps may grow on resume, also from an epoch it cut: with a constant schedule 8 + 5 steps == 13 straight."""
    base = RESUME + ["schedule.name='constant'"]
    eight = presets.load("masked-digits", base + ["max_steps=8"])
    pretrain(eight, "torch", run_dir=tmp_path / "run", progress=False)
    assert [h["step"] for h in read_json(tmp_path / "run" / "result.json")["history"]] == [
        5,
        8,
    ]  # epoch 2 cut at step 8
    with pytest.raises(RunError, match=r"already complete \(8 of 8 steps.*max_steps"):
        resume(tmp_path / "run", progress=False)
    with pytest.raises(SpecError, match=r"give 7 steps.*at least 8"):
        resume(tmp_path / "run", overrides=["max_steps=7"], progress=False)
    got = resume(tmp_path / "run", overrides=["max_steps=13"], progress=False)
    ref = pretrain(apply_overrides(eight, ["max_steps=13"]), "torch", run_dir=tmp_path / "ref", progress=False)
    assert_same_run(got, ref)
    assert [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] == [
        5,
        10,
        13,
    ]
    assert load_json(tmp_path / "run" / "spec.json").max_steps == 13


def test_resume_after_the_last_checkpoint_only_finishes(straight, no_grid, tmp_path):
    """Stopped after pretraining's last checkpoint (e.g. during the evaluation): nothing is trained again."""
    ref = straight("torch")
    run_dir = tmp_path / "run"
    shutil.copytree(ref.run_dir, run_dir)
    (run_dir / "result.json").unlink()
    got = resume(run_dir, progress=False)
    assert_same_run(got, ref)
    assert [(s["backend"], s["from_step"]) for s in got.extra["segments"]] == [("torch", 0), ("torch", 13)]
    assert read_json(run_dir / "result.json")["steps"] == 13
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 3


HANDOVER_STEP = 8  # inside epoch 2


@needs_tf
@pytest.mark.parametrize("src, dst", [("torch", "tf"), ("tf", "torch")])
def test_hand_over_to_the_other_framework(src, dst, straight, no_grid, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(straight(src).run_dir, run_dir)
    keep_checkpoints_up_to(run_dir, HANDOVER_STEP)
    got = resume(run_dir, dst, progress=False)
    assert [s["backend"] for s in got.extra["segments"]] == [src, dst] and got.extra["resumed_step"] == HANDOVER_STEP
    assert got.step_losses[:HANDOVER_STEP] == straight(src).step_losses[:HANDOVER_STEP]
    bound = parity.bound("L4", "float32")
    for ref in (straight(src), straight(dst)):  # the single-backend run in either framework
        h, r = np.array(got.step_losses), np.array(ref.step_losses)
        assert len(h) == len(r) == 13
        assert (np.abs(h - r) / np.abs(r)).max() <= bound
        for a, b in zip(got.history, ref.history):
            assert abs(a["val_loss"] - b["val_loss"]) / b["val_loss"] <= bound
    _, meta = checkpoint.load(run_dir / "model.safetensors")
    assert meta["backend"] == dst  # the finishing framework's
    assert read_json(run_dir / "result.json")["segments"][1]["backend"] == dst


@needs_tf
def test_optimizer_state_is_canonical_in_both_backends():
    """One identical step in each backend: the same optimizer state under the same names and layout (what a
    hand-over carries), within the L3 bound; and each backend takes the other's state back."""
    from dualkit.core.batches import Normalizer, make_rng
    from dualkit.core.masking import grid_shape, random_masks
    from dualkit.core.weights import init_masked
    from dualkit.tasks.pretrain import build_autoencoder

    spec = presets.load("masked-digits", ["optim.eps=1e-4"])
    weights = init_masked(spec.model, spec.decoder, 1, 0, "float32")
    x = Normalizer.identity(1).apply(make_rng(0, "x").integers(0, 256, (8, 8, 8, 1), dtype=np.uint8), "float32")
    masks = random_masks(8, grid_shape((8, 8, 1), 4), spec.mask.ratio, make_rng(0, "m"))
    maes = {b: build_autoencoder(registry.get_backend(b), spec, (8, 8, 1), weights, "cpu") for b in ("torch", "tf")}
    for mae in maes.values():
        mae.train_step(x, masks, 1e-3)
    a, b = (maes[n].get_optimizer_state() for n in ("torch", "tf"))
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].shape == b[name].shape, name
        scale = np.abs(a[name]).max()  # relative to the tensor's scale: single entries may nearly cancel
        assert np.abs(b[name] - a[name]).max() <= 1e-4 * scale, name
    maes["tf"].set_optimizer_state(a)
    maes["torch"].set_optimizer_state(b)
    for name, value in maes["tf"].get_optimizer_state().items():
        np.testing.assert_array_equal(value, a[name], err_msg=name)


@pytest.fixture
def run_copy(straight, tmp_path):
    """A copy of the straight torch run, stopped after its checkpoint at step 8 (resumable)."""
    dst = tmp_path / "run"
    shutil.copytree(straight("torch").run_dir, dst)
    keep_checkpoints_up_to(dst, 8)
    return dst


def refused_resume(run_dir: Path, exc: type, match: str, **kw) -> str:
    before = snapshot(run_dir) if run_dir.is_dir() else None
    with pytest.raises(exc, match=match) as err:
        resume(run_dir, progress=False, **kw)
    if before is not None:
        assert snapshot(run_dir) == before  # nothing in the run folder changed
    return str(err.value)


def test_resume_refuses_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    refused_resume(tmp_path, RunError, "not a dualkit run folder")
    refused_resume(tmp_path / "missing", RunError, "does not exist")


def test_resume_refuses_a_run_of_another_task(run_copy, tmp_path, capsys):
    for other, task in ((ClassifyRunSpec(), "classify"), (DQNRunSpec(), "dqn")):
        folder = tmp_path / task
        shutil.copytree(run_copy, folder)
        save_json(other, folder / "spec.json")
        refused_resume(folder, RunError, rf"is a '{task}' run, not a masked-pretraining run")
    before = snapshot(run_copy)  # on the command line: a preset of another task than the run's
    assert main(["train", "cnn-digits", "--resume", str(run_copy), "--quiet"]) == 2
    assert "is a 'masked' run, but preset 'cnn-digits' is a 'classify' task" in capsys.readouterr().err
    assert snapshot(run_copy) == before


@pytest.mark.parametrize(
    "override, field",
    [
        ("train.batch_size=16", "train.batch_size"),
        ("mask.ratio=0.5", "mask.ratio"),
        ("optim.lr=0.01", "optim.lr"),
        ("decoder.channels=[16,16]", "decoder.channels"),
        ("seed=1", "seed"),
    ],
)
def test_resume_refuses_a_spec_change_that_cannot_continue(run_copy, override, field):
    msg = refused_resume(run_copy, SpecError, rf"cannot resume: {field} was", overrides=["max_steps=15", override])
    assert "max_steps" in msg and "train.epochs" in msg  # it says which fields may change


def test_resume_refuses_a_newer_checkpoint_format(run_copy):
    _, newest = runstate.list_checkpoints(run_copy)[-1]
    tensors, meta = checkpoint.load(newest)
    checkpoint.save(newest, tensors, {**meta, "runstate_version": runstate.RUNSTATE_VERSION + 1})
    refused_resume(run_copy, CheckpointError, r"run-state format version 2, newer than this dualkit reads \(1\)")
    checkpoint.save(newest, tensors, {**meta, "format_version": checkpoint.FORMAT_VERSION + 1})
    refused_resume(run_copy, CheckpointError, r"format version 2, newer than this dualkit reads \(1\); upgrade dualkit")


def test_resume_refuses_other_training_data_and_a_classifier_checkpoint(run_copy):
    _, newest = runstate.list_checkpoints(run_copy)[-1]
    tensors, meta = checkpoint.load(newest)
    checkpoint.save(newest, tensors, {**meta, "data_fingerprint": "crc32:00000000"})
    refused_resume(run_copy, DataError, r"differ from those the run was trained on")
    checkpoint.save(newest, tensors, {**meta, "model_kind": "classifier"})
    refused_resume(run_copy, CheckpointError, r"not of a masked-pretraining run")


def test_cli_resume_completes_a_masked_run(run_copy, straight, capsys):
    assert main(["train", "--resume", str(run_copy), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "masked loss" in out and "reconstructions:" in out
    assert "resumed from step 8" in out and "backends: torch -> torch" in out
    res = read_json(run_copy / "result.json")
    assert res["steps"] == 13 and strip(res["history"]) == strip(straight("torch").history)
    assert (run_copy / "reconstructions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
