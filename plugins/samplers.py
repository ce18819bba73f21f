"""Samplers in k-diffusion's form: each a short function over tensors.

``denoise(x, sigma)`` estimates x_0 from x = x_0 + sigma eps; ``sigmas`` (n + 1,) decreases
to 0; ``x`` starts at noise level ``sigmas[0]``. In this form DDIM's update is an Euler step
of the probability-flow ODE, DDPM's ancestral step is DDIM's with eta = 1, and PLMS is a
linear multistep method on eps = (x - D) / sigma, which is why they share functions here.
Every one keeps ``Sampler``'s default spacing, ``logsnr``: it measured best for each on the
closed-form case (benchmarks/samplers_closed_form.py, BENCHMARKS.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from pydantic import Field
from torch import Tensor

from core import Params, Sampler
from core.interfaces import DenoiseFn
from core.sampling import Generators, noise_like

# Adams-Bashforth weights of orders 1 to 4, newest slope first.
_ADAMS_BASHFORTH = ((1.0,), (3 / 2, -1 / 2), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24))


def ancestral_step(sigma: Tensor, following: Tensor, eta: float) -> tuple[Tensor, Tensor]:
    """(sigma_down, sigma_up) for a step from ``sigma`` to ``following``: deterministic down to
    sigma_down, then fresh noise of std sigma_up; eta = 1 is DDPM's posterior, eta = 0 no noise."""
    up = torch.minimum(following, eta * (following**2 * (sigma**2 - following**2) / sigma**2).sqrt())
    return (following**2 - up**2).sqrt(), up


def _level(sigma: Tensor, x: Tensor) -> Tensor:
    """sigma (a level of ``sigmas``, which may live on the CPU) as a (B,) tensor beside ``x``."""
    return sigma.to(device=x.device, dtype=x.dtype).expand(x.shape[0])


def _slope(denoise: DenoiseFn, x: Tensor, sigma: Tensor) -> Tensor:
    """dx/dsigma of the probability-flow ODE, (x - D(x, sigma)) / sigma: the eps that D implies."""
    return (x - denoise(x, _level(sigma, x))) / sigma.to(x.dtype)


def euler(denoise: DenoiseFn, x: Tensor, sigmas: Tensor) -> Tensor:
    """Euler's method on the probability-flow ODE; n evaluations. Also DDIM with eta = 0."""
    for sigma, following in zip(sigmas[:-1], sigmas[1:], strict=True):
        x = x + _slope(denoise, x, sigma) * (following - sigma).to(x.dtype)
    return x


def heun(denoise: DenoiseFn, x: Tensor, sigmas: Tensor) -> Tensor:
    """Heun's second-order method (Karras et al., 2022); 2 evaluations a step, 1 on the last (to 0)."""
    for sigma, following in zip(sigmas[:-1], sigmas[1:], strict=True):
        slope = _slope(denoise, x, sigma)
        step = (following - sigma).to(x.dtype)
        guess = x + slope * step
        x = guess if following == 0 else x + (slope + _slope(denoise, guess, following)) / 2 * step
    return x


def plms(denoise: DenoiseFn, x: Tensor, sigmas: Tensor) -> Tensor:
    """Pseudo linear multistep (Liu et al., 2022), as the paper's PLMS sampler: Adams-Bashforth
    of order up to 4 on the slopes, assuming even steps; the first step is a Heun step to
    start the history. n + 1 evaluations (n if the first step already ends at 0)."""
    history: list[Tensor] = []
    for sigma, following in zip(sigmas[:-1], sigmas[1:], strict=True):
        slope = _slope(denoise, x, sigma)
        step = (following - sigma).to(x.dtype)
        if not history and following > 0:
            combined = (slope + _slope(denoise, x + slope * step, following)) / 2
        else:
            weights = _ADAMS_BASHFORTH[len(history)]
            combined = sum(w * s for w, s in zip(weights, [slope, *reversed(history)], strict=True))
        history = [*history, slope][-3:]
        x = x + combined * step
    return x


def euler_ancestral(
    denoise: DenoiseFn, x: Tensor, sigmas: Tensor, eta: float = 1.0, generator: Generators = None
) -> Tensor:
    """Euler steps down to sigma_down, then noise up to the next level; n evaluations.

    This is DDIM's update with its eta (Song et al., 2021): eta = 0 is deterministic DDIM
    (= :func:`euler`), eta = 1 is DDPM's ancestral step with the posterior variance.
    """
    for sigma, following in zip(sigmas[:-1], sigmas[1:], strict=True):
        down, up = ancestral_step(sigma, following, eta)
        x = x + _slope(denoise, x, sigma) * (down - sigma).to(x.dtype)
        if following > 0 and eta > 0:
            x = x + noise_like(x, generator) * up.to(x.dtype)
    return x


