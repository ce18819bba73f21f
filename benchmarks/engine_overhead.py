"""The engine's cost per step against a bare PyTorch loop doing the same work.

Both train the same ~0.9 M-parameter autoencoder (KL, 32 px digits, batch 16) with AdamW
and an EMA of the weights, from the same data. The engine run goes through
``tasks.engine.train`` (Fabric, schedules, gradient-norm measurement, logging, metrics);
the bare loop is what a user would write by hand. Runs alternate (bare, engine, bare, ...)
so that both see the same machine load; each timing skips the first 10 steps (warm-up).
The engine logs every 10 steps (TensorBoard, metrics.jsonl), which its timing includes.

    python benchmarks/engine_overhead.py [--steps 60] [--rounds 3] [--device cpu]

Prints one line per run and the ratio engine / bare of the median seconds per step.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from core import load_registry
from tasks.autoencoder.train import AutoencoderObjective
from tasks.cli.catalog import context, spec_models
from tasks.engine.trainer import train
from tasks.runs.validation import validate_task

WARMUP = 10


def spec_data(steps: int, device: str) -> dict:
    return {
        "task": "train_autoencoder",
        "name": "bench",
        "runtime": {"accelerator": device},
        "data": {"name": "digits", "params": {"size": 32, "channels": 3}},
        "model": {
            "name": "autoencoder",
            "params": {
                "ch": 32,
                "ch_mult": [1, 2, 2],
                "num_res_blocks": 1,
                "mid_attention": False,
                "z_channels": 4,
                "norm_groups": 8,
                "regularizer": {"name": "kl"},
            },
        },
        "loss": {"perceptual": None},
        "train": {
            "max_steps": steps,
            "batch_size": 16,
            "log_every": WARMUP,
            "checkpoint_every": 100000,
            "optimizer": {"lr": 1e-4},
            "ema": {"decay": 0.999},
        },
    }


def bare(spec, steps: int, device: str) -> float:
    """Seconds per step of a hand-written loop: same model, data, AdamW, EMA."""
    torch.manual_seed(spec.seed)
    model = spec.model.build().to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.train.optimizer.lr)
    loader = DataLoader(spec.data.build(), batch_size=spec.train.batch_size, shuffle=True, drop_last=True)
    stamps = []
    batches = iter(loader)
    for _ in range(steps):
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        x = batch["image"].to(device)
        reconstruction, terms = model(x)
        loss = (reconstruction - x).abs().flatten(1).sum(1).mean() + terms["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for shadow, weight in zip(ema.parameters(), model.parameters(), strict=True):
                shadow.lerp_(weight, 1 - 0.999)
        loss.item()
        stamps.append(time.perf_counter())
    return (stamps[-1] - stamps[WARMUP - 1]) / (steps - WARMUP)


def engine(spec, steps: int) -> float:
    """Seconds per step of ``tasks.engine.train`` on the same work (from its own step log)."""
    with tempfile.TemporaryDirectory() as runs:
        ctx = context(load_registry(), Path(runs))
        train(spec, ctx, AutoencoderObjective)
        # One line per WARMUP steps, each with the rate since the previous line: skip the first.
        rates = [
            json.loads(line)["throughput/steps_per_s"]
            for line in (Path(runs) / "bench" / "metrics.jsonl").read_text().splitlines()
        ][1:]
    return statistics.fmean(1.0 / r for r in rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    spec = validate_task(spec_data(args.steps, args.device), spec_models(), load_registry())
    params = sum(p.numel() for p in spec.model.build().parameters())
    print(
        f"model: autoencoder, {params:,} parameters; {args.steps} steps per run, first {WARMUP} skipped; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}",
        flush=True,
    )
    times: dict[str, list[float]] = {"bare": [], "engine": []}
    for round_ in range(args.rounds):
        times["bare"].append(bare(spec, args.steps, args.device))
        times["engine"].append(engine(spec, args.steps))
        print(
            f"round {round_ + 1}: bare {times['bare'][-1] * 1000:.1f} ms/step, "
            f"engine {times['engine'][-1] * 1000:.1f} ms/step",
            file=sys.stderr,
            flush=True,
        )
    b, e = statistics.median(times["bare"]), statistics.median(times["engine"])
    print(f"median: bare {b * 1000:.1f} ms/step, engine {e * 1000:.1f} ms/step, ratio engine/bare {e / b:.3f}")


if __name__ == "__main__":
    main()
