"""Sampling in bf16 autocast or compiled: the latents stay within 2e-2 relative RMS of float32
from the same noise, finite; a precision the device cannot run is refused in one sentence; the
manifest records what ran. On the stored tiny class-conditional LDM (tests/fixtures/old_runs)."""

import json

import pytest
import torch

from core import UserError
from tasks.api import load
from tasks.ldm.generation import generate
from tasks.ldm.precision import resolve_precision


def latents(pipe, **settings):
    noise = torch.randn(4, *pipe.latent_shape, generator=torch.Generator().manual_seed(0))
    sampling = pipe.sampling(sampler="dpmpp_2m", steps=8, guidance=2.0, **settings)
    with torch.no_grad():
        return generate(pipe.ldm, pipe.schedule, sampling, {"label": torch.tensor([0, 3, 5, 9])}, noise)


def relative_rms(a, b):
    return float((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt())


def test_bf16_sampling_stays_near_fp32(old_runs):
    pipe = load("old-ldm", runs_dir=old_runs)
    exact, half = latents(pipe, precision="fp32"), latents(pipe, precision="bf16")
    assert half.dtype == torch.float32 and half.isfinite().all()
    assert 0 < relative_rms(half, exact) <= 2e-2  # not equal: bf16 really ran


@pytest.mark.slow
def test_compiled_sampling_stays_near_fp32(old_runs):
    pipe = load("old-ldm", runs_dir=old_runs)
    compiled = latents(pipe, precision="fp32", compile=True)
    assert compiled.isfinite().all() and relative_rms(compiled, latents(pipe, precision="fp32")) <= 2e-2


def test_auto_is_fp32_on_the_cpu_and_bf16_on_a_gpu_that_has_it(monkeypatch):
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", torch.device("cuda")) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", torch.device("cuda")) == "fp16"


def test_a_precision_the_device_cannot_run_is_refused(monkeypatch, old_runs):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla V100")
    with pytest.raises(UserError, match="sampling.precision: bf16 is not supported by Tesla V100; use fp16 or fp32"):
        resolve_precision("bf16", torch.device("cuda"))
    pipe = load("old-ldm", runs_dir=old_runs)
    with pytest.raises(UserError, match="precision: fp16 autocast does not run on the CPU here; use bf16 or fp32"):
        pipe.sample({"label": [1]}, precision="fp16")


def test_the_manifest_records_the_precision_that_ran(cli, old_runs, tmp_path):
    spec = {
        "spec_version": 1,
        "task": "sample",
        "name": "s",
        "model": {"run": "old-ldm"},
        "conditions": {"label": [1, 2]},
        "sampling": {"steps": 3, "precision": "bf16"},
        "runtime": {"accelerator": "cpu"},
    }
    (tmp_path / "s.json").write_text(json.dumps(spec))
    code, _, err = cli("s.json", "--runs-dir", old_runs)
    assert code == 0, err
    line = json.loads((old_runs / "s" / "manifest.jsonl").read_text().splitlines()[0])
    assert line["precision"] == "bf16" and line["compile"] is False
