"""The spec of the ``import_checkpoint`` task (light: reading it loads no weights)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import Field, PositiveFloat, ValidationError
from torch import nn

from core import FirstStageSpec, UserError
from tasks.importing.original_config import ConfigError, first_stage_config, read_config
from tasks.runs.context import RunContext
from tasks.runs.spec import TaskSpec


class ImportCheckpointSpec(TaskSpec):
    """Weights released with the original CompVis code, as a run of ours.

    Today it takes the first stage (from a first stage's own checkpoint, or from an LDM's):
    its run is then a latent space, to name as a ``train_ldm``'s ``first_stage``. ``model``
    is filled from ``original_config``: leave it out.
    """

    task: Literal["import_checkpoint"]
    checkpoint: Path = Field(
        description="The checkpoint: a .ckpt / .pt / .pth that PyTorch or Lightning wrote, or a .safetensors file."
    )
    original_config: Path = Field(description="The original YAML config released with the checkpoint.")
    scale_factor: PositiveFloat | None = Field(
        None,
        description=(
            "Latents are multiplied by this before diffusion (the original's scale_factor; ours: std = 1 / "
            "scale_factor); none: the LDM config's or checkpoint's, else 1 (then estimate statistics on your data "
            "with a latent_stats run)."
        ),
    )
    model: FirstStageSpec | None = Field(None, description="Our first stage, filled from original_config.")

    def trained_components(self) -> dict[str, Callable[[], nn.Module]]:
        """The first stage, saved as ``first_stage``."""
        return {"first_stage": self.model.build}


def _existing(path: Path, field: str, what: str) -> Path:
    if not path.is_file():
        raise UserError(f"{field}: {str(path)!r} is not a file; give the path of {what}")
    return path


def resolve_import(spec: ImportCheckpointSpec, ctx: RunContext) -> ImportCheckpointSpec:
    """``spec`` with ``model`` filled from the original config; a missing file, a config this
    code cannot express or a model our components refuse is a :class:`UserError`."""
    _existing(spec.checkpoint, "checkpoint", "the checkpoint file")
    path = _existing(spec.original_config, "original_config", "the original YAML config")
    try:
        model = first_stage_config(read_config(path)).model
    except (ConfigError, KeyError) as exc:
        reason = f"has no {exc}" if isinstance(exc, KeyError) else str(exc)
        raise UserError(f"original_config: {path} {reason}") from None
    try:
        built = FirstStageSpec.model_validate(model, context={"registry": ctx.registry})
    except ValidationError as exc:
        raise UserError(f"original_config: {path} describes a first stage ours cannot build ({exc})") from None
    return spec.model_copy(update={"model": built})
