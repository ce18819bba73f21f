"""``semantic_map``: a segmentation map -> one-hot -> a learned spatial rescaler to the latent's size.

The output is a concat condition (B, channels, H / factor, W / factor), and optionally also
cross-attention tokens, one per position of the rescaled map.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from einops import rearrange
from pydantic import Field, PositiveInt, field_validator
from torch import Tensor, nn
from torch.nn import functional as F

from core import Conditioning, ConditioningShape, Params
from core.original import Pair, module_pairs
from plugins.concat import ConcatConditioner


class SemanticMap(ConcatConditioner):
    """Semantic map: class indices (B, H, W) -> concat maps at the latent's size (+ optional tokens)."""

    class Params(Params):
        num_classes: PositiveInt = Field(
            description="Classes in the map (0 .. num_classes - 1; 0 is background on shapes)."
        )
        channels: PositiveInt = Field(16, description="Channels of the concat output.")
        factor: PositiveInt = Field(
            4, description="The first stage's f: the output is the map's size / factor (a power of 2)."
        )
        method: Literal["conv", "interpolate", "bilinear"] = Field(
            "conv",
            description=(
                "Strided 3x3 convolutions; area interpolation then a 1x1 convolution; or bilinear halvings then a 1x1 "
                "convolution (the original's SpatialRescaler)."
            ),
        )
        bias: bool = Field(True, description="A bias on the 1x1 convolution (the original's has none).")
        context_dim: PositiveInt | None = Field(
            None, description="Also give one cross-attention token per position, this wide."
        )
        field: str = Field("segmentation", description="The example field holding the map.")

        @field_validator("factor")
        @classmethod
        def _power_of_two(cls, factor: int) -> int:
            if factor & (factor - 1):
                lower = 2 ** int(math.log2(factor))
                raise ValueError(f"factor {factor} is not a power of 2; use {lower} or {2 * lower}")
            return factor

    def __init__(self, params: SemanticMap.Params) -> None:
        super().__init__(params)
        p = params
        if p.method != "conv":
            self.rescale = nn.Conv2d(p.num_classes, p.channels, 1, bias=p.bias)
        else:
            stages = int(math.log2(p.factor))
            layers: list[nn.Module] = [nn.Conv2d(p.num_classes, p.channels, 3, padding=1)]
            for _ in range(stages):
                layers += [nn.SiLU(), nn.Conv2d(p.channels, p.channels, 3, stride=2, padding=1)]
            self.rescale = nn.Sequential(*layers)
        self.tokens = nn.Linear(p.channels, p.context_dim) if p.context_dim else None
        self.null_map = nn.Parameter(torch.zeros(p.channels))
        self.null_token = nn.Parameter(torch.zeros(p.context_dim)) if p.context_dim else None

    @classmethod
    def produces(cls, params: SemanticMap.Params) -> ConditioningShape:
        return ConditioningShape(concat=params.channels, context=params.context_dim)

    def forward(self, y: Tensor) -> Conditioning:
        """Maps (B, H, W) of class indices -> concat (B, channels, H/f, W/f) [+ context (B, HW/f^2, d)]."""
        y = torch.as_tensor(y, device=self.null_map.device)
        k = self.params.num_classes
        if y.ndim != 3 or y.dtype.is_floating_point:
            raise ValueError(
                f"semantic_map takes integer class maps of shape (B, H, W), got {y.dtype} {tuple(y.shape)}"
            )
        if y.numel() and (y.min() < 0 or y.max() >= k):
            raise ValueError(
                f"semantic_map got class {int(y.max() if y.max() >= k else y.min())}, outside [0, {k}); "
                "raise num_classes or fix the maps"
            )
        if y.shape[-1] % self.params.factor or y.shape[-2] % self.params.factor:
            raise ValueError(
                f"semantic_map got {y.shape[-2]}x{y.shape[-1]} maps, not divisible by factor {self.params.factor}"
            )
        onehot = rearrange(F.one_hot(y.long(), k), "b h w k -> b k h w").to(self.null_map.dtype)
        if self.params.method == "interpolate":
            onehot = F.interpolate(onehot, scale_factor=1 / self.params.factor, mode="area")
        elif self.params.method == "bilinear":
            for _ in range(int(math.log2(self.params.factor))):
                onehot = F.interpolate(onehot, scale_factor=0.5, mode="bilinear")
        concat = self.rescale(onehot)
        context = self.tokens(rearrange(concat, "b c h w -> b (h w) c")) if self.tokens is not None else None
        return Conditioning(concat=concat, context=context)

    def original_names(self) -> list[Pair]:
        """The original ``SpatialRescaler``'s names (its method bilinear, no bias; none for the others)."""
        if self.params.method != "bilinear":
            return []
        return list(module_pairs("rescale", "channel_mapper", (("", ""),), bias=self.params.bias))

    def unconditional(self, cond: Conditioning) -> Conditioning:
        """Learned "no map" values: one vector per channel, one token, repeated to ``cond``'s shapes."""
        concat = self.null_map[None, :, None, None].expand_as(cond.concat)
        context = self.null_token.expand_as(cond.context) if cond.context is not None else None
        return Conditioning(concat=concat, context=context)
