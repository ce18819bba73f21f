"""The spec of the ``import_checkpoint`` task (light: reading it loads no weights)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PositiveFloat, PositiveInt, ValidationError
from torch import nn

from core import DenoiserSpec, FirstStageSpec, UserError
from core.interfaces import LatentShape
from tasks.importing.diffusers_folder import diffusion, expressing, parts_of
from tasks.importing.original_config import ConfigError, first_stage_config, read_config
from tasks.importing.original_ldm import ldm_config
from tasks.interchange.diffusers_files import CONFIG, read_json
from tasks.ldm.model import ConditionerUse, LatentDiffusion, fill_denoiser
from tasks.ldm.specs import DiffusionSpec, SamplingSpec
from tasks.runs.context import RunContext
from tasks.runs.spec import RunRef, TaskSpec


class ImportCheckpointSpec(TaskSpec):
    """Weights made elsewhere, as a run of ours: released with the original CompVis code (a
    checkpoint file and its YAML config; Stable Diffusion v1 files too), or a diffusers folder.

    A first stage's checkpoint gives a run that is a latent space (a ``train_ldm``'s
    ``first_stage``); an LDM's gives a run that ``sample``, ``tasks.api.load`` and
    ``train.init_from`` take like a ``train_ldm`` run, its first stage inside it. Everything
    after ``take`` is filled from the config: leave it out.
    """

    task: Literal["import_checkpoint"]
    checkpoint: Path = Field(
        description=(
            "The checkpoint: a .ckpt / .pt / .pth that PyTorch or Lightning wrote, a .safetensors file, or a "
            "diffusers folder (a pipeline's, with model_index.json, or one autoencoder's)."
        )
    )
    original_config: Path | None = Field(
        None, description="The original YAML config released with a checkpoint file (none for a diffusers folder)."
    )
    weights: Literal["ema", "raw"] | None = Field(
        None,
        description=(
            "An LDM's UNet weights: its EMA (model_ema.*, what the original samples with) or raw ones; none: as "
            "original_config's use_ema says (the original's default: EMA; Stable Diffusion's files: raw)."
        ),
    )
    tokenizer: Path | None = Field(
        None,
        description=(
            "A Stable Diffusion v1 file's CLIP tokenizer, which the file does not hold: a folder with CLIP "
            "ViT-L/14's vocab.json and merges.txt (a diffusers pipeline's tokenizer/)."
        ),
    )
    take: Literal["all", "first_stage"] = Field(
        "all", description="From an LDM's checkpoint: everything, or only its first stage."
    )
    scale_factor: PositiveFloat | None = Field(
        None,
        description=(
            "Latents are multiplied by this before diffusion (the original's scale_factor; ours: std = 1 / "
            "scale_factor); none: the LDM config's or checkpoint's, else 1 (then estimate statistics on your data "
            "with a latent_stats run)."
        ),
    )
    model: FirstStageSpec | None = Field(None, description="The first stage, filled from original_config.")
    denoiser: DenoiserSpec | None = Field(None, description="An LDM's denoiser, filled from original_config.")
    conditioners: list[ConditionerUse] = Field([], description="An LDM's conditioners, filled from original_config.")
    diffusion: DiffusionSpec | None = Field(None, description="An LDM's forward process, filled from original_config.")
    sampling: SamplingSpec = Field(
        default_factory=lambda: {"sampler": {"name": "ddim"}, "steps": 50, "spacing": "ldm"},
        validate_default=True,
        description="Default sampling settings (the original scripts': DDIM with its own steps, 50 of them).",
    )
    image_side: PositiveInt | None = Field(None, description="An LDM's image side in pixels, from original_config.")

    @property
    def first_stage(self) -> RunRef:
        """The latent space an imported LDM samples in: this run's own first stage."""
        return RunRef(run=self.name)

    def image_size(self) -> tuple[int, int] | None:
        """(H, W) of the images an imported LDM makes."""
        return (self.image_side, self.image_side) if self.image_side else None

    def trained_components(self) -> dict[str, Callable[[], nn.Module]]:
        """The first stage, saved as ``first_stage``, and an LDM's denoiser and conditioners as ``ldm``."""
        ldm = {"ldm": self.build} if self.denoiser is not None else {}
        return {"first_stage": self.model.build, **ldm}

    def build(self) -> LatentDiffusion:
        """A fresh denoiser and conditioners as the original config describes them."""
        return LatentDiffusion(self.denoiser.build(), [c.build() for c in self.conditioners], self.conditioners)


