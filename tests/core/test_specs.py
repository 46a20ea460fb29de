"""Specs: presets round-trip through JSON; overrides are typed, checked and refused with the valid keys."""

from __future__ import annotations

import json

import pytest

from dualkit.core.errors import SpecError
from dualkit.core.specs import apply_overrides, from_dict, load_json, load_toml, parse_override, save_json, to_dict
from dualkit.tasks import presets
from dualkit.tasks.classify_spec import ClassifyRunSpec

# --------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("name", presets.names())
def test_preset_json_round_trip(name, tmp_path):
    spec = presets.load(name)
    path = tmp_path / "spec.json"
    save_json(spec, path)
    again = load_json(path)
    assert again == spec
    assert type(again) is type(spec)
    assert json.loads(path.read_text()) == to_dict(spec)
    assert not [p for p in tmp_path.iterdir() if p.name != "spec.json"]  # no temp files left


def test_classify_round_trip_restores_tuples(tmp_path):
    spec = apply_overrides(presets.load("cnn-digits"), ["model.hidden=[7, 5]"])
    save_json(spec, tmp_path / "spec.json")
    again = load_json(tmp_path / "spec.json")
    assert again.model.channels == (32, 64) and again.model.hidden == (7, 5)  # JSON lists become tuples again
    assert hash(again) == hash(spec)  # frozen and hashable, as a spec should be


def test_presets_exist_and_load_from_a_toml_path():
    assert {"cnn-digits", "cnn-cifar10"} <= set(presets.names())
    digits = presets.load("cnn-digits")
    assert digits.data.name == "digits"
    assert digits.model.channels == (32, 64)
    assert presets.load(str(presets.PRESET_DIR / "cnn-digits.toml")) == digits


def test_to_dict_is_plain_json():
    raw = to_dict(ClassifyRunSpec())
    assert raw["model"]["channels"] == [16, 32]
    assert from_dict(raw) == ClassifyRunSpec()


# --------------------------------------------------------------------------- overrides


def test_overrides_of_every_type():
    spec = apply_overrides(
        ClassifyRunSpec(),
        [
            "train.epochs=3",  # int
            "optim.lr=0.25",  # float
            "optim.weight_decay=1",  # int where a float is wanted: converted
            "model.batchnorm=true",  # bool
            'data.name="cifar10"',  # quoted string
            "data.root=/some/where",  # bare string
            "model.channels=[8, 16, 32]",  # list
            "model.hidden=64,32",  # comma list
            "schedule.name=cosine",
        ],
    )
    assert spec.train.epochs == 3 and isinstance(spec.train.epochs, int)
    assert spec.optim.lr == 0.25
    assert spec.optim.weight_decay == 1.0 and isinstance(spec.optim.weight_decay, float)
    assert spec.model.batchnorm is True
    assert spec.data.name == "cifar10"
    assert spec.data.root == "/some/where"
    assert spec.model.channels == (8, 16, 32)
    assert spec.model.hidden == (64, 32)
    assert spec.schedule.name == "cosine"
    # untouched fields keep their values; the input spec is not modified (frozen)
    assert spec.train.batch_size == ClassifyRunSpec().train.batch_size
    assert ClassifyRunSpec().train.epochs == 10


def test_later_override_wins_and_empty_list():
    spec = apply_overrides(ClassifyRunSpec(), ["train.epochs=2", "train.epochs=5", "model.hidden=[]"])
    assert spec.train.epochs == 5
    assert spec.model.hidden == ()


@pytest.mark.parametrize(
    "override, valid",
    [
        ("optim.lrr=0.1", ["optim.lr", "optim.momentum", "optim.clip_norm"]),
        ("trian.epochs=1", ["task", "data", "model", "optim", "schedule", "train"]),
        ("nope=1", ["data", "train"]),
    ],
)
def test_unknown_key_lists_valid_keys(override, valid):
    with pytest.raises(SpecError) as err:
        apply_overrides(ClassifyRunSpec(), [override])
    msg = str(err.value)
    assert override.split("=")[0] in msg
    for key in valid:
        assert key in msg


