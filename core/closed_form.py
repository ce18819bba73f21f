"""A diffusion case with a known answer, to prove samplers right with no network in sight.

For data x0 ~ N(mu, s^2) (every coordinate independent) the exact denoiser is linear:
``D(x, sigma) = mu + s^2 / (s^2 + sigma^2) (x - mu)``. A deterministic sampler is then an
affine map z -> A z + B of its standard-normal start z, so its output is exactly N(B, A^2)
and two runs (z = 0 and z = 1) give its 2-Wasserstein distance to the truth. A stochastic
sampler adds Gaussian noise to affine maps, so its output is Gaussian too: its mean and
standard deviation, estimated from many samples, give the distance.

Samplers start from the true marginal at sigma_0, N(mu, s^2 + sigma_0^2), so what is
measured is the solver's error alone. Stopping at a schedule's smallest sigma rather than 0
leaves a floor of s - s^2 / sqrt(s^2 + sigma_min^2).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class GaussianData:
    """Scalar data N(mu, s^2); ``calls`` counts denoiser evaluations (one per batch)."""

    mu: float = 0.5
    s: float = 0.3
    calls: int = field(default=0, compare=False)

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        """The exact E[x0 | x] for x = x0 + sigma eps; x (B, ...), sigma (B,)."""
        self.calls += 1
        level = sigma.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        return self.mu + self.s**2 / (self.s**2 + level**2) * (x - self.mu)

    def eps(self, x: Tensor, sigma: Tensor) -> Tensor:
        """The exact noise prediction (x - D(x, sigma)) / sigma."""
        level = sigma.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        return (x - self.denoise(x, sigma)) / level

    def start(self, sigma: float, z: Tensor) -> Tensor:
        """Standard-normal z mapped onto the true marginal at noise level ``sigma``."""
        return self.mu + math.sqrt(self.s**2 + sigma**2) * z

    def distance(self, mean: float, std: float) -> float:
        """2-Wasserstein distance from N(mean, std^2) to N(mu, s^2)."""
        return math.hypot(mean - self.mu, abs(std) - self.s)

    def exact_distance(self, run: Callable[[Tensor], Tensor]) -> float:
        """W2 of a deterministic sampler: ``run`` maps starts (2, 1) float64 to outputs (2, 1)."""
        out = run(torch.tensor([[0.0], [1.0]], dtype=torch.float64))
        return self.distance(out[0, 0].item(), (out[1, 0] - out[0, 0]).item())

    def sampled_distance(self, run: Callable[[Tensor], Tensor], points: int, seed: int = 0) -> float:
        """W2 of a stochastic sampler, estimated from ``points`` samples: ``run`` maps
        standard-normal starts (points, 1) to outputs. Its own error is about s / sqrt(points)."""
        z = torch.randn(points, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        out = run(z)
        return self.distance(out.mean().item(), out.std().item())
