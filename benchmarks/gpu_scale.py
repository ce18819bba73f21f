"""Paper-scale speed (issue #22): the txt2img UNet's train step through our engine's set-up,
eager and compiled, beside diffusers' UNet2DConditionModel built alike; its FLOPs and the share
of the bf16 matmul peak; guided sampling throughput in fp32, bf16 and compiled bf16; and a short
autoencoder run reading PNGs from disk, with the share of its steps spent waiting for data.

    PYTHONPATH=. python benchmarks/gpu_scale.py --device cuda      # a lent GPU (gpu_scale.sh)
    PYTHONPATH=. python benchmarks/gpu_scale.py --device cpu --tiny  # a smoke test of this script

The UNet is ``configs/paper/txt2img_kl_f8_256.json``'s (872 M, latents 32x32x4, context
77x1280) without gradient checkpointing, batch 32; diffusers' twin is built from the config our
UNet exports (``diffusers_model()``), so the two have the same parameters to the last one.
``--tiny`` shrinks every size so that the whole script runs in about a minute on a CPU. Prints
one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from diffusers import UNet2DConditionModel
from PIL import Image

from benchmarks.unet_vs_diffusers import calls, flops, matmul_peak, timed
from core import Conditioning
from core.diffusion import NoiseSchedule, beta_schedule
from core.guidance import guided
from core.sampling import denoiser, sample, sigmas
from plugins.samplers import DdimSampler
from plugins.unet import UNet
from tasks.ldm.precision import network

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "configs" / "paper" / "txt2img_kl_f8_256.json"


def unet_params(tiny: bool) -> dict:
    """The template's UNet params (sizes filled), without gradient checkpointing."""
    stages = json.loads(TEMPLATE.read_text())["stages"]
    params = next(s["denoiser"]["params"] for s in stages if s.get("task") == "train_ldm")
    params = {**params, "in_channels": 4, "out_channels": 4, "context_dim": 1280, "gradient_checkpointing": False}
    if tiny:
        params |= {"model_channels": 32, "channel_mult": [1, 2], "attention_levels": [1], "context_dim": 32}
    return params


