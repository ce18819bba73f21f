"""``autoencoder``: the convolutional first stage of the paper, with a pluggable regulariser."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from einops import rearrange
from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, model_validator
from torch import Tensor, nn
from torch.nn import functional as F

from core import DiffusersModel, FirstStage, LatentShape, Params, RegularizerSpec
from core.original import Pair
from plugins.blocks import ResBlock, Upsample, check_levels, check_norm_groups, downsample
from plugins.diffusers_autoencoder import autoencoder_diffusers_model, autoencoder_params_from_diffusers
from plugins.original_autoencoder import autoencoder_pairs


class Attention(nn.Module):
    """Single-head self-attention over all positions, with a residual connection."""

    def __init__(self, channels: int, groups: int, eps: float) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=eps)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        q, k, v = rearrange(self.qkv(self.norm(x)), "b (three c) h w -> three b 1 (h w) c", three=3)
        attended = F.scaled_dot_product_attention(q, k, v)
        return x + self.out(rearrange(attended, "b 1 (h w) c -> b c h w", h=h, w=w))


def _head(c_in: int, c_out: int, groups: int, eps: float) -> nn.Sequential:
    return nn.Sequential(nn.GroupNorm(groups, c_in, eps=eps), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1))


class Autoencoder(FirstStage):
    """Convolutional encoder/decoder with residual blocks; f = 2^(len(ch_mult) - 1)."""

    class Params(Params):
        in_channels: PositiveInt = Field(3, description="Image channels.")
        ch: PositiveInt = Field(128, description="Base channel count.")
        ch_mult: list[PositiveInt] = Field(
            [1, 2, 4, 4],
            min_length=1,
            description="Channel multiplier per level; each level after the first halves H and W.",
        )
        num_res_blocks: PositiveInt = 2
        attention_levels: list[NonNegativeInt] = Field(
            [], description="Levels (0 = full resolution) with self-attention after each residual block."
        )
        mid_attention: bool = Field(True, description="Self-attention between the two middle residual blocks.")
        z_channels: PositiveInt = Field(4, description="Latent channels c.")
        norm_groups: PositiveInt = Field(32, description="GroupNorm groups; must divide every level's channels.")
        dropout: NonNegativeFloat = 0.0
        norm_eps: PositiveFloat = Field(1e-5, description="The GroupNorms' epsilon (the original code's: 1e-6).")
        downsample_pad: Literal["both", "bottom_right"] = Field(
            "both",
            description=(
                "Where the encoder's strided convolutions pad their input by one: on every side, or at the bottom "
                "and right only (the original code's)."
            ),
        )
        quant_conv: bool = Field(
            False,
            description=(
                "1x1 convolutions between the encoder and the regulariser and between the regulariser and the "
                "decoder (the original code's quant_conv and post_quant_conv)."
            ),
        )
        regularizer: RegularizerSpec = Field(description='The latent\'s regulariser, e.g. {"name": "kl"}.')

        @model_validator(mode="after")
        def _groups_divide_channels(self) -> Autoencoder.Params:
            check_levels(self.attention_levels, self.ch_mult, "attention_levels")
            check_norm_groups(self.ch, self.ch_mult, self.norm_groups)
            return self

    @classmethod
    def latent_shape(cls, params: Autoencoder.Params) -> LatentShape:
        return LatentShape(
            channels=params.z_channels, factor=2 ** (len(params.ch_mult) - 1), image_channels=params.in_channels
        )

    def __init__(self, params: Autoencoder.Params) -> None:
        super().__init__(params)
        p = params
        self.regularizer = p.regularizer.build(latent_channels=p.z_channels)
        moments = p.regularizer.cls.moment_channels(p.regularizer.params, p.z_channels)
        widths = [p.ch * m for m in p.ch_mult]
        g, drop, eps = p.norm_groups, p.dropout, p.norm_eps

        def block(c_in: int, c_out: int) -> ResBlock:
            return ResBlock(c_in, c_out, g, drop, eps=eps)

        def middle(c: int) -> list[nn.Module]:
            return [block(c, c), *([Attention(c, g, eps)] if p.mid_attention else []), block(c, c)]

        down: list[nn.Module] = [nn.Conv2d(p.in_channels, widths[0], 3, padding=1)]
        c = widths[0]
        for level, width in enumerate(widths):
            for _ in range(p.num_res_blocks):
                down.append(block(c, width))
                c = width
                if level in p.attention_levels:
                    down.append(Attention(c, g, eps))
            if level < len(widths) - 1:
                down.append(downsample(c, p.downsample_pad))
        down += [*middle(c), _head(c, moments, g, eps)]
        self.encoder = nn.Sequential(*down)
        # Identity when absent, so that checkpoints of configs without them keep their keys.
        self.quant_conv = nn.Conv2d(moments, moments, 1) if p.quant_conv else nn.Identity()
        self.post_quant_conv = nn.Conv2d(p.z_channels, p.z_channels, 1) if p.quant_conv else nn.Identity()

        up: list[nn.Module] = [nn.Conv2d(p.z_channels, c, 3, padding=1), *middle(c)]
        for level, width in reversed(list(enumerate(widths))):
            for _ in range(p.num_res_blocks + 1):
                up.append(block(c, width))
                c = width
                if level in p.attention_levels:
                    up.append(Attention(c, g, eps))
            if level > 0:
                up.append(Upsample(c))
        up.append(_head(c, p.in_channels, g, eps))
        self.decoder = nn.Sequential(*up)

    def original_names(self) -> list[Pair]:
        """The original's names (see :mod:`plugins.original_autoencoder`)."""
        return autoencoder_pairs(self.params)

    def diffusers_model(self) -> DiffusersModel:
        """``AutoencoderKL`` or ``VQModel`` (see :mod:`plugins.diffusers_autoencoder`)."""
        return autoencoder_diffusers_model(self.params)

    @classmethod
    def from_diffusers(cls, class_name: str, config: dict, folder: Path) -> dict | None:
        """Our params for a diffusers ``AutoencoderKL`` or ``VQModel`` config."""
        return autoencoder_params_from_diffusers(class_name, config)

    def decoder_last_layer(self) -> Tensor:
        return self.decoder[-1][-1].weight

    def code_histogram(self, x: Tensor) -> Tensor | None:
        return self.regularizer.code_histogram(self.moments(x))

    def moments(self, x: Tensor) -> Tensor:
        return self.quant_conv(self.encoder(x))

    def latent_from_moments(self, moments: Tensor) -> Tensor:
        return self.regularizer.latent(moments)

    def encode(self, x: Tensor) -> Tensor:
        return self.latent_from_moments(self.moments(x))

    def mode(self, x: Tensor) -> Tensor:
        return self.regularizer.mode(self.moments(x))

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(self.post_quant_conv(self.regularizer.quantize(z)))

    def forward(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        z, terms = self.regularizer(self.moments(x))
        return self.decoder(self.post_quant_conv(z)), terms
