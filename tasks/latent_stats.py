"""Task ``latent_stats``: estimate a trained first stage's latent statistics on demand.

``train_autoencoder`` stores them with its final weights; this task computes them for any
run's latest checkpoint (on another dataset, or after a resumed run was stopped early) and
writes ``latent_stats.safetensors`` (``mean`` and ``std``, per channel) in its own run
directory, with the run and checkpoint it read in the file's metadata.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import PositiveInt
from safetensors.torch import save_file

from core import DatasetSpec, TaskSpec
from tasks.context import RunContext
from tasks.engine.rundir import atomic_write, check_run_dir, environment_stamp, open_run_dir
from tasks.engine.runtime import make_fabric, resolve_runtime
from tasks.engine.specs import RunRef
from tasks.latents import latent_statistics
from tasks.runs import load_trained


class LatentStatsSpec(TaskSpec):
    """Per-channel mean and std of a trained first stage's latents over ``data``."""

    task: Literal["latent_stats"]
    first_stage: RunRef
    data: DatasetSpec
    batch_size: PositiveInt = 64


def run(spec: LatentStatsSpec, ctx: RunContext) -> None:
    """Encode every example of ``data`` (shared among the processes) and write the statistics."""
    runtime = resolve_runtime(spec.runtime)
    spec = spec.model_copy(update={"runtime": runtime})
    resolved = spec.model_dump(mode="json")
    trained = load_trained(spec.first_stage, ctx, "first_stage", "first_stage")
    run_dir = check_run_dir(ctx.runs_dir, spec.name, resolved, resume=False)
    dataset = spec.data.build()
    fabric = make_fabric(runtime)
    fabric.launch()
    model = fabric.to_device(trained.module)
    mean, std = latent_statistics(fabric, model, dataset, spec.batch_size)
    if fabric.is_global_zero:
        open_run_dir(run_dir, resolved, environment_stamp(ctx.registry, fabric.world_size, [str(trained.checkpoint)]))
        meta = {
            "run": spec.first_stage.run,
            "checkpoint": str(trained.checkpoint),
            "weights": spec.first_stage.weights,
            "examples": str(len(dataset)),
        }
        atomic_write(
            run_dir.root / "latent_stats.safetensors",
            lambda tmp: save_file({"mean": mean, "std": std}, str(tmp), metadata=meta),
        )
        print(json.dumps({"mean": mean.tolist(), "std": std.tolist()}), file=ctx.out)
