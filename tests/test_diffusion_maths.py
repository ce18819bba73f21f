"""Schedules, the forward process, parameterisations and the loss against their formulas."""

import math

import pytest
import torch

from core.diffusion import NoiseSchedule, beta_schedule, diffusion_loss, min_snr_weights, offset_noise, sample_timesteps


def test_scaled_linear_is_the_square_of_evenly_spaced_square_roots():
    betas = beta_schedule("scaled_linear", 1000, 0.00085, 0.012)
    assert betas[0].item() == pytest.approx(0.00085) and betas[-1].item() == pytest.approx(0.012)
    middle = ((0.00085**0.5 + 0.012**0.5) / 2) ** 2
    assert beta_schedule("scaled_linear", 3, 0.00085, 0.012)[1].item() == pytest.approx(middle)
    linear = beta_schedule("linear", 3, 0.001, 0.003)
    assert linear.tolist() == pytest.approx([0.001, 0.002, 0.003])


def test_cosine_schedule_follows_its_alpha_bar():
    schedule = NoiseSchedule(beta_schedule("cosine", 1000))
    t = torch.tensor([0, 499, 998])
    expected = (
        torch.cos(((t + 1) / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2 / math.cos(0.008 / 1.008 * math.pi / 2) ** 2
    )
    assert torch.allclose(schedule.alphas_cumprod[t], expected.double(), rtol=1e-6)
    assert schedule.betas.max() <= 0.999


def test_every_parameterisation_converts_back_to_x0_and_eps():
    schedule = NoiseSchedule(beta_schedule("scaled_linear", 1000))
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 3, 5, 5, generator=generator, dtype=torch.float64)
    eps = torch.randn(4, 3, 5, 5, generator=generator, dtype=torch.float64)
    t = torch.tensor([0, 10, 500, 999])
    xt = schedule.q_sample(x0, t, eps)
    for prediction in ("eps", "x0", "v"):
        got_x0, got_eps = schedule.to_x0_eps(prediction, schedule.target(prediction, x0, eps, t), xt, t)
        assert torch.allclose(got_x0, x0, atol=1e-8) and torch.allclose(got_eps, eps, atol=1e-8), prediction


def test_forward_process_has_the_stated_mean_and_variance():
    schedule = NoiseSchedule(beta_schedule("linear", 1000))
    t = torch.full((20000,), 300)
    x0 = torch.full((20000, 1), 2.0)
    xt = schedule.q_sample(x0, t, torch.randn(20000, 1, generator=torch.Generator().manual_seed(1)))
    a = schedule.alphas_cumprod[300].item()
    assert xt.mean().item() == pytest.approx(2 * a**0.5, abs=0.02)
    assert xt.var().item() == pytest.approx(1 - a, rel=0.05)
    assert torch.allclose(schedule.sigmas, ((1 - schedule.alphas_cumprod) / schedule.alphas_cumprod).sqrt())
    assert (schedule.snr(torch.arange(1000)).diff() < 0).all(), "the signal fades monotonically"


def test_min_snr_weights_and_the_weighted_loss():
    schedule = NoiseSchedule(beta_schedule("linear", 1000))
    t = torch.tensor([0, 999])
    snr = schedule.snr(t)
    weights = min_snr_weights(schedule, t, "eps", gamma=5.0)
    assert weights[0].item() == pytest.approx(5.0 / snr[0].item()) and weights[1].item() == pytest.approx(1.0)
    assert min_snr_weights(schedule, t, "v", gamma=5.0)[1].item() == pytest.approx(snr[1].item() / (snr[1].item() + 1))
    output, target = torch.zeros(2, 3), torch.tensor([[1.0, 1.0, 1.0], [2.0, 2.0, 2.0]])
    assert diffusion_loss(output, target).item() == pytest.approx((1 + 4) / 2)
    assert diffusion_loss(output, target, kind="l1", weights=torch.tensor([1.0, 0.5])).item() == pytest.approx(
        (1 + 1) / 2
    )


def test_offset_noise_shifts_each_channel_by_a_shared_constant():
    noise = offset_noise((4000, 2, 4, 4), 0.5, torch.Generator().manual_seed(0))
    per_channel = noise.mean((2, 3))
    assert per_channel.var().item() == pytest.approx(0.25 + 1 / 16, rel=0.1)
    assert torch.equal(
        offset_noise((2, 2, 4, 4), 0.0, torch.Generator().manual_seed(3)),
        torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(3)),
    )


def test_timestep_sampling_uniform_and_logit_normal():
    uniform = sample_timesteps("uniform", 20000, 1000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(
        sample_timesteps("uniform", 5, 1000, generator=torch.Generator().manual_seed(1)),
        torch.randint(0, 1000, (5,), generator=torch.Generator().manual_seed(1)),
    )
    middle = ((uniform >= 250) & (uniform < 750)).float().mean().item()
    assert middle == pytest.approx(0.5, abs=0.02)
    t = sample_timesteps("logit_normal", 20000, 1000, generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.int64 and t.min().item() >= 0 and t.max().item() <= 999
    # |u| < logit(3/4) = ln 3 for u ~ N(0, 1): the middle half of the process gets 73% of the draws.
    assert ((t >= 250) & (t < 750)).float().mean().item() == pytest.approx(
        math.erf(math.log(3) / math.sqrt(2)), abs=0.02
    )
    shifted = sample_timesteps(
        "logit_normal", 20000, 1000, mean=1.0, std=0.5, generator=torch.Generator().manual_seed(0)
    )
    assert shifted.float().median().item() == pytest.approx(1000 / (1 + math.exp(-1.0)), abs=10)


def test_betas_outside_zero_one_are_refused():
    with pytest.raises(ValueError, match=r"values in \(0, 1\)"):
        NoiseSchedule(torch.tensor([0.1, 1.0]))
