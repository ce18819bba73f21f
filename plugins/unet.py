"""``unet``: the paper's time-conditional UNet, with cross-attention to the condition's context.

Levels follow ``channel_mult`` (level 0 at the latent's resolution, each further level at
half the size); a level in ``attention_levels`` gets a spatial transformer (self-attention,
cross-attention to ``Conditioning.context``, feed-forward) after each residual block, as
does the middle. ``Conditioning.concat`` joins the input channels and
``Conditioning.vector`` the time embedding.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import torch
from einops import rearrange
from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, model_validator
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from core import Conditioning, Denoiser, DiffusersModel, Params
from core.original import Pair
from plugins.blocks import ResBlock, Upsample, check_levels, check_norm_groups, downsample
from plugins.diffusers_unet import unet_diffusers_model, unet_params_from_diffusers
from plugins.original_unet import unet_pairs


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps t (B,) -> (B, dim), as in DDPM."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None]
    embedding = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)
    return F.pad(embedding, (0, dim % 2))


class MultiHeadAttention(nn.Module):
    """Attention of x (B, N, d) to ``context`` (B, M, d_context), or to itself when there is none."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(context_dim or dim, 2 * dim, bias=False)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        q = rearrange(self.q(x), "b n (h d) -> b h n d", h=self.heads)
        k, v = rearrange(
            self.kv(x if context is None else context), "b m (two h d) -> two b h m d", two=2, h=self.heads
        )
        return self.out(rearrange(F.scaled_dot_product_attention(q, k, v), "b h n d -> b n (h d)"))