def _existing(path: Path, field: str, what: str) -> Path:
    if not path.is_file():
        raise UserError(f"{field}: {str(path)!r} is not a file; give the path of {what}")
    return path


def _validated(spec_type: Any, value: Any, ctx: RunContext, path: Path, what: str) -> Any:
    try:
        return spec_type.model_validate(value, context={"registry": ctx.registry})
    except ValidationError as exc:
        raise UserError(f"{path} describes {what} ours cannot build ({exc})") from None


def _ldm_parts(
    config: dict[str, Any], first: FirstStageSpec, ctx: RunContext, path: Path, tokenizer: Path | None
) -> dict[str, Any]:
    ldm = ldm_config(config, first.model_dump(mode="json"), str(tokenizer) if tokenizer else None)
    uses = [
        _validated(ConditionerUse, {**use, "drop_rate": 0.0}, ctx, path, "a conditioner") for use in ldm.conditioners
    ]
    denoiser = _validated(DenoiserSpec, ldm.denoiser, ctx, path, "a denoiser")
    latent: LatentShape = first.cls.latent_shape(first.params)
    return {
        "denoiser": fill_denoiser(denoiser, latent, uses, {"registry": ctx.registry}),
        "conditioners": uses,
        "diffusion": DiffusionSpec(**ldm.diffusion),
        "image_side": ldm.image_size,
    }


def _resolve_folder(spec: ImportCheckpointSpec, ctx: RunContext) -> ImportCheckpointSpec:
    """``spec`` with the models filled from a diffusers folder's configs."""
    if spec.original_config is not None:
        raise UserError("original_config: a diffusers folder brings its own configs; leave original_config out")
    parts = parts_of(spec.checkpoint)
    found = expressing(ctx, "first_stage", parts.first_stage)
    first = _validated(FirstStageSpec, found, ctx, parts.first_stage, "a first stage")
    if parts.unet is None or spec.take == "first_stage":
        return spec.model_copy(update={"model": first})
    values, prediction = diffusion(parts.scheduler)
    unet = expressing(ctx, "denoiser", parts.unet)
    unet["params"]["prediction"] = prediction
    encoders = [parts.text_encoder] if parts.text_encoder is not None else []
    uses = [
        _validated(ConditionerUse, {**expressing(ctx, "conditioner", e), "drop_rate": 0.0}, ctx, e, "a conditioner")
        for e in encoders
    ]
    latent: LatentShape = first.cls.latent_shape(first.params)
    denoiser = _validated(DenoiserSpec, unet, ctx, parts.unet, "a denoiser")
    side = read_json(parts.unet / CONFIG, "checkpoint").get("sample_size")
    return spec.model_copy(
        update={
            "model": first,
            "denoiser": fill_denoiser(denoiser, latent, uses, {"registry": ctx.registry}),
            "conditioners": uses,
            "diffusion": DiffusionSpec(**values),
            "image_side": side * latent.factor if isinstance(side, int) else None,
        }
    )


def resolve_import(spec: ImportCheckpointSpec, ctx: RunContext) -> ImportCheckpointSpec:
    """``spec`` with the models filled from the original config or the diffusers folder; a
    missing file, a config this code cannot express or a model our components refuse is a
    :class:`UserError`."""
    if spec.checkpoint.is_dir():
        return _resolve_folder(spec, ctx)
    _existing(spec.checkpoint, "checkpoint", "the checkpoint file")
    if spec.original_config is None:
        raise UserError("original_config: a checkpoint file needs the YAML config it was released with; give its path")
    path = _existing(spec.original_config, "original_config", "the original YAML config")
    try:
        config = read_config(path)
        found = first_stage_config(config)
        first = _validated(FirstStageSpec, found.model, ctx, path, "a first stage")
        ldm = _ldm_parts(config, first, ctx, path, spec.tokenizer) if found.prefix and spec.take == "all" else {}
        if ldm and spec.weights is None:
            use_ema = config["model"].get("params", {}).get("use_ema", True)
            ldm["weights"] = "ema" if use_ema else "raw"
    except (ConfigError, KeyError) as exc:
        reason = f"has no {exc}" if isinstance(exc, KeyError) else str(exc)
        raise UserError(f"original_config: {path} {reason}") from None
    return spec.model_copy(update={"model": first, **ldm})
