"""Task ``latent_stats``: estimate a trained first stage's latent statistics on demand.

``train_autoencoder`` stores them with its final weights; this task computes them for any
run's latest checkpoint (on another dataset, or after a resumed run was stopped early) and
writes ``latent_stats.safetensors`` (``mean`` and ``std``, per channel) in its own run
directory, with the run and checkpoint it read in the file's metadata. Its run is then a
latent space of its own: name it as a ``train_ldm``'s ``first_stage``.
"""

from __future__ import annotations

import json

from safetensors.torch import save_file

from tasks.autoencoder.latent_space import STATS_FILE
from tasks.autoencoder.spec import LatentStatsSpec
from tasks.autoencoder.statistics import latent_statistics
from tasks.engine.fabric import make_fabric
from tasks.runs.context import RunContext
from tasks.runs.oneshot import OneShotRun
from tasks.runs.rundir import atomic_write
from tasks.runs.trained import load_trained


def run(spec: LatentStatsSpec, ctx: RunContext) -> None:
    """Encode every example of ``data`` (shared among the processes) and write the statistics."""
    checked = OneShotRun.check(spec, ctx)
    spec = checked.spec
    trained = load_trained(spec.first_stage, ctx, "first_stage", None, "first_stage")
    dataset = spec.data.build()
    fabric = make_fabric(spec.runtime)
    fabric.launch()
    model = fabric.to_device(trained.module)
    mean, std = latent_statistics(fabric, model, dataset, spec.batch_size)
    if fabric.is_global_zero:
        root = checked.open(ctx, [trained.checkpoint], fabric.world_size)
        meta = {
            "run": spec.first_stage.run,
            "checkpoint": str(trained.checkpoint),
            "weights": spec.first_stage.weights,
            "examples": str(len(dataset)),
        }
        atomic_write(root / STATS_FILE, lambda tmp: save_file({"mean": mean, "std": std}, str(tmp), metadata=meta))
        print(json.dumps({"mean": mean.tolist(), "std": std.tolist()}), file=ctx.out)
