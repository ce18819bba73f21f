"""A trained model referred to by its run: ``{"run": "<name>"}`` in a spec.

The run's own ``spec.json`` says how the model was built and its latest checkpoint holds
the weights (EMA by default) and whatever was stored with them (e.g. latent statistics).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from safetensors import safe_open
from torch import Tensor, nn

from core import ComponentSpec, SpecError, TaskSpec, UserError
from core.validation import validate_task
from tasks.context import RunContext
from tasks.engine.checkpoint import Checkpoints, load_weights, read_weights
from tasks.engine.specs import RunRef


@dataclass(frozen=True)
class Trained:
    """A model loaded from a run: its spec, the module (eval mode, frozen), where it came from."""

    spec: ComponentSpec
    module: nn.Module
    checkpoint: Path
    extra: dict[str, Tensor]


def run_spec(ref: RunRef, ctx: RunContext, field: str) -> TaskSpec:
    """The validated spec of run ``ref.run``; ``field`` names the spec field holding the
    reference, for messages. A :class:`UserError` if there is no such run or it no longer validates."""
    from tasks.catalog import spec_models  # the catalog imports the tasks that import this module

    run = ctx.runs_dir / ref.run
    if not (run / "spec.json").is_file():
        raise UserError(
            f"{field}.run: {ref.run!r} is not a run in {str(ctx.runs_dir)!r} (no spec.json); "
            "train it first, or give --runs-dir where it lives"
        )
    try:
        return validate_task(
            json.loads((run / "spec.json").read_text()), spec_models(), ctx.registry, source=str(run / "spec.json")
        )
    except SpecError as exc:
        raise UserError(
            f"{field}.run: the spec of {ref.run!r} no longer validates with the installed components ({exc})"
        ) from None


def load_trained(ref: RunRef, ctx: RunContext, model: str, field: str) -> Trained:
    """Model ``model`` of run ``ref.run`` under ``ctx.runs_dir``; ``field`` names the spec field
    holding the reference, for messages. A :class:`UserError` says what is missing."""
    run = ctx.runs_dir / ref.run
    spec = run_spec(ref, ctx, field)
    component = getattr(spec, "trained_components", {}).get(model)
    if component is None:
        raise UserError(f"{field}.run: {ref.run!r} (task {spec.task}) trained no {model}")
    checkpoint = Checkpoints(run / "checkpoints", keep=1).latest()
    if checkpoint is None:
        raise UserError(f"{field}.run: {ref.run!r} has no checkpoint yet; let it train first")
    module = component.build()
    load_weights(module, read_weights(checkpoint, model, ref.weights), f"{checkpoint} ({model})")
    with safe_open(str(checkpoint), "pt") as handle:
        extra = {
            key.removeprefix("extra/"): handle.get_tensor(key) for key in handle.keys() if key.startswith("extra/")
        }
    return Trained(component, module.eval().requires_grad_(False), checkpoint, extra)