@pytest.mark.parametrize(
    "override, field",
    [
        ("optim.lr=abc", "optim.lr"),
        ("train.epochs=1.5", "train.epochs"),
        ("train.epochs=true", "train.epochs"),
        ("model.batchnorm=3", "model.batchnorm"),
        ('model.batchnorm="yes"', "model.batchnorm"),
        ("model.channels=[8, 1.5]", "model.channels"),
        ("model.channels=abc", "model.channels"),
        ("data.name=3", "data.name"),
    ],
)
def test_wrong_type_names_the_field(override, field):
    with pytest.raises(SpecError, match=field.replace(".", r"\.")):
        apply_overrides(ClassifyRunSpec(), [override])


def test_section_set_as_a_value():
    with pytest.raises(SpecError, match=r"optim is a section"):
        apply_overrides(ClassifyRunSpec(), ["optim=3"])
    with pytest.raises(SpecError, match=r"model\.channels is a value"):
        apply_overrides(ClassifyRunSpec(), ["model.channels.x=3"])
    with pytest.raises(SpecError, match=r"optim is a section"):
        from_dict({"optim": 0.1})


@pytest.mark.parametrize(
    "override, field",
    [
        ("model.dropout=1.5", "model.dropout"),
        ('optim.name="rmsprop"', "optim.name"),
        ("optim.lr=0", "optim.lr"),
        ("optim.lr=-1e-3", "optim.lr"),
        ("optim.momentum=1.0", "optim.momentum"),
        ("optim.nesterov=true", "optim.nesterov"),
        ("data.val_fraction=1.0", "data.val_fraction"),
        ("data.test_fraction=0", "data.test_fraction"),
        ("data.name=mnist", "data.name"),
        ("model.head=avg", "model.head"),
        ("model.channels=[]", "model.channels"),
        ("model.channels=[8, 0]", "model sizes"),
        ("model.num_classes=1", "model.num_classes"),
        ("train.epochs=0", "train.epochs"),
        ("dtype=float16", "dtype"),
        ("train.label_smoothing=1", "train.label_smoothing"),
        ("schedule.name=linear", "schedule.name"),
        ("schedule.step_size=0", "schedule.step_size"),
    ],
)
def test_out_of_range_values(override, field):
    with pytest.raises(SpecError, match=field.replace(".", r"\.")):
        apply_overrides(ClassifyRunSpec(), [override])


def test_choice_errors_list_the_choices():
    with pytest.raises(SpecError) as err:
        apply_overrides(ClassifyRunSpec(), ['optim.name="rmsprop"'])
    assert "sgd" in str(err.value) and "adamw" in str(err.value) and "rmsprop" in str(err.value)


def test_unknown_task():
    with pytest.raises(SpecError, match=r"task='regress'.*classify"):
        from_dict({"task": "regress"})
    with pytest.raises(SpecError, match=r"task="):
        apply_overrides(ClassifyRunSpec(), ['task="regress"'])


def test_unknown_key_in_a_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('task = "classify"\n[optim]\nlearning_rate = 0.1\n')
    with pytest.raises(SpecError, match=r"optim\.learning_rate.*optim\.lr"):
        load_toml(path)
    path.write_text('[train]\nepochs = "ten"\n')
    with pytest.raises(SpecError, match=r"train\.epochs"):
        load_toml(path)


# --------------------------------------------------------------------------- parse_override


def test_parse_override():
    assert parse_override("optim.lr=0.5") == (["optim", "lr"], 0.5)
    assert parse_override(" train.epochs = 3 ") == (["train", "epochs"], 3)
    assert parse_override("data.root=/a=b") == (["data", "root"], "/a=b")  # split at the first '='
    assert parse_override("model.channels=[1, 2]") == (["model", "channels"], [1, 2])
    assert parse_override("data.name=digits") == (["data", "name"], "digits")


@pytest.mark.parametrize("text", ["optim.lr", "optim.lr 0.1", ""])
def test_parse_override_without_equals(text):
    with pytest.raises(SpecError, match=r"section\.key=value"):
        parse_override(text)
    with pytest.raises(SpecError):
        apply_overrides(ClassifyRunSpec(), [text])


def test_parse_override_empty_key():
    with pytest.raises(SpecError, match="key is empty"):
        parse_override("=3")
