"""Images from a trained LDM: latents sampled with guidance, decoded by its latent space.

:func:`generate` samples one batch of normalised latents; :class:`Pipeline` (what
:func:`load_pipeline` makes of a ``train_ldm`` run, and what ``tasks.api.load`` returns) holds
the whole loop from seeds and conditions to images, in batches. Image i is drawn from its
own generator seeded ``seeds[i]`` (noise and every stochastic step), so a batch gives the
same images as its items one by one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import Tensor

from core import SpecError, UserError
from core.diffusion import NoiseSchedule
from core.guidance import guided
from core.sampling import Generators, denoiser, sample, sigmas
from core.validation import problems
from tasks.autoencoder.latent_space import LatentSpace, load_latent_space
from tasks.ldm.model import LatentDiffusion
from tasks.ldm.specs import SamplingSpec, TrainLdmSpec, too_many_steps
from tasks.runs.context import RunContext
from tasks.runs.spec import RunRef
from tasks.runs.trained import load_trained


@torch.no_grad()
def generate(
    ldm: LatentDiffusion,
    schedule: NoiseSchedule,
    sampling: SamplingSpec,
    conditions: dict[str, Any],
    noise: Tensor,
    generator: Generators = None,
) -> Tensor:
    """Normalised latents (B, c, h, w) sampled from standard-normal ``noise`` of that shape.

    ``conditions`` holds the example fields the conditioners read, batched (B); guidance,
    sampler, steps and spacing come from ``sampling``.
    """
    cond, uncond = ldm.guidance_pair(conditions)
    model = guided(ldm.denoiser, cond.to(noise.device), uncond.to(noise.device), sampling.guidance)
    sampler = sampling.sampler.build()
    levels = sigmas(schedule, sampling.steps, sampling.spacing or sampler.spacing)
    return sample(sampler, denoiser(model, schedule, ldm.prediction), noise, levels, generator=generator)


def batched(values: list[Any], device: torch.device) -> Any:
    """One field's values for a batch, as the conditioners take them: numbers as a tensor (B,),
    tensors stacked (B, ...), anything else (captions) as the list."""
    if values and isinstance(values[0], (int, float)):
        return torch.tensor(values, device=device)
    if values and isinstance(values[0], Tensor):
        return torch.stack(values).to(device)
    return list(values)


@dataclass
class Pipeline:
    """A trained LDM with its latent space, ready to sample."""

    ldm: LatentDiffusion
    space: LatentSpace
    schedule: NoiseSchedule
    latent_shape: tuple[int, int, int]
    run: str
    checkpoint: Path
    step: int
    weights: str
    reads: tuple[Path, ...]
    context: RunContext

    def sampling(self, **settings: Any) -> SamplingSpec:
        """Validated sampling settings: any field of :class:`SamplingSpec` (``sampler`` as a name
        or a component spec, ``steps``, ``spacing``, ``guidance``), its defaults for the rest.
        A :class:`UserError` names a wrong one."""
        if isinstance(settings.get("sampler"), str):
            settings["sampler"] = {"name": settings["sampler"]}
        try:
            spec = SamplingSpec.model_validate(settings, context={"registry": self.context.registry})
        except ValidationError as exc:
            raise SpecError(problems(exc), source="sampling settings") from None
        self.check(spec, "steps")
        return spec

    def check(self, sampling: SamplingSpec, field: str = "sampling.steps") -> None:
        """Raise :class:`UserError` if ``sampling`` asks for more steps than the model's schedule has."""
        problem = too_many_steps(sampling.steps, self.schedule.steps, field)
        if problem:
            raise UserError(problem)

    @torch.no_grad()
    def generate(
        self,
        sampling: SamplingSpec,
        conditions: dict[str, list[Any]],
        seeds: list[int],
        batch_size: int = 16,
        progress: Callable[[int], None] | None = None,
    ) -> Tensor:
        """Images (N, C, H, W) in [-1, 1] on the CPU, image i from ``seeds[i]`` and item i of each
        condition list, ``batch_size`` at a time; ``progress`` gets the size of each batch done."""
        device = self.space.mean.device
        out = []
        for start in range(0, len(seeds), batch_size):
            chunk = seeds[start : start + batch_size]
            generators = [torch.Generator(device="cpu").manual_seed(seed) for seed in chunk]
            noise = torch.stack([torch.randn(self.latent_shape, generator=g) for g in generators]).to(device)
            batch = {key: batched(values[start : start + batch_size], device) for key, values in conditions.items()}
            latents = generate(self.ldm, self.schedule, sampling, batch, noise, generators)
            out.append(self.space.decode(latents).cpu())
            if progress is not None:
                progress(len(chunk))
        return torch.cat(out)

    def sample(
        self,
        conditions: dict[str, list[Any]] | None = None,
        *,
        num_images: int | None = None,
        seed: int = 0,
        batch_size: int = 16,
        **sampling: Any,
    ) -> Tensor:
        """Images (N, C, H, W) in [-1, 1] for ``conditions`` (one list per field the conditioners
        read, e.g. ``{"label": [3, 7]}``; N is their length) or ``num_images`` unconditional ones;
        image i from seed ``seed + i``. ``sampling``: see :meth:`sampling` (e.g. ``guidance=3``)."""
        conditions = conditions or {}
        count = check_conditions(self.ldm, conditions, num_images)
        return self.generate(self.sampling(**sampling), conditions, [seed + i for i in range(count)], batch_size)


def check_conditions(
    ldm: LatentDiffusion, conditions: dict[str, list[Any]], num_images: int | None, field: str = "conditions"
) -> int:
    """How many images ``conditions`` ask for; a :class:`UserError` if they do not fit the model."""
    needed = sorted({m.reads(m.params) for m in ldm.conditioners})
    given = sorted(conditions)
    if given != needed:
        raise UserError(
            f"{field}: the model's conditioners read {needed or 'nothing'} but {given or 'nothing'} "
            f"was given; give one list for each of {needed}"
            if needed
            else f"{field}: the model is unconditional; give num_images instead of {given}"
        )
    lengths = {key: len(values) for key, values in conditions.items()}
    if len(set(lengths.values())) > 1:
        raise UserError(f"{field}: the lists have different lengths {lengths}; give one entry per image in each")
    if not needed:
        if not num_images:
            raise UserError(f"{field}: the model is unconditional; say how many images with num_images")
        return num_images
    device = next(ldm.parameters()).device
    ldm.check_inputs({key: batched(values, device) for key, values in conditions.items()}, field)
    return next(iter(lengths.values()))


def load_pipeline(ref: RunRef, ctx: RunContext, field: str, device: str | torch.device = "cpu") -> Pipeline:
    """The pipeline of a ``train_ldm`` run and the latent space it was trained in."""
    trained = load_trained(ref, ctx, field, TrainLdmSpec, "ldm")
    spec = trained.spec
    space = load_latent_space(spec.first_stage, ctx, f"{field} (its first_stage)")
    size = spec.data.cls.example_shape(spec.data.params).image_size
    if size is None:
        raise UserError(f"{field}: {ref.run!r} was trained on images of varying size; sampling needs a fixed size")
    factor = space.shape.factor
    return Pipeline(
        ldm=trained.module.to(device),
        space=space.to(device),
        schedule=spec.diffusion.noise_schedule(),
        latent_shape=(space.shape.channels, size[0] // factor, size[1] // factor),
        run=ref.run,
        checkpoint=trained.checkpoint,
        step=trained.step,
        weights=ref.weights,
        reads=(trained.checkpoint, *space.sources),
        context=ctx,
    )