def twins(tiny: bool, device: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    ours = UNet(UNet.Params(**unet_params(tiny)))
    theirs = UNet2DConditionModel.from_config(ours.diffusers_model().config)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
    return ours.to(device), theirs.to(device)


def median_ms(fn, device: str, rounds: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    return statistics.median(timed(fn, device) for _ in range(rounds))


def train_steps(args, ours, theirs, shape) -> dict:
    """Median ms of a bf16-autocast train step: ours through the engine's set-up (fused AdamW,
    channels-last) and diffusers' with torch's AdamW, each eager and compiled."""
    bf16 = args.device == "cuda"
    out = {}
    for name, model, is_ours in (("ours", ours, True), ("diffusers", theirs, False)):
        for compiled in (False, True):
            net = torch.compile(model) if compiled else model
            _, step, run = calls(net, is_ours, args.batch, args.device, bf16, engine=is_ours, shape=shape)
            key = f"{name}_{'compiled' if compiled else 'eager'}"
            out[key] = median_ms(step, args.device, args.rounds, args.warmup + (3 if compiled else 0))
            if key == "ours_eager":
                out["train_flops"] = flops(run)[1]
    return out


SAMPLING = (("fp32", "fp32", False), ("bf16", "bf16", False), ("bf16_compiled", "bf16", True))


@torch.no_grad()
def sampling(args, ours, shape) -> dict:
    """Seconds for 50 guided DDIM steps on a batch, fp32 / bf16 / compiled bf16, and each one's
    relative RMS distance from fp32's latents (same noise)."""
    side, tokens, width = shape
    generator = torch.Generator().manual_seed(1)
    noise = torch.randn(args.batch, 4, side, side, generator=generator).to(args.device)
    cond = Conditioning(context=torch.randn(args.batch, tokens, width, generator=generator).to(args.device))
    uncond = Conditioning(context=torch.zeros_like(cond.context))
    schedule = NoiseSchedule(beta_schedule("scaled_linear", 1000, 0.00085, 0.012))
    levels = sigmas(schedule, 50, "ldm")
    sampler = DdimSampler(DdimSampler.Params())
    ours.eval()
    out, reference = {}, None
    for name, precision, compiled in SAMPLING:
        fn = denoiser(guided(network(ours, precision, compiled), cond, uncond, 7.5), schedule, "eps")
        if compiled:
            sample(sampler, fn, noise, levels[-3:])  # compile outside the timing
        result = {}
        seconds = timed(lambda fn=fn, result=result: result.update(x=sample(sampler, fn, noise, levels)), args.device)
        latents = result["x"]
        reference = latents if reference is None else reference
        rms = float((latents - reference).pow(2).mean().sqrt() / reference.pow(2).mean().sqrt())
        out[name] = {"seconds": round(seconds / 1000, 3), "relative_rms_to_fp32": rms}
    return out


def data_pipeline(args) -> dict:
    """A train_autoencoder run on PNGs written to disk: the share of time waiting for batches."""
    side, count, steps = (64, 64, 30) if args.tiny else (256, 2048, 250)
    work = Path(tempfile.mkdtemp(prefix="gpu-scale-"))
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(work / f"{i:05d}.png")
    every = 10 if args.tiny else 50
    spec = {
        "spec_version": 1,
        "task": "train_autoencoder",
        "name": "ae",
        "runtime": {"accelerator": args.device, "precision": "bf16-mixed" if args.device == "cuda" else "32-true"},
        "data": {"name": "image_folder", "params": {"root": str(work), "size": side}},
        "model": {
            "name": "autoencoder",
            "params": {
                "ch": 32 if args.tiny else 128,
                "ch_mult": [1, 2, 4, 4],
                "z_channels": 4,
                "regularizer": {"name": "kl"},
            },
        },
        "train": {
            "max_steps": steps,
            "batch_size": 8 if args.tiny else 32,
            "log_every": every,
            "checkpoint_every": steps,
            "num_workers": 0 if args.tiny else 8,
        },
    }
    (work / "ae.json").write_text(json.dumps(spec))
    done = subprocess.run(
        [sys.executable, "-m", "tasks.run", str(work / "ae.json"), "--runs-dir", str(work / "runs")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        return {"failed": done.stderr[-1000:]}
    rows = [json.loads(line) for line in (work / "runs" / "ae" / "metrics.jsonl").read_text().splitlines()]
    later = [r["throughput/data_wait_share"] for r in rows if "throughput/data_wait_share" in r and r["step"] > every]
    return {"image_side": side, "images": count, "steps": steps, "data_wait_share": float(np.mean(later))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="Small sizes: a smoke test of the script on a CPU.")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    args.batch = 2 if args.tiny else 32
    shape = (8, 8, 32) if args.tiny else (32, 77, 1280)
    torch.manual_seed(0)
    ours, theirs = twins(args.tiny, args.device)
    report: dict = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu"}
    report["parameters"] = sum(p.numel() for p in ours.parameters())
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    report["matmul_peak_tflops"] = matmul_peak(args.device, dtype) / 1000
    steps = train_steps(args, ours, theirs, shape)
    achieved = steps["train_flops"] / (steps["ours_compiled"] / 1000) / 1e12
    report["train_step_ms"] = {k: round(v, 2) for k, v in steps.items() if k != "train_flops"}
    report["train_tflop_per_step"] = steps["train_flops"] / 1e12
    report["ours_compiled_share_of_peak"] = achieved / report["matmul_peak_tflops"]
    report["diffusers_over_ours"] = {
        setup: steps[f"diffusers_{setup}"] / steps[f"ours_{setup}"] for setup in ("eager", "compiled")
    }
    print(json.dumps(report), flush=True)
    report["sampling_50_guided_steps"] = sampling(args, ours, shape)
    print(json.dumps(report), flush=True)
    report["data"] = data_pipeline(args)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
