"""``identity``: the first stage of pixel-space diffusion (f = 1, the latent is the image)."""

from __future__ import annotations

from pydantic import Field, PositiveInt
from torch import Tensor

from core import FirstStage, LatentShape, Params


class IdentityFirstStage(FirstStage):
    """Pixel space: encode and decode return the image unchanged (f = 1)."""

    class Params(Params):
        channels: PositiveInt = Field(3, description="Image channels, which are also the latent's.")

    @classmethod
    def latent_shape(cls, params: IdentityFirstStage.Params) -> LatentShape:
        return LatentShape(channels=params.channels, factor=1, image_channels=params.channels)

    def _check(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.params.channels:
            raise ValueError(f"identity first stage expects (B, {self.params.channels}, H, W), got {tuple(x.shape)}")
        return x

    def encode(self, x: Tensor) -> Tensor:
        return self._check(x)

    def decode(self, z: Tensor) -> Tensor:
        return self._check(z)
