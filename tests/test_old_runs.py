"""Run directories written by an earlier version still load, sample, evaluate and resume.

``tests/fixtures/old_runs`` holds two tiny runs written by the code as it was before the
engine/task refactoring (see its README.md): ``old-ae`` (train_autoencoder, 8 px digits,
1 channel, KL, 4 steps) and ``old-ldm`` (train_ldm on it, class-conditional UNet with
cross-attention, 4 steps, no latent cache). Their files are never rewritten here: each test
works on its own copy, through the command line and ``tasks.api.load`` only. The reference
figures below were measured with that earlier code; later code must reproduce them.
"""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tasks.api import load
from tests.test_ldm import LDM, UNET

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "old_runs"

# Measured with the earlier code: old-ae's validation.json (written at the end of training) and its
# `evaluate` with seed 0 (EMA weights; the KL first stage decodes a posterior sample, so the
# figure depends on the seed, hence the two differ), and what old-ldm's EMA weights sample for
# labels [1, 2] with seed 0 and 3 dpmpp_2m steps.
OLD_AE_PSNR = 6.914863787757026
OLD_AE_EVAL_PSNR = 6.886422051323785
OLD_AE_EXAMPLES = 180
OLD_LDM_SAMPLE = {"mean": 0.10911311954259872, "std": 0.2496200054883957, "abs_sum": 25.114694595336914}
OLD_LDM_SAMPLE_ROW = [
    -0.05730820447206497,
    -0.03448270633816719,
    0.0552373044192791,
    0.15384076535701752,
    -0.011759788729250431,
    -0.011669895611703396,
    -0.1625017672777176,
    -0.3403562307357788,
]
# old-ldm's denoiser as its input spec gave it (fixtures/old_runs/README.md): the tests' UNet, narrowed.
OLD_UNET = {
    **UNET,
    "params": {**UNET["params"], "model_channels": 4, "channel_mult": [1, 1], "norm_groups": 2, "num_heads": 1},
}


@pytest.fixture
def runs(tmp_path, monkeypatch):
    """A copy of the old run directories as ``tmp_path/runs`` (where the ``cli`` fixture's ``runs/`` is)."""
    monkeypatch.setenv("LDM_DISABLE_PLUGIN_AUTOLOAD", "1")
    runs = tmp_path / "runs"
    for run in sorted(p for p in FIXTURE.iterdir() if p.is_dir()):
        shutil.copytree(run, runs / run.name)
    return runs


def write(tmp_path, spec):
    path = tmp_path / f"{spec['name']}.json"
    path.write_text(json.dumps(spec))
    return path


def on_old_run(task, name, run, **rest):
    """A ``task`` spec named ``name`` on the run ``run``, with seed 0 on the CPU."""
    return {"task": task, "name": name, "seed": 0, "runtime": {"accelerator": "cpu"}, "model": {"run": run}, **rest}


def checkpoints(run_dir):
    return sorted(p.name for p in (run_dir / "checkpoints").glob("step-*.safetensors"))


def steps_logged(run_dir):
    rows = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    return [row["step"] for row in rows if "step" in row]


def test_the_fixture_is_as_the_old_code_wrote_it():
    for name, task in (("old-ae", "train_autoencoder"), ("old-ldm", "train_ldm")):
        run = FIXTURE / name
        assert json.loads((run / "spec.json").read_text())["task"] == task
        assert checkpoints(run) == ["step-00000004.safetensors"]
        assert (run / "checkpoints" / "latest").read_text().strip() == "step-00000004.safetensors"
        assert (run / "environment.json").is_file() and (run / "metrics.jsonl").is_file()
    assert not (FIXTURE / ".latent-cache").exists(), "old-ldm was trained without a latent cache"


def test_sample_an_old_ldm(runs, tmp_path, cli):
    spec = on_old_run(
        "sample",
        "old-samples",
        "old-ldm",
        conditions={"label": [1, 2]},
        sampling={"sampler": {"name": "dpmpp_2m"}, "steps": 3},
    )
    code, out, err = cli(write(tmp_path, spec))
    assert code == 0, err
    out_dir = runs / "old-samples"
    images = sorted((out_dir / "images").glob("*.png"))
    assert [p.name for p in images] == ["00000.png", "00001.png"]
    manifest = [json.loads(line) for line in (out_dir / "manifest.jsonl").read_text().splitlines()]
    assert len(manifest) == 2
    assert [m["run"] for m in manifest] == ["old-ldm", "old-ldm"]
    assert [m["step"] for m in manifest] == [4, 4]
    assert [m["checkpoint"] for m in manifest] == ["step-00000004.safetensors"] * 2
    assert [m["condition"]["label"] for m in manifest] == [1, 2]
    assert [m["seed"] for m in manifest] == [0, 1]
    assert [(m["weights"], m["sampler"], m["steps"]) for m in manifest] == [("ema", "dpmpp_2m", 3)] * 2
    pixels = [np.asarray(Image.open(p)) for p in images]
    assert all(p.shape[:2] == (8, 8) for p in pixels)
    # The same images as the Python API gives for the same seeds (and as the old code gave).
    expected = load("old-ldm", runs_dir=runs).sample({"label": [1, 2]}, steps=3, seed=0)
    as_uint8 = ((expected.clamp(-1, 1) + 1) * 127.5).round().to(torch.int64).numpy()
    for image, want in zip(pixels, as_uint8, strict=True):
        got = image.astype(np.int64)
        got = got if got.ndim == 2 else got[..., 0]
        assert np.abs(got - want[0]).max() <= 1


