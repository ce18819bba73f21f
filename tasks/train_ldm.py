"""Task ``train_ldm``: a denoiser (and its trainable conditioners) on a frozen first stage's latents.

The first stage comes from its run (``{"run": ...}``), with the latent statistics it
stored: latents are normalised per channel before diffusion sees them. The dataset is
encoded once into the latent cache (:mod:`tasks.latent_cache`) unless ``latent_cache`` is
off. The loss is L_LDM (:func:`core.diffusion.diffusion_loss`) on uniformly drawn timesteps;
each conditioner's output is replaced by its "no condition" output at its drop rate so that
the model also learns the unconditional score classifier-free guidance needs.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from lightning_fabric import Fabric
from pydantic import Field, model_validator
from torch import Tensor
from torch.utils.data import default_collate

from core import Conditioner, Dataset, DenoiserSpec, UserError
from core.diffusion import diffusion_loss, min_snr_weights, offset_noise, sample_timesteps
from tasks.context import RunContext
from tasks.engine import Objective, OptimizerSpec, TrainingTaskSpec, train
from tasks.engine.specs import RunRef
from tasks.latent_cache import CachedLatents, build_cache
from tasks.ldm import (
    ConditionerUse,
    DiffusionSpec,
    LatentDiffusion,
    SamplingSpec,
    check_image_size,
    fill_denoiser,
    generate,
)
from tasks.runs import Trained, load_trained


class TrainLdmSpec(TrainingTaskSpec):
    """Train a latent diffusion model on ``data`` encoded by the first stage of another run."""

    task: Literal["train_ldm"]
    first_stage: RunRef = Field(description='The run that trained the first stage, e.g. {"run": "digits-autoencoder"}.')
    denoiser: DenoiserSpec = Field(
        description='The network, e.g. {"name": "unet", "params": {...}}; its sizes are filled in.'
    )
    conditioners: list[ConditionerUse] = Field([], description="tau_theta: each reads one field of the examples.")
    diffusion: DiffusionSpec = DiffusionSpec()
    sampling: SamplingSpec = Field(
        default_factory=dict, validate_default=True, description="How the logged sample grids are drawn."
    )
    latent_cache: bool = Field(True, description="Encode the dataset once and reuse it (else encode every step).")

    @property
    def trained_components(self) -> dict[str, TrainLdmSpec]:
        """The models this task trains, by the name their weights are saved under."""
        return {"ldm": self}

    def build(self) -> LatentDiffusion:
        """A fresh denoiser and conditioners as this spec (with filled sizes) describes them."""
        return LatentDiffusion(self.denoiser.build(), [c.build() for c in self.conditioners], self.conditioners)

    @model_validator(mode="after")
    def _conditions_are_in_the_data(self) -> TrainLdmSpec:
        fields = self.data.cls.example_shape(self.data.params).fields
        for i, use in enumerate(self.conditioners):
            needed = use.cls.reads(use.params)
            if needed not in fields:
                raise ValueError(
                    f"conditioners.{i} ({use.name}) reads the field {needed!r}, which data ({self.data.name}) does not "
                    f"give (it gives {', '.join(sorted(fields))}); choose a dataset with {needed!r} or another conditioner"
                )
        if self.sampling.steps > self.diffusion.timesteps:
            raise ValueError(
                f"sampling.steps {self.sampling.steps} is more than the schedule's "
                f"{self.diffusion.timesteps} timesteps; use at most {self.diffusion.timesteps}"
            )
        return self


def latent_statistics_of(trained: Trained, field: str, ref: RunRef) -> tuple[Tensor, Tensor]:
    """The per-channel (mean, std) a first stage's run stored with its weights."""
    if "latent_mean" not in trained.extra or "latent_std" not in trained.extra:
        raise UserError(
            f"{field}.run: {ref.run!r} stored no latent statistics with its last checkpoint "
            "(it stopped before max_steps?); finish its training or resume it"
        )
    return trained.extra["latent_mean"], trained.extra["latent_std"].clamp_min(1e-6)


