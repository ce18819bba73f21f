"""Spec validation: every mistake named by field, value and fix."""

import json

import pytest

from core import SpecError
from tasks.cli.catalog import spec_models
from tasks.cli.overrides import Override, resolve
from tasks.runs.validation import task_schema, validate_task

BASE = {
    "task": "inspect",
    "name": "t",
    "conditioners": [{"name": "class_label", "params": {"num_classes": 10, "dim": 8}}],
}


def validate(registry, data):
    return validate_task(data, spec_models(), registry)


def problems(registry, data):
    with pytest.raises(SpecError) as info:
        validate(registry, data)
    return {".".join(map(str, loc)): message for loc, message in info.value.problems}


def test_a_valid_spec_gets_every_default_and_builds(registry):
    spec = validate(registry, BASE)
    assert spec.spec_version == 1 and spec.seed == 0 and spec.runtime.precision == "32-true"
    component = spec.conditioners[0]
    assert component.params.output == "context" and component.params.field == "label"
    assert component.entry.origin.distribution == "ldm-framework"
    assert type(component.build()).__name__ == "ClassLabel"
    dumped = json.loads(spec.model_dump_json())
    assert dumped["conditioners"][0]["params"] == {
        "num_classes": 10,
        "null_class": True,
        "dim": 8,
        "output": "context",
        "field": "label",
    }
    assert validate(registry, dumped) == spec, "the resolved spec must validate to the same spec"


def test_unknown_component_name_suggests_the_closest(registry):
    found = problems(registry, {**BASE, "conditioners": [{"name": "class_lable"}]})
    assert found == {
        "conditioners.0.name": "unknown conditioner 'class_lable'; did you mean 'class_label'?; "
        "installed conditioners: box_map, class_label, clip_text, frozen_text_encoder, inpainting, layout, low_res, "
        "semantic_map, text_bert"
    }


def test_misspelled_param_key_is_located_inside_the_component_and_suggests_the_key(registry):
    found = problems(registry, {**BASE, "conditioners": [{"name": "class_label", "params": {"num_clases": 10}}]})
    [(where, message)] = found.items()
    assert where == "conditioners.0.params"
    assert message.startswith("unknown key 'num_clases'; did you mean 'num_classes'?")


def test_wrong_type_names_the_field_and_the_value(registry):
    found = problems(registry, {**BASE, "conditioners": [{"name": "class_label", "params": {"num_classes": "ten"}}]})
    assert found == {
        "conditioners.0.params.num_classes": (
            "Input should be a valid integer, unable to parse string as an integer, got 'ten'"
        )
    }


def test_bad_choice_suggests_the_closest_literal(registry):
    found = problems(
        registry, {**BASE, "conditioners": [{"name": "class_label", "params": {"num_classes": 3, "output": "vectr"}}]}
    )
    assert found["conditioners.0.params.output"].endswith("got 'vectr'; did you mean 'vector'?")


def test_top_level_extra_key_and_missing_field(registry):
    assert problems(registry, {**BASE, "seeed": 3})[""].startswith("unknown key 'seeed'; did you mean 'seed'?")
    assert problems(registry, {"task": "inspect"}) == {"name": "this field is required"}


def test_unknown_task_and_missing_task(registry):
    assert problems(registry, {**BASE, "task": "inpsect"}) == {
        "task": "unknown task 'inpsect'; did you mean 'inspect'?; valid tasks: evaluate, export_checkpoint, "
        "import_checkpoint, inspect, latent_stats, pipeline, sample, train_autoencoder, train_ldm"
    }
    assert "this field is required" in problems(registry, {"name": "x"})["task"]
    assert "non-empty JSON object" in problems(registry, [])[""]


@pytest.mark.parametrize("name", ["../../x", "/abs", "a/b", ".hidden", ""])
def test_run_names_that_would_leave_the_runs_directory_are_refused(registry, name):
    assert "outside the runs directory" in problems(registry, {**BASE, "name": name})["name"]


def test_newer_spec_version_is_refused_with_the_supported_one(registry):
    assert (
        "spec_version 2 is newer than the version this ldm-framework reads (1)"
        in problems(registry, {**BASE, "spec_version": 2})["spec_version"]
    )


def test_contexts_of_different_widths_are_caught_before_anything_is_built(registry):
    conds = [
        {"name": "class_label", "params": {"num_classes": 3, "dim": 8}},
        {"name": "class_label", "params": {"num_classes": 3, "dim": 16}},
    ]
    message = problems(registry, {**BASE, "conditioners": conds})["conditioners"]
    assert "conditioners.0 (class_label) gives 8, conditioners.1 (class_label) gives 16" in message


def test_several_problems_are_all_reported(registry):
    found = problems(
        registry,
        {
            **BASE,
            "runtime": {"devices": 0, "precision": "bf16"},
            "first_stage": {"name": "identity", "params": {"channels": 0}},
        },
    )
    assert set(found) == {"runtime.devices", "runtime.precision", "first_stage.params.channels"}


def test_set_prefers_the_type_the_field_wants(registry):
    check = lambda data: validate(registry, data)  # noqa: E731
    assert resolve(BASE, ["name=2024"], check).name == "2024"
    assert resolve(BASE, ["seed=7"], check).seed == 7
    assert resolve(BASE, ["conditioners.0.params.dim=32"], check).conditioners[0].params.dim == 32
    appended = resolve(BASE, ['conditioners.1={"name": "class_label", "params": {"num_classes": 2, "dim": 8}}'], check)
    assert appended.conditioners[1].params.num_classes == 2
    with pytest.raises(SpecError) as info:
        resolve(BASE, ["seed=abc"], check)
    assert info.value.problems == [
        (("seed",), "Input should be a valid integer, unable to parse string as an integer, got 'abc'")
    ]


def test_set_paths_must_exist_through_lists():
    from core import UserError

    with pytest.raises(UserError, match="conditioners is a list of 1, so it has no field '5'"):
        Override.parse("conditioners.5.params.dim=3").apply(BASE, 3)
    with pytest.raises(UserError, match="is not KEY=VALUE"):
        Override.parse("seed")


def test_schema_lists_each_installed_component_with_its_params(registry):
    schema = task_schema(spec_models(), registry)
    conditioner = schema["$defs"]["ConditionerSpec"]
    choice = conditioner["oneOf"][0]
    assert [c["properties"]["name"]["const"] for c in conditioner["oneOf"]] == [
        "box_map",
        "class_label",
        "clip_text",
        "frozen_text_encoder",
        "inpainting",
        "layout",
        "low_res",
        "semantic_map",
        "text_bert",
    ]
    masked = schema["$defs"]["dataset.masked.DatasetSpec"]
    assert "masked" in [c["properties"]["name"]["const"] for c in masked["oneOf"]], "a dataset wrapping datasets"
    assert choice["properties"]["params"]["properties"]["num_classes"]["type"] == "integer"
    use = schema["$defs"]["ConditionerUse"]["oneOf"][0]
    assert use["properties"]["name"] == {"const": "box_map"} and use["properties"]["drop_rate"]["maximum"] == 1.0
    [unet] = schema["$defs"]["DenoiserSpec"]["oneOf"]
    assert unet["properties"]["params"]["properties"]["in_channels"]["anyOf"][0]["type"] == "integer"
    assert not any("x-ldm-kind" in value for value in schema["$defs"].values())
    json.dumps(schema)
