"""Task ``train_ldm``: a denoiser (and its trainable conditioners) in a frozen latent space.

The latent space comes from a run (``{"run": ...}``: the first stage with the latent
statistics it stored, see :mod:`tasks.autoencoder.latent_space`). The dataset is encoded
once into the latent cache (:mod:`tasks.ldm.cache`) unless ``latent_cache`` is off. The loss
is L_LDM (:func:`core.diffusion.diffusion_loss`) on timesteps drawn as ``diffusion`` says;
each conditioner's output is replaced by its "no condition" output at its drop rate so that
the model also learns the unconditional score classifier-free guidance needs.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning_fabric import Fabric
from torch import Tensor
from torch.utils.data import default_collate

from core import Conditioner, Dataset, UserError
from core.diffusion import diffusion_loss, min_snr_weights, offset_noise, sample_timesteps
from tasks.autoencoder.latent_space import LatentSpace, load_latent_space
from tasks.engine.objective import Objective
from tasks.engine.specs import OptimizerSpec
from tasks.engine.trainer import train
from tasks.ldm.cache import CachedLatents, build_cache
from tasks.ldm.generation import generate
from tasks.ldm.specs import TrainLdmSpec, resolve_train_ldm
from tasks.runs.context import RunContext


class LdmObjective(Objective):
    """The LDM (denoiser + conditioners, one optimiser) in a frozen latent space."""

    def __init__(self, spec: TrainLdmSpec, dataset: Dataset, space: LatentSpace, ctx: RunContext) -> None:
        super().__init__()
        self.spec, self.dataset, self.space, self.ctx = spec, dataset, space, ctx
        self.schedule = spec.diffusion.noise_schedule()
        self.nets["ldm"] = spec.build().use_first_stage(space.first_stage)
        for i, (module, use) in enumerate(zip(self.nets["ldm"].conditioners, spec.conditioners, strict=True)):
            if type(module).fit is not Conditioner.fit:  # only those that learn from the data read it all
                field = module.reads(module.params)
                try:
                    module.fit([dataset[j][field] for j in range(len(dataset))])
                except ValueError as exc:
                    raise UserError(
                        f"conditioners.{i} ({use.name}) cannot learn from data ({spec.data.name}): {exc}"
                    ) from None
        self._check_data()

    def _check_data(self) -> None:
        """The conditioners run on the first examples before anything is written, so data they
        cannot take, or output that departs from what they declare, is one clear error, not a
        failure mid-training. (Only those examples: a bad value further in is still found when
        training reaches it.)"""
        if not self.spec.conditioners:
            return
        fields = {use.cls.reads(use.params) for use in self.spec.conditioners}
        examples = [self.dataset[i] for i in range(min(8, len(self.dataset)))]
        batch = default_collate([{key: example[key] for key in fields} for example in examples])
        side = tuple(s // self.space.shape.factor for s in examples[0]["image"].shape[-2:])
        self.nets["ldm"].check_inputs(batch, f"data ({self.spec.data.name})", side)

    def optimizers(self) -> dict[str, OptimizerSpec]:
        return {"ldm": self.spec.train.optimizer}

    def setup(self, fabric: Fabric) -> None:
        fabric.to_device(self.space)

    def training_data(self, fabric: Fabric, dataset: Dataset) -> torch.utils.data.Dataset:
        if not self.spec.latent_cache:
            return dataset
        fields = sorted({use.cls.reads(use.params) for use in self.spec.conditioners})
        data_spec = self.spec.data.model_dump(mode="json")
        folder, reused = build_cache(
            fabric,
            self.space.first_stage,
            dataset,
            data_spec,
            fields,
            self.ctx.runs_dir,
            batch_size=self.spec.cache_batch_size,
            dtype=self.spec.cache_dtype,
            num_workers=self.spec.train.num_workers,
            out=self.ctx.out,
        )
        if fabric.is_global_zero:
            print(f"latent cache {'reused' if reused else 'written'}: {folder}", file=self.ctx.out)
        return CachedLatents(folder, fields)

    def latents(self, batch: dict[str, Any]) -> Tensor:
        """Normalised latents of the batch: from the cache's moments, or by encoding its images."""
        with torch.no_grad():
            moments = batch["moments"] if "moments" in batch else self.space.moments(batch["image"])
            return self.space.from_moments(moments)

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
        return {"samples": self.space.decode(latents)}


def run(spec: TrainLdmSpec, ctx: RunContext) -> None:
    """Fill the denoiser's sizes, load the latent space, train to ``train.max_steps``."""
    spec = resolve_train_ldm(spec, ctx)
    space = load_latent_space(spec.first_stage, ctx, "first_stage")
    train(spec, ctx, lambda s, dataset: LdmObjective(s, dataset, space, ctx), reads=space.sources)