class TransformerBlock(nn.Module):
    """Pre-norm self-attention, cross-attention (when a context width is given) and a GEGLU feed-forward."""

    def __init__(self, dim: int, heads: int, context_dim: int | None, ff_mult: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.attn1 = nn.LayerNorm(dim), MultiHeadAttention(dim, heads)
        self.cross = context_dim is not None
        if self.cross:
            self.norm2, self.attn2 = nn.LayerNorm(dim), MultiHeadAttention(dim, heads, context_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff_in = nn.Linear(dim, 2 * ff_mult * dim)
        self.ff_out = nn.Sequential(nn.Dropout(dropout), nn.Linear(ff_mult * dim, dim))

    def forward(self, x: Tensor, context: Tensor | None) -> Tensor:
        x = x + self.attn1(self.norm1(x))
        if self.cross:
            x = x + self.attn2(self.norm2(x), context)
        value, gate = self.ff_in(self.norm3(x)).chunk(2, dim=-1)
        return x + self.ff_out(value * F.gelu(gate))


class SpatialTransformer(nn.Module):
    """GroupNorm, 1x1 projection to tokens, ``depth`` transformer blocks, projection back
    (zero-initialised, so the block starts as the identity), residual."""

    def __init__(
        self,
        channels: int,
        heads: int,
        depth: int,
        context_dim: int | None,
        groups: int,
        ff_mult: int,
        dropout: float,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=eps)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.blocks = nn.ModuleList(
            TransformerBlock(channels, heads, context_dim, ff_mult, dropout) for _ in range(depth)
        )
        self.proj_out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: Tensor, context: Tensor | None) -> Tensor:
        h, w = x.shape[-2:]
        tokens = rearrange(self.proj_in(self.norm(x)), "b c h w -> b (h w) c")
        for block in self.blocks:
            tokens = block(tokens, context)
        return x + self.proj_out(rearrange(tokens, "b (h w) c -> b c h w", h=h, w=w))


class SelfAttention(nn.Module):
    """GroupNorm, multi-head self-attention over all positions, projection back
    (zero-initialised), residual: the original's plain attention block, which its models
    without cross-attention use. ``context`` is ignored."""

    def __init__(self, channels: int, heads: int, groups: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels, eps=eps)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.out = nn.Linear(channels, channels)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        h, w = x.shape[-2:]
        tokens = rearrange(self.norm(x), "b c h w -> b (h w) c")
        q, k, v = rearrange(self.qkv(tokens), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        attended = rearrange(F.scaled_dot_product_attention(q, k, v), "b h n d -> b n (h d)")
        return x + rearrange(self.out(attended), "b (h w) c -> b c h w", h=h, w=w)


class Stage(nn.Module):
    """One step of the UNet's path: a residual block, then attention, then resampling (each optional)."""

    def __init__(
        self,
        res: ResBlock | None = None,
        attn: SpatialTransformer | SelfAttention | None = None,
        resample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.res, self.attn, self.resample = res, attn, resample

    def forward(self, h: Tensor, emb: Tensor, context: Tensor | None) -> Tensor:
        if self.res is not None:
            h = self.res(h, emb)
        if self.attn is not None:
            h = self.attn(h, context)
        if isinstance(self.resample, ResBlock):
            h = self.resample(h, emb)
        elif self.resample is not None:
            h = self.resample(h)
        return h


class UNet(Denoiser):
    """The paper's UNet over latents (B, in_channels, h, w) -> (B, out_channels, h, w).

    ``in_channels``, ``out_channels``, ``context_dim`` and ``vector_dim`` are what the first
    stage and the conditioners declare; a pipeline fills them (and rejects a spec that states
    them otherwise). h and w must be divisible by 2^(len(channel_mult) - 1).
    """

    class Params(Params):
        in_channels: PositiveInt | None = Field(
            None, description="Latent channels + concat channels (filled by the pipeline)."
        )
        out_channels: PositiveInt | None = Field(None, description="Latent channels (filled by the pipeline).")
        context_dim: PositiveInt | None = Field(
            None, description="Width of the cross-attention context (filled by the pipeline); none: no cross-attention."
        )
        vector_dim: PositiveInt | None = Field(
            None, description="Width of the vector condition (filled by the pipeline)."
        )
        model_channels: PositiveInt = Field(64, description="Channels at level 0.")
        channel_mult: list[PositiveInt] = Field(
            [1, 2, 4],
            min_length=1,
            description="Channel multiplier per level; each level after the first halves h and w.",
        )
        num_res_blocks: PositiveInt = 2
        attention_levels: list[NonNegativeInt] = Field(
            [1, 2], description="Levels with a spatial transformer after each residual block."
        )
        mid_attention: bool = Field(True, description="A spatial transformer between the two middle residual blocks.")
        attention: Literal["transformer", "self"] = Field(
            "transformer",
            description=(
                "Spatial transformers (self- and cross-attention, feed-forward), or plain multi-head self-attention "
                "blocks (the original's AttentionBlock, in its models without cross-attention)."
            ),
        )
        attention_norm_eps: PositiveFloat = Field(
            1e-5,
            description=(
                "The epsilon of the GroupNorm before each attention block (the original's spatial transformer: 1e-6)."
            ),
        )
        resblock_updown: bool = Field(
            False, description="Resample between levels with residual blocks instead of (de)convolutions."
        )
        num_heads: PositiveInt = Field(4, description="Attention heads (unless head_channels is set).")
        head_channels: PositiveInt | None = Field(
            None, description="Channels per head; sets the heads per level instead of num_heads."
        )
        transformer_depth: PositiveInt = Field(1, description="Transformer blocks per spatial transformer.")
        ff_mult: PositiveInt = Field(4, description="Feed-forward width as a multiple of the channels.")
        dropout: NonNegativeFloat = 0.0
        scale_shift_norm: bool = Field(True, description="Apply the time embedding as scale and shift of the norm.")
        norm_groups: PositiveInt = Field(32, description="GroupNorm groups; must divide every level's channels.")
        prediction: Literal["eps", "x0", "v"] = Field("eps", description="What the network predicts.")
        gradient_checkpointing: bool = Field(
            False, description="Recompute activations in the backward pass to save memory."
        )

        @model_validator(mode="after")
        def _consistent(self) -> UNet.Params:
            check_levels(self.attention_levels, self.channel_mult, "attention_levels", "channel_mult")
            check_norm_groups(
                self.model_channels, self.channel_mult, self.norm_groups, "model_channels", "channel_mult"
            )
            if self.attention == "self" and self.context_dim is not None:
                raise ValueError(
                    f"attention 'self' has no cross-attention but context_dim is {self.context_dim}; use attention "
                    "'transformer' or conditioners that give no context"
                )
            levels = [*self.attention_levels, *([len(self.channel_mult) - 1] if self.mid_attention else [])]
            for level in sorted(set(levels)):
                width = self.model_channels * self.channel_mult[level]
                if width % (self.head_channels or self.num_heads):
                    what = (
                        f"head_channels {self.head_channels}" if self.head_channels else f"num_heads {self.num_heads}"
                    )
                    raise ValueError(
                        f"{what} does not divide level {level}'s {width} channels; choose a divisor of {width}"
                    )
            return self

    @classmethod
    def downsamplings(cls, params: UNet.Params) -> int:
        """How many times the UNet halves h and w."""
        return len(params.channel_mult) - 1

    def __init__(self, params: UNet.Params) -> None:
        super().__init__(params)
        p = params
        if p.in_channels is None or p.out_channels is None:
            raise ValueError(
                "unet needs in_channels and out_channels: build it in a pipeline, which fills them "
                "from the first stage and the conditioners, or give them"
            )
        self.prediction = p.prediction
        mc, g, drop = p.model_channels, p.norm_groups, p.dropout
        emb = 4 * mc
        self.time_embed = nn.Sequential(nn.Linear(mc, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.vector = nn.Linear(p.vector_dim, emb) if p.vector_dim else None

        def res(c_in: int, c_out: int, resample: Literal["up", "down"] | None = None) -> ResBlock:
            return ResBlock(c_in, c_out, g, drop, emb_channels=emb, scale_shift=p.scale_shift_norm, resample=resample)

        def attn(c: int) -> SpatialTransformer | SelfAttention:
            heads = c // p.head_channels if p.head_channels else p.num_heads
            if p.attention == "self":
                return SelfAttention(c, heads, g, p.attention_norm_eps)
            eps = p.attention_norm_eps
            return SpatialTransformer(c, heads, p.transformer_depth, p.context_dim, g, p.ff_mult, drop, eps)

        widths = [mc * m for m in p.channel_mult]
        self.input = nn.Conv2d(p.in_channels, mc, 3, padding=1)
        self.down, skips, c = nn.ModuleList(), [mc], mc
        for level, width in enumerate(widths):
            for _ in range(p.num_res_blocks):
                self.down.append(Stage(res(c, width), attn(width) if level in p.attention_levels else None))
                c = width
                skips.append(c)
            if level < len(widths) - 1:
                self.down.append(Stage(res(c, c, "down")) if p.resblock_updown else Stage(resample=downsample(c)))
                skips.append(c)
        self.middle = nn.ModuleList([Stage(res(c, c), attn(c) if p.mid_attention else None), Stage(res(c, c))])
        self.up = nn.ModuleList()
        for level, width in reversed(list(enumerate(widths))):
            for i in range(p.num_res_blocks + 1):
                last = i == p.num_res_blocks and level > 0
                # Built in this order (residual, attention, resampling) so that seeded inits stay as they were.
                block = res(c + skips.pop(), width)
                attention = attn(width) if level in p.attention_levels else None
                upsample = (res(width, width, "up") if p.resblock_updown else Upsample(width)) if last else None
                self.up.append(Stage(block, attention, upsample))
                c = width
        self.out = nn.Sequential(nn.GroupNorm(g, c), nn.SiLU(), nn.Conv2d(c, p.out_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def original_names(self) -> list[Pair]:
        """The original ``UNetModel``'s names (see :mod:`plugins.original_unet`); the vector
        condition's projection has none."""
        return unet_pairs(self)

    def diffusers_model(self) -> DiffusersModel:
        """``UNet2DConditionModel`` (attention ``transformer``) or ``UNet2DModel`` (``self``);
        see :mod:`plugins.diffusers_unet`."""
        return unet_diffusers_model(self)

    @classmethod
    def from_diffusers(cls, class_name: str, config: dict, folder: Path) -> dict | None:
        """Our params for a diffusers ``UNet2DConditionModel`` or ``UNet2DModel`` config."""
        return unet_params_from_diffusers(class_name, config)

    def _run(self, stage: Stage, h: Tensor, emb: Tensor, context: Tensor | None) -> Tensor:
        if self.params.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(stage, h, emb, context, use_reentrant=False)
        return stage(h, emb, context)

    def forward(self, x: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        p = self.params
        if (cond.context is None) != (p.context_dim is None) or (cond.vector is None) != (p.vector_dim is None):
            raise ValueError(
                f"unet was built for context_dim {p.context_dim} and vector_dim {p.vector_dim}, but the "
                f"conditioning has parts {cond.shape}"
            )
        if cond.concat is not None:
            x = torch.cat([x, cond.concat.to(x.dtype)], dim=1)
        emb = self.time_embed(timestep_embedding(t, p.model_channels).to(x.dtype))
        if self.vector is not None:
            emb = emb + self.vector(cond.vector.to(emb.dtype))
        h = self.input(x)
        skips = [h]
        for stage in self.down:
            h = self._run(stage, h, emb, cond.context)
            skips.append(h)
        for stage in self.middle:
            h = self._run(stage, h, emb, cond.context)
        for stage in self.up:
            h = self._run(stage, torch.cat([h, skips.pop()], dim=1), emb, cond.context)
        return self.out(h)
