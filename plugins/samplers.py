"""Samplers in k-diffusion's form: each a short function over tensors.

``denoise(x, sigma)`` estimates x_0 from x = x_0 + sigma eps; ``sigmas`` (n + 1,) decreases
to 0; ``x`` starts at noise level ``sigmas[0]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor

from pydantic import Field

from core import Params, Sampler
from core.interfaces import DenoiseFn
from core.sampling import Generators, noise_like


def ancestral_step(sigma: Tensor, following: Tensor, eta: float) -> tuple[Tensor, Tensor]:
    """(sigma_down, sigma_up) for a step from ``sigma`` to ``following``: deterministic down to
    sigma_down, then fresh noise of std sigma_up; eta = 1 is DDPM's posterior, eta = 0 no noise."""
    up = torch.minimum(following, eta * (following**2 * (sigma**2 - following**2) / sigma**2).sqrt())
    return (following**2 - up**2).sqrt(), up


def _level(sigma: Tensor, x: Tensor) -> Tensor:
    return sigma.to(x.dtype).expand(x.shape[0])


def euler(denoise: DenoiseFn, x: Tensor, sigmas: Tensor) -> Tensor:
    """Euler's method on the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma; n evaluations."""
    for sigma, following in zip(sigmas[:-1], sigmas[1:], strict=True):
        slope = (x - denoise(x, _level(sigma, x))) / sigma.to(x.dtype)
        x = x + slope * (following - sigma).to(x.dtype)
    return x


def heun(denoise: DenoiseFn, x: Tensor, sigmas: Tensor) -> Tensor:
    """Heun's second-order method (Karras et al., 2022); 2 evaluations a step, 1 on the last (to 0)."""
    for sigma, following in zip(sigmas[:-1], sigmas[1:], strict=True):
        slope = (x - denoise(x, _level(sigma, x))) / sigma.to(x.dtype)
        step = (following - sigma).to(x.dtype)
        guess = x + slope * step
        if following == 0:
            x = guess
            continue
        slope_after = (guess - denoise(guess, _level(following, x))) / following.to(x.dtype)
        x = x + (slope + slope_after) / 2 * step
    return x


def dpmpp_2m(denoise: DenoiseFn, x: Tensor, sigmas: Tensor) -> Tensor:
    """DPM-Solver++(2M) (Lu et al., 2022): second-order multistep in log-sigma; n evaluations."""
    previous = None
    for i, (sigma, following) in enumerate(zip(sigmas[:-1], sigmas[1:], strict=True)):
        x0 = denoise(x, _level(sigma, x))
        if following == 0:
            x = x0
            continue
        t, t_next = -sigma.log(), -following.log()
        h = t_next - t
        estimate = x0
        if previous is not None:
            h_last = t - (-sigmas[i - 1].log())
            r = h_last / h
            estimate = (1 + 1 / (2 * r)).to(x.dtype) * x0 - (1 / (2 * r)).to(x.dtype) * previous
        x = (following / sigma).to(x.dtype) * x - torch.expm1(-h).to(x.dtype) * estimate
        previous = x0
    return x


def euler_ancestral(denoise: DenoiseFn, x: Tensor, sigmas: Tensor, eta: float = 1.0,
                    generator: Generators = None) -> Tensor:
    """Euler steps down to sigma_down, then noise up to the next level (ancestral sampling); n evaluations."""
    for sigma, following in zip(sigmas[:-1], sigmas[1:], strict=True):
        x0 = denoise(x, _level(sigma, x))
        down, up = ancestral_step(sigma, following, eta)
        x = x + (x - x0) / sigma.to(x.dtype) * (down - sigma).to(x.dtype)
        if following > 0:
            x = x + noise_like(x, generator) * up.to(x.dtype)
    return x


class OdeSampler(Sampler):
    """A deterministic sampler: ``solve`` is its function over tensors; randomness is unused."""

    solve: ClassVar[Callable[[DenoiseFn, Tensor, Tensor], Tensor]]

    def sample(self, denoise: DenoiseFn, x: Tensor, sigmas: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        return type(self).solve(denoise, x, sigmas)


class EulerSampler(OdeSampler):
    """Euler: first-order probability-flow ODE solver, one evaluation a step."""

    solve = staticmethod(euler)


class HeunSampler(OdeSampler):
    """Heun: second-order ODE solver, two evaluations a step (one on the last)."""

    solve = staticmethod(heun)


class DpmPP2MSampler(OdeSampler):
    """DPM-Solver++(2M): second-order multistep ODE solver, one evaluation a step."""

    solve = staticmethod(dpmpp_2m)


class EulerAncestralSampler(Sampler):
    """Euler ancestral: stochastic, fresh noise each step (eta 1: DDPM's posterior variance)."""

    class Params(Params):
        eta: float = Field(1.0, ge=0.0, le=1.0, description="How much of the posterior noise to add each step.")

    def sample(self, denoise: DenoiseFn, x: Tensor, sigmas: Tensor, *, generator: Generators = None) -> Tensor:
        return euler_ancestral(denoise, x, sigmas, self.params.eta, generator)
