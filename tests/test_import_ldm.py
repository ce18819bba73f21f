"""`import_checkpoint` with an LDM: an original-format LDM config and checkpoint (a first stage,
the UNet of tests/test_original_unet.py, whose output was measured with the original code, as
its EMA, and a class embedding) become a run that samples through `tasks.api.load`."""

import json

import torch
import yaml

from core import Conditioning
from core.diffusion import beta_schedule
from tasks.api import load
from tests.original_fixtures import fingerprint, seeded_state
from tests.test_import_checkpoint import DDCONFIG
from tests.test_original_autoencoder import build as build_first_stage
from tests.test_original_autoencoder import original_state as first_stage_state
from tests.test_original_unet import ORIGINAL as ORIGINAL_UNET
from tests.test_original_unet import build as build_unet
from tests.test_original_unet import example_inputs
from tests.test_original_unet import original_state as unet_state

FIRST_STAGE = {
    "target": "ldm.models.autoencoder.AutoencoderKL",
    "params": {
        "embed_dim": 4,
        "ddconfig": {**DDCONFIG, "z_channels": 4, "attn_resolutions": []},
    },
}
UNET = {
    "target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
    "params": {
        "image_size": 8,
        "in_channels": 4,
        "out_channels": 4,
        "model_channels": 32,
        "attention_resolutions": [2],
        "num_res_blocks": 1,
        "channel_mult": [1, 2],
        "num_head_channels": 16,
        "use_spatial_transformer": True,
        "transformer_depth": 1,
        "context_dim": 24,
    },
}
LDM = {
    "target": "ldm.models.diffusion.ddpm.LatentDiffusion",
    "params": {
        "linear_start": 0.0015,
        "linear_end": 0.0195,
        "timesteps": 1000,
        "first_stage_key": "image",
        "cond_stage_key": "class_label",
        "image_size": 8,
        "channels": 4,
        "cond_stage_trainable": True,
        "conditioning_key": "crossattn",
        "scale_factor": 0.18215,
        "unet_config": UNET,
        "first_stage_config": FIRST_STAGE,
        "cond_stage_config": {
            "target": "ldm.modules.encoders.modules.ClassEmbedder",
            "params": {"embed_dim": 24, "n_classes": 1001, "key": "class_label"},
        },
    },
}