def dpmpp_2m(denoise: DenoiseFn, x: Tensor, sigmas: Tensor, eta: float = 0.0, generator: Generators = None) -> Tensor:
    """DPM-Solver++(2M) (Lu et al., 2022): second-order multistep in log sigma; n evaluations.

    eta > 0 is its SDE form (midpoint correction): with h = log(sigma / sigma_next) the
    update keeps exp(-eta h) of the ODE's memory of x and adds fresh noise of std
    sigma_next sqrt(1 - exp(-2 eta h)); eta = 1 makes its first-order part DDPM's step.
    The last step (to 0) returns the denoised estimate.
    """
    previous, h_last = None, None
    for sigma, following in zip(sigmas[:-1], sigmas[1:], strict=True):
        x0 = denoise(x, _level(sigma, x))
        if following == 0:
            x = x0
            continue
        h = (sigma / following).log()
        gain = -torch.expm1(-(1 + eta) * h)
        x = (following / sigma * torch.exp(-eta * h)).to(x.dtype) * x + gain.to(x.dtype) * x0
        if previous is not None:
            x = x + (gain * h / (2 * h_last)).to(x.dtype) * (x0 - previous)
        if eta > 0:
            x = x + noise_like(x, generator) * (following * (-torch.expm1(-2 * eta * h)).sqrt()).to(x.dtype)
        previous, h_last = x0, h
    return x


class OdeSampler(Sampler):
    """A deterministic sampler: ``solve`` is its function over tensors; randomness is unused."""

    solve: ClassVar[Callable[[DenoiseFn, Tensor, Tensor], Tensor]]

    def sample(self, denoise: DenoiseFn, x: Tensor, sigmas: Tensor, *, generator: Generators = None) -> Tensor:
        return type(self).solve(denoise, x, sigmas)


class EtaSampler(Sampler):
    """A sampler with an ``eta`` param: how much fresh noise each step adds (0: none)."""

    solve: ClassVar[Callable[[DenoiseFn, Tensor, Tensor, float, Generators], Tensor]]

    class Params(Params):
        eta: float = Field(
            1.0, ge=0.0, le=1.0, description="Fresh noise per step: 0 deterministic, 1 DDPM's posterior."
        )

    def sample(self, denoise: DenoiseFn, x: Tensor, sigmas: Tensor, *, generator: Generators = None) -> Tensor:
        return type(self).solve(denoise, x, sigmas, self.params.eta, generator)


class EulerSampler(OdeSampler):
    """Euler: first-order probability-flow ODE solver, one evaluation a step."""

    solve = staticmethod(euler)


class HeunSampler(OdeSampler):
    """Heun: second-order ODE solver, two evaluations a step (one on the last)."""

    solve = staticmethod(heun)


class PlmsSampler(OdeSampler):
    """PLMS: the paper's pseudo linear multistep sampler, one evaluation a step (two on the first)."""

    solve = staticmethod(plms)


class DpmPP2MSampler(OdeSampler):
    """DPM-Solver++(2M): second-order multistep ODE solver, one evaluation a step."""

    solve = staticmethod(dpmpp_2m)


class DdimSampler(EtaSampler):
    """DDIM: deterministic with eta 0 (the default), DDPM-like with eta 1; one evaluation a step."""

    solve = staticmethod(euler_ancestral)

    class Params(EtaSampler.Params):
        eta: float = Field(0.0, ge=0.0, le=1.0, description="Fresh noise per step: 0 deterministic DDIM, 1 DDPM.")


class DdpmSampler(Sampler):
    """DDPM: ancestral sampling with the posterior variance, one evaluation a step."""

    def sample(self, denoise: DenoiseFn, x: Tensor, sigmas: Tensor, *, generator: Generators = None) -> Tensor:
        return euler_ancestral(denoise, x, sigmas, 1.0, generator)


class EulerAncestralSampler(EtaSampler):
    """Euler ancestral: stochastic, fresh noise each step (eta 1: DDPM's posterior variance)."""

    solve = staticmethod(euler_ancestral)


class DpmPP2MSdeSampler(EtaSampler):
    """DPM-Solver++(2M) SDE: the multistep solver with fresh noise each step; one evaluation a step."""

    solve = staticmethod(dpmpp_2m)
