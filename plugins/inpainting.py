"""``inpainting``: what the paper's inpainting model (``inpainting_big``) concatenates to its
latent, from the masked image and its mask.

The example field (``masked_image`` by default, as the ``masked`` dataset gives it, see
:func:`core.masks.masked_input`) holds (C + 1, H, W): the image with its hole at -1, then the
mask as -1 (keep) / +1 (hole). The condition is the frozen first stage's encoding of the
masked image (its mode, before any quantisation: what the original takes from the encoder
and ``quant_conv``), then the mask brought to the latent's size by nearest-neighbour
resizing (the top-left pixel of each f x f block, as ``interpolate(mode="nearest")`` picks),
still -1 / +1: c + 1 channels in that order.

It has no weights of its own. Its "no condition" is its output for an image that is all hole.
"""

from __future__ import annotations

import torch
from pydantic import Field, PositiveInt
from torch import Tensor
from torch.nn import functional as F

from core import Conditioning, ConditioningShape, FrozenEncoder, Params
from core.masks import MASKED_IMAGE
from plugins.concat import ConcatConditioner


class Inpainting(ConcatConditioner):
    """Masked image and mask (B, C + 1, H, W) -> concat (B, c + 1, H/f, W/f): the first stage's
    latent of the masked image, then the +-1 mask resized to the latent."""

    trainable_by_default = False

    class Params(Params):
        image_channels: PositiveInt = Field(3, description="C: the image's channels (the field holds C + 1).")
        latent_channels: PositiveInt = Field(3, description="c: the first stage's latent channels.")
        factor: PositiveInt = Field(4, description="The first stage's f: the output is the image's size / f.")
        field: str = Field(MASKED_IMAGE, description="The example field holding the masked image and its mask.")

    def __init__(self, params: Inpainting.Params) -> None:
        super().__init__(params)
        self.encoder: FrozenEncoder | None = None

    @classmethod
    def produces(cls, params: Inpainting.Params) -> ConditioningShape:
        return ConditioningShape(concat=params.latent_channels + 1)

    @classmethod
    def first_stage_channels(cls, params: Inpainting.Params) -> int:
        return params.latent_channels

    def use_first_stage(self, encoder: FrozenEncoder) -> None:
        self.encoder = encoder

    def _checked(self, y: Tensor) -> Tensor:
        p = self.params
        y = torch.as_tensor(y)
        if y.ndim != 4 or y.shape[1] != p.image_channels + 1 or not y.dtype.is_floating_point:
            raise ValueError(
                f"inpainting takes float (B, {p.image_channels + 1}, H, W): the masked image and its mask as one "
                f"more channel (core.masks.masked_input), got {y.dtype} {tuple(y.shape)}"
            )
        if y.shape[-2] % p.factor or y.shape[-1] % p.factor:
            raise ValueError(f"the image's sides {tuple(y.shape[-2:])} do not divide by the factor {p.factor}")
        if not torch.all(y[:, -1].abs() == 1):
            raise ValueError("the last channel (the mask) holds values other than -1 (keep) and +1 (hole)")
        if self.encoder is None:
            raise RuntimeError("inpainting encodes with the first stage: call use_first_stage before forward")
        return y

    def forward(self, y: Tensor) -> Conditioning:
        """Masked images with masks (B, C + 1, H, W) -> concat (B, c + 1, H/f, W/f)."""
        y = self._checked(y)
        size = (y.shape[-2] // self.params.factor, y.shape[-1] // self.params.factor)
        latent = self.encoder(y[:, :-1])
        mask = F.interpolate(y[:, -1:], size=size, mode="nearest").to(latent.dtype)
        return Conditioning(concat=torch.cat([latent, mask], dim=1))

    def unconditional(self, cond: Conditioning) -> Conditioning:
        """The output for an image that is all hole (nothing known), shaped like ``cond``."""
        b, _, h, w = cond.concat.shape
        f = self.params.factor
        hole = torch.ones(b, self.params.image_channels + 1, h * f, w * f, device=cond.concat.device)
        hole[:, :-1] = -1
        return self(hole.to(cond.concat.dtype))
