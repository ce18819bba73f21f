"""A trained model referred to by its run: ``{"run": "<name>"}`` in a spec.

The run's own ``spec.json`` says how the model was built (validated again as its task's spec
type) and its latest checkpoint holds the weights (EMA by default) and whatever was stored
with them (e.g. latent statistics). A task says which task's runs it accepts by passing that
task's spec model; the spec declares what it trains (:class:`TrainsModels`).
"""

from __future__ import annotations

import json
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from safetensors import safe_open
from torch import Tensor, nn

from core import SpecError, UserError
from tasks.runs.checkpoint import Checkpoints, load_weights, read_weights
from tasks.runs.context import RunContext
from tasks.runs.spec import RunRef, TaskSpec
from tasks.runs.validation import validate_task


class TrainsModels(Protocol):
    """A spec whose run holds trained weights (every training task's spec: see
    :class:`tasks.engine.specs.TrainingTaskSpec`)."""

    task: str

    def trained_components(self) -> Mapping[str, Callable[[], nn.Module]]:
        """The models the run trains, by the name their weights are saved under, each as a
        function building it fresh (weights not loaded) exactly as the run built it."""


T = TypeVar("T", bound=TaskSpec)
S = TypeVar("S", bound=TrainsModels)


@dataclass(frozen=True)
class Trained(Generic[S]):
    """One model loaded from a run: the run's spec as its task's spec type, the module (eval
    mode, frozen), the checkpoint and step it came from, and the tensors stored beside it."""

    run: str
    spec: S
    module: nn.Module
    checkpoint: Path
    step: int
    weights: str
    extra: dict[str, Tensor]


def task_name(model: type[TaskSpec]) -> str:
    """The ``task`` value a spec model accepts (its ``Literal``)."""
    return typing.get_args(model.model_fields["task"].annotation)[0]


def run_spec(ref: RunRef, ctx: RunContext, field: str) -> TaskSpec:
    """The validated spec of run ``ref.run`` (a planned run's, else the one on disk); ``field``
    names the spec field holding the reference, for messages. A :class:`UserError` if there is
    no such run or its spec no longer validates."""
    if ref.run in ctx.planned:
        return ctx.planned[ref.run]
    path = ctx.runs_dir / ref.run / "spec.json"
    if not path.is_file():
        raise UserError(
            f"{field}.run: {ref.run!r} is not a run in {str(ctx.runs_dir)!r} (no spec.json); "
            "train it first, or give --runs-dir where it lives"
        )
    try:
        return validate_task(json.loads(path.read_text()), ctx.catalogue.specs, ctx.registry, source=str(path))
    except SpecError as exc:
        raise UserError(
            f"{field}.run: the spec of {ref.run!r} no longer validates with the installed components ({exc})"
        ) from None


def spec_of(ref: RunRef, ctx: RunContext, field: str, *tasks: type[T]) -> T:
    """:func:`run_spec`, refused with a :class:`UserError` unless it is the spec of one of ``tasks``."""
    spec = run_spec(ref, ctx, field)
    if not isinstance(spec, tasks):
        wanted = " or ".join(task_name(task) for task in tasks)
        raise UserError(f"{field}.run: {ref.run!r} is a {spec.task} run; give a {wanted} run")
    return spec


HOLDERS = {
    "first_stage": ("first stage", "train_autoencoder or import_checkpoint"),
    "ldm": ("latent diffusion model", "train_ldm or import_checkpoint"),
}
"""What each model a run may hold is, and the tasks whose runs hold it, for messages."""


def holding(ref: RunRef, ctx: RunContext, field: str, model: str) -> TaskSpec:
    """The spec of run ``ref.run``, which must hold a trained ``model`` (its spec's
    ``trained_components()`` names it), whatever its task; a :class:`UserError` otherwise."""
    spec = run_spec(ref, ctx, field)
    components = getattr(spec, "trained_components", None)
    if components is None or model not in components():
        what, tasks = HOLDERS.get(model, (f"{model!r} model", "another"))
        raise UserError(f"{field}.run: {ref.run!r} is a {spec.task} run, which holds no {what}; give a {tasks} run")
    return spec


def load_trained(
    ref: RunRef, ctx: RunContext, field: str, task: type[S] | tuple[type[S], ...] | None, model: str
) -> Trained[S]:
    """Model ``model`` of run ``ref.run``, a run of ``task`` (of one of several; of any task
    that holds it when ``None``), with its latest weights.

    ``field`` names the spec field holding the reference, for messages; a :class:`UserError`
    says what is missing (the run, its checkpoint, the model).
    """
    if task is None:
        spec = holding(ref, ctx, field, model)
    else:
        spec = spec_of(ref, ctx, field, *(task if isinstance(task, tuple) else (task,)))
    build = spec.trained_components().get(model)
    if build is None:
        raise UserError(f"{field}.run: {ref.run!r} (task {spec.task}) trained no {model}")
    checkpoints = Checkpoints(ctx.runs_dir / ref.run / "checkpoints", keep=1)
    checkpoint = checkpoints.latest()
    if checkpoint is None:
        raise UserError(f"{field}.run: {ref.run!r} has no checkpoint yet; let it train first")
    module = build()
    load_weights(module, read_weights(checkpoint, model, ref.weights), f"{checkpoint} ({model})")
    with safe_open(str(checkpoint), "pt") as handle:
        stored = [key for key in handle.keys() if key.startswith("extra/")]
        extra = {key.removeprefix("extra/"): handle.get_tensor(key) for key in stored}
    return Trained(
        run=ref.run,
        spec=spec,
        module=module.eval().requires_grad_(False),
        checkpoint=checkpoint,
        step=Checkpoints.step_of(checkpoint),
        weights=ref.weights,
        extra=extra,
    )
