"""Building blocks shared by the built-in networks, and the checks of their params."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import ValidationInfo
from torch import Tensor, nn
from torch.nn import functional as F


def check_norm_groups(
    ch: int, ch_mult: Sequence[int], norm_groups: int, field: str = "ch", mult_field: str = "ch_mult"
) -> None:
    """Raise ``ValueError`` (naming the counts and a group count that works) unless
    ``norm_groups`` divides every level's channel count ch x mult."""
    widths = sorted({ch * m for m in ch_mult})
    bad = [w for w in widths if w % norm_groups]
    if bad:
        divisors = [g for g in (32, 16, 8, 4, 2, 1) if all(w % g == 0 for w in widths)]
        raise ValueError(
            f"norm_groups {norm_groups} does not divide the channel counts {bad} "
            f"({field} {ch} x {mult_field} {list(ch_mult)}); use norm_groups {divisors[0]} or change {field}"
        )


def heads_divide_width(cls: type, heads: int, info: ValidationInfo) -> int:
    """A pydantic validator of a ``heads`` field that must divide the ``width`` field before it."""
    width = info.data.get("width")
    if width is not None and width % heads:
        raise ValueError(f"{heads} heads do not divide width {width}; use a divisor of it")
    return heads


def check_levels(levels: Sequence[int], ch_mult: Sequence[int], field: str, mult_field: str = "ch_mult") -> None:
    """Raise ``ValueError`` if a level named in ``field`` is not one of ``mult_field``'s."""
    outside = [level for level in levels if level >= len(ch_mult)]
    if outside:
        raise ValueError(
            f"{field} {outside} do not exist: {mult_field} {list(ch_mult)} has levels 0 to {len(ch_mult) - 1}"
        )


class ResBlock(nn.Module):
    """GroupNorm, SiLU, 3x3 conv, twice, with a (1x1 where channels change) skip connection.

    With ``emb_channels`` it takes an embedding (B, emb_channels), e.g. of the timestep,
    projected and added between the convolutions, or with ``scale_shift`` applied as
    norm(h) x (1 + scale) + shift (the paper's UNet). ``eps`` is the GroupNorms' (the original
    autoencoder's: 1e-6). With ``resample`` it halves (2x2 average) or doubles (nearest) H and W
    of both paths after the first norm and activation (the original UNet's resblock_updown).
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        groups: int,
        dropout: float,
        emb_channels: int = 0,
        scale_shift: bool = False,
        eps: float = 1e-5,
        resample: Literal["up", "down"] | None = None,
    ) -> None:
        super().__init__()
        self.resample = resample
        self.in_layers = nn.Sequential(
            nn.GroupNorm(groups, c_in, eps=eps), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1)
        )
        self.emb = (
            nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * c_out if scale_shift else c_out))
            if emb_channels
            else None
        )
        self.scale_shift = scale_shift
        self.out_norm = nn.GroupNorm(groups, c_out, eps=eps)
        self.out_layers = nn.Sequential(nn.SiLU(), nn.Dropout(dropout), nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def _resample(self, x: Tensor) -> Tensor:
        if self.resample == "down":
            return F.avg_pool2d(x, 2)
        return F.interpolate(x, scale_factor=2.0, mode="nearest")

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        """(B, c_in, H, W) and, if built with ``emb_channels``, (B, emb_channels) -> (B, c_out, H', W')."""
        if self.resample is None:
            h = self.in_layers(x)
        else:
            h = self.in_layers[-1](self._resample(self.in_layers[:-1](x)))
            x = self._resample(x)
        if self.emb is not None:
            projected = self.emb(emb)[..., None, None].to(h.dtype)
            if self.scale_shift:
                scale, shift = projected.chunk(2, dim=1)
                h = self.out_norm(h) * (1 + scale) + shift
            else:
                h = self.out_norm(h + projected)
        else:
            h = self.out_norm(h)
        return self.skip(x) + self.out_layers(h)


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def downsample(channels: int, pad: Literal["both", "bottom_right"] = "both") -> nn.Module:
    """A strided 3x3 conv halving H and W, its input padded by one on every side (``"both"``),
    or by one at the bottom and right only (``"bottom_right"``, the original autoencoder's)."""
    if pad == "both":
        return nn.Conv2d(channels, channels, 3, stride=2, padding=1)
    return nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(channels, channels, 3, stride=2))
