"""`train_ldm` throughput with the latent cache against encoding every step, and sampling time
per image for each sampler.

For each first stage (the quickstart's: `configs/digits_autoencoder.json`, 32 px digits,
f=4; a 64 px `shapes` one: `configs/shapes_autoencoder_kl.json`, f=4; and the paper's f=4
autoencoder from `configs/paper/cin256_v2.json` on 64 px `shapes`), the benchmark
trains that autoencoder for a few steps (throughput does not depend on how well it is
trained; train_ldm needs the latent statistics a finished run stores), then runs the same
`train_ldm` spec with `latent_cache` on and off, alternating, and compares their
steady-state steps per second from `metrics.jsonl` (the first logging interval, which holds
start-up, is skipped; the cache is built before the first step and timed on its own).
Then it samples 16 images at 20 steps with every sampler from the digits LDM.

    python benchmarks/ldm_speed.py [--steps 60] [--rounds 2] [--which digits shapes paper]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from tasks.run import main as run_task

ROOT = Path(__file__).resolve().parent.parent
# A small UNet, as the quickstart's: the cache matters most when the first stage is not small beside it.
UNET = {
    "name": "unet",
    "params": {
        "model_channels": 32,
        "channel_mult": [1, 2, 2],
        "num_res_blocks": 1,
        "attention_levels": [2],
        "head_channels": 32,
        "norm_groups": 16,
    },
}
FIRST_STAGES = {
    "digits": "digits_autoencoder.json",
    "shapes": "shapes_autoencoder_kl.json",
    "paper": "paper/cin256_v2.json",
}
"""``paper``: the paper's f=4 autoencoder (128 channels, [1, 2, 4], VQ), here on 64 px shapes."""


def run(spec: dict, runs: Path) -> None:
    path = runs.parent / f"{spec['name']}.json"
    path.write_text(json.dumps(spec))
    code = run_task([str(path), "--runs-dir", str(runs)])
    if code != 0:
        raise SystemExit(f"{spec['name']} failed with exit code {code}")


def steps_per_second(run_dir: Path) -> float:
    rates = [
        row["throughput/steps_per_s"]
        for row in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
        if "throughput/steps_per_s" in row
    ]
    return statistics.median(rates[1:])


def ldm_spec(name: str, first_stage: str, data: dict, cache: bool, steps: int) -> dict:
    return {
        "task": "train_ldm",
        "name": name,
        "seed": 0,
        "runtime": {"accelerator": "cpu"},
        "data": data,
        "first_stage": {"run": first_stage},
        "denoiser": UNET,
        "latent_cache": cache,
        "conditioners": [{"name": "class_label", "params": {"num_classes": 18, "dim": 128}}],
        "train": {
            "max_steps": steps,
            "batch_size": 32,
            "log_every": 10,
            "checkpoint_every": steps,
            "ema": None,
            "optimizer": {"lr": 1e-4},
        },
    }


def throughput(which: str, runs: Path, steps: int, rounds: int) -> dict:
    ae = json.loads((ROOT / "configs" / FIRST_STAGES[which]).read_text())
    if ae["task"] == "pipeline":  # a paper template: its first stage, on data generated here, no weights files
        ae = {
            **ae["stages"][0],
            "seed": 0,
            "runtime": {"accelerator": "cpu"},
            "data": {"name": "shapes", "params": {"size": 64, "num_examples": 1000}},
            "loss": {"pixel": {"kind": "l1"}},
        }
        ae["train"].update(batch_size=4, num_workers=0)
    ae.update(name=f"{which}-ae")
    ae["train"].update(max_steps=4, checkpoint_every=4, log_every=2, image_every=None)
    run(ae, runs)
    start = time.perf_counter()
    run(ldm_spec(f"{which}-cache-build", ae["name"], ae["data"], True, 1), runs)
    build = time.perf_counter() - start
    found = {True: [], False: []}
    for round_ in range(rounds):
        for cache in (False, True):
            name = f"{which}-{'cached' if cache else 'encoding'}-{round_}"
            run(ldm_spec(name, ae["name"], ae["data"], cache, steps), runs)
            found[cache].append(steps_per_second(runs / name))
    cached, encoding = statistics.median(found[True]), statistics.median(found[False])
    return {
        "first stage": which,
        "cache build + 1 step (s)": round(build, 1),
        "cached steps/s": round(cached, 2),
        "encoding steps/s": round(encoding, 2),
        "ratio": round(cached / encoding, 2),
    }


def sampling_times(runs: Path, run_name: str) -> dict[str, float]:
    from tasks.api import load

    pipe = load(run_name, runs_dir=runs)
    labels = {"label": [i % 10 for i in range(16)]}
    times = {}
    for name in sorted(pipe.context.registry.names("sampler")):
        pipe.sample(labels, sampler=name, steps=2, seed=0)  # warm-up
        start = time.perf_counter()
        pipe.sample(labels, sampler=name, steps=20, seed=0, guidance=1.0)
        times[name] = (time.perf_counter() - start) / 16 * 1000
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--which", nargs="+", default=list(FIRST_STAGES), choices=list(FIRST_STAGES))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp) / "runs"
        rows = [throughput(which, runs, args.steps, args.rounds) for which in args.which]
        for row in rows:
            print(json.dumps(row))
        if "digits" in args.which:
            for name, ms in sampling_times(runs, "digits-cached-0").items():
                print(f"sampler {name}: {ms:.1f} ms per image (20 steps, batch 16)")


if __name__ == "__main__":
    main()
