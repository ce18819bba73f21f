"""Memory and step time of sharded training: the same LDM trained by 2 processes under
``ddp`` and under ``fsdp``, through the command line as a user runs it.

The model is wide and the data tiny (8 px digits, a 4x4x2 latent), so that weights,
gradients and optimiser state dominate each process's memory rather than activations: a
UNet of ``--channels`` base width with AdamW and an EMA. Each process's peak resident memory
is read while it runs, with freed memory handed back to the system: its resident set over the
middle half of its life (training) and its high-water mark (which includes building the whole
model in every process before it is sharded); the step time comes from the run's logged steps
per second, after the first logging interval. Runs alternate (ddp, fsdp,
ddp, ...) so that both see the same machine.

What the strategies must hold per process, for P float32 parameters: ddp 4P bytes each of
weights, gradients, EMA and 8P of AdamW's two moments (20P in all, plus DDP's gradient
buckets); fsdp half of each, plus the unit being gathered.

    python benchmarks/sharded_memory.py --out /tmp/sharded [--channels 192] [--steps 40] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from safetensors import safe_open

ROOT = Path(__file__).resolve().parent.parent
DATA = {"name": "digits", "params": {"size": 8, "channels": 1}}


def first_stage() -> dict:
    return {
        "task": "train_autoencoder",
        "name": "ae",
        "seed": 0,
        "runtime": {"accelerator": "cpu"},
        "data": DATA,
        "model": {
            "name": "autoencoder",
            "params": {
                "in_channels": 1,
                "ch": 8,
                "ch_mult": [1, 2],
                "num_res_blocks": 1,
                "z_channels": 2,
                "norm_groups": 4,
                "regularizer": {"name": "kl"},
            },
        },
        "train": {"max_steps": 2, "batch_size": 8, "checkpoint_every": 2},
    }


def ldm(channels: int, steps: int) -> dict:
    return {
        "task": "train_ldm",
        "name": "ldm",
        "seed": 0,
        "runtime": {"accelerator": "cpu", "devices": 2},
        "data": DATA,
        "first_stage": {"run": "ae"},
        "denoiser": {
            "name": "unet",
            "params": {
                "model_channels": channels,
                "channel_mult": [1, 2],
                "num_res_blocks": 2,
                "attention_levels": [1],
                "num_heads": 4,
            },
        },
        "conditioners": [{"name": "class_label", "params": {"num_classes": 10, "dim": 64}, "drop_rate": 0.1}],
        "train": {
            "max_steps": steps,
            "batch_size": 8,
            "log_every": 10,
            "checkpoint_every": steps,
            "optimizer": {"lr": 1e-4},
            "ema": {"decay": 0.999},
        },
    }


def family(pid: int) -> list[int]:
    """``pid`` and its descendants (rank 1 runs as a child of rank 0)."""
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [pid, *(p for child in children for p in family(int(child)))]


def memory(pid: int) -> tuple[int, int] | None:
    """(resident, peak resident) bytes of ``pid``, or None once it has gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines())
    if "VmRSS" not in fields:
        return None
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024


def run(args: list[str], log: Path) -> tuple[float, list[tuple[int, int]]]:
    """Run the command line; (wall seconds, for each process it started: its median resident
    bytes over the middle half of its life, and its peak)."""
    start, samples, peaks = time.perf_counter(), {}, {}
    # Freed memory goes back to the system, so that resident memory follows what is in use.
    env = {**os.environ, "LDM_KEEP_FREED_MEMORY": "0"}
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tasks.run", *args], cwd=ROOT, stdout=out, stderr=out, env=env)
        while proc.poll() is None:
            for pid in family(proc.pid):
                now = memory(pid)
                if now is not None:
                    samples.setdefault(pid, []).append(now[0])
                    peaks[pid] = max(now[1], peaks.get(pid, 0))
            time.sleep(0.1)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed; see {log}")
    steady = {
        pid: statistics.median(values[len(values) // 4 : 3 * len(values) // 4]) for pid, values in samples.items()
    }
    return time.perf_counter() - start, sorted(((int(steady[pid]), peaks[pid]) for pid in samples), reverse=True)


def step_seconds(run_dir: Path) -> float:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [row["throughput/steps_per_s"] for row in rows if "throughput/steps_per_s" in row]
    return 1 / statistics.median(rates[1:])


def parameters(run_dir: Path, steps: int) -> int:
    with safe_open(str(run_dir / "checkpoints" / f"step-{steps:08d}.safetensors"), "pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys() if k.startswith("model/"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="a folder for the runs (must not exist)")
    parser.add_argument("--channels", type=int, default=192)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if args.out.exists():
        parser.error(f"--out {args.out} exists; name a new folder")
    args.out.mkdir(parents=True)
    specs = {"ae": first_stage(), "ldm": ldm(args.channels, args.steps)}
    for name, spec in specs.items():
        (args.out / f"{name}.json").write_text(json.dumps(spec))
    runs = args.out / "runs"
    run([str(args.out / "ae.json"), "--runs-dir", str(runs)], args.out / "ae.log")
    rows = []
    for round_ in range(args.rounds):
        for strategy in ("ddp", "fsdp"):
            name = f"{strategy}-{round_}"
            sets = ["--set", f"name={name}", "--set", f"runtime.strategy={strategy}"]
            wall, mem = run([str(args.out / "ldm.json"), "--runs-dir", str(runs), *sets], args.out / f"{name}.log")
            row = {
                "run": name,
                "parameters": parameters(runs / name, args.steps),
                "step_s": step_seconds(runs / name),
                "wall_s": wall,
                "rss_mib": [round(m / 2**20) for m, _ in mem],
                "peak_rss_mib": [round(p / 2**20) for _, p in mem],
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    for strategy in ("ddp", "fsdp"):
        mine = [r for r in rows if r["run"].startswith(strategy)]
        print(
            f"{strategy}: step {statistics.median(r['step_s'] for r in mine) * 1000:.1f} ms, resident memory per "
            f"process while training {statistics.median(max(r['rss_mib']) for r in mine)} MiB, peak "
            f"{statistics.median(max(r['peak_rss_mib']) for r in mine)} MiB (the larger of the two processes), "
            f"{mine[0]['parameters'] / 1e6:.1f} M parameters"
        )


if __name__ == "__main__":
    main()
