"""Bad input through the command line: one sentence naming the field, the value and the fix,
exit 2, nothing written (the cases not already shown beside their feature; see RELIABILITY.md)."""

import copy
import json

import pytest

from tasks.ldm.specs import DiffusionSpec
from tests.conftest import TINY_AE
from tests.test_image_folder import folder
from tests.test_ldm import LDM


def refused(cli, tmp_path, spec, *pieces):
    """Run ``spec``; assert exit 2, one line holding every piece, no traceback, no runs/ written."""
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    code, _, err = cli(path)
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for piece in pieces:
        assert piece in err, err
    assert not (tmp_path / "runs").exists(), "nothing is written"


def ae_on(data):
    spec = copy.deepcopy(TINY_AE)
    spec["data"] = data
    return spec


def test_images_with_one_or_four_channels_where_three_are_expected(cli, tmp_path):
    grey, _ = folder(tmp_path / "grey", mode="L")
    rgba, _ = folder(tmp_path / "rgba", mode="RGBA")
    for root, mode in ((grey, "is L (1 channel(s)), not RGB (3)"), (rgba, "is RGBA (4 channel(s)), not RGB (3)")):
        spec = ae_on({"name": "image_folder", "params": {"root": str(root), "size": 8}})
        spec["model"]["params"]["in_channels"] = 3
        refused(cli, tmp_path, spec, "data.params.root", mode, "set convert to true")


def test_an_empty_folder_and_a_corrupt_file(cli, tmp_path):
    (tmp_path / "empty").mkdir()
    refused(
        cli,
        tmp_path,
        ae_on({"name": "image_folder", "params": {"root": str(tmp_path / "empty"), "size": 8, "channels": 1}}),
        "data.params: root",
        "holds no image files",
        "check the path",
    )
    root, _ = folder(tmp_path, mode="L")
    broken = root / "cat" / "0.png"
    broken.write_bytes(broken.read_bytes()[:40])
    data = {"name": "image_folder", "params": {"root": str(root), "size": 8, "channels": 1}}
    refused(cli, tmp_path, ae_on(data), "data.params.root", "cat/0.png' cannot be read", "set skip_bad")
    skipping = ae_on({**data, "params": {**data["params"], "skip_bad": True}})
    skipping["train"]["batch_size"] = 2
    (tmp_path / "skip.json").write_text(json.dumps(skipping))
    code, _, err = cli(tmp_path / "skip.json")
    assert code == 0 and "skipped 1 unreadable image file(s)" in err and "cat/0.png" in err, err


def test_a_conditioner_reading_a_field_the_data_does_not_give(cli, tmp_path):
    text = {"name": "text_bert", "params": {"vocab_size": 64, "max_length": 8, "width": 16, "layers": 1, "heads": 2}}
    (tmp_path / "ae.json").write_text(json.dumps(TINY_AE))
    assert cli(tmp_path / "ae.json")[0] == 0
    code, _, err = cli(write(tmp_path, {**LDM, "conditioners": [text]}))
    assert (
        code == 2 and "conditioners.0 (text_bert) reads the field 'caption', which data (digits) does not give" in err
    )
    assert "choose a dataset with 'caption' or another conditioner" in err
    assert not (tmp_path / "runs" / "ldm").exists()


def write(tmp_path, spec):
    path = tmp_path / f"{spec['name']}.json"
    path.write_text(json.dumps(spec))
    return path


@pytest.mark.parametrize(
    "key, value, pieces",
    [
        ("max_step", 3, ["train: unknown key 'max_step'", "did you mean 'max_steps'?"]),
        ("max_steps", 0, ["train.max_steps", "got 0", "use a value > 0"]),
        ("batch_size", "eight", ["train.batch_size", "'eight'"]),
    ],
)
def test_misspelled_or_out_of_range_keys(cli, tmp_path, key, value, pieces):
    spec = copy.deepcopy(TINY_AE)
    spec["train"][key] = value
    refused(cli, tmp_path, spec, *pieces)


def test_logit_normal_settings_without_logit_normal_sampling(cli, tmp_path):
    spec = {**LDM, "diffusion": {"logit_mean": 0.5}}
    refused(
        cli,
        tmp_path,
        spec,
        "diffusion",
        "logit_mean applies only to timestep_sampling 'logit_normal', not 'uniform'",
        "set timestep_sampling to 'logit_normal' or remove it",
    )
    # A run's stored spec names every field at its default; it must still load.
    assert DiffusionSpec.model_validate(DiffusionSpec().model_dump()).timestep_sampling == "uniform"


@pytest.mark.parametrize("name", ["../../x", "/tmp/elsewhere", "a/b"])
def test_a_run_name_that_would_write_outside_the_runs_directory(cli, tmp_path, name):
    refused(cli, tmp_path, {**TINY_AE, "name": name}, "name: run name", repr(name), "use up to 128 letters")
    assert not (tmp_path.parent / "x").exists() and not (tmp_path / "elsewhere").exists()


def test_a_bert_folder_whose_weights_do_not_fit_its_config(cli, tmp_path):
    from tests.test_frozen_text_encoder import CONFIG, write_bert

    folder = write_bert(tmp_path / "bert")
    (folder / "config.json").write_text(json.dumps({**CONFIG, "num_hidden_layers": 3}))
    use = {"name": "frozen_text_encoder", "params": {"path": str(folder), "max_length": 10}}
    refused(
        cli,
        tmp_path,
        {**LDM, "conditioners": [use]},
        "conditioners.0.params.path",
        "model.safetensors does not fit its config.json (missing: encoder.layer.2",
        "give the folder that holds both files",
    )
