"""``kl``: a diagonal Gaussian posterior regularised towards N(0, I)."""

from __future__ import annotations

import torch
from pydantic import Field, NonNegativeFloat
from torch import Tensor

from core import Params, Regularizer


class KL(Regularizer):
    """Diagonal Gaussian posterior with a KL penalty towards N(0, I) (weight about 1e-6)."""

    class Params(Params):
        weight: NonNegativeFloat = Field(1e-6, description="Weight of the KL term in the training loss.")
        sample: bool = Field(True, description="Decode and diffuse a sample of the posterior (else its mean).")

    @classmethod
    def moment_channels(cls, params: KL.Params, latent_channels: int) -> int:
        return 2 * latent_channels

    @staticmethod
    def _split(moments: Tensor) -> tuple[Tensor, Tensor]:
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def _draw(self, mean: Tensor, logvar: Tensor) -> Tensor:
        if not self.params.sample:
            return mean
        return mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)

    def forward(self, moments: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """KL(q || N(0, I)) summed over latent elements, averaged over the batch (the paper's reduction)."""
        mean, logvar = self._split(moments)
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1).mean()
        return self._draw(mean, logvar), {"loss": self.params.weight * kl, "kl": kl.detach()}

    def latent(self, moments: Tensor) -> Tensor:
        return self._draw(*self._split(moments))

    def mode(self, moments: Tensor) -> Tensor:
        return self._split(moments)[0]

    def quantize(self, z: Tensor) -> Tensor:
        return z
