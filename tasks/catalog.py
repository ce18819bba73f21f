"""Every task the command line can run, by the name a spec's ``task`` field uses."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from core import TaskSpec
from tasks import evaluate, inspection, latent_stats, pipeline, sample, train_autoencoder, train_ldm
from tasks.context import RunContext


@dataclass(frozen=True)
class Task:
    """A task: its spec model and the function that runs a validated spec."""

    spec: type[TaskSpec]
    run: Callable[[TaskSpec, RunContext], None]


TASKS: dict[str, Task] = {
    "evaluate": Task(evaluate.EvaluateSpec, evaluate.run),
    "inspect": Task(inspection.InspectSpec, inspection.run),
    "latent_stats": Task(latent_stats.LatentStatsSpec, latent_stats.run),
    "pipeline": Task(pipeline.PipelineSpec, pipeline.run),
    "sample": Task(sample.SampleSpec, sample.run),
    "train_autoencoder": Task(train_autoencoder.TrainAutoencoderSpec, train_autoencoder.run),
    "train_ldm": Task(train_ldm.TrainLdmSpec, train_ldm.run),
}


def spec_models() -> dict[str, type[TaskSpec]]:
    """Each task's spec model by task name (what validation and ``--schema`` need)."""
    return {name: task.spec for name, task in TASKS.items()}
