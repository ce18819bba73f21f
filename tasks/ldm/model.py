"""The latent diffusion model as tasks build it: a denoiser and its conditioners, sized from
what the first stage and the conditioners declare.

:func:`fill_denoiser` is where a pipeline's sizes are settled before any tensor exists: the
denoiser's ``in_channels`` (latent channels + concat channels), ``out_channels``,
``context_dim`` and ``vector_dim`` are filled in, and a spec that states one of them
otherwise is refused naming both numbers.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import Tensor, nn

from core import (
    Conditioner,
    ConditionerSpec,
    Conditioning,
    ConditioningShape,
    DenoiserSpec,
    FirstStage,
    FrozenEncoder,
    UserError,
)
from core.diffusion import Prediction
from core.guidance import unconditional_half
from core.interfaces import ExampleShape, LatentShape


class ConditionerUse(ConditionerSpec):
    """A conditioner as the LDM uses it: its spec plus how it trains."""

    drop_rate: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description=(
            "How often training replaces its output by its 'no condition' output (for guidance); "
            "concat conditions are never dropped unless drop_concat."
        ),
    )
    drop_concat: bool = Field(False, description="Also drop concat conditions (maps, low-res images).")
    trainable: bool | None = Field(
        None,
        description=(
            "Optimise it jointly with the denoiser (else frozen); none: the conditioner's default "
            "(pretrained encoders such as frozen_text_encoder stay frozen, the others train)."
        ),
    )

    @property
    def trains(self) -> bool:
        """Whether training optimises it: ``trainable``, else the conditioner's default."""
        return self.cls.trainable_by_default if self.trainable is None else self.trainable


def fill_denoiser(
    spec: DenoiserSpec, latent: LatentShape, conditioners: list[ConditionerUse], registry_context: dict[str, Any]
) -> DenoiserSpec:
    """``spec`` with its sizes filled from the first stage's ``latent`` and the conditioners.

    Raises :class:`UserError` naming the numbers that disagree, or the conditioners whose
    contexts cannot be joined.
    """
    for i, use in enumerate(conditioners):
        factor = use.cls.concat_factor(use.params)
        if factor is not None and factor != latent.factor:
            raise UserError(
                f"conditioners.{i} ({use.name}) makes maps {factor} times smaller than the image but the "
                f"first stage's latent is {latent.factor} times smaller; set its factor to {latent.factor}"
            )
        channels = use.cls.first_stage_channels(use.params)
        if channels is not None and channels != latent.channels:
            raise UserError(
                f"conditioners.{i} ({use.name}) encodes with a first stage of {channels} latent channels but the "
                f"first stage has {latent.channels}; set its latent_channels to {latent.channels}"
            )
    try:
        cond = ConditioningShape.combine(
            [c.cls.produces(c.params) for c in conditioners], [c.name for c in conditioners]
        )
    except ValueError as exc:
        raise UserError(f"conditioners: {exc}") from None
    concat = cond.concat or 0
    wanted = {
        "in_channels": (
            latent.channels + concat,
            f"{latent.channels} latent channels" + (f" + {concat} concat channels" if concat else ""),
        ),
        "out_channels": (latent.channels, f"{latent.channels} latent channels"),
        "context_dim": (
            cond.context,
            "the conditioners' context width" if cond.context else "no conditioner gives a context",
        ),
        "vector_dim": (
            cond.vector,
            "the conditioners' vector width" if cond.vector else "no conditioner gives a vector",
        ),
    }
    params = spec.params.model_dump()
    problems = [
        f"denoiser.params.{key} is {params[key]} but {why} make {value}"
        for key, (value, why) in wanted.items()
        if params.get(key) is not None and params[key] != value
    ]
    if problems:
        raise UserError("; ".join(problems) + "; leave these out of the spec and they are filled in")
    params.update({key: value for key, (value, _) in wanted.items() if key in params})
    return DenoiserSpec.model_validate({"name": spec.name, "params": params}, context=registry_context)


def check_image_size(example: ExampleShape, latent: LatentShape, downsamplings: int, data_name: str) -> None:
    """Raise :class:`UserError` unless the images divide by f x 2^(the denoiser's downsamplings)."""
    step = latent.factor * 2**downsamplings
    if example.image_size is None or not any(side % step for side in example.image_size):
        return
    side = example.image_size[0]
    sizes = sorted({max(step, side - side % step), side - side % step + step})
    raise UserError(
        f"data ({data_name}) gives {example.image_size[0]}x{example.image_size[1]} images, which the first stage "
        f"(f={latent.factor}) and the denoiser ({downsamplings} downsamplings) cannot take: sides must be multiples "
        f"of {step}; use size {' or '.join(map(str, sizes))}"
    )


