"""`sample` and `evaluate` over several processes: each makes a consecutive share of the
images (image i from seed i), rank 0 writes, and the images (and figures) are those one process
makes (on the stored tiny class-conditional LDM of tests/fixtures/old_runs)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "old_runs"


def test_two_processes_sample_the_images_one_process_samples(tmp_path):
    for run in (p for p in FIXTURE.iterdir() if p.is_dir()):
        shutil.copytree(run, tmp_path / "runs" / run.name)
    spec = {
        "spec_version": 1,
        "task": "sample",
        "name": "one",
        "model": {"run": "old-ldm"},
        "conditions": {"label": [0, 1, 2, 3, 4]},
        "repeat": 1,
        "sampling": {"sampler": {"name": "euler_ancestral"}, "steps": 4, "guidance": 2.0},
        "batch_size": 2,
        "runtime": {"accelerator": "cpu"},
    }
    (tmp_path / "sample.json").write_text(json.dumps(spec))

    def sample(name, *extra):
        done = subprocess.run(
            [sys.executable, "-m", "tasks.run", "sample.json", "--set", f"name={name}", *extra],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        return tmp_path / "runs" / name

    one, two = sample("one"), sample("two", "--set", "runtime.devices=2")
    lines = [(run / "manifest.jsonl").read_text().splitlines() for run in (one, two)]
    assert len(lines[0]) == 5 and [json.loads(a)["seed"] for a in lines[0]] == [json.loads(b)["seed"] for b in lines[1]]
    for k in range(5):
        a, b = (np.asarray(Image.open(run / "images" / f"{k:05d}.png")).astype(int) for run in (one, two))
        assert np.abs(a - b).max() <= 1, f"image {k}"
    assert json.loads((two / "environment.json").read_text())["starts"][-1]["world_size"] == 2


@pytest.mark.slow
def test_two_processes_evaluate_to_the_figures_one_process_gives(tmp_path):
    for run in (p for p in FIXTURE.iterdir() if p.is_dir()):
        shutil.copytree(run, tmp_path / "runs" / run.name)
    spec = {
        "spec_version": 1,
        "task": "evaluate",
        "name": "one",
        "model": {"run": "old-ldm"},
        "num_images": 20,
        "batch_size": 8,
        "sampling": {"steps": 4},
        "runtime": {"accelerator": "cpu"},
    }
    (tmp_path / "eval.json").write_text(json.dumps(spec))

    def evaluate(name, *extra):
        done = subprocess.run(
            [sys.executable, "-m", "tasks.run", "eval.json", "--set", f"name={name}", *extra],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr
        return json.loads((tmp_path / "runs" / name / "eval.json").read_text())["metrics"]

    one, two = evaluate("one"), evaluate("two", "--set", "runtime.devices=2")
    assert one.keys() == two.keys() and one
    for key, value in one.items():
        if isinstance(value, float):
            assert two[key] == pytest.approx(value, rel=1e-3, abs=1e-3), key
