"""Task ``pipeline``: several task specs run in order as one, e.g. train the autoencoder, train
the LDM on it, sample.

A stage uses an earlier one's output through its run name (``{"first_stage": {"run":
"<earlier stage's name>"}}``). Every stage is validated before the first one starts. The
pipeline's ``runtime`` and ``seed`` are the default of each stage that does not set its own.
Run again after an interruption (with or without ``--resume``), a pipeline skips the
stages that finished, resumes the one that was stopped, and goes on.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, ValidationInfo, field_validator, model_validator

from core import UserError
from tasks.engine.specs import TrainingTaskSpec
from tasks.runs.checkpoint import Checkpoints
from tasks.runs.context import RunContext
from tasks.runs.rundir import RunDir
from tasks.runs.spec import RunRef, TaskSpec


def _valid_stage(stage: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
    """A stage must validate as the spec of its task (any task but ``pipeline``)."""
    models = {name: model for name, model in info.context["tasks"].items() if name != "pipeline"}
    task = stage.get("task")
    if not isinstance(task, str) or task not in models:
        raise ValueError(f"a stage's task is one of {', '.join(sorted(models))}, got {task!r}")
    models[task].model_validate(stage, context=info.context)
    return stage


def _default(cls: type[TaskSpec], key: str) -> Any:
    value = cls.model_fields[key].get_default(call_default_factory=True)
    return value.model_dump(mode="json") if hasattr(value, "model_dump") else value


class PipelineSpec(TaskSpec):
    """Stages run in order; each is a complete task spec (its own ``task`` and ``name``)."""

    task: Literal["pipeline"]
    stages: list[Annotated[dict[str, Any], AfterValidator(_valid_stage)]] = Field(
        min_length=1, description="Task specs, run in this order."
    )

    @model_validator(mode="before")
    @classmethod
    def _stage_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("stages"), list):
            # The pipeline's defaults too, so that a resolved spec validates to itself.
            shared = {key: data[key] if key in data else _default(cls, key) for key in ("runtime", "seed")}
            data = {
                **data,
                "stages": [{**shared, **stage} if isinstance(stage, dict) else stage for stage in data["stages"]],
            }
        return data

    @field_validator("stages")
    @classmethod
    def _distinct_names(cls, stages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        names = [stage.get("name") for stage in stages]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(
                f"stage names must differ, but {', '.join(map(repr, repeated))} is used twice; "
                "give each stage its own name"
            )
        return stages

    def stage_specs(self, ctx: RunContext) -> list[TaskSpec]:
        """Each stage validated as its task's spec."""
        context = {"registry": ctx.registry, "tasks": ctx.catalogue.specs}
        return [ctx.catalogue.specs[stage["task"]].model_validate(stage, context=context) for stage in self.stages]


def finished(spec: TaskSpec, ctx: RunContext) -> bool | None:
    """Whether a stage's run is complete (True), started but not complete (False) or absent (None)."""
    run = RunDir(ctx.runs_dir / spec.name)
    if not run.spec.is_file():
        return None
    if not isinstance(spec, TrainingTaskSpec):
        return True  # single-shot tasks write their run directory only once their work is done
    latest = Checkpoints(run.checkpoints, spec.train.keep_checkpoints).latest()
    return latest is not None and latest == Checkpoints(run.checkpoints, 1).path_for(spec.train.max_steps)


def _runs_read(stage: TaskSpec) -> list[tuple[str, str]]:
    """(field, run name) of every other run a stage reads."""
    found = [(name, value.run) for name, value in stage if isinstance(value, RunRef)]
    init = stage.train.init_from if isinstance(stage, TrainingTaskSpec) else None
    return found + ([("train.init_from", init.run)] if init is not None else [])


def _check_reads(stages: list[TaskSpec], ctx: RunContext) -> None:
    """A run a stage reads that is neither an earlier stage nor on disk is found before any stage runs."""
    for index, stage in enumerate(stages):
        earlier = {s.name for s in stages[:index]}
        for field, name in _runs_read(stage):
            if name not in earlier and not (ctx.runs_dir / name / "spec.json").is_file():
                raise UserError(
                    f"stages.{index}.{field}: {name!r} is neither an earlier stage nor a run in "
                    f"{str(ctx.runs_dir)!r}; name an earlier stage or train that run first"
                )


def resolve_pipeline(spec: PipelineSpec, ctx: RunContext) -> PipelineSpec:
    """``spec`` with every stage as its run will store it (:meth:`Catalogue.resolve`), each
    stage resolved in the light of the earlier ones (planned, not yet run)."""
    stages = spec.stage_specs(ctx)
    _check_reads(stages, ctx)
    resolved: list[TaskSpec] = []
    for stage in stages:
        planned = {**ctx.planned, **{s.name: s for s in resolved}}
        try:
            resolved.append(ctx.catalogue.resolve(stage, replace(ctx, planned=planned)))
        except UserError as exc:
            raise UserError(f"stage {stage.name!r}: {exc}") from None
    return spec.model_copy(update={"stages": [s.model_dump(mode="json") for s in resolved]})


def run(spec: PipelineSpec, ctx: RunContext) -> None:
    """Run each stage that has not finished, resuming one that was stopped."""
    stages = spec.stage_specs(ctx)
    _check_reads(stages, ctx)
    for index, stage in enumerate(stages):
        state = finished(stage, ctx)
        where = f"stage {index + 1}/{len(stages)} {stage.name!r} ({stage.task})"
        if state:
            print(f"{where}: done earlier, skipped", file=ctx.out)
            continue
        print(f"{where}: {'resuming' if state is False else 'running'}", file=ctx.out)
        try:
            ctx.catalogue.run(stage, replace(ctx, resume=state is False))
        except UserError as exc:
            raise UserError(f"stage {stage.name!r}: {exc}") from None
