"""Stable Diffusion v1 at full size through our import and export, against diffusers (issue #21).

A diffusers StableDiffusionPipeline with SD v1's architecture (860 M UNet, AutoencoderKL, CLIP
ViT-L/14's text tower; random weights, every tensor perturbed so none is left at an init
value) is saved with ``save_pretrained``; then, each step through ``python -m tasks.run`` in a
subprocess that reports its own wall time and peak resident memory:

1. ``import_checkpoint`` of the folder; our UNet, text encoder and autoencoder against
   diffusers' on the same inputs, and 10 guided DDIM steps against the pipeline's latents;
2. ``export_checkpoint`` to a diffusers folder; ``from_pretrained`` of it against our run;
3. ``export_checkpoint`` to the original layout; diffusers' ``from_single_file`` of it (with
   its YAML, offline) against our run; ``import_checkpoint`` of the file (with the tokenizer
   folder) against the first run.

Errors are max |a - b| / max |b|. The tokenizer is a small synthetic CLIP vocabulary (CLIP's own
files are not on this machine); the text encoder has the full vocabulary's embedding.

    python benchmarks/sd_interchange.py --work /tmp/sd --latent 32
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from core import Conditioning
from tasks.api import load
from tasks.ldm.generation import generate
from tests.test_clip_text import write_tokenizer

PROMPTS = ["a photograph of an astronaut riding a horse", "a red circle next to a blue square"]
ROOT = Path(__file__).resolve().parent.parent


def perturbed(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in module.parameters():
            tensor.add_(torch.randn(tensor.shape, generator=generator) * 0.02)
    return module.eval()


def sd_v1(work: Path) -> StableDiffusionPipeline:
    """SD v1's architecture (its diffusers configs), random weights."""
    unet = UNet2DConditionModel(
        sample_size=64,
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=768,
        attention_head_dim=8,
    )
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
    )
    vit_l = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12}
    text = CLIPTextModel(CLIPTextConfig(**vit_l, projection_dim=768, bos_token_id=49406, eos_token_id=49407))
    tokenizer = CLIPTokenizer.from_pretrained(write_tokenizer(work / "tokenizer-source"), model_max_length=77)
    scheduler = DDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False, set_alpha_to_one=False
    )
    scheduler.register_to_config(steps_offset=1)
    return StableDiffusionPipeline(
        vae=perturbed(vae, 1),
        text_encoder=perturbed(text, 2),
        tokenizer=tokenizer,
        unet=perturbed(unet, 3),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def task(work: Path, spec: dict) -> dict:
    """Run one task in a subprocess; its wall time (s) and peak resident memory (GB)."""
    path = work / f"{spec['name']}.json"
    path.write_text(json.dumps({"spec_version": 1, "runtime": {"accelerator": "cpu"}, **spec}))
    code = (
        "import resource, sys, time; from tasks.run import main; start = time.perf_counter(); "
        f"code = main([{str(path)!r}, '--runs-dir', {str(work / 'runs')!r}]); "
        "print('MEASURED', time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); "
        "sys.exit(code)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{spec['task']} failed:\n{done.stderr[-2000:]}")
    _, seconds, kilobytes = next(line for line in done.stdout.splitlines() if line.startswith("MEASURED")).split()
    return {"wall_s": round(float(seconds), 1), "peak_gb": round(int(kilobytes) / 2**20, 2)}


def error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@torch.no_grad()
def compare(ours, unet, vae, text, inputs) -> dict:
    """Our run's UNet, autoencoder decoder (and text encoder) against diffusers' modules."""
    x, t, context = inputs
    out = {"unet": error(ours.ldm.denoiser(x, t, Conditioning(context=context)), unet(x, t, context).sample)}
    raw = x[:1] * ours.space.std + ours.space.mean
    out["vae_decode"] = error(ours.space.first_stage.decode(raw), vae.decode(x[:1] / vae.config.scaling_factor).sample)
    if text is not None:
        ids = ours.ldm.conditioners[0].token_ids(PROMPTS)
        out["text_encoder"] = error(ours.ldm.conditioners[0](PROMPTS).context, text(ids).last_hidden_state)
    return out


@torch.no_grad()
def latents(ours, pipe, noise) -> float:
    """10 guided DDIM steps: ours against the diffusers pipeline, from the same noise."""
    sampling = ours.sampling(sampler="ddim", steps=10, guidance=7.5, spacing="ldm")
    mine = generate(ours.ldm, ours.schedule, sampling, {"caption": PROMPTS}, noise)
    size = noise.shape[-1] * 8
    theirs = pipe(
        PROMPTS,
        height=size,
        width=size,
        num_inference_steps=10,
        guidance_scale=7.5,
        latents=noise,
        output_type="latent",
    ).images
    return error(mine, theirs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="An empty folder for the files (about 12 GB).")
    parser.add_argument("--latent", type=int, default=32, help="Latent side of the compared inputs (64: 512 px).")
    args = parser.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=False)
    torch.manual_seed(0)
    pipe = sd_v1(work)
    print("UNet parameters:", sum(p.numel() for p in pipe.unet.parameters()), flush=True)
    start = time.perf_counter()
    pipe.save_pretrained(work / "sd")
    report: dict = {"save_pretrained_s": round(time.perf_counter() - start, 1)}
    generator = torch.Generator().manual_seed(1)
    side = args.latent
    inputs = (
        torch.randn(2, 4, side, side, generator=generator),
        torch.tensor([20, 900]),
        torch.randn(2, 77, 768, generator=generator),
    )
    noise = torch.randn(2, 4, side, side, generator=generator)

    report["import_diffusers"] = task(work, {"task": "import_checkpoint", "name": "sd", "checkpoint": str(work / "sd")})
    ours = load("sd", runs_dir=work / "runs")
    report["import_diffusers"] |= compare(ours, pipe.unet, pipe.vae, pipe.text_encoder, inputs)
    report["import_diffusers"]["ddim_10_guided_latents"] = latents(ours, pipe, noise.clone())
    print(json.dumps(report), flush=True)

    report["export_diffusers"] = task(work, {"task": "export_checkpoint", "name": "out", "model": {"run": "sd"}})
    again = StableDiffusionPipeline.from_pretrained(work / "runs" / "out" / "diffusers")
    report["export_diffusers"] |= compare(ours, again.unet, again.vae, again.text_encoder, inputs)
    del again
    print(json.dumps(report), flush=True)

    spec = {"task": "export_checkpoint", "name": "file", "model": {"run": "sd"}, "format": "original"}
    report["export_original"] = task(work, spec)
    file, config = str(work / "runs/file/model.safetensors"), str(work / "runs/file/model.yaml")
    unet = UNet2DConditionModel.from_single_file(file, original_config=config, local_files_only=True).eval()
    vae = AutoencoderKL.from_single_file(file, original_config=config, local_files_only=True).eval()
    report["export_original"] |= compare(ours, unet, vae, None, inputs)
    del unet, vae
    print(json.dumps(report), flush=True)

    spec = {
        "task": "import_checkpoint",
        "name": "v1",
        "checkpoint": file,
        "original_config": config,
        "tokenizer": str(work / "sd" / "tokenizer"),
    }
    report["import_original"] = task(work, spec)
    v1 = load("v1", runs_dir=work / "runs")
    report["import_original"] |= compare(v1, pipe.unet, pipe.vae, pipe.text_encoder, inputs)
    report["import_original"]["ddim_10_guided_latents"] = latents(v1, pipe, noise.clone())
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
