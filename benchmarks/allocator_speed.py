"""Training speed with the CLI's allocator setting (:mod:`tasks.engine.allocator`) against
glibc's defaults (``LDM_KEEP_FREED_MEMORY=0``), alternating in one run.

Each round runs the same short ``train_autoencoder`` (by default the shipped 64 px VQ
config, ``--steps`` steps on 600 examples) twice as a fresh process, once each way, the order
swapped every round; it reports each process's minor page faults, its CPU time (user and
system: the kernel's zero-filling of fresh pages is system time, and CPU time is less moved than
wall time by other load on a shared machine) and the median of its logged steps per second
(the first logging interval, which holds start-up, left out).

    python benchmarks/allocator_speed.py [--config configs/shapes_autoencoder_vq.json] [--steps 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

# The script's own folder is on the path when it runs.
from ldm_speed import steps_per_second

from tasks.engine.allocator import OPT_OUT

ROOT = Path(__file__).resolve().parent.parent


def one_run(spec: Path, runs: Path, keep: bool) -> tuple[float, int, float, float]:
    """(median steps per second, minor page faults, user seconds, system seconds) of one training process."""
    env = {**os.environ, OPT_OUT: "1" if keep else "0"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(
        [sys.executable, "-m", "tasks.run", str(spec), "--runs-dir", str(runs)],
        env=env,
        check=True,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    rate = steps_per_second(runs / json.loads(spec.read_text())["name"])
    return (
        rate,
        after.ru_minflt - before.ru_minflt,
        after.ru_utime - before.ru_utime,
        after.ru_stime - before.ru_stime,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "shapes_autoencoder_vq.json")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    spec = json.loads(args.config.read_text())
    spec["name"] = "allocator-speed"
    spec["data"]["params"]["num_examples"] = 600
    spec["train"].update(
        max_steps=args.steps,
        log_every=max(1, args.steps // 6),
        checkpoint_every=args.steps,
        image_every=10 * args.steps,
    )
    results: dict[bool, list[tuple[float, int, float, float]]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "spec.json"
        path.write_text(json.dumps(spec))
        for round_ in range(args.rounds):
            for keep in (True, False) if round_ % 2 == 0 else (False, True):
                runs = Path(scratch) / f"runs-{round_}-{keep}"
                rate, faults, user, system = one_run(path, runs, keep)
                results[keep].append((rate, faults, user, system))
                print(
                    f"round {round_} {'kept' if keep else 'glibc defaults'}: {rate:.2f} steps/s, {faults} minor "
                    f"faults, CPU {user:.1f} s user + {system:.1f} s system"
                )
    measures = {"steps/s": lambda r: r[0], "CPU seconds": lambda r: r[2] + r[3]}
    for what, measure in measures.items():
        kept, default = (statistics.median(map(measure, results[k])) for k in (True, False))
        print(f"median {what}: kept {kept:.2f}, glibc defaults {default:.2f}, ratio kept/defaults {kept / default:.3f}")


if __name__ == "__main__":
    main()
