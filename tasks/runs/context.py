"""What every task gets besides its spec: the registry, the catalogue of tasks, where runs live."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TextIO

from core.loader import LoadedRegistry
from tasks.runs.spec import TaskSpec


class Catalogue(Protocol):
    """Every task by the name a spec's ``task`` field uses (the command line's is :mod:`tasks.cli.catalog`).

    Handed down in the :class:`RunContext`, so that a task reading another run's spec, or a
    pipeline running its stages, needs no import of the tasks above it.
    """

    @property
    def specs(self) -> Mapping[str, type[TaskSpec]]:
        """Each task's spec model by task name."""

    def run(self, spec: TaskSpec, ctx: RunContext) -> None:
        """Run a validated spec of any task."""

    def resolve(self, spec: TaskSpec, ctx: RunContext) -> TaskSpec:
        """``spec`` as its run will store it (runtime resolved, sizes other runs decide filled in)."""


@dataclass(frozen=True)
class RunContext:
    """The loaded registry, the task catalogue, where run directories live, ``--resume``, where to print.

    ``planned`` holds the specs of runs that do not exist yet but will before the task at hand
    runs (a pipeline's earlier stages, during ``--dry-run``): :func:`tasks.runs.trained.run_spec`
    reads them as if their run directories were there.
    """

    registry: LoadedRegistry
    catalogue: Catalogue
    runs_dir: Path = Path("runs")
    resume: bool = False
    out: TextIO = field(default_factory=lambda: sys.stdout)
    planned: Mapping[str, TaskSpec] = field(default_factory=dict)
