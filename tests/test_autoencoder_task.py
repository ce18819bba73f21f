"""train_autoencoder's reports: validation metrics and latent statistics stored with the weights."""

import json

import pytest
import torch
from safetensors.torch import load_file

from core import load_registry
from tasks.cli.catalog import spec_models
from tasks.engine.ema import UPDATES_KEY
from tasks.evaluation.metrics import psnr, ssim
from tasks.runs.checkpoint import read_state
from tasks.runs.validation import validate_task
from tests.conftest import sets


def test_psnr_and_ssim_on_known_cases():
    x = torch.zeros(2, 3, 16, 16)
    assert psnr(x, x + 0.2).tolist() == pytest.approx([10 * torch.log10(torch.tensor(4 / 0.04)).item()] * 2)
    y = torch.rand(1, 3, 16, 16) * 2 - 1
    assert ssim(y, y).item() == pytest.approx(1.0)
    assert ssim(y, y + 0.1 * torch.randn_like(y)).item() < ssim(y, y + 0.01 * torch.randn_like(y)).item() < 1


def test_final_checkpoint_holds_latent_statistics_and_validation_json_the_metrics(cli, ae_spec, tmp_path):
    code, _, err = cli(
        ae_spec, "--set", "model.params.regularizer.params.sample=false", "--set", "data.params.split=train"
    )
    assert code == 0, err
    run = tmp_path / "runs" / "ae"
    report = json.loads((run / "validation.json").read_text())
    assert report["split"] == "val" and report["examples"] == 180
    assert 0 < report["psnr"] < 60 and -1 <= report["ssim"] <= 1
    state = read_state(run / "checkpoints" / "step-00000006.safetensors")
    assert state.extra["latent_mean"].shape == (2,) and state.extra["latent_std"].shape == (2,)

    registry = load_registry(env={"LDM_DISABLE_PLUGIN_AUTOLOAD": "1"})
    spec = validate_task(json.loads((run / "spec.json").read_text()), spec_models(), registry)
    model = spec.model.build().eval()
    model.load_state_dict({k: v for k, v in state.ema["first_stage"].items() if k != UPDATES_KEY})
    data = spec.data.build()
    with torch.no_grad():
        z = model.encode(torch.stack([data[i]["image"] for i in range(len(data))])).double()
    # Encoded here in one batch, there in batches of 8: float32 sums in another order may
    # differ in the last bits on other machines; 1e-4 relative still catches a wrong statistic.
    assert torch.allclose(state.extra["latent_mean"].double(), z.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert torch.allclose(state.extra["latent_std"].double(), z.std((0, 2, 3), unbiased=False), rtol=1e-4, atol=1e-5)
    assert report["latent_std"] == pytest.approx(state.extra["latent_std"].tolist(), abs=1e-6)

    stats_spec = tmp_path / "stats.json"
    stats_spec.write_text(
        json.dumps(
            {
                "task": "latent_stats",
                "name": "stats",
                "first_stage": {"run": "ae"},
                "data": spec.data.model_dump(mode="json"),
                "batch_size": 50,
            }
        )
    )
    code, out, err = cli(stats_spec)
    assert code == 0, err
    stats = load_file(str(tmp_path / "runs" / "stats" / "latent_stats.safetensors"))
    assert torch.allclose(stats["mean"], state.extra["latent_mean"], atol=1e-6)
    assert torch.allclose(stats["std"], state.extra["latent_std"], atol=1e-6)
    [stamp] = json.loads((tmp_path / "runs" / "stats" / "environment.json").read_text())["starts"]
    assert stamp["reads"] == ["runs/ae/checkpoints/step-00000006.safetensors"]
    code, _, err = cli(stats_spec, "--set", "name=again", "--set", "first_stage.run=missing")
    assert code == 2 and "first_stage.run: 'missing' is not a run in 'runs'" in err


def test_vq_reports_codebook_usage_and_perplexity(cli, ae_spec, tmp_path):
    code, _, err = cli(
        ae_spec,
        *sets(
            'model.params.regularizer={"name": "vq", "params": {"codebook_size": 16}}',
            'loss.adversarial={"start": 3, "channels": 8, "layers": 1}',
        ),
    )
    assert code == 0, err
    report = json.loads((tmp_path / "runs" / "ae" / "validation.json").read_text())
    assert 0 < report["codebook_usage"] <= 1 and 1 <= report["codebook_perplexity"] <= 16
    lines = [json.loads(line) for line in (tmp_path / "runs" / "ae" / "metrics.jsonl").read_text().splitlines()]
    assert "loss/discriminator" not in lines[2] and "loss/discriminator" in lines[3], (
        "the discriminator starts at step 3"
    )
    assert lines[3]["loss/first_stage/adaptive_weight"] > 0
