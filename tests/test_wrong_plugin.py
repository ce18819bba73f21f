"""A third-party conditioner whose output disagrees with its declaration is refused in one line.

`ldm-plugin-wrong` (tests/plugins/) registers `wrong_vector`: it declares a vector of width 16
and returns one of width 8. A `train_ldm` run with it must stop before writing anything, with
a user error (exit 2) that names the conditioner, the part and both widths, not a crash inside
the denoiser.
"""

import json

from tests.conftest import TINY_AE
from tests.test_ldm import LDM

WRONG_LDM = {
    **{key: value for key, value in LDM.items() if key != "sampling"},
    "name": "wrong-ldm",
    "conditioners": [{"name": "wrong_vector", "params": {}}],
    "train": {"max_steps": 2, "batch_size": 8},
}


def conditioner_names(listing):
    """The names `--list` shows under its "conditioner" heading."""
    lines = listing.splitlines()
    start = lines.index("conditioner") + 1
    names = []
    for line in lines[start:]:
        if not line.startswith("  "):  # the next kind's heading
            break
        names.append(line.split()[0])
    return names


def test_the_wrong_plugin_is_listed_among_the_conditioners(plugin_site, run_cli):
    code, out, err = run_cli("--list", env={"PYTHONPATH": str(plugin_site)})
    assert code == 0, err
    assert "wrong_vector" in conditioner_names(out)
    assert "[plugin 'wrong' (ldm-plugin-wrong 0.1.0)]" in out


def test_a_conditioner_returning_another_width_than_it_declares_is_one_clear_error(plugin_site, run_cli, tmp_path):
    env = {"PYTHONPATH": str(plugin_site)}
    (tmp_path / "ae.json").write_text(json.dumps(TINY_AE))
    code, _, err = run_cli("ae.json")
    assert code == 0, err

    (tmp_path / "wrong.json").write_text(json.dumps(WRONG_LDM))
    code, _, err = run_cli("wrong.json", env=env)

    assert code == 2, err
    assert "Traceback" not in err, err
    # The plugin site also holds ldm-plugin-broken, whose load failure is a warning on every run.
    lines = [line for line in err.splitlines() if not line.startswith("warning: plugin ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for word in ("wrong_vector", "vector", "16", "8"):
        assert word in lines[0], f"{word!r} missing from {lines[0]!r}"
    assert (tmp_path / "runs" / "ae").is_dir()
    assert not (tmp_path / "runs" / WRONG_LDM["name"]).exists(), "a refused run must leave no run directory"
