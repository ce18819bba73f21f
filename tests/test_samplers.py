"""Samplers on a case with a known answer: data x0 ~ N(mu, s^2), whose exact denoiser is linear.

With D(x, sigma) = mu + s^2 / (s^2 + sigma^2) (x - mu), a deterministic sampler is an affine
map z -> A z + B of its starting noise, so its output is exactly N(B, A^2): two runs (z = 0,
z = 1) give the 2-Wasserstein distance to N(mu, s^2). The sampler starts from the true
marginal N(mu, s^2 + sigma_max^2); the floor left by stopping at the schedule's smallest
sigma is s - s^2 / sqrt(s^2 + sigma_min^2) (about 1.4e-3 here).
"""

import math

import pytest
import torch

from core import load_registry
from core.diffusion import NoiseSchedule, beta_schedule
from core.sampling import denoiser, sigma_at, sigmas, timesteps
from plugins.samplers import dpmpp_2m, euler, euler_ancestral, heun

MU, S = 0.5, 0.3
SCHEDULE = NoiseSchedule(beta_schedule("scaled_linear", 1000, 0.00085, 0.012))


def exact(calls):
    def denoise(x, sigma):
        calls.append(1)
        return MU + S**2 / (S**2 + sigma.double()[:, None] ** 2) * (x - MU)

    return denoise


def w2(solver, evaluations, spacing="logsnr", per_step=1):
    steps = evaluations if per_step == 1 else (evaluations + 1) // 2
    levels = sigmas(SCHEDULE, steps, spacing)
    calls = []
    start = MU + math.sqrt(S**2 + levels[0].item() ** 2) * torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    out = solver(exact(calls), start, levels)
    b, a = out[0, 0].item(), (out[1, 0] - out[0, 0]).item()
    return math.hypot(b - MU, abs(a) - S), len(calls)


def test_each_sampler_approaches_the_truth_within_its_bounds():
    bounds = {euler: (0.06, 0.03, 0.012), heun: (0.15, 0.025, 0.003), dpmpp_2m: (0.005, 0.002, 0.002)}
    for solver, limits in bounds.items():
        per_step = 2 if solver is heun else 1
        errors = []
        for evaluations, limit in zip((10, 20, 50), limits, strict=True):
            error, calls = w2(solver, evaluations, per_step=per_step)
            assert calls == evaluations - (evaluations % 2 == 0 and per_step == 2), (solver.__name__, calls)
            assert error < limit, (solver.__name__, evaluations, error)
            errors.append(error)
        if solver is not dpmpp_2m:  # DPM-Solver++ reaches the floor by 20 evaluations
            assert errors == sorted(errors, reverse=True), (solver.__name__, errors)


def test_second_order_solvers_beat_euler_at_equal_evaluations():
    for evaluations in (20, 50):
        assert w2(heun, evaluations, per_step=2)[0] < w2(euler, evaluations)[0]
        assert w2(dpmpp_2m, evaluations)[0] < w2(euler, evaluations)[0]


