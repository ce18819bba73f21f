"""Classifier-free guidance (Ho & Salimans, 2022): one network, conditional and unconditional.

The guided output is ``uncond + scale x (cond - uncond)``. The network predicts eps, x0 or
v, each affine in the others for a fixed x_t and t, so guiding the raw output is the same as
guiding the denoiser that :func:`core.sampling.denoiser` builds from it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import Tensor

from core.conditioning import Conditioning

ConditionalModel = Callable[[Tensor, Tensor, Conditioning], Tensor]


def unconditional_half(cond: Conditioning, null: Conditioning, keep_concat: bool = True) -> Conditioning:
    """The condition of guidance's unconditional half: ``null`` (each conditioner's "no
    condition" output, or a negative condition such as a negative prompt), except that the
    concat part (maps, low-resolution images) is taken from ``cond`` when ``keep_concat``:
    a super-resolution or layout model is guided towards its other conditions, not away from
    its input."""
    if keep_concat and cond.concat is not None:
        return dataclasses.replace(null, concat=cond.concat)
    return null


def guided(
    model: ConditionalModel, cond: Conditioning, uncond: Conditioning, scale: float
) -> Callable[[Tensor, Tensor], Tensor]:
    """``model(x, t, cond)`` (x (B, ...), t (B,)) as a function of (x, t) alone, guided by ``scale``.

    Scale 1 is the conditional model and costs one pass; scale 0 the unconditional one, also
    one pass; any other scale runs both halves in one call on a batch of 2B.
    """
    if scale == 1.0:
        return lambda x, t: model(x, t, cond)
    if scale == 0.0:
        return lambda x, t: model(x, t, uncond)
    both = Conditioning.cat([cond, uncond])

    def guided_model(x: Tensor, t: Tensor) -> Tensor:
        out_cond, out_uncond = model(torch.cat([x, x]), torch.cat([t, t]), both).chunk(2)
        return out_uncond + scale * (out_cond - out_uncond)

    return guided_model
