import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from core import load_registry
from tasks.run import main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_PLUGINS = Path(__file__).resolve().parent / "plugins"
OLD_RUNS = Path(__file__).resolve().parent / "fixtures" / "old_runs"


@pytest.fixture
def registry():
    """A fresh registry of the installed built-ins only (third-party autoload off)."""
    return load_registry(env={"LDM_DISABLE_PLUGIN_AUTOLOAD": "1"})


@pytest.fixture
def old_runs(tmp_path):
    """Copies of the stored tiny runs (tests/fixtures/old_runs: ``old-ae``, ``old-ldm``) in
    ``tmp_path/runs``, the ``cli`` fixture's working directory; returns that folder."""
    for run in (p for p in OLD_RUNS.iterdir() if p.is_dir()):
        shutil.copytree(run, tmp_path / "runs" / run.name)
    return tmp_path / "runs"


@pytest.fixture
def cli(capsys, monkeypatch, tmp_path):
    """Run the command line in process from a fresh working directory: (exit code, stdout, stderr)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LDM_DISABLE_PLUGIN_AUTOLOAD", "1")

    def run(*argv):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:
            code = exc.code
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory):
    """A directory holding the example plugin distributions, installed with pip.

    Put it on PYTHONPATH and their entry points are found, as after `pip install`; the test
    environment itself is left as it was. Built offline from copies of the sources.
    """
    work = tmp_path_factory.mktemp("plugin-sources")
    site = tmp_path_factory.mktemp("plugin-site")
    sources = [
        shutil.copytree(EXAMPLE_PLUGINS / name, work / name)
        for name in ("ldm-plugin-example", "ldm-plugin-broken", "ldm-plugin-wrong")
    ]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            "--no-build-isolation",
            "--target",
            str(site),
            *map(str, sources),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return site


@pytest.fixture
def run_cli(tmp_path):
    """Run `python -m tasks.run` in a subprocess: (exit code, stdout, stderr)."""

    def run(*argv, env=None):
        merged = {**os.environ, **(env or {})}
        if env and "PYTHONPATH" in env and os.environ.get("PYTHONPATH"):
            # Added in front, not instead: this package may itself be installed on PYTHONPATH.
            merged["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], os.environ["PYTHONPATH"]])
        proc = subprocess.run(
            [sys.executable, "-m", "tasks.run", *map(str, argv)],
            cwd=tmp_path,
            env=merged,
            capture_output=True,
            text=True,
            timeout=120,
        )
        return proc.returncode, proc.stdout, proc.stderr

    return run


def run_task(folder, spec_file, name, *extra):
    """Run ``spec_file`` in a fresh process from ``folder`` under the run name ``name``; the run's folder."""
    done = subprocess.run(
        [sys.executable, "-m", "tasks.run", str(spec_file), "--set", f"name={name}", *extra],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    return folder / "runs" / name


def sets(*assignments):
    """Command-line arguments that set each ``key=value`` of ``assignments``: ``--set`` before each."""
    return [arg for assignment in assignments for arg in ("--set", assignment)]


# What the tiny test runs have in common: seed 0, on the CPU, on 8 px one-channel digits.
TINY_RUN = {
    "seed": 0,
    "runtime": {"accelerator": "cpu"},
    "data": {"name": "digits", "params": {"size": 8, "channels": 1}},
}
TINY_AE = {
    "task": "train_autoencoder",
    "name": "ae",
    **TINY_RUN,
    "model": {
        "name": "autoencoder",
        "params": {
            "in_channels": 1,
            "ch": 8,
            "ch_mult": [1, 2],
            "num_res_blocks": 1,
            "z_channels": 2,
            "norm_groups": 4,
            "regularizer": {"name": "kl"},
        },
    },
    "train": {
        "max_steps": 6,
        "batch_size": 8,
        "log_every": 1,
        "checkpoint_every": 3,
        "keep_checkpoints": 2,
        "optimizer": {"lr": 0.001, "warmup_steps": 2},
    },
}


@pytest.fixture
def ae_spec(tmp_path):
    """The path of a tiny train_autoencoder spec (about 7k parameters, 8 px digits)."""
    import json

    path = tmp_path / "ae.json"
    path.write_text(json.dumps(TINY_AE))
    return path