def test_spacings_give_decreasing_timesteps_and_sigmas_ending_at_zero():
    for spacing in ("leading", "trailing", "linspace", "logsnr"):
        t = timesteps(SCHEDULE, 10, spacing)
        assert len(t) == 10 and (t.diff() < 0).all(), spacing
        levels = sigmas(SCHEDULE, 10, spacing)
        assert levels[-1] == 0 and (levels.diff() < 0).all(), spacing
    assert timesteps(SCHEDULE, 4, "leading").tolist() == [750, 500, 250, 0]
    assert timesteps(SCHEDULE, 4, "trailing").tolist() == [999, 749, 499, 249]
    log_levels = sigmas(SCHEDULE, 5, "logsnr")[:-1].log()
    assert torch.allclose(log_levels.diff(), log_levels.diff()[0].expand(4), atol=1e-9), "even in log sigma"
    assert timesteps(SCHEDULE, 1000, "linspace").tolist() == list(range(999, -1, -1))
    with pytest.raises(ValueError, match="between 1 and 1000"):
        timesteps(SCHEDULE, 0, "leading")
    assert torch.allclose(sigma_at(SCHEDULE, torch.tensor([3.0])), SCHEDULE.sigmas[3:4])


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_the_adapter_turns_any_parameterisation_into_the_same_denoiser(prediction):
    t = torch.tensor([0, 250, 999])
    x0 = torch.randn(3, 2, dtype=torch.float64)
    eps = torch.randn(3, 2, dtype=torch.float64)

    def network(x_t, timestep):
        assert torch.allclose(timestep.double(), t.double(), atol=1e-6), "sigma maps back to its timestep"
        return SCHEDULE.target(prediction, x0, eps, timestep.round().long())

    sigma = SCHEDULE.sigmas[t]
    x = x0 + sigma[:, None] * eps  # the same point in the variance-exploding form
    assert torch.allclose(denoiser(network, SCHEDULE, prediction)(x, sigma), x0, atol=1e-6)


def test_samplers_are_registered_components():
    registry = load_registry(env={"LDM_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert registry.names("sampler") == ["dpmpp_2m", "euler", "euler_ancestral", "heun"]
    sampler = registry.get("sampler", "heun").cls(registry.get("sampler", "heun").cls.Params())
    levels = sigmas(SCHEDULE, 20, "logsnr")
    start = MU + math.sqrt(S**2 + levels[0].item() ** 2) * torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    assert torch.equal(sampler.sample(exact([]), start, levels), heun(exact([]), start, levels))


def sampled_w2(evaluations, eta=1.0, points=40000):
    levels = sigmas(SCHEDULE, evaluations, "logsnr")
    generator = torch.Generator().manual_seed(0)
    start = MU + math.sqrt(S**2 + levels[0].item() ** 2) * torch.randn(points, 1, generator=generator, dtype=torch.float64)
    out = euler_ancestral(exact([]), start, levels, eta, generator)
    return math.hypot(out.mean().item() - MU, out.std().item() - S)


def test_euler_ancestral_approaches_the_truth_by_sampling():
    # 40000 points: the estimate's own error is about 2e-3.
    errors = [sampled_w2(n) for n in (10, 20, 50)]
    assert errors[0] < 0.1 and errors[1] < 0.06 and errors[2] < 0.03, errors
    assert errors == sorted(errors, reverse=True)


def test_eta_zero_is_the_deterministic_euler_step():
    levels = sigmas(SCHEDULE, 10, "logsnr")
    start = torch.randn(5, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * levels[0]
    assert torch.allclose(euler_ancestral(exact([]), start, levels, 0.0, torch.Generator()),
                          euler(exact([]), start, levels), atol=1e-12)


def test_a_batch_with_per_sample_generators_equals_its_items_one_by_one():
    levels = sigmas(SCHEDULE, 20, "logsnr")
    seeds = [11, 12, 13, 14]

    def denoise(x, sigma):  # a non-linear stand-in for a network, float32
        return torch.tanh(x) / (1 + sigma[:, None, None, None] ** 2) ** 0.5

    def start(seed):
        return torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(seed)) * levels[0].float()

    batch = euler_ancestral(denoise, torch.cat([start(s) for s in seeds]), levels, 1.0,
                            [torch.Generator().manual_seed(100 + s) for s in seeds])
    alone = torch.cat([euler_ancestral(denoise, start(s), levels, 1.0, [torch.Generator().manual_seed(100 + s)])
                       for s in seeds])
    assert torch.allclose(batch, alone, atol=1e-5)
    with pytest.raises(ValueError, match="got 2 generators for a batch of 4"):
        euler_ancestral(denoise, torch.cat([start(s) for s in seeds]), levels, 1.0, [torch.Generator()] * 2)
