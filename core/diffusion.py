"""The diffusion maths shared by training and sampling: schedules, the forward process,
parameterisations and the loss.

Notation (DDPM): T discrete steps t = 0 .. T-1 with noise rates beta_t; alpha_bar_t is the
product of (1 - beta_s) up to t; the forward process is
``x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps``. The same process in
k-diffusion's variance-exploding form is ``x_t / sqrt(alpha_bar_t) = x_0 + sigma_t eps`` with
``sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t)``; samplers work in that form.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
from torch import Tensor

ScheduleKind = Literal["linear", "scaled_linear", "cosine"]
Prediction = Literal["eps", "x0", "v"]
TimestepSampling = Literal["uniform", "logit_normal"]
Spacing = Literal["leading", "trailing", "linspace", "logsnr", "karras", "ldm"]
"""How a sampler's steps are placed among the T timesteps (see :func:`core.sampling.timesteps`)."""
SPACINGS: tuple[Spacing, ...] = get_args(Spacing)


def beta_schedule(kind: ScheduleKind, steps: int, beta_start: float = 0.0015, beta_end: float = 0.0195) -> Tensor:
    """beta_t for t = 0 .. steps - 1, in float64.

    ``linear``: evenly from beta_start to beta_end. ``scaled_linear``: the square roots evenly
    spaced, then squared (what the paper's code calls "linear"). ``cosine``: Nichol & Dhariwal's
    alpha_bar(t) = cos^2((t / T + 0.008) / 1.008 * pi / 2), betas clipped at 0.999 (beta_start
    and beta_end unused).
    """
    if kind == "linear":
        return torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
    if kind == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float64) ** 2
    t = torch.arange(steps + 1, dtype=torch.float64) / steps
    alpha_bar = torch.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)


def _gather(values: Tensor, t: Tensor, like: Tensor) -> Tensor:
    """values[t] (B,) shaped to broadcast against ``like`` (B, ...), in ``like``'s dtype."""
    out = values.to(like.device)[t.long()].to(like.dtype)
    return out.reshape(-1, *([1] * (like.ndim - 1)))


class NoiseSchedule:
    """A discrete-time schedule: alpha_bar_t, sigma_t and the conversions between predictions."""

    def __init__(self, betas: Tensor) -> None:
        if betas.ndim != 1 or not ((betas > 0) & (betas < 1)).all():
            raise ValueError("betas must be a 1-D tensor of values in (0, 1)")
        self.betas = betas.double()
        self.alphas_cumprod = torch.cumprod(1 - self.betas, dim=0)
        self.sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod).sqrt()

    @property
    def steps(self) -> int:
        """T, the number of discrete steps."""
        return len(self.betas)

    def coefficients(self, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """(sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t)) for timesteps t (B,), broadcastable to ``like``."""
        a = _gather(self.alphas_cumprod, t, like)
        return a.sqrt(), (1 - a).sqrt()

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise; x0, noise (B, ...), t (B,)."""
        a, s = self.coefficients(t, x0)
        return a * x0 + s * noise

    def target(self, prediction: Prediction, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """What a network trained for ``prediction`` should output: eps, x0, or v = a eps - s x0."""
        if prediction == "eps":
            return noise
        if prediction == "x0":
            return x0
        a, s = self.coefficients(t, x0)
        return a * noise - s * x0

    def to_x0_eps(self, prediction: Prediction, output: Tensor, xt: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """A network's ``output`` for x_t at t, turned into the (x0, eps) it implies."""
        a, s = self.coefficients(t, xt)
        if prediction == "eps":
            return (xt - s * output) / a, output
        if prediction == "x0":
            return output, (xt - a * output) / s
        return a * xt - s * output, s * xt + a * output

    def snr(self, t: Tensor) -> Tensor:
        """Signal-to-noise ratio alpha_bar_t / (1 - alpha_bar_t) at timesteps t (B,), float64."""
        a = self.alphas_cumprod.to(t.device)[t.long()]
        return a / (1 - a)


def diffusion_loss(
    output: Tensor,
    target: Tensor,
    *,
    kind: Literal["l2", "l1"] = "l2",
    weights: Tensor | None = None,
) -> Tensor:
    """L_LDM: the mean over the batch of each example's mean error, optionally weighted per example.

    ``output`` and ``target`` are (B, ...); ``weights`` (B,) scales each example's term (e.g.
    Min-SNR weights from :func:`min_snr_weights`).
    """
    error = (output - target).abs() if kind == "l1" else (output - target).pow(2)
    per_example = error.flatten(1).mean(1)
    if weights is not None:
        per_example = per_example * weights.to(per_example)
    return per_example.mean()


def min_snr_weights(schedule: NoiseSchedule, t: Tensor, prediction: Prediction, gamma: float = 5.0) -> Tensor:
    """Min-SNR-gamma weights (Hang et al., 2023) per timestep: min(SNR, gamma) divided by SNR
    for eps prediction, by SNR + 1 for v, and 1 x min(SNR, gamma) for x0."""
    snr = schedule.snr(t)
    clipped = snr.clamp(max=gamma)
    if prediction == "eps":
        return (clipped / snr).float()
    if prediction == "v":
        return (clipped / (snr + 1)).float()
    return clipped.float()


def sample_timesteps(
    kind: TimestepSampling,
    count: int,
    steps: int,
    *,
    mean: float = 0.0,
    std: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """(count,) integer training timesteps in [0, steps).

    ``uniform``: every step equally often, as the paper trains. ``logit_normal``: t / T is
    sigmoid(u) with u ~ N(mean, std) (Esser et al., 2024), which spends the training on the
    middle of the process, where an image's layout is settled, and less on the nearly clean
    and nearly pure-noise ends; a positive ``mean`` moves it towards noise.
    """
    if kind == "uniform":
        return torch.randint(0, steps, (count,), generator=generator, device=device)
    u = torch.randn(count, generator=generator, device=device) * std + mean
    return (torch.sigmoid(u) * steps).long().clamp_(max=steps - 1)


def offset_noise(
    shape: tuple[int, ...],
    strength: float,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Gaussian noise (B, C, H, W) plus ``strength`` x a per-channel constant (B, C, 1, 1), so that
    a model can learn to change an image's mean brightness (offset noise)."""
    noise = torch.randn(shape, generator=generator, device=device, dtype=dtype)
    if strength:
        noise = noise + strength * torch.randn(*shape[:2], 1, 1, generator=generator, device=device, dtype=dtype)
    return noise
