"""What every sampler shares: the noise levels to visit and the adapter from a network to a denoiser.

Samplers work in k-diffusion's variance-exploding form, ``x = x_0 + sigma eps``, with a
denoiser ``D(x, sigma) ~ E[x_0 | x]``. :func:`denoiser` turns a network trained on the
discrete DDPM process (predicting eps, x0 or v) into such a ``D``, so that no sampler knows
the parameterisation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from core.diffusion import NoiseSchedule, Prediction

Spacing = Literal["leading", "trailing", "linspace", "logsnr"]
Generators = torch.Generator | list[torch.Generator] | None


def noise_like(x: Tensor, generator: Generators) -> Tensor:
    """Standard normal noise shaped like x (B, ...).

    With a list of B generators, sample i draws only from generator i, so a batch gives the
    same noise as its items drawn one by one with the same generators.
    """
    if isinstance(generator, list):
        if len(generator) != x.shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {x.shape[0]}")
        return torch.stack([torch.randn(x.shape[1:], generator=g, dtype=x.dtype, device=g.device).to(x.device)
                            for g in generator])
    return torch.randn(x.shape, generator=generator, dtype=x.dtype,
                       device=generator.device if generator is not None else x.device).to(x.device)


def timesteps(schedule: NoiseSchedule, steps: int, spacing: Spacing) -> Tensor:
    """``steps`` discrete timesteps (float64, decreasing) out of the schedule's T.

    ``leading``: 0, T/n, 2T/n, ... (as DDIM's code); ``trailing``: T-1, T-1-T/n, ...;
    ``linspace``: evenly from T-1 to 0; ``logsnr``: evenly spaced in log signal-to-noise ratio
    between the first and last step (fractional timesteps are interpolated).
    """
    total = schedule.steps
    if not 1 <= steps <= total:
        raise ValueError(f"steps must be between 1 and {total}, got {steps}")
    if spacing == "leading":
        found = torch.arange(steps, dtype=torch.float64) * (total // steps)
    elif spacing == "trailing":
        found = (total - 1 - torch.arange(steps, dtype=torch.float64) * (total / steps)).round()
    elif spacing == "linspace":
        found = torch.linspace(0, total - 1, steps, dtype=torch.float64)
    else:
        log_sigmas = schedule.sigmas.log()
        targets = torch.linspace(log_sigmas[-1].item(), log_sigmas[0].item(), steps, dtype=torch.float64)
        found = _t_from_log_sigma(log_sigmas, targets)
    return found.sort(descending=True).values


def _t_from_log_sigma(log_sigmas: Tensor, targets: Tensor) -> Tensor:
    """Fractional timesteps whose log sigma (linearly interpolated) is each target."""
    index = torch.searchsorted(log_sigmas, targets).clamp(1, len(log_sigmas) - 1)
    low, high = log_sigmas[index - 1], log_sigmas[index]
    weight = ((targets - low) / (high - low)).clamp(0, 1)
    return index - 1 + weight


def sigma_at(schedule: NoiseSchedule, t: Tensor) -> Tensor:
    """sigma at (possibly fractional) timesteps t, interpolating log sigma between steps."""
    log_sigmas = schedule.sigmas.log().to(t.device)
    low = t.floor().long().clamp(0, len(log_sigmas) - 1)
    high = (low + 1).clamp(max=len(log_sigmas) - 1)
    weight = (t - low).to(log_sigmas.dtype)
    return (log_sigmas[low] * (1 - weight) + log_sigmas[high] * weight).exp()


def sigmas(schedule: NoiseSchedule, steps: int, spacing: Spacing) -> Tensor:
    """The noise levels a sampler visits: ``steps`` decreasing sigmas, then 0 (float64, n + 1)."""
    return torch.cat([sigma_at(schedule, timesteps(schedule, steps, spacing)), torch.zeros(1, dtype=torch.float64)])


def denoiser(model: Callable[[Tensor, Tensor], Tensor], schedule: NoiseSchedule, prediction: Prediction
             ) -> Callable[[Tensor, Tensor], Tensor]:
    """``D(x, sigma)`` for a network ``model(x_t, t)`` trained on ``schedule`` to predict ``prediction``.

    x = x_0 + sigma eps is scaled to the network's x_t = x / sqrt(1 + sigma^2); t is the
    (fractional) timestep of sigma; the output is turned into the x_0 estimate it implies.
    """
    log_sigmas = schedule.sigmas.log()

    def denoise(x: Tensor, sigma: Tensor) -> Tensor:
        sigma = sigma.to(torch.float64)
        t = _t_from_log_sigma(log_sigmas.to(sigma.device), sigma.log())
        shape = (-1, *([1] * (x.ndim - 1)))
        a = (1 / (1 + sigma**2).sqrt()).to(x.dtype).reshape(shape)
        s = (sigma / (1 + sigma**2).sqrt()).to(x.dtype).reshape(shape)
        output = model(x * a, t.to(x.dtype))
        if prediction == "eps":
            return (x * a - s * output) / a
        if prediction == "x0":
            return output
        return a * (x * a) - s * output

    return denoise
