"""Task ``pipeline``: several task specs run in order as one, e.g. train the autoencoder, train
the LDM on it, sample.

A stage uses an earlier one's output through its run name (``{"first_stage": {"run":
"<earlier stage's name>"}}``). Every stage is validated before the first one starts. The
pipeline's ``runtime`` and ``seed`` are the default of each stage that does not set its own.
Run again after an interruption (with or without ``--resume``), a pipeline skips the
stages that finished, resumes the one that was stopped, and goes on.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, ValidationInfo, field_validator, model_validator

from core import TaskSpec, UserError
from tasks.context import RunContext
from tasks.engine.checkpoint import Checkpoints
from tasks.engine.rundir import RunDir
from tasks.engine.specs import RunRef


def _valid_stage(stage: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
    """A stage must validate as the spec of its task (any task but ``pipeline``)."""
    from tasks.catalog import spec_models  # the catalog lists this task too

    models = {name: model for name, model in spec_models().items() if name != "pipeline"}
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

    def stage_specs(self, registry: Any) -> list[TaskSpec]:
        """Each stage validated as its task's spec."""
        from tasks.catalog import spec_models

        return [
            spec_models()[stage["task"]].model_validate(stage, context={"registry": registry}) for stage in self.stages
        ]


def finished(spec: TaskSpec, ctx: RunContext) -> bool | None:
    """Whether a stage's run is complete (True), started but not complete (False) or absent (None)."""
    run = RunDir(ctx.runs_dir / spec.name)
    if not run.spec.is_file():
        return None
    train = getattr(spec, "train", None)
    if train is None:
        return True  # single-shot tasks write their run directory only once their work is done
    latest = Checkpoints(run.checkpoints, train.keep_checkpoints).latest()
    return latest is not None and latest == Checkpoints(run.checkpoints, 1).path_for(train.max_steps)


def _runs_read(stage: TaskSpec) -> list[tuple[str, str]]:
    """(field, run name) of every other run a stage reads."""
    found = [(name, value.run) for name, value in stage if isinstance(value, RunRef)]
    init = getattr(getattr(stage, "train", None), "init_from", None)
    return found + ([("train.init_from", init.run)] if init is not None else [])


def run(spec: PipelineSpec, ctx: RunContext) -> None:
    """Run each stage that has not finished, resuming one that was stopped."""
    from tasks.catalog import TASKS

    stages = spec.stage_specs(ctx.registry)
    for index, stage in enumerate(stages):  # a missing run found now, not after the stages before it ran
        earlier = {s.name for s in stages[:index]}
        for field, name in _runs_read(stage):
            if name not in earlier and not (ctx.runs_dir / name / "spec.json").is_file():
                raise UserError(
                    f"stages.{index}.{field}: {name!r} is neither an earlier stage nor a run in "
                    f"{str(ctx.runs_dir)!r}; name an earlier stage or train that run first"
                )
    for index, stage in enumerate(stages):
        state = finished(stage, ctx)
        if state:
            print(f"stage {index + 1}/{len(stages)} {stage.name!r} ({stage.task}): done earlier, skipped", file=ctx.out)
            continue
        verb = "resuming" if state is False else "running"
        print(f"stage {index + 1}/{len(stages)} {stage.name!r} ({stage.task}): {verb}", file=ctx.out)
        try:
            TASKS[stage.task].run(stage, RunContext(ctx.registry, ctx.runs_dir, resume=state is False, out=ctx.out))
        except UserError as exc:
            raise UserError(f"stage {stage.name!r}: {exc}") from None
