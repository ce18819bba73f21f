"""What the main job's training time buys: variants of the quickstart pipeline, each trained
from nothing and judged by `configs/quickstart_eval.json`, in interleaved rounds.

A variant is a name, a pipeline config and ``--set`` overrides; every variant of a round runs
before the next round starts, so a slow hour of the machine hits all of them alike. For each
run the table gives the training time of each stage (the sum over logging intervals of steps
over the logged steps per second: training only, no start-up, cache or sample grids), the
command's wall-clock time, the autoencoder's validation PSNR and what `evaluate` measures
(class accuracy and the Frechet ratio against real train-vs-validation digits).

    git show a821e5c:configs/quickstart.json > /tmp/quickstart_before.json  # before issue #22
    python benchmarks/quickstart_budget.py --out /tmp/budget --rounds 2 \\
        --variant before /tmp/quickstart_before.json \\
        --variant now configs/quickstart.json \\
        --variant ldm1200 configs/quickstart.json stages.1.train.max_steps=1200

The reference classifier is trained once and shared by every run (a link to one cache).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def training_seconds(run_dir: Path) -> float:
    """Seconds of training: each logging interval's steps over its logged rate, summed."""
    seconds, last = 0.0, 0
    for row in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()):
        if "throughput/steps_per_s" in row:
            seconds += (row["step"] - last) / row["throughput/steps_per_s"]
            last = row["step"]
    return seconds


def task(args: list[str], log: Path) -> float:
    """Run ``python -m tasks.run ARGS`` from the repository root; its wall-clock seconds."""
    start = time.perf_counter()
    with log.open("a") as out:
        done = subprocess.run([sys.executable, "-m", "tasks.run", *args], cwd=ROOT, stdout=out, stderr=out)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed with exit code {done.returncode}; see {log}")
    return time.perf_counter() - start


def measure(name: str, config: str, sets: list[str], runs: Path, shared: Path) -> dict:
    """Train ``config`` with ``sets`` in ``runs``, evaluate it, and return its row."""
    runs.mkdir(parents=True)
    (runs / ".reference-classifiers").symlink_to(shared, target_is_directory=True)
    log = runs / "log.txt"
    overrides = [arg for key_value in sets for arg in ("--set", key_value)]
    wall = task([config, "--runs-dir", str(runs), *overrides], log)
    stages = json.loads((ROOT / config).read_text())["stages"]
    ae, ldm = (runs / stages[i]["name"] for i in (0, 1))
    task(["configs/quickstart_eval.json", "--runs-dir", str(runs), "--set", f"model.run={ldm.name}"], log)
    metrics = json.loads((runs / "quickstart-eval" / "eval.json").read_text())["metrics"]
    validation = json.loads((ae / "validation.json").read_text())
    return {
        "variant": name,
        "autoencoder_s": round(training_seconds(ae), 1),
        "ldm_s": round(training_seconds(ldm), 1),
        "wall_s": round(wall, 1),
        "psnr": validation.get("psnr"),
        **metrics,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="a folder for the runs (must not exist)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--variant",
        nargs="+",
        action="append",
        required=True,
        metavar="NAME CONFIG [KEY=VALUE ...]",
        help="a variant: its name, a pipeline config, and --set overrides",
    )
    args = parser.parse_args()
    shared = args.out / "reference-classifiers"
    shared.mkdir(parents=True)
    for round_ in range(args.rounds):
        for name, config, *sets in args.variant:
            row = measure(name, config, sets, args.out / f"round{round_}" / name, shared)
            print(json.dumps({"round": round_, **row}), flush=True)


if __name__ == "__main__":
    main()
