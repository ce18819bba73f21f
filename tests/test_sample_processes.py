"""`sample` and `evaluate` over several processes: each makes a consecutive share of the
images (image i from seed i), rank 0 writes, and the images (and figures) are those one process
makes (on the stored tiny class-conditional LDM of tests/fixtures/old_runs)."""

import json

import numpy as np
import pytest
from PIL import Image

from tests.conftest import run_task


def test_two_processes_sample_the_images_one_process_samples(old_runs, tmp_path):
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
    one = run_task(tmp_path, "sample.json", "one")
    two = run_task(tmp_path, "sample.json", "two", "--set", "runtime.devices=2")
    lines = [(run / "manifest.jsonl").read_text().splitlines() for run in (one, two)]
    assert len(lines[0]) == 5 and [json.loads(a)["seed"] for a in lines[0]] == [json.loads(b)["seed"] for b in lines[1]]
    for k in range(5):
        a, b = (np.asarray(Image.open(run / "images" / f"{k:05d}.png")).astype(int) for run in (one, two))
        assert np.abs(a - b).max() <= 1, f"image {k}"
    assert json.loads((two / "environment.json").read_text())["starts"][-1]["world_size"] == 2


@pytest.mark.slow
def test_two_processes_evaluate_to_the_figures_one_process_gives(old_runs, tmp_path):
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
    one, two = (
        json.loads((run_task(tmp_path, "eval.json", name, *extra) / "eval.json").read_text())["metrics"]
        for name, extra in (("one", ()), ("two", ("--set", "runtime.devices=2")))
    )
    assert one.keys() == two.keys() and one
    for key, value in one.items():
        if isinstance(value, float):
            assert two[key] == pytest.approx(value, rel=1e-3, abs=1e-3), key
