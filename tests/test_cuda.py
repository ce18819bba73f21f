"""The same runs on a CUDA GPU: skipped on machines without one (CI), run by
benchmarks/gpu_check.sh where a GPU is lent. Device and dtype bugs hide on the CPU."""

import json

import pytest
import torch

from tasks.api import load
from tasks.run import main
from tests.test_ldm import losses as losses_of
from tests.test_pipeline import stages

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_a_pipeline_trains_and_samples_on_the_gpu_as_on_the_cpu(tmp_path, precision):
    spec = {
        "task": "pipeline",
        "name": "all",
        "seed": 3,
        "runtime": {"accelerator": "cuda", "precision": precision},
        "stages": stages(8),
    }
    path = tmp_path / "pipeline.json"
    path.write_text(json.dumps(spec))
    assert main([str(path), "--runs-dir", str(tmp_path / "runs")]) == 0
    recorded = json.loads((tmp_path / "runs" / "ldm" / "spec.json").read_text())["runtime"]
    assert recorded["accelerator"] == "cuda" and recorded["precision"] == precision
    losses = losses_of(tmp_path / "runs" / "ldm")
    assert len(losses) == 8 and all(0 < loss < 10 for loss in losses)
    # The weights trained on the GPU sample alike on both devices (cuDNN may round in TF32).
    on_gpu = load(tmp_path / "runs" / "ldm", device="cuda").sample({"label": [0, 1, 2]}, steps=4, guidance=2.0)
    on_cpu = load(tmp_path / "runs" / "ldm", device="cpu").sample({"label": [0, 1, 2]}, steps=4, guidance=2.0)
    assert on_gpu.device.type == "cpu" and torch.isfinite(on_gpu).all()
    assert (on_gpu - on_cpu).abs().max() < 0.05
