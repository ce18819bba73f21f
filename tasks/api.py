"""Sampling from a trained LDM in Python, with the same options (and the same images) as the
``sample`` task::

    from tasks.api import load
    pipe = load("digits-ldm")                     # runs/digits-ldm, EMA weights
    images = pipe.sample({"label": [0, 1, 2]}, guidance=3.0, seed=0)   # (3, C, H, W) in [-1, 1]

Image i of a call is drawn from its own generator seeded ``seed + i`` (noise and every
stochastic step), so a batch gives the same images as its items one by one, and any image
can be made again alone from its seed and condition.
"""

from __future__ import annotations

from pathlib import Path

from core import load_registry
from tasks.cli.catalog import context
from tasks.ldm.generation import Pipeline, load_pipeline
from tasks.runs.spec import RunRef

__all__ = ["Pipeline", "load"]


def load(run: str | Path, *, runs_dir: str | Path = "runs", weights: str = "ema", device: str = "cpu") -> Pipeline:
    """The trained LDM of run ``run`` (a name under ``runs_dir``, or a run directory's path)."""
    path = Path(run)
    if path.is_dir() and (path / "spec.json").is_file():
        runs_dir, run = path.parent, path.name
    ctx = context(load_registry(), Path(runs_dir))
    return load_pipeline(RunRef(run=str(run), weights=weights), ctx, "run", device)
