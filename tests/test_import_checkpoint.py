"""`import_checkpoint` with first stages: an original-format config and checkpoint (the tiny
first stages of tests/test_original_autoencoder.py, whose outputs were measured with the
original code) become a run that is a latent space for `train_ldm` and `latent_stats`."""

import json
import re

import pytest
import torch
import yaml

from core import DenoiserSpec, FirstStageSpec, load_registry
from tasks.autoencoder.latent_space import load_latent_space
from tasks.cli.catalog import context
from tasks.importing.original_config import first_stage_config
from tasks.importing.original_ldm import unet_model
from tasks.runs.spec import RunRef
from tests.original_fixtures import fingerprint
from tests.test_original_autoencoder import ORIGINAL, build, example_input, original_state

DDCONFIG = {
    "double_z": True,
    "z_channels": 2,
    "resolution": 16,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 32,
    "ch_mult": [1, 2],
    "num_res_blocks": 1,
    "attn_resolutions": [8],
    "dropout": 0.0,
}
FIRST_STAGES = {
    "kl": {"target": "ldm.models.autoencoder.AutoencoderKL", "params": {"embed_dim": 2, "ddconfig": DDCONFIG}},
    "vq": {
        "target": "ldm.models.autoencoder.VQModel",
        "params": {"embed_dim": 2, "n_embed": 16, "ddconfig": {**DDCONFIG, "double_z": False}},
    },
}


def write_original(tmp_path, kind, within_ldm=False, config_edit=None):
    """An original-format (config, checkpoint) pair; the checkpoint as Lightning writes one, with
    training-only tensors (loss.*) for a first stage's own and other parts for an LDM's."""
    first = json.loads(json.dumps(FIRST_STAGES[kind]))
    state = original_state(build(kind))
    if within_ldm:
        model = {
            "target": "ldm.models.diffusion.ddpm.LatentDiffusion",
            "params": {"scale_factor": 0.18215, "first_stage_config": first, "unet_config": {"target": "x"}},
        }
        state = {f"first_stage_model.{key}": value for key, value in state.items()}
        state["model.diffusion_model.out.2.weight"] = torch.zeros(2, 2, 3, 3)
    else:
        model = first
        state["loss.logvar"] = torch.zeros(())
    config = {"model": model, "lightning": {"trainer": {"max_epochs": 1}}}
    if config_edit:
        config_edit(config)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    torch.save({"state_dict": state, "global_step": 10}, tmp_path / "model.ckpt")
    return {
        "spec_version": 1,
        "task": "import_checkpoint",
        "name": f"imported-{kind}",
        "runtime": {"accelerator": "cpu"},
        "checkpoint": "model.ckpt",
        "original_config": "config.yaml",
    }


def import_run(cli, tmp_path, spec, *extra):
    (tmp_path / "import.json").write_text(json.dumps(spec))
    return cli("import.json", *extra)


