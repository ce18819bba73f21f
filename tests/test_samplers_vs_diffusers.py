"""Our samplers against diffusers' schedulers: the same method with the same timesteps gives the
same trajectory, step by step; with default settings ours is at least as accurate.

Both sides use diffusers' own (float32) betas and the exact eps of the closed-form case,
and start from the same point. Samples are compared in the DDPM form, x_t = x / sqrt(1 + sigma^2),
where they are of unit scale at every step.
"""

import pytest
import torch

from benchmarks.samplers_closed_form import (
    PEERS,
    build_samplers,
    is_stochastic,
    ours,
    peer,
    peer_scheduler,
    run_peer,
    works_in_vp,
)
from core.closed_form import GaussianData
from core.diffusion import NoiseSchedule
from core.sampling import sigma_at

SAMPLERS = build_samplers()

# Which of a scheduler's intermediate samples are points of our trajectory: PNDM's first
# call returns the Euler guess its second call corrects; Heun's first-order calls return guesses.
MATCHED = {
    "plms": lambda trajectory: trajectory[1:],
    "heun": lambda trajectory: [*trajectory[1:-1:2], trajectory[-1]],
}


def trajectories(name, steps, params, dtype, step_options, settings):
    """(ours, diffusers') samples after every step, both in the DDPM form."""
    scheduler = peer_scheduler(name, steps, timestep_spacing="leading", **settings)
    if name.startswith("dpmpp"):  # its "leading" differs from DDIM's: hand it the timesteps
        scheduler.set_timesteps(timesteps=list(range(0, 1000, 1000 // steps))[::-1])
    schedule = NoiseSchedule(scheduler.betas.double())
    t = torch.arange(0, 1000, 1000 // steps, dtype=torch.float64).flip(0)
    levels = torch.cat([sigma_at(schedule, t), torch.zeros(1, dtype=torch.float64)])
    data = GaussianData()
    z = torch.randn(64, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(dtype)
    cls = type(SAMPLERS[name])
    sampler = cls(cls.Params(**params))

    def generator():
        return torch.Generator().manual_seed(7) if is_stochastic(sampler) else None

    theirs = []
    run_peer(scheduler, data, z, generator(), theirs, **step_options)
    theirs = MATCHED.get(name, list)(theirs)
    scale = (1 + levels[1:] ** 2).sqrt()
    if not works_in_vp(scheduler):
        theirs = [x / scale[k] for k, x in enumerate(theirs)]
    start = data.start(levels[0].item(), z)
    mine = [
        sampler.sample(data.denoise, start, levels[: k + 2], generator=generator()) / scale[k] for k in range(steps)
    ]
    return mine, theirs


@pytest.mark.parametrize(
    "name,params,step_options,settings,dtype",
    [
        ("ddim", {}, {}, {}, torch.float64),
        ("ddim", {"eta": 0.5}, {"eta": 0.5}, {}, torch.float64),
        ("ddpm", {}, {}, {}, torch.float64),
        ("euler", {}, {}, {}, torch.float64),
        ("euler_ancestral", {}, {}, {}, torch.float64),
        ("heun", {}, {}, {}, torch.float64),
        ("plms", {}, {}, {"set_alpha_to_one": True}, torch.float64),
        # diffusers' DPM-Solver computes in float32 and draws float32 noise
        ("dpmpp_2m", {}, {}, {}, torch.float32),
        ("dpmpp_2m_sde", {}, {}, {}, torch.float32),
    ],
)
def test_the_same_method_with_the_same_timesteps_follows_diffusers_step_by_step(
    name, params, step_options, settings, dtype
):
    mine, theirs = trajectories(name, 20, params, dtype, step_options, settings)
    assert len(mine) == len(theirs) == 20
    for k, (a, b) in enumerate(zip(mine, theirs, strict=True)):
        assert torch.allclose(a.double(), b.double(), atol=1e-5, rtol=0), (name, k, (a - b).abs().max().item())


@pytest.mark.parametrize("name", sorted(PEERS))
def test_with_defaults_ours_is_at_least_as_accurate_as_diffusers(name):
    sampler = SAMPLERS[name]
    points = 200_000
    margin = 2e-3 if is_stochastic(sampler) else 0.0  # a sampled W2's own error at this size
    for evaluations in (10, 20, 50):
        mine, theirs = ours(sampler, sampler.spacing, evaluations, points)[0], peer(name, evaluations, points)[0]
        assert mine <= theirs + margin, (name, evaluations, mine, theirs)
