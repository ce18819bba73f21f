"""Every sampler's error on the closed-form Gaussian case, ours against diffusers'.

Data N(0.5, 0.3^2) under the paper's schedule ("scaled linear", beta 0.00085 to 0.012,
T = 1000); the exact denoiser stands in for the network (see :mod:`core.closed_form`). For
each sampler and each budget of model evaluations (10, 20, 50): the 2-Wasserstein distance
to the truth for each of our spacings, and for diffusers' scheduler of the same method with
its default settings (clip_sample off: clipping assumes data in [-1, 1], which latents are
not, and the paper's latent models turn it off too). Deterministic samplers are measured
exactly, stochastic ones from 10^6 samples (their estimate's own error is about 3e-4).

    python benchmarks/samplers_closed_form.py [--points 1000000] [--markdown]

A sampler gets as many steps as fit in the budget (Heun: 2 evaluations a step, 1 on the
last; PLMS: one extra on its first step); diffusers' schedulers likewise, counted by the
timesteps they visit.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

import torch

from core import Sampler, load_registry
from core.closed_form import GaussianData
from core.diffusion import SPACINGS, NoiseSchedule, Spacing, beta_schedule
from core.sampling import sigmas

BETAS = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "num_train_timesteps": 1000}
SCHEDULE = NoiseSchedule(beta_schedule("scaled_linear", 1000, 0.00085, 0.012))
BUDGETS = (10, 20, 50)

# Our sampler (and its params) -> diffusers' scheduler class and the settings that make it that method.
PEERS: dict[str, tuple[str, dict]] = {
    "ddpm": ("DDPMScheduler", {"clip_sample": False}),
    "ddim": ("DDIMScheduler", {"clip_sample": False}),
    "plms": ("PNDMScheduler", {"skip_prk_steps": True}),
    "euler": ("EulerDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {}),
    "dpmpp_2m_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "euler_ancestral": ("EulerAncestralDiscreteScheduler", {}),
}


def build_samplers(builtin_only: bool = True) -> dict[str, Sampler]:
    """Every built-in (or every installed) sampler with its default params."""
    registry = load_registry(env={"LDM_DISABLE_PLUGIN_AUTOLOAD": "1"} if builtin_only else None)
    return {
        name: registry.get("sampler", name).cls(registry.get("sampler", name).cls.Params())
        for name in registry.names("sampler")
    }


def is_stochastic(sampler: Sampler) -> bool:
    """Whether two generators give different outputs (checked on the case itself)."""
    data = GaussianData()
    levels = sigmas(SCHEDULE, 3, "logsnr")
    z = torch.zeros(1, 1, dtype=torch.float64)
    outs = [
        sampler.sample(
            data.denoise, data.start(levels[0].item(), z), levels, generator=torch.Generator().manual_seed(seed)
        )
        for seed in (0, 1)
    ]
    return not torch.equal(*outs)


def steps_within(evaluations: int, count: Callable[[int], int]) -> int:
    """The most steps n whose evaluation count ``count(n)`` fits the budget."""
    return next(n for n in range(evaluations, 0, -1) if count(n) <= evaluations)


def ours(sampler: Sampler, spacing: Spacing, evaluations: int, points: int, seed: int = 0) -> tuple[float, int]:
    """(W2 to the truth, evaluations used) for one of our samplers."""

    def run_steps(n: int) -> Callable[[torch.Tensor], torch.Tensor]:
        levels = sigmas(SCHEDULE, n, spacing)
        generator = torch.Generator().manual_seed(seed + 1)
        return lambda z: sampler.sample(data.denoise, data.start(levels[0].item(), z), levels, generator=generator)

    def count(n: int) -> int:
        data.calls = 0
        run_steps(n)(torch.zeros(1, 1, dtype=torch.float64))
        return data.calls

    data = GaussianData()
    n = steps_within(evaluations, count)
    used = count(n)
    if is_stochastic(sampler):
        return data.sampled_distance(run_steps(n), points, seed), used
    return data.exact_distance(run_steps(n)), used


def peer_scheduler(name: str, steps: int | None = None, **settings):
    """diffusers' scheduler for our sampler ``name`` on the benchmark's schedule."""
    import diffusers

    cls_name, defaults = PEERS[name]
    scheduler = getattr(diffusers, cls_name)(**BETAS, **{**defaults, **settings})
    if steps is not None:
        scheduler.set_timesteps(steps)
    return scheduler


def peer_sigma(scheduler, t: torch.Tensor) -> torch.Tensor:
    """The sigma (variance-exploding form) of the step a scheduler is about to take."""
    if getattr(scheduler, "step_index", None) is not None:
        return scheduler.sigmas[scheduler.step_index].double()
    alpha_bar = scheduler.alphas_cumprod[int(t)].double()
    return ((1 - alpha_bar) / alpha_bar).sqrt()


def run_peer(
    scheduler,
    data: GaussianData,
    z: torch.Tensor,
    generator: torch.Generator | None = None,
    trajectory: list[torch.Tensor] | None = None,
    **step_options,
) -> torch.Tensor:
    """diffusers' sampling loop with the exact eps model, started from the true marginal at
    its first step; ``step_options`` go to each ``scheduler.step`` (e.g. DDIM's eta).
    Returns the scheduler's own final sample (what its users decode) and
    appends every intermediate one to ``trajectory``: the DDPM form x_t for schedulers that
    work in it, the variance-exploding x for the Euler and Heun ones."""
    sigma_first = _first_sigma(scheduler)
    x = data.start(sigma_first, z)
    if works_in_vp(scheduler):
        x = x / math.sqrt(1 + sigma_first**2)
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(x, t)
        sigma = peer_sigma(scheduler, t)
        eps = data.eps(model_input * (1 + sigma**2).sqrt(), sigma.expand(len(x)))
        extra = {"generator": generator} if generator is not None else {}
        x = scheduler.step(eps, t, x, **extra, **step_options).prev_sample
        if trajectory is not None:
            trajectory.append(x)
    return x


def works_in_vp(scheduler) -> bool:
    """Whether the scheduler's sample is x_t of the DDPM form (else the variance-exploding x)."""
    return not type(scheduler).__name__.startswith(("Euler", "Heun"))


def _first_sigma(scheduler) -> float:
    if hasattr(scheduler, "sigmas"):
        return scheduler.sigmas[0].item()
    alpha_bar = scheduler.alphas_cumprod[int(scheduler.timesteps[0])].item()
    return math.sqrt((1 - alpha_bar) / alpha_bar)


def peer(name: str, evaluations: int, points: int, seed: int = 0) -> tuple[float, int]:
    """(W2 to the truth, evaluations used) for diffusers' scheduler of the same method, defaults."""
    n = steps_within(evaluations, lambda k: len(peer_scheduler(name, k).timesteps))
    data = GaussianData()
    stochastic = name in ("ddpm", "dpmpp_2m_sde", "euler_ancestral")

    def run(z: torch.Tensor) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed + 1) if stochastic else None
        return run_peer(peer_scheduler(name, n), data, z, generator)

    used = len(peer_scheduler(name, n).timesteps)
    if stochastic:
        return data.sampled_distance(run, points, seed), used
    return data.exact_distance(run), used


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=1_000_000, help="samples for the stochastic samplers")
    parser.add_argument("--markdown", action="store_true", help="print the BENCHMARKS.md table only")
    args = parser.parse_args()
    samplers = build_samplers(builtin_only=False)
    rows = []
    for name, sampler in samplers.items():
        grid = {spacing: [ours(sampler, spacing, e, args.points)[0] for e in BUDGETS] for spacing in SPACINGS}
        theirs = [peer(name, e, args.points)[0] for e in BUDGETS] if name in PEERS else [math.nan] * 3
        best = min(grid, key=lambda s: sum(math.log(v) for v in grid[s]))
        rows.append((name, sampler.spacing, grid[sampler.spacing], theirs))
        if not args.markdown:
            print(f"{name} (default {sampler.spacing}, best by geometric mean: {best})")
            for spacing, errors in grid.items():
                print(f"  ours {spacing:9s} " + "  ".join(f"{v:.2e}" for v in errors))
            print("  diffusers       " + "  ".join(f"{v:.2e}" for v in theirs))
    print("| sampler | our spacing | ours at 10 / 20 / 50 | diffusers at 10 / 20 / 50 |")
    print("| --- | --- | --- | --- |")
    for name, spacing, mine, theirs in rows:
        print(
            f"| {name} | {spacing} | "
            + " / ".join(f"{v:.1e}" for v in mine)
            + " | "
            + " / ".join(f"{v:.1e}" for v in theirs)
            + " |"
        )


if __name__ == "__main__":
    main()