@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_an_imported_first_stage_computes_what_the_original_does(cli, tmp_path, kind):
    code, out, err = import_run(cli, tmp_path, write_original(tmp_path, kind))
    assert code == 0, err
    assert json.loads(out.splitlines()[-1])["scale_factor"] == 1.0
    ctx = context(load_registry(env={"LDM_DISABLE_PLUGIN_AUTOLOAD": "1"}), tmp_path / "runs")
    space = load_latent_space(RunRef(run=f"imported-{kind}"), ctx, "first_stage")
    with torch.no_grad():
        moments = space.moments(example_input())
        decoded = space.first_stage.decode(space.first_stage.mode(example_input()))
    torch.testing.assert_close(fingerprint(moments), ORIGINAL[kind]["moments"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fingerprint(decoded), ORIGINAL[kind]["decoded"], rtol=1e-5, atol=1e-6)
    assert space.std.flatten().tolist() == [1.0, 1.0] and space.mean.abs().sum() == 0


def test_an_ldm_checkpoint_gives_its_first_stage_and_scale_factor(cli, tmp_path):
    spec = {**write_original(tmp_path, "kl", within_ldm=True), "take": "first_stage"}
    code, out, err = import_run(cli, tmp_path, spec)
    assert code == 0, err
    ctx = context(load_registry(env={"LDM_DISABLE_PLUGIN_AUTOLOAD": "1"}), tmp_path / "runs")
    space = load_latent_space(RunRef(run="imported-kl"), ctx, "first_stage")
    torch.testing.assert_close(space.std.flatten(), torch.full((2,), 1 / 0.18215))


def test_train_ldm_and_latent_stats_take_an_imported_first_stage(cli, tmp_path):
    assert import_run(cli, tmp_path, write_original(tmp_path, "vq"))[0] == 0
    digits = {"name": "digits", "params": {"size": 16, "channels": 3}}
    ldm = {
        "spec_version": 1,
        "task": "train_ldm",
        "name": "ldm",
        "runtime": {"accelerator": "cpu"},
        "data": digits,
        "first_stage": {"run": "imported-vq"},
        "denoiser": {
            "name": "unet",
            "params": {
                "model_channels": 8,
                "channel_mult": [1],
                "num_res_blocks": 1,
                "attention_levels": [],
                "mid_attention": False,
                "norm_groups": 4,
            },
        },
        "train": {"max_steps": 2, "batch_size": 4, "log_every": 1, "checkpoint_every": 2},
    }
    stats = {
        "spec_version": 1,
        "task": "latent_stats",
        "name": "stats",
        "runtime": {"accelerator": "cpu"},
        "first_stage": {"run": "imported-vq"},
        "data": {**digits, "params": {**digits["params"], "split": "val"}},
    }
    for spec in (ldm, stats):
        (tmp_path / "spec.json").write_text(json.dumps(spec))
        code, _, err = cli("spec.json")
        assert code == 0, err
    assert (tmp_path / "runs" / "ldm" / "checkpoints").is_dir()


def _no_attention(config):
    config["model"]["params"]["ddconfig"]["attn_type"] = "none"


def _unknown_target(config):
    config["model"]["target"] = "ldm.models.autoencoder.AutoencoderKLSomething"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            _unknown_target,
            r"original_config: config.yaml model.target 'ldm.models.autoencoder.AutoencoderKLSomething' "
            r"is not a first stage this code can import",
        ),
        (_no_attention, r"checkpoint: model.ckpt holds tensors config.yaml does not call for \(20: decoder.mid.attn_1"),
    ],
)
def test_what_cannot_be_imported_is_refused_and_nothing_is_written(cli, tmp_path, edit, message):
    code, _, err = import_run(cli, tmp_path, write_original(tmp_path, "kl", config_edit=edit))
    assert code == 2
    assert re.search(message, err) and err.strip().count("\n") == 0, err
    assert not (tmp_path / "runs" / "imported-kl").exists()


def test_a_checkpoint_lacking_tensors_is_refused_naming_them_and_their_count(cli, tmp_path):
    spec = write_original(tmp_path, "kl")
    state = torch.load(tmp_path / "model.ckpt")["state_dict"]
    del state["decoder.conv_out.bias"], state["encoder.conv_in.weight"]
    torch.save({"state_dict": state}, tmp_path / "model.ckpt")
    code, _, err = import_run(cli, tmp_path, spec)
    assert code == 2
    assert "model.ckpt lacks tensors config.yaml calls for (2: encoder.conv_in.weight, decoder.conv_out.bias)" in err


def test_missing_files_are_named(cli, tmp_path):
    spec = write_original(tmp_path, "kl")
    code, _, err = import_run(cli, tmp_path, {**spec, "checkpoint": "nowhere.ckpt"})
    assert code == 2 and "checkpoint: 'nowhere.ckpt' is not a file; give the path of the checkpoint file" in err


