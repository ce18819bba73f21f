"""The command line: exit codes, --list, --schema, --dry-run, --set and the inspect task."""

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

CONFIG = ROOT / "configs" / "inspect.json"


def write(tmp_path, data, name="spec.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_inspect_builds_the_components_and_reports_their_parameters(cli):
    code, out, err = cli(CONFIG)
    assert code == 0, err
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    # 11 embeddings (10 classes + null) of width 64
    assert "704 (704)" in lines["conditioners.0"] and "produces context 64" in lines["conditioners.0"]
    assert "latent 3 channels, f=1" in lines["first_stage"]
    assert "combined conditioning: context 64" in out
    assert not Path("runs").exists(), "inspect writes no run directory"


def test_dry_run_prints_the_resolved_spec_with_defaults(cli):
    code, out, _ = cli(CONFIG, "--dry-run", "--set", "seed=5")
    assert code == 0
    resolved = json.loads(out)
    assert resolved["seed"] == 5 and resolved["runtime"]["devices"] == 1
    assert resolved["conditioners"][0]["params"]["output"] == "context"


def test_set_name_to_digits_gives_a_string(cli):
    code, out, _ = cli(CONFIG, "--dry-run", "--set", "name=2024")
    assert code == 0 and json.loads(out)["name"] == "2024"


def test_list_shows_builtins_by_kind_with_their_origin(cli):
    code, out, _ = cli("--list")
    assert code == 0
    lines = out.splitlines()
    assert lines[lines.index("conditioner") + 1].split()[0] == "box_map"
    assert "[plugin 'builtin' (ldm-framework 0.1.0)]" in lines[lines.index("conditioner") + 1]
    assert lines[lines.index("denoiser") + 1].split()[0] == "unet"


def test_schema_is_json_with_component_params(cli):
    code, out, _ = cli("--schema")
    assert code == 0
    choices = json.loads(out)["$defs"]["FirstStageSpec"]["oneOf"]
    assert [c["properties"]["name"]["const"] for c in choices] == ["autoencoder", "identity"]


def test_user_errors_exit_2_with_one_message_and_no_traceback(cli, tmp_path):
    cases = {
        "missing file": (tmp_path / "nope.json", "does not exist"),
        "not json": (write(tmp_path, '{"task":', "a.json"), "is not valid JSON: Expecting value at line 1"),
        "not an object": (write(tmp_path, "[1, 2]", "b.json"), "holds a JSON list, not an object"),
        "empty": (write(tmp_path, "  ", "c.json"), "is empty"),
        "empty object": (write(tmp_path, "{}", "d.json"), "holds an empty object"),
        "unknown component": (
            write(tmp_path, {"task": "inspect", "name": "x", "first_stage": {"name": "identty"}}, "e.json"),
            "first_stage.name: unknown first_stage 'identty'; did you mean 'identity'?",
        ),
        "dotted path": (
            write(tmp_path, {"task": "inspect", "name": "x", "first_stage": {"name": "os.system"}}, "f.json"),
            "unknown first_stage 'os.system'",
        ),
    }
    for what, (path, expected) in cases.items():
        code, out, err = cli(path)
        assert code == 2, what
        assert expected in err, (what, err)
        assert "Traceback" not in err and out == "", what
        assert err.startswith("error: ") and err.count("error:") == 1, what


def test_bad_set_and_missing_arguments_exit_2(cli):
    assert cli(CONFIG, "--set", "seed")[0] == 2
    code, _, err = cli()
    assert code == 2 and "give a spec file" in err


def test_module_and_console_script_run_the_same_command(tmp_path):
    ldm = str(Path(sys.executable).parent / "ldm")
    for command in ([sys.executable, "-m", "tasks.run"], [ldm]):
        proc = subprocess.run(
            [*command, str(CONFIG), "--set", "conditioners.0.params.dim=foo"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip() == (
            f"error: {CONFIG}: conditioners.0.params.dim: Input should be a valid integer, "
            "unable to parse string as an integer, got 'foo'"
        )
