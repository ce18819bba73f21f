"""The run directory of a one-shot task (``sample``, ``evaluate``, ``latent_stats``).

Such a task checks its run directory before any work and writes it only once its work is
done, so an interrupted one leaves nothing behind and runs again from the start. What it
read is recorded as training runs record it: the checkpoint files, in the environment stamp.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from tasks.runs.context import RunContext
from tasks.runs.rundir import RunDir, check_run_dir, environment_stamp, open_run_dir
from tasks.runs.runtime import resolve_runtime
from tasks.runs.spec import TaskSpec

S = TypeVar("S", bound=TaskSpec)


@dataclass(frozen=True)
class OneShotRun(Generic[S]):
    """A one-shot task's spec (runtime resolved) and its run directory, checked but not yet written."""

    spec: S
    dir: RunDir
    resolved: dict[str, Any]

    @classmethod
    def check(cls, spec: S, ctx: RunContext) -> OneShotRun[S]:
        """Resolve ``spec``'s runtime and check that its run directory may be written; writes nothing.
        A :class:`core.UserError` if the runtime cannot run here or the run exists."""
        spec = spec.model_copy(update={"runtime": resolve_runtime(spec.runtime)})
        resolved = spec.model_dump(mode="json")
        return cls(spec, check_run_dir(ctx.runs_dir, spec.name, resolved, resume=False), resolved)

    def open(self, ctx: RunContext, reads: Sequence[Path], world_size: int = 1) -> Path:
        """Write the spec and the environment stamp (with the checkpoints in ``reads``); the run's folder."""
        stamp = environment_stamp(ctx.registry, world_size, [str(path) for path in reads])
        open_run_dir(self.dir, self.resolved, stamp)
        return self.dir.root
