"""``vq``: vector quantisation of the latent against a learned codebook.

As in the paper's code, diffusion runs on the continuous latent before quantisation;
:meth:`VQ.quantize` snaps a latent to the codebook just before decoding.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from einops import rearrange
from pydantic import Field, NonNegativeFloat, PositiveInt
from torch import Tensor, nn

from core import Params, Regularizer


def _all_reduce(tensor: Tensor) -> Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


class VQ(Regularizer):
    """Vector quantisation with commitment loss, optional EMA codebook updates and dead-code restarts."""

    class Params(Params):
        codebook_size: PositiveInt = Field(8192, description="Number of codes K.")
        beta: NonNegativeFloat = Field(0.25, description="Weight of the commitment term.")
        weight: NonNegativeFloat = Field(1.0, description="Weight of the whole VQ term in the training loss.")
        ema: bool = Field(False, description="Update the codebook by moving averages instead of gradients.")
        ema_decay: float = Field(0.99, gt=0, lt=1)
        restart_dead: bool = Field(True, description="Move codes unused for a while onto random encoder outputs.")
        init_from_data: bool = Field(
            False, description="Start the codebook on random encoder outputs of the first training batch."
        )
        dead_below: float = Field(
            0.03, gt=0, description="A code is dead when its moving-average use per batch is below this."
        )

    @classmethod
    def moment_channels(cls, params: VQ.Params, latent_channels: int) -> int:
        return latent_channels

    def __init__(self, params: VQ.Params, latent_channels: int) -> None:
        super().__init__(params, latent_channels)
        k = params.codebook_size
        codes = torch.empty(k, latent_channels).uniform_(-1 / k, 1 / k)
        if params.ema:
            self.register_buffer("codebook", codes)
            self.register_buffer("cluster_size", torch.zeros(k))
            self.register_buffer("embed_sum", codes.clone())
        else:
            self.codebook = nn.Parameter(codes)
        self.register_buffer("usage", torch.ones(k))
        self.register_buffer("initialized", torch.tensor(not params.init_from_data))

    def assign(self, z: Tensor) -> Tensor:
        """The index of the nearest code for every latent vector: (B, c, h, w) -> (B, h, w)."""
        flat = rearrange(z, "b c h w -> (b h w) c")
        distances = torch.cdist(flat.float(), self.codebook.float())
        return distances.argmin(dim=1).view(z.shape[0], z.shape[2], z.shape[3])

    def _lookup(self, indices: Tensor) -> Tensor:
        return rearrange(self.codebook[indices], "b h w c -> b c h w")

    def forward(self, moments: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Quantise with a straight-through gradient.

        Terms (each a mean over latent elements): ``codebook`` = ||sg[z] - q||^2 (absent with
        EMA updates), ``commitment`` = ||z - sg[q]||^2; ``loss`` = weight x (codebook + beta x
        commitment); ``perplexity`` and ``usage`` (fraction of codes used) of this batch.
        """
        indices = self.assign(moments)
        quantized = self._lookup(indices)
        commitment = (moments - quantized.detach()).pow(2).mean()
        codebook = (moments.detach() - quantized).pow(2).mean() if not self.params.ema else torch.zeros_like(commitment)
        counts = torch.bincount(indices.flatten(), minlength=self.params.codebook_size).float()
        if self.training:
            self._update(moments, indices, counts)
        probabilities = counts / counts.sum()
        perplexity = torch.exp(-(probabilities * torch.log(probabilities + 1e-10)).sum())
        terms = {
            "loss": self.params.weight * (codebook + self.params.beta * commitment),
            "commitment": commitment.detach(),
            "perplexity": perplexity,
            "usage": (counts > 0).float().mean(),
        }
        if not self.params.ema:
            terms["codebook"] = codebook.detach()
        return moments + (quantized - moments).detach(), terms

    @torch.no_grad()
    def _update(self, z: Tensor, indices: Tensor, counts: Tensor) -> None:
        """EMA codebook statistics and dead-code restarts, agreed across processes."""
        p = self.params
        flat = rearrange(z, "b c h w -> (b h w) c").float()
        if not self.initialized:
            self._move_codes(torch.arange(p.codebook_size, device=z.device), flat)
            self.initialized.fill_(True)
            return
        counts = _all_reduce(counts.clone())
        self.usage.mul_(p.ema_decay).add_(counts, alpha=1 - p.ema_decay)
        if p.ema:
            sums = _all_reduce(torch.zeros_like(self.embed_sum).index_add_(0, indices.flatten(), flat))
            self.cluster_size.mul_(p.ema_decay).add_(counts, alpha=1 - p.ema_decay)
            self.embed_sum.mul_(p.ema_decay).add_(sums, alpha=1 - p.ema_decay)
            total = self.cluster_size.sum()
            smoothed = (self.cluster_size + 1e-5) / (total + p.codebook_size * 1e-5) * total
            self.codebook.copy_(self.embed_sum / smoothed[:, None])
        if p.restart_dead:
            dead = torch.nonzero(self.usage < p.dead_below).flatten()
            if len(dead):
                self._move_codes(dead, flat)

    def _move_codes(self, codes: Tensor, vectors: Tensor) -> None:
        """Put ``codes`` on random rows of ``vectors`` (N, c), the same way on every process."""
        picks = vectors[torch.randint(len(vectors), (len(codes),), device=vectors.device)]
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(picks, src=0)
        self.codebook.data[codes] = picks.to(self.codebook.dtype)
        self.usage[codes] = 1.0
        if self.params.ema:
            self.embed_sum[codes] = picks
            self.cluster_size[codes] = 1.0

    def code_histogram(self, moments: Tensor) -> Tensor:
        return torch.bincount(self.assign(moments).flatten(), minlength=self.params.codebook_size)

    def latent(self, moments: Tensor) -> Tensor:
        return moments

    def quantize(self, z: Tensor) -> Tensor:
        return self._lookup(self.assign(z))