class LdmObjective(Objective):
    """The LDM (denoiser + conditioners, one optimiser) on latents of a frozen first stage."""

    def __init__(self, spec: TrainLdmSpec, dataset: Dataset, first_stage: Trained, ctx: RunContext) -> None:
        super().__init__()
        self.spec, self.dataset, self.ctx = spec, dataset, ctx
        self.first_stage = first_stage.module
        mean, std = latent_statistics_of(first_stage, "first_stage", spec.first_stage)
        self.mean, self.std = mean[None, :, None, None], std[None, :, None, None]
        self.schedule = spec.diffusion.noise_schedule()
        self.nets["ldm"] = spec.build()
        for i, (module, use) in enumerate(zip(self.nets["ldm"].conditioners, spec.conditioners, strict=True)):
            if type(module).fit is not Conditioner.fit:  # only those that learn from the data read it all
                field = module.reads(module.params)
                try:
                    module.fit([dataset[j][field] for j in range(len(dataset))])
                except ValueError as exc:
                    raise UserError(
                        f"conditioners.{i} ({use.name}) cannot learn from data ({spec.data.name}): {exc}"
                    ) from None
        self._check_data(first_stage)

    def _check_data(self, first_stage: Trained) -> None:
        """The conditioners run on the first examples before anything is written, so data they
        cannot take is one clear error, not a failure mid-training. (Only those examples: a bad
        value further in is still found when training reaches it.)"""
        if not self.spec.conditioners:
            return
        fields = {use.cls.reads(use.params) for use in self.spec.conditioners}
        examples = [self.dataset[i] for i in range(min(8, len(self.dataset)))]
        batch = default_collate([{key: example[key] for key in fields} for example in examples])
        factor = first_stage.spec.cls.latent_shape(first_stage.spec.params).factor
        side = tuple(s // factor for s in examples[0]["image"].shape[-2:])
        self.nets["ldm"].check_inputs(batch, f"data ({self.spec.data.name})", side)

    def optimizers(self) -> dict[str, OptimizerSpec]:
        return {"ldm": self.spec.train.optimizer}

    def setup(self, fabric: Fabric) -> None:
        fabric.to_device(self.first_stage)
        self.mean, self.std = fabric.to_device(self.mean), fabric.to_device(self.std)

    def training_data(self, fabric: Fabric, dataset: Dataset) -> torch.utils.data.Dataset:
        if not self.spec.latent_cache:
            return dataset
        fields = sorted({use.cls.reads(use.params) for use in self.spec.conditioners})
        folder, reused = build_cache(
            fabric, self.first_stage, dataset, self.spec.data.model_dump(mode="json"), fields, self.ctx.runs_dir
        )
        if fabric.is_global_zero:
            print(f"latent cache {'reused' if reused else 'written'}: {folder}", file=self.ctx.out)
        return CachedLatents(folder, fields)

    def latents(self, batch: dict[str, Any]) -> Tensor:
        """Normalised latents of the batch: from the cache's moments, or by encoding its images."""
        with torch.no_grad():
            moments = batch["moments"] if "moments" in batch else self.first_stage.moments(batch["image"])
            return (self.first_stage.latent_from_moments(moments) - self.mean) / self.std

    def loss(self, name: str, batch: dict[str, Any], step: int) -> tuple[Tensor, dict[str, Tensor]]:
        d = self.spec.diffusion
        z0 = self.latents(batch)
        ldm = self.nets["ldm"]
        t = sample_timesteps(
            d.timestep_sampling, len(z0), d.timesteps, mean=d.logit_mean, std=d.logit_std, device=z0.device
        )
        noise = offset_noise(tuple(z0.shape), d.offset_noise, device=z0.device, dtype=z0.dtype)
        x_t = self.schedule.q_sample(z0, t, noise)
        drop = ldm.drop_mask(len(z0), z0.device) if ldm.conditioners else None
        output = ldm(x_t, t.to(z0.dtype), batch, drop)
        target = self.schedule.target(ldm.prediction, z0, noise, t)
        weights = min_snr_weights(self.schedule, t, ldm.prediction, d.min_snr_gamma) if d.min_snr_gamma else None
        loss = diffusion_loss(output, target, kind=d.loss, weights=weights)
        return loss, {}

    def images(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        count = min(8, len(next(iter(batch.values()))))
        conditions = {key: value[:count] for key, value in batch.items() if key not in ("image", "moments")}
        z0 = self.latents({key: value[:count] for key, value in batch.items()})
        ldm = self.nets["ldm"].module if hasattr(self.nets["ldm"], "module") else self.nets["ldm"]
        ldm.eval()  # sample as sampling will: no dropout, no noise augmentation of conditions
        try:
            latents = generate(ldm, self.schedule, self.spec.sampling, conditions, torch.randn_like(z0))
        finally:
            ldm.train()
        return {"samples": self.first_stage.decode(latents * self.std + self.mean).clamp(-1, 1)}


def prepare(spec: TrainLdmSpec, ctx: RunContext) -> tuple[TrainLdmSpec, Trained]:
    """The spec with the denoiser's sizes filled in, and the first stage it trains on; every
    disagreement between them is a :class:`UserError` raised before anything is built."""
    first_stage = load_trained(spec.first_stage, ctx, "first_stage", "first_stage")
    latent = first_stage.spec.cls.latent_shape(first_stage.spec.params)
    example = spec.data.cls.example_shape(spec.data.params)
    if example.image_channels != latent.image_channels:
        raise UserError(
            f"data ({spec.data.name}) gives {example.image_channels}-channel images but the first stage of "
            f"{spec.first_stage.run!r} takes {latent.image_channels}-channel ones; use matching data"
        )
    denoiser = fill_denoiser(spec.denoiser, latent, spec.conditioners, {"registry": ctx.registry})
    check_image_size(example, latent, denoiser.cls.downsamplings(denoiser.params), spec.data.name)
    latent_statistics_of(first_stage, "first_stage", spec.first_stage)
    return spec.model_copy(update={"denoiser": denoiser}), first_stage


def run(spec: TrainLdmSpec, ctx: RunContext) -> None:
    """Train to ``train.max_steps``."""
    spec, first_stage = prepare(spec, ctx)
    train(spec, ctx, lambda s, dataset: LdmObjective(s, dataset, first_stage, ctx), reads=[first_stage.checkpoint])