def test_evaluate_an_old_autoencoder(runs, tmp_path, cli):
    spec = on_old_run("evaluate", "old-ae-eval", "old-ae")
    code, out, err = cli(write(tmp_path, spec))
    assert code == 0, err
    report = json.loads((runs / "old-ae-eval" / "eval.json").read_text())
    assert report["run"] == "old-ae" and report["checkpoint"] == "step-00000004.safetensors"
    metrics = report["metrics"]
    assert math.isfinite(metrics["psnr"]) and math.isfinite(metrics["ssim"])
    assert metrics["examples"] == OLD_AE_EXAMPLES
    assert metrics["psnr"] == pytest.approx(OLD_AE_EVAL_PSNR, abs=1e-4)
    # The old code's own validation of the same weights, written at the end of training (another
    # posterior sample, so close but not equal).
    stored = json.loads((runs / "old-ae" / "validation.json").read_text())
    assert stored["psnr"] == pytest.approx(OLD_AE_PSNR, abs=1e-9) and stored["examples"] == OLD_AE_EXAMPLES
    assert metrics["psnr"] == pytest.approx(stored["psnr"], abs=0.1)


@pytest.mark.parametrize("name", ["old-ldm", "old-ae"])
def test_resume_an_old_run_for_more_steps(runs, cli, name):
    run = runs / name
    before = steps_logged(run)
    assert max(before) == 4
    code, out, err = cli(run / "spec.json", "--resume", "--set", "train.max_steps=6")
    assert code == 0, err
    assert checkpoints(run) == ["step-00000006.safetensors"], "keep_checkpoints 1: only the newest is kept"
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-00000006.safetensors"
    after = steps_logged(run)
    assert after[: len(before)] == before and max(after) == 6 and {5, 6} <= set(after[len(before) :])
    assert json.loads((run / "spec.json").read_text())["train"]["max_steps"] == 6
    assert len(json.loads((run / "environment.json").read_text())["starts"]) == 2


def test_train_a_new_ldm_on_an_old_autoencoder(runs, tmp_path, cli):
    spec = {
        **LDM,
        "name": "new-ldm",
        "first_stage": {"run": "old-ae"},
        "denoiser": OLD_UNET,
        "sampling": {**LDM["sampling"], "steps": 4},
        "train": {
            "max_steps": 2,
            "batch_size": 8,
            "log_every": 1,
            "checkpoint_every": 2,
            "optimizer": {"lr": 0.002, "warmup_steps": 1},
        },
    }
    code, out, err = cli(write(tmp_path, spec))
    assert code == 0, err
    new = runs / "new-ldm"
    assert checkpoints(new) == ["step-00000002.safetensors"]
    resolved = json.loads((new / "spec.json").read_text())
    params = resolved["denoiser"]["params"]
    assert (params["in_channels"], params["out_channels"], params["context_dim"]) == (2, 2, 16), (
        "2 latent channels from the old autoencoder"
    )
    reads = json.loads((new / "environment.json").read_text())["starts"][-1]["reads"]
    assert any("old-ae" in r and "step-00000004" in r for r in reads), reads
    assert max(steps_logged(new)) == 2
    rows = map(json.loads, (new / "metrics.jsonl").read_text().splitlines())
    assert all(math.isfinite(row["loss/ldm"]) for row in rows if "loss/ldm" in row)
    assert load("new-ldm", runs_dir=runs).sample({"label": [3]}, steps=2, seed=0).shape == (1, 1, 8, 8)


def test_load_an_old_ldm_in_python(runs):
    pipe = load("old-ldm", runs_dir=runs)
    assert pipe.step == 4
    first = pipe.sample({"label": [1, 2]}, steps=3, seed=0)
    again = pipe.sample({"label": [1, 2]}, steps=3, seed=0)
    assert first.shape == (2, 1, 8, 8)
    assert first.min() >= -1 and first.max() <= 1
    assert torch.equal(first, again)
    assert first.mean().item() == pytest.approx(OLD_LDM_SAMPLE["mean"], abs=1e-4)
    assert first.std().item() == pytest.approx(OLD_LDM_SAMPLE["std"], abs=1e-4)
    assert first.abs().sum().item() == pytest.approx(OLD_LDM_SAMPLE["abs_sum"], abs=1e-3)
    assert first[0, 0, 0].tolist() == pytest.approx(OLD_LDM_SAMPLE_ROW, abs=1e-4)
    assert not torch.allclose(first, pipe.sample({"label": [1, 2]}, steps=3, seed=1)), "the seed matters"