def write(tmp_path, ema=True, linear_end=0.0195, **spec):
    """The config, a Lightning-style checkpoint and an import spec; the UNet's EMA holds the
    fixture weights, its raw weights others (seed 5)."""
    first = build_first_stage("kl", z_channels=4, attention_levels=[])
    unet = build_unet("transformer")
    raw = seeded_state({key: value.shape for key, value in unet_state(unet).items()}, seed=5)
    state = {f"first_stage_model.{k}": v for k, v in first_stage_state(first).items()}
    state |= {f"model.diffusion_model.{k}": v for k, v in raw.items()}
    if ema:
        state |= {"model_ema." + f"diffusion_model.{k}".replace(".", ""): v for k, v in unet_state(unet).items()}
        state |= {"model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates": torch.tensor(5, dtype=torch.int32)}
    state["cond_stage_model.embedding.weight"] = torch.randn(1001, 24, generator=torch.Generator().manual_seed(6))
    state["betas"] = beta_schedule("scaled_linear", 1000, 0.0015, linear_end).float()
    config = {"model": json.loads(json.dumps(LDM)), "data": {"target": "main.DataModuleFromConfig"}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    torch.save({"state_dict": state}, tmp_path / "model.ckpt")
    (tmp_path / "import.json").write_text(
        json.dumps(
            {
                "spec_version": 1,
                "task": "import_checkpoint",
                "name": "cin",
                "runtime": {"accelerator": "cpu"},
                "checkpoint": "model.ckpt",
                "original_config": "config.yaml",
                **spec,
            }
        )
    )
    return raw


def test_an_imported_ldm_samples_with_the_original_codes_unet(cli, tmp_path):
    write(tmp_path)
    code, out, err = cli("import.json")
    assert code == 0, err
    assert json.loads(out.splitlines()[-1])["tensors"]["ldm"] > 100
    pipe = load("cin", runs_dir=tmp_path / "runs")
    x, t, context = example_inputs()
    with torch.no_grad():
        eps = pipe.ldm.denoiser(x, t, Conditioning(context=context))
    torch.testing.assert_close(fingerprint(eps), ORIGINAL_UNET["transformer"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pipe.space.std.flatten(), torch.full((4,), 1 / 0.18215))
    images = pipe.sample({"label": [3, 7]}, steps=3, guidance=2.0, seed=0)
    assert images.shape == (2, 3, 16, 16) and images.isfinite().all()
    assert pipe.ldm.conditioners[0].params.null_class and pipe.ldm.conditioners[0].params.num_classes == 1000


def test_raw_weights_are_taken_when_asked(cli, tmp_path):
    raw = write(tmp_path, weights="raw")
    assert cli("import.json")[0] == 0
    pipe = load("cin", runs_dir=tmp_path / "runs")
    torch.testing.assert_close(pipe.ldm.denoiser.state_dict()["out.2.weight"], raw["out.2.weight"])


def test_a_checkpoint_without_ema_or_with_another_schedule_is_refused(cli, tmp_path):
    write(tmp_path, ema=False)
    code, _, err = cli("import.json")
    assert (
        code == 2 and "has no EMA weights (model_ema.*; the model was trained without EMA); set weights to 'raw'" in err
    )
    write(tmp_path, linear_end=0.012)
    code, _, err = cli("import.json")
    assert code == 2 and "was trained with another noise schedule than config.yaml gives" in err
    assert not (tmp_path / "runs" / "cin").exists()


def test_an_imported_ldm_is_fine_tuned_with_init_from(cli, tmp_path):
    """Its first stage is the latent space and its weights the start of a train_ldm run."""
    write(tmp_path)
    assert cli("import.json")[0] == 0
    imported = json.loads((tmp_path / "runs" / "cin" / "spec.json").read_text())
    tune = {
        "spec_version": 1,
        "task": "train_ldm",
        "name": "tuned",
        "runtime": {"accelerator": "cpu"},
        "data": {"name": "digits", "params": {"size": 16, "channels": 3}},
        "first_stage": {"run": "cin"},
        "denoiser": imported["denoiser"],
        "conditioners": imported["conditioners"],
        "diffusion": imported["diffusion"],
        "train": {"max_steps": 2, "batch_size": 4, "log_every": 1, "checkpoint_every": 2, "init_from": {"run": "cin"}},
    }
    (tmp_path / "tune.json").write_text(json.dumps(tune))
    code, _, err = cli("tune.json")
    assert code == 0, err
    assert (tmp_path / "runs" / "tuned" / "checkpoints").is_dir()


def test_evaluate_measures_an_imported_model_on_the_data_it_is_given(cli, tmp_path):
    write(tmp_path)
    assert cli("import.json")[0] == 0
    digits = {"name": "digits", "params": {"size": 16, "channels": 3}}
    evaluate = {
        "spec_version": 1,
        "task": "evaluate",
        "name": "eval",
        "runtime": {"accelerator": "cpu"},
        "model": {"run": "cin"},
        "batch_size": 20,
    }
    (tmp_path / "eval.json").write_text(json.dumps(evaluate))
    code, _, err = cli("eval.json")
    assert code == 2 and "data: 'cin' (import_checkpoint) was trained on no dataset of ours; give data" in err
    (tmp_path / "eval.json").write_text(json.dumps({**evaluate, "data": digits}))
    code, _, err = cli("eval.json", "--set", "sampling.steps=2", "--set", "per_class=1")
    assert code == 0, err
    report = json.loads((tmp_path / "runs" / "eval" / "eval.json").read_text())
    assert report["run"] == "cin" and report["metrics"]
