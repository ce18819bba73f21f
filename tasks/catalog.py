"""Every task the command line can run, by the name a spec's ``task`` field uses."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from core import TaskSpec
from core.registry import Registry
from tasks import inspection


@dataclass(frozen=True)
class RunContext:
    """What a task gets besides its spec: the registry, where runs live, where to print."""

    registry: Registry
    runs_dir: Path
    out: TextIO


@dataclass(frozen=True)
class Task:
    """A task: its spec model and the function that runs a validated spec."""

    spec: type[TaskSpec]
    run: Callable[[TaskSpec, RunContext], None]


TASKS: dict[str, Task] = {
    "inspect": Task(inspection.InspectSpec, inspection.run),
}


def spec_models() -> dict[str, type[TaskSpec]]:
    """Each task's spec model by task name (what validation and ``--schema`` need)."""
    return {name: task.spec for name, task in TASKS.items()}
