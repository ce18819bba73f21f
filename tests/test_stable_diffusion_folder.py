"""A Stable Diffusion-like diffusers pipeline (UNet2DConditionModel, AutoencoderKL, a CLIP text
encoder and its tokenizer, DDIM), random weights, saved with `save_pretrained`: imported here it
samples 10 DDIM steps with guidance from the same noise to the latents diffusers' own pipeline
gives; exported again, `StableDiffusionPipeline.from_pretrained` of our folder does the same."""

import json

import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from core import Conditioning
from core.diffusion import NoiseSchedule, beta_schedule
from tasks.api import load
from tasks.ldm.generation import generate
from tests.test_clip_text import clip_model, write_tokenizer

PROMPTS = ["a red circle next to a blue square", "the quick brown fox"]
TOLERANCE = 1e-3


def randomized(module, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in module.parameters():
            tensor.add_(torch.randn(tensor.shape, generator=generator) * 0.1)
    return module.eval()


def sd_pipeline(folder):
    """A tiny random SD-like pipeline, as diffusers builds it."""
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=2,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
    )
    tokenizer_folder = write_tokenizer(folder / "tokenizer-source")
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_folder, model_max_length=77)
    scheduler = DDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False, set_alpha_to_one=False
    )
    scheduler.register_to_config(steps_offset=1)
    return StableDiffusionPipeline(
        vae=randomized(vae, 1),
        text_encoder=clip_model(seed=2),
        tokenizer=tokenizer,
        unet=randomized(unet, 3),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def diffusers_latents(pipe, noise):
    return pipe(PROMPTS, num_inference_steps=10, guidance_scale=3.0, latents=noise.clone(), output_type="latent").images


def our_latents(run, noise, tmp_path):
    ours = load(run, runs_dir=tmp_path / "runs")
    sampling = ours.sampling(sampler="ddim", steps=10, guidance=3.0, spacing="ldm")
    with torch.no_grad():
        return generate(ours.ldm, ours.schedule, sampling, {"caption": PROMPTS}, noise)


def spec(task, name, **fields):
    return {"spec_version": 1, "task": task, "name": name, "runtime": {"accelerator": "cpu"}, **fields}


@pytest.fixture
def imported(cli, tmp_path):
    pipe = sd_pipeline(tmp_path)
    pipe.save_pretrained(tmp_path / "sd")
    (tmp_path / "import.json").write_text(json.dumps(spec("import_checkpoint", "sd", checkpoint="sd")))
    code, _, err = cli("import.json")
    assert code == 0, err
    return pipe


def test_an_imported_sd_pipeline_samples_diffusers_latents(imported, tmp_path):
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    expected = diffusers_latents(imported, noise)
    got = our_latents("sd", noise, tmp_path)
    assert expected.abs().max() > 0.1
    assert (got - expected).abs().max() <= TOLERANCE * expected.abs().max()
    ours = load("sd", runs_dir=tmp_path / "runs")
    torch.testing.assert_close(
        ours.schedule.betas, NoiseSchedule(beta_schedule("scaled_linear", 1000, 0.00085, 0.012)).betas
    )
    torch.testing.assert_close(ours.space.std.flatten(), torch.full((4,), 1 / 0.18215))


def test_an_exported_sd_run_loads_as_a_stable_diffusion_pipeline(cli, imported, tmp_path):
    (tmp_path / "export.json").write_text(json.dumps(spec("export_checkpoint", "out", model={"run": "sd"})))
    code, out, err = cli("export.json")
    assert code == 0, err
    assert json.loads(out.splitlines()[-1])["pipeline"] == "StableDiffusionPipeline"
    again = StableDiffusionPipeline.from_pretrained(tmp_path / "runs" / "out" / "diffusers")
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    expected = our_latents("sd", noise, tmp_path)
    got = diffusers_latents(again, noise)
    assert (got - expected).abs().max() <= TOLERANCE * expected.abs().max()
    ours = load("sd", runs_dir=tmp_path / "runs")
    t, context = torch.tensor([5, 800]), torch.randn(2, 77, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        eps = ours.ldm.denoiser(expected, t, Conditioning(context=context))
        assert (again.unet(expected, t, context).sample - eps).abs().max() <= 1e-4 * eps.abs().max()
        images = ours.space.first_stage.decode(expected * ours.space.std + ours.space.mean)
        decoded = again.vae.decode(expected / again.vae.config.scaling_factor).sample
    assert images.abs().max() > 1 and (decoded - images).abs().max() <= 1e-4 * images.abs().max()


def vit_l_pipeline(folder):
    """The tiny SD-like pipeline with Stable Diffusion v1's text encoder at full size (CLIP
    ViT-L/14's text tower, random weights) and 32 groups in every norm, as the original code
    has them: what a Stable Diffusion v1 file can hold."""
    small = sd_pipeline(folder)
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=768,
        attention_head_dim=2,
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        sample_size=16,
    )
    torch.manual_seed(4)
    vit_l = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12}
    text_encoder = CLIPTextModel(CLIPTextConfig(**vit_l, bos_token_id=49406, eos_token_id=49407)).eval()
    return StableDiffusionPipeline(
        vae=randomized(vae, 5),
        text_encoder=text_encoder,
        tokenizer=small.tokenizer,
        unet=randomized(unet, 6),
        scheduler=small.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


@pytest.mark.slow
def test_a_stable_diffusion_v1_file_imports_with_its_yaml_and_a_tokenizer(cli, tmp_path):
    """diffusers folder -> our run -> a v1 file and YAML (FrozenCLIPEmbedder) -> our run again,
    which samples diffusers' latents; the file lacks the tokenizer, so the import names it."""
    pipe = vit_l_pipeline(tmp_path)
    pipe.save_pretrained(tmp_path / "sd")
    (tmp_path / "import.json").write_text(json.dumps(spec("import_checkpoint", "sd", checkpoint="sd")))
    code, _, err = cli("import.json")
    assert code == 0, err
    (tmp_path / "export.json").write_text(
        json.dumps(spec("export_checkpoint", "file", model={"run": "sd"}, format="original"))
    )
    code, _, err = cli("export.json")
    assert code == 0, err
    file = {"checkpoint": "runs/file/model.safetensors", "original_config": "runs/file/model.yaml"}
    (tmp_path / "v1.json").write_text(json.dumps(spec("import_checkpoint", "v1", **file)))
    code, _, err = cli("v1.json")
    assert code == 2 and "is a FrozenCLIPEmbedder, whose tokenizer the checkpoint does not hold" in err
    (tmp_path / "v1.json").write_text(json.dumps(spec("import_checkpoint", "v1", **file, tokenizer="sd/tokenizer")))
    code, _, err = cli("v1.json")
    assert code == 0, err
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    expected = diffusers_latents(pipe, noise)
    got = our_latents("v1", noise, tmp_path)
    assert (got - expected).abs().max() <= TOLERANCE * expected.abs().max()
