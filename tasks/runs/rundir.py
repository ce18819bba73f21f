"""The run directory ``runs/<name>/``: what a run wrote, and the rules that keep it intact.

Layout::

    spec.json          the resolved spec (every default filled in, runtime as it ran)
    environment.json   one stamp per start: versions, plugins, git revision, runs read
    metrics.jsonl      one line per logged step
    checkpoints/       step-00000100.safetensors ..., and ``latest`` naming the newest
    samples/           image grids
    tensorboard/       TensorBoard events

A run directory is never overwritten: a new run with an existing name is refused, and
``--resume`` continues one only with the spec it was started with (``train.max_steps``
may change).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from core import UserError
from core.loader import LoadedRegistry

# Fields a resumed run may change: extending training is what resuming is often for; compiled
# and eager, sharded and whole runs, channels-last and contiguous weights, runs on any number of
# processes write the same checkpoints.
RESUMABLE_CHANGES = {
    "train.max_steps",
    "runtime.compile",
    "runtime.strategy",
    "runtime.memory_format",
    "runtime.devices",
    "runtime.num_nodes",
}
PARTIAL_PREFIX = ".tmp-"


def atomic_write(path: Path, data: bytes | Callable[[Path], None]) -> None:
    """Write ``path`` so that a reader sees the old file or the new one, never a part of one.

    ``data`` is the bytes, or a function that writes a given temporary path (for files too
    big to hold twice in memory). The temporary file sits beside ``path``; it is fsynced,
    renamed over ``path``, and the directory fsynced so the rename survives a power cut.
    A ``.tmp-`` file left by a killed writer is removed by the next :func:`sweep_partial`.
    """
    tmp = path.parent / f"{PARTIAL_PREFIX}{path.name}.{os.getpid()}"
    try:
        if callable(data):
            data(tmp)
        else:
            tmp.write_bytes(data)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def sweep_partial(directory: Path) -> list[Path]:
    """Remove the partial files a killed :func:`atomic_write` left in ``directory``; return them."""
    found = sorted(directory.glob(f"{PARTIAL_PREFIX}*")) if directory.is_dir() else []
    for path in found:
        path.unlink(missing_ok=True)
    return found


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """A nested dict as one level with dotted keys: ``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}``."""
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(flatten(item, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: value}


def spec_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``"field: old -> new"`` for every field that differs between two resolved specs."""
    a, b = flatten(old), flatten(new)

    def show(flat: dict[str, Any], key: str) -> str:
        return json.dumps(flat[key]) if key in flat else "(absent)"

    return [
        f"{key}: {show(a, key)} -> {show(b, key)}" for key in sorted(set(a) | set(b)) if show(a, key) != show(b, key)
    ]


NOT_ARCHITECTURE = {"spec_version", "task", "name", "seed", "runtime", "data", "train", "sampling"}
"""Top-level spec fields that do not shape a model's weights."""


def architecture_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """:func:`spec_changes` in the fields that shape the weights (the model, its loss, the
    first stage, denoiser and conditioners), e.g. why one run's checkpoint does not fit another."""

    def keep(spec: dict[str, Any]) -> dict[str, Any]:
        return {key: value for key, value in spec.items() if key not in NOT_ARCHITECTURE}

    return spec_changes(keep(old), keep(new))


def _git_revision() -> str | None:
    source = Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=source, capture_output=True, text=True, timeout=10)
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment_stamp(registry: LoadedRegistry, world_size: int, reads: list[str]) -> dict[str, Any]:
    """What ran: versions of Python, torch, this package and every loaded plugin; git; runs read."""
    try:
        own = version("ldm-framework")
    except PackageNotFoundError:
        own = None
    return {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": sys.argv,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "ldm-framework": own,
        "git": _git_revision(),
        "plugins": [
            {"plugin": o.plugin, "distribution": o.distribution, "version": o.version} for o in registry.report.loaded
        ],
        "world_size": world_size,
        "reads": reads,
    }


class RunDir:
    """Paths inside one run directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.spec = root / "spec.json"
        self.environment = root / "environment.json"
        self.metrics = root / "metrics.jsonl"
        self.checkpoints = root / "checkpoints"
        self.samples = root / "samples"
        self.tensorboard = root / "tensorboard"

    def stored_spec(self) -> dict[str, Any]:
        """The resolved spec the run was started with."""
        return json.loads(self.spec.read_text())


def _abandoned(run: RunDir) -> bool:
    """A start killed before it wrote its spec: empty folders only, nothing to lose."""
    return not run.spec.exists() and not any(p.is_file() for p in run.root.rglob("*"))


def check_run_dir(
    runs_dir: Path,
    name: str,
    resolved: dict[str, Any],
    resume: bool,
    read_as_now: Callable[[dict[str, Any]], dict[str, Any]] = lambda stored: stored,
) -> RunDir:
    """The run directory for ``name``, checked against ``--resume``; writes nothing.

    A :class:`UserError` if a new run would overwrite one (a folder left by a start killed
    before writing anything is reused), if ``--resume`` finds nothing to
    resume, or if the spec differs from the stored one in more than :data:`RESUMABLE_CHANGES`.
    ``read_as_now`` resolves the stored spec as this version would (fields added since it was
    written take their defaults), so that only real changes count.
    """
    run = RunDir(runs_dir / name)
    if not resume:
        if run.root.exists() and not _abandoned(run):
            raise UserError(
                f"run directory {str(run.root)!r} already exists; continue it with --resume "
                "or choose another name (--set name=...)"
            )
        return run
    if not run.spec.is_file():
        raise UserError(f"--resume: {str(run.root)!r} is not a run directory (no spec.json); start it without --resume")
    changes = [
        c for c in spec_changes(read_as_now(run.stored_spec()), resolved) if c.split(":")[0] not in RESUMABLE_CHANGES
    ]
    if changes:
        raise UserError(
            f"--resume: the spec differs from the one {str(run.root)!r} was started with "
            f"({'; '.join(changes)}); resume with the original spec (only "
            f"{', '.join(sorted(RESUMABLE_CHANGES))} may change) or start a new run under another name"
        )
    return run


def open_run_dir(run: RunDir, resolved: dict[str, Any], stamp: dict[str, Any]) -> None:
    """Create (or reopen) the run directory: write the spec and add this start's stamp."""
    for path in (run.root, run.checkpoints, run.samples, run.tensorboard):
        path.mkdir(parents=True, exist_ok=True)
    atomic_write(run.spec, json.dumps(resolved, indent=2).encode())
    starts = json.loads(run.environment.read_text())["starts"] if run.environment.is_file() else []
    atomic_write(run.environment, json.dumps({"starts": [*starts, stamp]}, indent=2).encode())
