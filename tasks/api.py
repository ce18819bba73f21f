"""Sampling from a trained LDM in Python, with the same options (and the same images) as the
``sample`` task::

    from tasks.api import load
    pipe = load("digits-ldm")                     # runs/digits-ldm, EMA weights
    images = pipe.sample({"label": [0, 1, 2]}, guidance=3.0, seed=0)   # (3, C, H, W) in [-1, 1]

Image i of a call is drawn from its own generator seeded ``seed + i`` (noise and every
stochastic step), so a batch gives the same images as its items one by one, and any image
can be made again alone from its seed and condition.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import Tensor, nn

from core import SpecError, UserError, load_registry
from core.diffusion import NoiseSchedule
from core.validation import problems
from tasks.context import RunContext
from tasks.engine.specs import RunRef
from tasks.ldm import LatentDiffusion, SamplingSpec, generate
from tasks.runs import load_trained


@dataclass
class Pipeline:
    """A trained LDM with its first stage, ready to sample."""

    ldm: LatentDiffusion
    first_stage: nn.Module
    mean: Tensor
    std: Tensor
    schedule: NoiseSchedule
    latent_shape: tuple[int, int, int]
    run: str
    checkpoint: Path
    weights: str
    context: RunContext

    @property
    def step(self) -> int:
        """The training step of the checkpoint the weights come from."""
        return int(re.search(r"(\d+)", self.checkpoint.stem).group(1))

    def sampling(
        self,
        sampler: str | dict[str, Any] = "dpmpp_2m",
        steps: int = 20,
        spacing: str | None = None,
        guidance: float = 1.0,
    ) -> SamplingSpec:
        """Validated sampling settings (a :class:`UserError` names a wrong one)."""
        sampler = {"name": sampler} if isinstance(sampler, str) else sampler
        try:
            spec = SamplingSpec.model_validate(
                {"sampler": sampler, "steps": steps, "spacing": spacing, "guidance": guidance},
                context={"registry": self.context.registry},
            )
        except ValidationError as exc:
            raise SpecError(problems(exc), source="sampling settings") from None
        self.check(spec)
        return spec

    def check(self, sampling: SamplingSpec, field: str = "steps") -> None:
        """Raise :class:`UserError` if ``sampling`` asks for more steps than the model's schedule has."""
        if sampling.steps > self.schedule.steps:
            raise UserError(
                f"{field}: {sampling.steps} is more than the {self.schedule.steps} timesteps the model "
                f"was trained with; use 1 to {self.schedule.steps}"
            )

    @torch.no_grad()
    def generate(
        self,
        sampling: SamplingSpec,
        conditions: dict[str, list[Any]],
        seeds: list[int],
        batch_size: int = 16,
        progress: Callable[[], None] | None = None,
    ) -> Tensor:
        """Images (N, C, H, W) in [-1, 1], image i from ``seeds[i]`` and item i of each condition."""
        device = self.mean.device
        out = []
        for start in range(0, len(seeds), batch_size):
            chunk = seeds[start : start + batch_size]
            generators = [torch.Generator(device="cpu").manual_seed(seed) for seed in chunk]
            noise = torch.stack([torch.randn(self.latent_shape, generator=g) for g in generators]).to(device)
            batch = {key: _batched(values[start : start + batch_size], device) for key, values in conditions.items()}
            latents = generate(self.ldm, self.schedule, sampling, batch, noise, generators, progress)
            out.append(self.first_stage.decode(latents * self.std + self.mean).clamp(-1, 1).cpu())
        return torch.cat(out)

    def sample(
        self,
        conditions: dict[str, list[Any]] | None = None,
        *,
        num_images: int | None = None,
        sampler: str | dict[str, Any] = "dpmpp_2m",
        steps: int = 20,
        spacing: str | None = None,
        guidance: float = 1.0,
        seed: int = 0,
        batch_size: int = 16,
    ) -> Tensor:
        """Images (N, C, H, W) in [-1, 1] for ``conditions`` (one list per field the conditioners
        read, e.g. ``{"label": [3, 7]}``; N is their length) or ``num_images`` unconditional ones."""
        conditions = conditions or {}
        count = check_conditions(self.ldm, conditions, num_images)
        return self.generate(
            self.sampling(sampler, steps, spacing, guidance), conditions, [seed + i for i in range(count)], batch_size
        )


def _batched(values: list[Any], device: torch.device) -> Any:
    if values and isinstance(values[0], (int, float)):
        return torch.tensor(values, device=device)
    if values and isinstance(values[0], Tensor):
        return torch.stack(values).to(device)
    return list(values)


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
    ldm.check_inputs({key: _batched(values, device) for key, values in conditions.items()}, field)
    return next(iter(lengths.values()))


def load(run: str | Path, *, runs_dir: str | Path = "runs", weights: str = "ema", device: str = "cpu") -> Pipeline:
    """The trained LDM of run ``run`` (a name under ``runs_dir``, or a run directory's path)."""
    path = Path(run)
    if path.is_dir() and (path / "spec.json").is_file():
        runs_dir, run = path.parent, path.name
    context = RunContext(registry=load_registry(), runs_dir=Path(runs_dir))
    return load_pipeline(RunRef(run=str(run), weights=weights), context, "run", device)


def load_pipeline(ref: RunRef, ctx: RunContext, field: str, device: str | torch.device = "cpu") -> Pipeline:
    """The pipeline of a ``train_ldm`` run and the first stage it was trained on."""
    from tasks.train_ldm import latent_statistics_of  # train_ldm's spec is what load_trained validates

    trained = load_trained(ref, ctx, "ldm", field)
    spec = trained.spec
    first = load_trained(spec.first_stage, ctx, "first_stage", f"{field} (its first_stage)")
    mean, std = latent_statistics_of(first, "first_stage", spec.first_stage)
    shape = first.spec.cls.latent_shape(first.spec.params)
    size = spec.data.cls.example_shape(spec.data.params).image_size
    if size is None:
        raise UserError(f"{field}: {ref.run!r} was trained on images of varying size; sampling needs a fixed size")
    latent = (shape.channels, size[0] // shape.factor, size[1] // shape.factor)
    return Pipeline(
        ldm=trained.module.to(device),
        first_stage=first.module.to(device),
        mean=mean[None, :, None, None].to(device),
        std=std[None, :, None, None].to(device),
        schedule=spec.diffusion.noise_schedule(),
        latent_shape=latent,
        run=ref.run,
        checkpoint=trained.checkpoint,
        weights=ref.weights,
        context=ctx,
    )
