"""What every sampler shares: the noise levels to visit and the adapter from a network to a denoiser.

Samplers work in k-diffusion's variance-exploding form, ``x = x_0 + sigma eps``, with a
denoiser ``D(x, sigma) ~ E[x_0 | x]``. :func:`denoiser` turns a network trained on the
discrete DDPM process (predicting eps, x0 or v) into such a ``D``, so that no sampler knows
the parameterisation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from core.diffusion import SPACINGS, NoiseSchedule, Prediction, Spacing
from core.interfaces import DenoiseFn, Sampler

KARRAS_RHO = 7.0
Generators = torch.Generator | list[torch.Generator] | None


def noise_like(x: Tensor, generator: Generators) -> Tensor:
    """Standard normal noise shaped like x (B, ...).

    With a list of B generators, sample i draws only from generator i, so a batch gives the
    same noise as its items drawn one by one with the same generators.
    """
    if isinstance(generator, list):
        if len(generator) != x.shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {x.shape[0]}")
        return torch.stack(
            [torch.randn(x.shape[1:], generator=g, dtype=x.dtype, device=g.device).to(x.device) for g in generator]
        )
    return torch.randn(
        x.shape, generator=generator, dtype=x.dtype, device=generator.device if generator is not None else x.device
    ).to(x.device)


def timesteps(schedule: NoiseSchedule, steps: int, spacing: Spacing) -> Tensor:
    """``steps`` discrete timesteps (float64, decreasing) out of the schedule's T.

    ``leading``: 0, T/n, 2T/n, ... (as DDIM's code); ``trailing``: T-1, T-1-T/n, ...;
    ``linspace``: evenly from T-1 to 0; ``logsnr``: evenly spaced in log signal-to-noise ratio
    between the first and last step; ``karras``: Karras et al.'s (2022) sigmas, evenly spaced
    in sigma^(1/7) between the largest and smallest sigma (fractional timesteps are
    interpolated in log sigma); ``ldm``: the original LDM code's DDIM steps, 1, 1 + T//n,
    1 + 2 T//n, ... below T + 1 (more than n when n does not divide T, as there), after
    which :func:`sigmas` ends at timestep 0's sigma instead of 0.
    """
    total = schedule.steps
    if not 1 <= steps <= total:
        raise ValueError(f"steps must be between 1 and {total}, got {steps}")
    if spacing == "leading":
        found = torch.arange(steps, dtype=torch.float64) * (total // steps)
    elif spacing == "ldm":
        found = torch.arange(0, total, total // steps, dtype=torch.float64) + 1
    elif spacing == "trailing":
        found = (total - 1 - torch.arange(steps, dtype=torch.float64) * (total / steps)).round()
    elif spacing == "linspace":
        found = torch.linspace(0, total - 1, steps, dtype=torch.float64)
    elif spacing == "logsnr":
        log_sigmas = schedule.sigmas.log()
        targets = torch.linspace(log_sigmas[-1].item(), log_sigmas[0].item(), steps, dtype=torch.float64)
        found = _t_from_log_sigma(log_sigmas, targets)
    elif spacing == "karras":
        low, high = (schedule.sigmas[i].item() ** (1 / KARRAS_RHO) for i in (0, -1))
        targets = torch.linspace(low, high, steps, dtype=torch.float64) ** KARRAS_RHO
        found = _t_from_log_sigma(schedule.sigmas.log(), targets.log())
    else:
        raise ValueError(f"unknown spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
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
    """The noise levels a sampler visits: ``steps`` decreasing sigmas, then 0 (float64, n + 1);
    with spacing ``ldm``, then timestep 0's sigma, where the original LDM code's DDIM stops."""
    last = schedule.sigmas[:1].double() if spacing == "ldm" else torch.zeros(1, dtype=torch.float64)
    return torch.cat([sigma_at(schedule, timesteps(schedule, steps, spacing)), last])


def denoiser(
    model: Callable[[Tensor, Tensor], Tensor], schedule: NoiseSchedule, prediction: Prediction
) -> Callable[[Tensor, Tensor], Tensor]:
    """``D(x, sigma)`` for a network ``model(x_t, t)`` trained on ``schedule`` to predict ``prediction``.

    x = x_0 + sigma eps is scaled to the network's x_t = x / sqrt(1 + sigma^2); t is the
    (fractional) timestep of sigma; the output is turned into the x_0 estimate it implies.
    """
    log_sigmas = schedule.sigmas.log()
    tables: dict[tuple[torch.device, torch.dtype], Tensor] = {}  # log_sigmas copied once per device

    def denoise(x: Tensor, sigma: Tensor) -> Tensor:
        # The timestep lookup stays on the latents' device (no sync per step), in float64
        # except on MPS, which has none.
        sigma = sigma.to(x.device, torch.float32 if x.device.type == "mps" else torch.float64)
        key = (sigma.device, sigma.dtype)
        if key not in tables:
            tables[key] = log_sigmas.to(*key)
        t = _t_from_log_sigma(tables[key], sigma.log())
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


def masked(denoise: DenoiseFn, known: Tensor, mask: Tensor, noise: Tensor) -> DenoiseFn:
    """Inpainting by replacement: ``denoise`` with the region where ``mask`` is 1 held to ``known``.

    At every evaluation the masked region of x is replaced by ``known`` noised to the current
    sigma with the fixed ``noise`` (as the paper's DDIM sampler does), and the estimate there
    is ``known`` itself, so every sampler ends with that region equal to ``known``. ``known``
    and ``noise`` are (B, C, h, w); ``mask`` broadcasts against them ((B or 1, 1 or C, h, w)).
    """
    mask = mask.to(known.dtype)

    def denoise_masked(x: Tensor, sigma: Tensor) -> Tensor:
        level = sigma.to(x.device, x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        x = mask * (known + level * noise) + (1 - mask) * x
        return mask * known + (1 - mask) * denoise(x, sigma)

    return denoise_masked


def sample(
    sampler: Sampler,
    denoise: DenoiseFn,
    noise: Tensor,
    levels: Tensor,
    *,
    generator: Generators = None,
    init: Tensor | None = None,
    strength: float = 1.0,
    mask: Tensor | None = None,
    resample: int = 1,
    jump: int = 1,
) -> Tensor:
    """Draw samples (B, C, h, w) with ``sampler`` over ``levels`` (n + 1,) from :func:`sigmas`.

    ``noise`` (B, C, h, w) is standard normal. Without ``init`` the start is ``noise`` at
    sigma_0 for unit-variance data, noise x sqrt(1 + sigma_0^2). With ``init`` (a latent,
    B, C, h, w) only the last ``int(n x strength)`` levels are visited, starting from
    init + sigma noise (img2img; strength 1 starts from noise at sigma_0 around ``init``,
    strength 0 returns ``init``). With ``mask`` (1 = keep ``init`` there) the kept region is
    held by :func:`masked` at every step (inpainting; needs ``init``), and ``resample`` > 1
    resamples the generated region as :func:`repaint` does, ``jump`` levels at a time.
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    if mask is not None and init is None:
        raise ValueError("a mask needs the latent it keeps: pass init")
    if resample > 1 and mask is None:
        raise ValueError("resampling harmonises a generated region with a kept one: pass mask")
    if init is None:
        x = noise * (1 + levels[0] ** 2).sqrt().to(noise.dtype)
        return _latent(sampler.sample(denoise, x, levels, generator=generator), levels[-1])
    n = len(levels) - 1
    levels = levels[n - int(n * strength) :]
    if len(levels) == 1:
        return init
    if mask is not None:
        denoise = masked(denoise, init, mask, noise)
    x = init + noise * levels[0].to(noise.dtype)
    if resample > 1:
        return _latent(repaint(sampler, denoise, x, levels, generator, resample, jump), levels[-1])
    return _latent(sampler.sample(denoise, x, levels, generator=generator), levels[-1])


def repaint(
    sampler: Sampler, denoise: DenoiseFn, x: Tensor, levels: Tensor, generator: Generators, times: int, jump: int
) -> Tensor:
    """RePaint's resampling (Lugmayr et al., 2022) around ``sampler``: the levels (n + 1,) are
    walked ``jump`` intervals at a time, and each stretch is run ``times`` times, taken back up
    to its first level with fresh noise between runs. Under replacement (:func:`masked`) each
    rerun sees the kept region at levels where the last run had already committed the
    generated one, which is how the two come to agree. x (B, C, h, w) is at ``levels[0]``. The
    cost is ``times`` x that of running each stretch alone (a multistep sampler restarts its
    history at each stretch)."""
    for i in range(0, len(levels) - 1, jump):
        stretch = levels[i : i + jump + 1]
        for run in range(times):
            y = sampler.sample(denoise, x, stretch, generator=generator)
            if run < times - 1:
                x = y + noise_like(y, generator) * (stretch[0] ** 2 - stretch[-1] ** 2).sqrt().to(y.dtype)
        x = y
    return x


def _latent(x: Tensor, sigma: Tensor) -> Tensor:
    # Samplers end at the last level: 0 (x is the latent), or a small sigma (spacing ldm), where
    # the latent, as the original returns it, is x_t = x / sqrt(1 + sigma^2).
    return x if sigma == 0 else x / (1 + sigma**2).sqrt().to(x.dtype)
