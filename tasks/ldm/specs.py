"""The specs of the LDM tasks (``train_ldm``, ``sample``) and the parts they share.

Light to import (no Lightning Fabric): the command line validates and resolves specs with it
before any task runs. :func:`resolve_train_ldm` fills the denoiser's sizes from the first
stage and the conditioners; ``train_ldm`` itself and ``--dry-run`` both use it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, model_validator
from torch import nn

from core import DenoiserSpec, SamplerSpec, SpecModel, UserError
from core.diffusion import NoiseSchedule, ScheduleKind, Spacing, TimestepSampling, beta_schedule
from core.masks import RandomMasks
from tasks.autoencoder.latent_space import latent_shape_of
from tasks.engine.specs import TrainingTaskSpec
from tasks.ldm.model import ConditionerUse, LatentDiffusion, check_image_size, fill_denoiser
from tasks.ldm.precision import Precision, resolve_precision
from tasks.runs.context import RunContext
from tasks.runs.spec import RunRef, TaskSpec


class DiffusionSpec(SpecModel):
    """The forward process and the training loss L_LDM."""

    schedule: ScheduleKind = Field(
        "scaled_linear", description="Beta schedule (the paper's code calls scaled_linear 'linear')."
    )
    timesteps: PositiveInt = Field(1000, description="T, the number of discrete steps.")
    beta_start: PositiveFloat = 0.00085
    beta_end: PositiveFloat = 0.012
    loss: Literal["l2", "l1"] = Field("l2", description="l2 or l1 between the prediction and its target.")
    min_snr_gamma: PositiveFloat | None = Field(
        None, description="Min-SNR-gamma loss weighting (e.g. 5); none: uniform."
    )
    offset_noise: NonNegativeFloat = Field(0.0, description="Strength of per-channel offset noise (e.g. 0.1).")
    timestep_sampling: TimestepSampling = Field(
        "uniform",
        description=(
            "How training draws t: uniform (the paper), or logit_normal "
            "(t/T = sigmoid(u), u ~ N(logit_mean, logit_std))."
        ),
    )
    logit_mean: float = Field(
        0.0, description="With logit_normal: the mean of u (positive: more training at high noise)."
    )
    logit_std: PositiveFloat = Field(1.0, description="With logit_normal: the spread of u.")

    @model_validator(mode="after")
    def _logit_params_need_logit_normal(self) -> DiffusionSpec:
        # Compared with the defaults rather than checked for presence: a run's stored spec has every field.
        changed = [
            name for name in ("logit_mean", "logit_std") if getattr(self, name) != type(self).model_fields[name].default
        ]
        if changed and self.timestep_sampling != "logit_normal":
            raise ValueError(
                f"{' and '.join(changed)} {'apply' if len(changed) > 1 else 'applies'} only to "
                f"timestep_sampling 'logit_normal', not {self.timestep_sampling!r}; set "
                f"timestep_sampling to 'logit_normal' or remove {'them' if len(changed) > 1 else 'it'}"
            )
        return self

    def noise_schedule(self) -> NoiseSchedule:
        return NoiseSchedule(beta_schedule(self.schedule, self.timesteps, self.beta_start, self.beta_end))


class SamplingSpec(SpecModel):
    """How to sample: the sampler, its steps and spacing, and classifier-free guidance."""

    sampler: SamplerSpec = Field(default_factory=lambda: {"name": "dpmpp_2m"}, validate_default=True)
    steps: PositiveInt = Field(20, description="Sampler steps (1 to the schedule's T).")
    spacing: Spacing | None = Field(None, description="Timestep spacing; none: the sampler's measured default.")
    guidance: NonNegativeFloat = Field(1.0, description="Classifier-free guidance scale; 1: none (one pass).")
    precision: Precision = Field(
        "auto",
        description=(
            "The denoiser's arithmetic: fp32, or bf16 / fp16 autocast (latents and sampler steps stay fp32); auto: "
            "bf16 on a GPU that has it (else fp16), fp32 on the CPU."
        ),
    )
    compile: bool = Field(False, description="torch.compile the denoiser first (minutes on a CPU).")
    resample: PositiveInt = Field(
        1,
        description=(
            "Inpainting by replacement only: run each stretch of resample_jump steps this many times, "
            "re-noised in between (RePaint), so the hole comes to agree with the kept region; 1: once."
        ),
    )
    resample_jump: PositiveInt = Field(1, description="Steps per resampled stretch (RePaint's jump length).")
    hold_kept: bool = Field(
        False,
        description=(
            "Inpainting models: also hold the kept latent cells to the start image's latents by replacement, as "
            "every other model inpaints (the paper's inpainting script does not); false: the model alone."
        ),
    )

    def record(self, device: torch.device) -> dict[str, Any]:
        """These settings as a manifest or report records them, for sampling on ``device`` (the
        spacing resolved to the sampler's default, the precision to what runs there)."""
        return {
            "sampler": self.sampler.name,
            "sampler_params": self.sampler.params.model_dump(mode="json"),
            "steps": self.steps,
            "spacing": self.spacing or self.sampler.cls.spacing,
            "guidance": self.guidance,
            "precision": resolve_precision(self.precision, device),
            "compile": self.compile,
            "resample": self.resample,
            "resample_jump": self.resample_jump,
            "hold_kept": self.hold_kept,
        }


def too_many_steps(steps: int, timesteps: int, field: str = "sampling.steps") -> str | None:
    """The one sentence refusing ``steps`` sampler steps on a schedule of ``timesteps``, or ``None`` if they fit."""
    if steps <= timesteps:
        return None
    return f"{field}: {steps} is more than the {timesteps} timesteps of the model's schedule; use 1 to {timesteps}"


class TrainLdmSpec(TrainingTaskSpec):
    """Train a latent diffusion model on ``data`` encoded by the first stage of another run."""

    task: Literal["train_ldm"]
    first_stage: RunRef = Field(
        description="The run that trained the first stage (or estimated its latent statistics), e.g. "
        '{"run": "digits-autoencoder"}.'
    )
    denoiser: DenoiserSpec = Field(
        description='The network, e.g. {"name": "unet", "params": {...}}; its sizes are filled in.'
    )
    conditioners: list[ConditionerUse] = Field([], description="tau_theta: each reads one field of the examples.")
    diffusion: DiffusionSpec = DiffusionSpec()
    sampling: SamplingSpec = Field(
        default_factory=dict, validate_default=True, description="How the logged sample grids are drawn."
    )
    latent_cache: bool = Field(True, description="Encode the dataset once and reuse it (else encode every step).")
    cache_dtype: Literal["float32", "float16"] = Field(
        "float32", description="How the latent cache stores the first stage's moments (float16: half the disk)."
    )
    cache_batch_size: PositiveInt = Field(
        64, description="Images encoded at once while the cache is built (raise it on a GPU: the encoder is frozen)."
    )

    def trained_components(self) -> dict[str, Callable[[], nn.Module]]:
        """The denoiser with its conditioners, saved as ``ldm``."""
        return {"ldm": self.build}

    def build(self) -> LatentDiffusion:
        """A fresh denoiser and conditioners as this spec (with filled sizes) describes them."""
        return LatentDiffusion(self.denoiser.build(), [c.build() for c in self.conditioners], self.conditioners)

    def image_size(self) -> tuple[int, int] | None:
        """(H, W) of the images the model makes: the training data's (none if they vary)."""
        return self.data.cls.example_shape(self.data.params).image_size

    @model_validator(mode="after")
    def _conditions_are_in_the_data(self) -> TrainLdmSpec:
        fields = self.data.cls.example_shape(self.data.params).fields
        for i, use in enumerate(self.conditioners):
            needed = use.cls.reads(use.params)
            if needed not in fields:
                raise ValueError(
                    f"conditioners.{i} ({use.name}) reads the field {needed!r}, which data ({self.data.name}) does not "
                    f"give (it gives {', '.join(sorted(fields))}); choose a dataset with {needed!r} or another "
                    "conditioner"
                )
        problem = too_many_steps(self.sampling.steps, self.diffusion.timesteps)
        if problem:
            raise ValueError(problem)
        return self


def resolve_train_ldm(spec: TrainLdmSpec, ctx: RunContext) -> TrainLdmSpec:
    """``spec`` with the denoiser's sizes filled from its first stage (read from the run's spec,
    no weights) and its conditioners; every disagreement is a :class:`UserError`."""
    latent = latent_shape_of(spec.first_stage, ctx, "first_stage")
    example = spec.data.cls.example_shape(spec.data.params)
    if example.image_channels != latent.image_channels:
        raise UserError(
            f"data ({spec.data.name}) gives {example.image_channels}-channel images but the first stage of "
            f"{spec.first_stage.run!r} takes {latent.image_channels}-channel ones; use matching data"
        )
    denoiser = fill_denoiser(spec.denoiser, latent, spec.conditioners, {"registry": ctx.registry})
    check_image_size(example, latent, denoiser.cls.downsamplings(denoiser.params), spec.data.name)
    return spec.model_copy(update={"denoiser": denoiser})


class MaskSpec(SpecModel):
    """Where the inpainting masks come from (white, 1: generate), exactly one of: image files,
    a field of the ``data_indices`` examples, or masks drawn per image from its seed."""

    files: list[Path] | None = Field(None, description="One mask file per condition entry (grey >= 0.5 is the hole).")
    field: str | None = Field(None, description="The examples' field holding each mask (1, H, W) (needs data_indices).")
    generate: RandomMasks | None = Field(
        None, description='Drawn per image, e.g. {"kind": "box", "coverage": [0.25, 0.5]}.'
    )

    @model_validator(mode="after")
    def _exactly_one_source(self) -> MaskSpec:
        given = [name for name in ("files", "field", "generate") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of files, field and generate, not {given or 'none'}")
        return self


class InitSpec(SpecModel):
    """Images to start from (img2img) and, with ``masks``, where to generate (inpainting)."""

    images: list[Path] | Literal["data"] = Field(
        description='One image file per condition entry (per image of an unconditional model), or "data": the '
        "image of each data_indices example."
    )
    strength: float = Field(
        1.0, ge=0.0, le=1.0, description="How much of the schedule runs from the images: 0 keeps them, 1 runs it all."
    )
    masks: MaskSpec | None = Field(None, description="Inpainting: where to generate; none: the whole image.")


class SampleSpec(TaskSpec):
    """Sample images from the LDM that run ``model`` trained."""

    task: Literal["sample"]
    model: RunRef = Field(description='The train_ldm run, e.g. {"run": "digits-ldm"} (EMA weights by default).')
    conditions: dict[str, list[Any]] = Field(
        {}, description=('One list per field the conditioners read, one entry per image, e.g. {"label": [0, 1, 2]}.')
    )
    repeat: PositiveInt = Field(1, description="Images per condition entry (the grid puts each entry's on one row).")
    num_images: PositiveInt | None = Field(None, description="How many images, for an unconditional model.")
    data_indices: list[NonNegativeInt] | None = Field(
        None,
        min_length=1,
        description=("Take the conditions from these examples of `data` (maps, low-res images, labels, captions)."),
    )
    sampling: SamplingSpec = Field(default_factory=dict, validate_default=True)
    init: InitSpec | None = Field(None, description="Start from images (img2img) or inpaint them.")
    batch_size: PositiveInt = 16

    @model_validator(mode="after")
    def _one_source_of_conditions(self) -> SampleSpec:
        from_data = self.init is not None and (
            self.init.images == "data" or (self.init.masks is not None and self.init.masks.field is not None)
        )
        if from_data and self.data_indices is None:
            raise ValueError('init.images "data" and init.masks.field take the examples of data_indices; give them')
        if (self.data is None) != (self.data_indices is None):
            raise ValueError(
                "data and data_indices go together: give both to take the conditions from examples, or neither"
            )
        if self.data_indices is not None and self.conditions:
            raise ValueError("give the conditions either in conditions or through data and data_indices, not both")
        return self