class LatentDiffusion(nn.Module):
    """The trained part of an LDM: the denoiser and its conditioners (frozen ones included)."""

    def __init__(self, denoiser: nn.Module, conditioners: list[Conditioner], uses: list[ConditionerUse]) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.conditioners = nn.ModuleList(conditioners)
        self.uses = uses
        for module, use in zip(conditioners, uses, strict=True):
            module.requires_grad_(use.trains)
        self.train()

    def use_first_stage(self, first_stage: FirstStage) -> LatentDiffusion:
        """Hand the frozen first stage's encoder to the conditioners that encode with it."""
        for module in self.conditioners:
            if module.first_stage_channels(module.params) is not None:
                module.use_first_stage(FrozenEncoder(first_stage))
        return self

    @property
    def prediction(self) -> Prediction:
        return self.denoiser.prediction

    def train(self, mode: bool = True) -> LatentDiffusion:
        """Train mode for all but the frozen conditioners, which stay in eval mode (no dropout)."""
        super().train(mode)
        for module, use in zip(self.conditioners, self.uses, strict=True):
            if not use.trains:
                module.eval()
        return self

    def forward(self, x: Tensor, t: Tensor, batch: dict[str, Any], drop: Tensor | None = None) -> Tensor:
        """The denoiser's prediction for noisy latents x (B, c, h, w) at timesteps t (B,),
        conditioned on the batch's fields (see :meth:`condition`)."""
        return self.denoiser(x, t, self.condition(batch, drop))

    def _outputs(self, batch: dict[str, Any]) -> list[Conditioning]:
        return [module(batch[module.reads(module.params)]) for module in self.conditioners]

    def condition(self, batch: dict[str, Any], drop: Tensor | None = None) -> Conditioning:
        """The combined conditioning of a batch (the example fields the conditioners read).

        Where ``drop`` (B, n_conditioners) is true, that conditioner's "no condition" output
        replaces its output, except for concat conditions unless ``drop_concat`` allows it.
        """
        parts = []
        for i, (module, use, cond) in enumerate(zip(self.conditioners, self.uses, self._outputs(batch), strict=True)):
            if drop is not None and (cond.concat is None or use.drop_concat) and drop[:, i].any():
                cond = cond.where(~drop[:, i], module.unconditional(cond))
            parts.append(cond)
        return Conditioning.combine(parts)

    def guidance_pair(self, batch: dict[str, Any]) -> tuple[Conditioning, Conditioning]:
        """(condition, unconditional half) for classifier-free guidance: each conditioner's
        "no condition" output, concat conditions kept unless trained with ``drop_concat``."""
        outputs = self._outputs(batch)
        nulls = [
            unconditional_half(cond, module.unconditional(cond), keep_concat=not use.drop_concat)
            for module, use, cond in zip(self.conditioners, self.uses, outputs, strict=True)
        ]
        return Conditioning.combine(outputs), Conditioning.combine(nulls)

    @torch.no_grad()
    def check_inputs(self, batch: dict[str, Any], field: str, latent_size: tuple[int, int] | None = None) -> None:
        """Run each conditioner (in eval mode) on ``batch``; what it refuses, output that departs
        from what it declares, or concat maps not of ``latent_size``, is a :class:`UserError`
        naming ``field`` (or the plugin) and the fix."""
        modes = [module.training for module in self.conditioners]
        try:
            for i, (module, use) in enumerate(zip(self.conditioners.eval(), self.uses, strict=True)):
                key = module.reads(module.params)
                if key not in batch:  # made later from what is checked on its own (the masked image)
                    continue
                try:
                    cond = module(batch[key])
                except (ValueError, TypeError) as exc:
                    raise UserError(f"{field}.{key}: {exc}") from None
                wrong = use.cls.produces(use.params).mismatches(cond)
                if wrong:
                    raise UserError(
                        f"conditioners.{i} ({use.name}, from {use.entry.origin}) {'; '.join(wrong)} for {field}.{key}; "
                        "its produces() and forward() must agree: fix the plugin or ask its author to"
                    )
                size = tuple(cond.concat.shape[-2:]) if cond.concat is not None else None
                if latent_size is not None and size is not None and size != latent_size:
                    raise UserError(
                        f"{field}.{key}: {use.name} turns it into {size[0]}x{size[1]} maps but the latents are "
                        f"{latent_size[0]}x{latent_size[1]}; make its factors agree with the data's "
                        "(e.g. lowres_factor)"
                    )
        finally:
            for module, mode in zip(self.conditioners, modes, strict=True):
                module.train(mode)

    def drop_mask(self, batch_size: int, device: torch.device) -> Tensor:
        """Which conditioner outputs to drop for each example (B, n), drawn at each one's drop rate."""
        rates = torch.tensor([use.drop_rate for use in self.uses], device=device)
        return torch.rand(batch_size, len(self.uses), device=device) < rates
