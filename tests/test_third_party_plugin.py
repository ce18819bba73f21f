"""A real third-party distribution, installed with pip, works with no change to our code."""

import json

SPEC = {
    "task": "inspect",
    "name": "onehot-check",
    "conditioners": [{"name": "onehot", "params": {"num_classes": 10, "dim": 16}}],
}


def test_installed_plugin_is_listed_and_a_broken_one_is_reported(plugin_site, run_cli):
    code, out, err = run_cli("--list", env={"PYTHONPATH": str(plugin_site)})
    assert code == 0, err
    lines = out.splitlines()
    conditioners = lines[lines.index("conditioner") + 1 : lines.index("sampler")]
    assert [line.split()[0] for line in conditioners] == [
        "box_map",
        "class_label",
        "clip_text",
        "frozen_text_encoder",
        "inpainting",
        "layout",
        "low_res",
        "onehot",
        "semantic_map",
        "text_bert",
        "wrong_vector",
    ]
    assert "[plugin 'example' (ldm-plugin-example 0.1.0)]" in conditioners[7]
    failed = lines[lines.index("plugins that failed to load") + 1 :]
    assert failed == [
        "  plugin 'broken' (ldm-plugin-broken 0.1.0) failed to load: ImportError: "
        "ldm-plugin-broken needs the 'libfoo' library, which is not installed (at ldm_plugin_broken.py:3)"
    ]


def test_installed_plugin_is_usable_in_a_spec_and_validated_by_its_own_params(plugin_site, run_cli, tmp_path):
    env = {"PYTHONPATH": str(plugin_site)}
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(SPEC))
    code, out, err = run_cli(spec, env=env)
    assert code == 0, err
    # one-hot (10) -> 16 with bias, plus a learned 16-wide null token
    assert "192 (192)" in out
    assert "warning: plugin 'broken' (ldm-plugin-broken 0.1.0) failed to load" in err

    code, out, err = run_cli(spec, "--set", "conditioners.0.params.num_clases=3", env=env)
    assert code == 2
    assert f"error: {spec}: conditioners.0.params: unknown key 'num_clases'; did you mean 'num_classes'?" in err

    code, out, err = run_cli("--schema", env=env)
    conditioners = json.loads(out)["$defs"]["ConditionerSpec"]["oneOf"]
    onehot = next(c for c in conditioners if c["properties"]["name"]["const"] == "onehot")
    assert onehot["properties"]["params"]["required"] == ["num_classes"]


def test_autoload_switch_leaves_third_party_plugins_out(plugin_site, run_cli, tmp_path):
    env = {"PYTHONPATH": str(plugin_site), "LDM_DISABLE_PLUGIN_AUTOLOAD": "1"}
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(SPEC))
    code, out, err = run_cli(spec, env=env)
    assert code == 2
    assert "unknown conditioner 'onehot'" in err and "broken" not in err