# The released first stages' ddconfigs (models/first_stage_models/*/config.yaml at CompVis
# a506df5; all with resolution 256, ch 128, num_res_blocks 2) and the number of tensors the
# original code's Encoder, Decoder, quant convs and quantizer hold for each, counted by
# building them (on the meta device) from those configs.
RELEASED = {
    "kl-f4": ("kl", [1, 2, 4], [], 3, None, "vanilla", 204),
    "kl-f8": ("kl", [1, 2, 4, 4], [], 4, None, "vanilla", 248),
    "kl-f16": ("kl", [1, 1, 2, 2, 4], [16], 16, None, "vanilla", 342),
    "kl-f32": ("kl", [1, 1, 2, 2, 4, 4], [16, 8], 64, None, "vanilla", 436),
    "vq-f4": ("vq", [1, 2, 4], [], 3, 8192, "vanilla", 205),
    "vq-f4-noattn": ("vq", [1, 2, 4], [], 3, 8192, "none", 185),
    "vq-f8": ("vq", [1, 2, 2, 4], [32], 4, 16384, "vanilla", 299),
    "vq-f8-n256": ("vq", [1, 2, 2, 4], [32], 4, 256, "vanilla", 299),
    "vq-f16": ("vq", [1, 1, 2, 2, 4], [16], 8, 16384, "vanilla", 343),
}


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_every_released_first_stage_maps_onto_ours(name, registry):
    kind, ch_mult, attn, z, n_embed, attn_type, tensors = RELEASED[name]
    dd = {
        "double_z": kind == "kl",
        "z_channels": z,
        "resolution": 256,
        "in_channels": 3,
        "out_ch": 3,
        "ch": 128,
        "ch_mult": ch_mult,
        "num_res_blocks": 2,
        "attn_resolutions": attn,
        "dropout": 0.0,
        "attn_type": attn_type,
    }
    target = "ldm.models.autoencoder.AutoencoderKL" if kind == "kl" else "ldm.models.autoencoder.VQModel"
    params = {"embed_dim": z, "ddconfig": dd, **({"n_embed": n_embed} if n_embed else {})}
    spec = first_stage_config({"model": {"target": target, "params": params}}).model
    with torch.device("meta"):
        model = FirstStageSpec.model_validate(spec, context={"registry": registry}).build()
    names = [name for pair in model.original_names() for name in pair.originals]
    assert len(names) == len(set(names)) == tensors
    assert model.latent_shape(model.params).factor == 2 ** (len(ch_mult) - 1)


# Released UNets (their unet_config params at CompVis a506df5: the parts that shape them) and
# the tensors the original UNetModel holds for each, counted by building it on the meta device
# (all 13 released UNets were checked name for name and shape for shape that way).
RELEASED_UNETS = {
    "txt2img-1p4B": (
        {
            "in_channels": 4,
            "out_channels": 4,
            "model_channels": 320,
            "attention_resolutions": [4, 2, 1],
            "channel_mult": [1, 2, 4, 4],
            "num_heads": 8,
            "use_spatial_transformer": True,
            "context_dim": 1280,
        },
        686,
        872.3,
    ),
    "cin256-v2": (
        {
            "in_channels": 3,
            "out_channels": 3,
            "model_channels": 192,
            "attention_resolutions": [8, 4, 2],
            "channel_mult": [1, 2, 3, 5],
            "num_heads": 1,
            "use_spatial_transformer": True,
            "context_dim": 512,
        },
        688,
        400.9,
    ),
    "inpainting_big": (
        {
            "in_channels": 7,
            "out_channels": 3,
            "model_channels": 256,
            "attention_resolutions": [8, 4, 2],
            "channel_mult": [1, 2, 3, 4],
            "num_heads": 8,
            "resblock_updown": True,
        },
        416,
        387.2,
    ),
    "lsun_churches256": (
        {
            "in_channels": 4,
            "out_channels": 4,
            "model_channels": 192,
            "attention_resolutions": [1, 2, 4, 8],
            "channel_mult": [1, 2, 2, 4, 4],
            "num_heads": 8,
            "use_scale_shift_norm": True,
            "resblock_updown": True,
        },
        520,
        295.0,
    ),
    "semantic_synthesis256": (
        {
            "in_channels": 6,
            "out_channels": 3,
            "model_channels": 128,
            "attention_resolutions": [32, 16, 8],
            "channel_mult": [1, 4, 8],
            "num_heads": 8,
        },
        216,
        215.2,
    ),
    "bsr_sr": (
        {
            "in_channels": 6,
            "out_channels": 3,
            "model_channels": 160,
            "attention_resolutions": [16, 8],
            "channel_mult": [1, 2, 2, 4],
            "num_head_channels": 32,
        },
        306,
        113.6,
    ),
}


@pytest.mark.parametrize("name", sorted(RELEASED_UNETS))
def test_every_kind_of_released_unet_maps_onto_ours(name, registry):
    params, tensors, millions = RELEASED_UNETS[name]
    section = {
        "target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
        "params": {"num_res_blocks": 2, **params},
    }
    spec = unet_model(section, "unet_config")
    with torch.device("meta"):
        model = DenoiserSpec.model_validate(spec, context={"registry": registry}).build()
    names = [name for pair in model.original_names() for name in pair.originals]
    assert len(names) == len(set(names)) == tensors
    assert round(sum(t.numel() for t in model.parameters()) / 1e6, 1) == millions


def test_unet_options_we_cannot_express_are_named():
    section = {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel", "params": {"num_classes": 1000}}
    with pytest.raises(ValueError, match="unet_config.params.num_classes is 1000; this code imports UNets with"):
        unet_model(section, "unet_config")
