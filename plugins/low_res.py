"""``low_res``: a low-resolution image brought to the latent's size and concatenated, with noise
augmentation whose level is itself a condition (as in cascaded and x4 super-resolution models).

In training each example's low-res input gets Gaussian noise of a level drawn uniformly from
[0, max_noise]; that level, embedded, is the vector condition, so the model learns to trust
noisy inputs less. In eval mode the level is ``sample_noise`` for every example and the
noise is drawn per example from its own fixed generator, so sampling stays reproducible.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field, NonNegativeFloat, PositiveInt
from torch import Tensor, nn
from torch.nn import functional as F

from core import Conditioning, ConditioningShape, Params
from plugins.concat import ConcatConditioner


def _embed(level: Tensor, dim: int) -> Tensor:
    """Sinusoidal features (B, dim) of noise levels (B,) in [0, 1]."""
    freqs = torch.exp(
        torch.arange(dim // 2, device=level.device, dtype=torch.float32) * (math.log(1000.0) / max(1, dim // 2))
    )
    angles = level.float()[:, None] * freqs[None]
    return F.pad(torch.cat([angles.sin(), angles.cos()], dim=1), (0, dim % 2))


class LowRes(ConcatConditioner):
    """Low-res image (B, C, H/k, W/k) -> concat (B, C, H/f, W/f) plus its noise level as a vector."""

    class Params(Params):
        image_channels: PositiveInt = Field(3, description="Channels of the low-res image.")
        lowres_factor: PositiveInt = Field(
            4, description="k: the low-res image is the image's size / k (the data's lowres_factor)."
        )
        factor: PositiveInt = Field(4, description="The first stage's f: the output is the image's size / f.")
        max_noise: NonNegativeFloat = Field(0.2, description="Training draws the noise level from [0, max_noise].")
        sample_noise: NonNegativeFloat = Field(0.0, description="The noise level when sampling (eval mode).")
        vector_dim: PositiveInt | None = Field(
            64,
            description=(
                "Width of the noise level's vector condition; none: no vector (with no noise, the image is "
                "concatenated as it is, as the original bsr_sr model takes it)."
            ),
        )
        field: str = Field("lowres", description="The example field holding the low-res image.")

    def __init__(self, params: LowRes.Params) -> None:
        super().__init__(params)
        d = params.vector_dim
        self.level = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d)) if d else None
        self.null_map = nn.Parameter(torch.zeros(params.image_channels))
        self.null_vector = nn.Parameter(torch.zeros(d)) if d else None

    @classmethod
    def produces(cls, params: LowRes.Params) -> ConditioningShape:
        return ConditioningShape(concat=params.image_channels, vector=params.vector_dim)

    def forward(self, y: Tensor) -> Conditioning:
        """Low-res images (B, C, h, w) in [-1, 1] -> concat (B, C, h k/f, w k/f), vector (B, vector_dim)."""
        p = self.params
        y = torch.as_tensor(y, device=self.null_map.device)
        if y.ndim != 4 or y.shape[1] != p.image_channels or not y.dtype.is_floating_point:
            raise ValueError(
                f"low_res takes float images of shape (B, {p.image_channels}, h, w), got {y.dtype} {tuple(y.shape)}"
            )
        y = y.to(self.null_map.dtype)
        size = (y.shape[-2] * p.lowres_factor // p.factor, y.shape[-1] * p.lowres_factor // p.factor)
        if size != tuple(y.shape[-2:]):
            y = F.interpolate(y, size=size, mode="bicubic", align_corners=False)
        if self.training:
            level = torch.rand(len(y), device=y.device) * p.max_noise
            noise = torch.randn_like(y)
        else:
            level = torch.full((len(y),), p.sample_noise, device=y.device)
            noise = torch.stack([torch.randn(y.shape[1:], generator=torch.Generator().manual_seed(0)) for _ in y]).to(y)
        y = y + level[:, None, None, None].to(y.dtype) * noise
        if self.level is None:
            return Conditioning(concat=y)
        return Conditioning(concat=y, vector=self.level(_embed(level, p.vector_dim).to(y.dtype)))

    def unconditional(self, cond: Conditioning) -> Conditioning:
        """Learned "no image" values: one per channel and one vector, repeated to ``cond``'s shapes."""
        vector = self.null_vector.expand_as(cond.vector) if self.null_vector is not None else None
        return Conditioning(concat=self.null_map[None, :, None, None].expand_as(cond.concat), vector=vector)
