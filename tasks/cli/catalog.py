"""Every task the command line and the Python API can run, by the name a spec's ``task`` field uses.

Each task's spec model is imported here (spec modules are light: no Lightning Fabric, no
evaluation code), so validation, ``--list``, ``--schema`` and ``--dry-run`` stay quick; the
module that runs a task is imported only when that task runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from core.loader import LoadedRegistry
from tasks.autoencoder.spec import LatentStatsSpec, TrainAutoencoderSpec
from tasks.evaluation.spec import EvaluateSpec
from tasks.importing.spec import ImportCheckpointSpec, resolve_import
from tasks.inspection import InspectSpec
from tasks.interchange.spec import ExportCheckpointSpec
from tasks.ldm.specs import SampleSpec, TrainLdmSpec, resolve_train_ldm
from tasks.pipeline import PipelineSpec, resolve_pipeline
from tasks.runs.context import RunContext
from tasks.runs.runtime import resolve_runtime
from tasks.runs.spec import TaskSpec


@dataclass(frozen=True)
class Task:
    """A task: its spec model, the module whose ``run(spec, ctx)`` runs it, and what fills the
    sizes its spec may leave out (from other runs' specs) beyond the runtime."""

    spec: type[TaskSpec]
    module: str
    resolve: Callable[[TaskSpec, RunContext], TaskSpec] | None = None


TASKS: dict[str, Task] = {
    "evaluate": Task(EvaluateSpec, "tasks.evaluation.task"),
    "export_checkpoint": Task(ExportCheckpointSpec, "tasks.interchange.export"),
    "import_checkpoint": Task(ImportCheckpointSpec, "tasks.importing.task", resolve_import),
    "inspect": Task(InspectSpec, "tasks.inspection"),
    "latent_stats": Task(LatentStatsSpec, "tasks.autoencoder.latent_stats"),
    "pipeline": Task(PipelineSpec, "tasks.pipeline", resolve_pipeline),
    "sample": Task(SampleSpec, "tasks.ldm.sample"),
    "train_autoencoder": Task(TrainAutoencoderSpec, "tasks.autoencoder.train"),
    "train_ldm": Task(TrainLdmSpec, "tasks.ldm.train", resolve_train_ldm),
}


class Catalogue:
    """The tasks above, as :class:`tasks.runs.context.Catalogue` describes."""

    specs: Mapping[str, type[TaskSpec]] = {name: task.spec for name, task in TASKS.items()}

    def run(self, spec: TaskSpec, ctx: RunContext) -> None:
        """Import the task's module (only now) and run ``spec``."""
        importlib.import_module(TASKS[spec.task].module).run(spec, ctx)

    def resolve(self, spec: TaskSpec, ctx: RunContext) -> TaskSpec:
        """``spec`` as its run will store it: the runtime resolved for this machine, the sizes
        other runs decide filled in. A :class:`core.UserError` if either cannot be done."""
        spec = spec.model_copy(update={"runtime": resolve_runtime(spec.runtime)})
        fill = TASKS[spec.task].resolve
        return fill(spec, ctx) if fill else spec


CATALOGUE = Catalogue()


def spec_models() -> Mapping[str, type[TaskSpec]]:
    """Each task's spec model by task name (what validation and ``--schema`` need)."""
    return CATALOGUE.specs


def context(
    registry: LoadedRegistry, runs_dir: Path = Path("runs"), resume: bool = False, out: TextIO | None = None
) -> RunContext:
    """The context the command line and the Python API run tasks in."""
    extra = {"out": out} if out is not None else {}
    return RunContext(registry=registry, catalogue=CATALOGUE, runs_dir=runs_dir, resume=resume, **extra)
