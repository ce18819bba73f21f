"""Samplers on a case with a known answer (core.closed_form): data N(0.5, 0.3^2), exact denoiser.

Bounds are the measured errors (benchmarks/samplers_closed_form.py, BENCHMARKS.md) with a
little room; the floor left by the schedule's smallest sigma is about 1.4e-3.
"""

import math

import pytest
import torch

from benchmarks.samplers_closed_form import ours
from core import load_registry
from core.closed_form import GaussianData
from core.diffusion import SPACINGS, NoiseSchedule, beta_schedule
from core.sampling import denoiser, sample, sigma_at, sigmas, timesteps
from plugins.samplers import euler, euler_ancestral

SCHEDULE = NoiseSchedule(beta_schedule("scaled_linear", 1000, 0.00085, 0.012))
REGISTRY = load_registry(env={"LDM_DISABLE_PLUGIN_AUTOLOAD": "1"})
POINTS = 200_000  # a sampled W2's own error is about 1e-3 at this size


def build(name, **params):
    cls = REGISTRY.get("sampler", name).cls
    return cls(cls.Params(**params))


def run(sampler, evaluations, spacing="logsnr", points=POINTS):
    """(W2 to the truth, evaluations) with as many steps as fit in ``evaluations``."""
    return ours(sampler, spacing, evaluations, points)


# ddim and euler are the same computation here; ddpm and euler_ancestral measure the same.
EULER_BOUNDS = (0.06, 0.03, 0.012)
ANCESTRAL_BOUNDS = (0.1, 0.06, 0.03)
DETERMINISTIC_BOUNDS = {
    "euler": EULER_BOUNDS,
    "ddim": EULER_BOUNDS,
    "heun": (0.15, 0.025, 0.002),
    "plms": (0.009, 0.0015, 0.0015),
    "dpmpp_2m": (0.005, 0.002, 0.002),
}
STOCHASTIC_BOUNDS = {
    "ddpm": ANCESTRAL_BOUNDS,
    "euler_ancestral": ANCESTRAL_BOUNDS,
    "dpmpp_2m_sde": (0.008, 0.006, 0.004),
}


@pytest.mark.parametrize("name", [*DETERMINISTIC_BOUNDS, *STOCHASTIC_BOUNDS])
def test_each_sampler_approaches_the_truth_within_its_bounds(name):
    limits = {**DETERMINISTIC_BOUNDS, **STOCHASTIC_BOUNDS}[name]
    errors = []
    for evaluations, limit in zip((10, 20, 50), limits, strict=True):
        error, used = run(build(name), evaluations)
        assert evaluations - 1 <= used <= evaluations, (name, evaluations, used)
        assert error < limit, (name, evaluations, error)
        errors.append(error)
    if name not in ("plms", "dpmpp_2m"):  # these reach the floor by 20 evaluations
        assert errors == sorted(errors, reverse=True), (name, errors)


def test_higher_order_solvers_beat_euler_at_equal_evaluations():
    for evaluations in (20, 50):
        first_order = run(build("euler"), evaluations)[0]
        for name in ("heun", "plms", "dpmpp_2m"):
            assert run(build(name), evaluations)[0] < first_order, (name, evaluations)


@pytest.mark.parametrize("name", sorted(REGISTRY.names("sampler")))
def test_each_default_spacing_is_the_one_that_measures_best(name):
    sampler = build(name)

    def score(spacing):  # geometric mean of the errors at 10, 20 and 50 evaluations
        # 50000 points (error about 2e-3) suffice: the stochastic samplers' spacings differ by more.
        return sum(math.log(run(sampler, e, spacing, points=50_000)[0]) for e in (10, 20, 50))

    scores = {spacing: score(spacing) for spacing in SPACINGS}
    assert min(scores, key=scores.get) == sampler.spacing, scores


def test_spacings_give_decreasing_timesteps_and_sigmas_ending_at_zero():
    for spacing in SPACINGS:
        t = timesteps(SCHEDULE, 10, spacing)
        assert len(t) == 10 and (t.diff() < 0).all(), spacing
        levels = sigmas(SCHEDULE, 10, spacing)
        last = SCHEDULE.sigmas[0] if spacing == "ldm" else 0
        assert levels[-1] == last and (levels.diff() < 0).all(), spacing
    assert timesteps(SCHEDULE, 4, "leading").tolist() == [750, 500, 250, 0]
    assert timesteps(SCHEDULE, 4, "trailing").tolist() == [999, 749, 499, 249]
    log_levels = sigmas(SCHEDULE, 5, "logsnr")[:-1].log()
    assert torch.allclose(log_levels.diff(), log_levels.diff()[0].expand(4), atol=1e-9), "even in log sigma"
    roots = sigmas(SCHEDULE, 5, "karras")[:-1] ** (1 / 7)
    assert torch.allclose(roots.diff(), roots.diff()[0].expand(4), atol=1e-9), "even in sigma^(1/7)"
    assert torch.allclose(sigmas(SCHEDULE, 5, "karras")[[0, 4]], SCHEDULE.sigmas[[-1, 0]])
    assert timesteps(SCHEDULE, 1000, "linspace").tolist() == list(range(999, -1, -1))
    with pytest.raises(ValueError, match="between 1 and 1000"):
        timesteps(SCHEDULE, 0, "leading")
    with pytest.raises(ValueError, match="unknown spacing 'even'; choose one of leading, trailing"):
        timesteps(SCHEDULE, 4, "even")
    assert torch.allclose(sigma_at(SCHEDULE, torch.tensor([3.0])), SCHEDULE.sigmas[3:4])


@pytest.mark.parametrize("steps", [1, 2, 3, 1000])
@pytest.mark.parametrize("name", sorted(REGISTRY.names("sampler")))
def test_any_number_of_steps_from_1_to_T_gives_a_finite_sample(name, steps):
    data = GaussianData()
    levels = sigmas(SCHEDULE, steps, "linspace")
    z = torch.randn(4, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = build(name).sample(data.denoise, data.start(levels[0].item(), z), levels, generator=torch.Generator())
    assert out.shape == (4, 1) and torch.isfinite(out).all()


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
    assert REGISTRY.names("sampler") == [
        "ddim",
        "ddpm",
        "dpmpp_2m",
        "dpmpp_2m_sde",
        "euler",
        "euler_ancestral",
        "heun",
        "plms",
    ]
    data = GaussianData()
    levels = sigmas(SCHEDULE, 20, "logsnr")
    start = data.start(levels[0].item(), torch.tensor([[0.0], [1.0]], dtype=torch.float64))
    assert torch.equal(build("ddim").sample(data.denoise, start, levels), euler(data.denoise, start, levels)), (
        "DDIM with eta 0 is the Euler step"
    )
    with pytest.raises(ValueError):
        build("ddim", eta=1.5)


def test_eta_zero_is_the_deterministic_step_and_eta_one_is_ddpm():
    data = GaussianData()
    levels = sigmas(SCHEDULE, 10, "logsnr")
    start = data.start(
        levels[0].item(), torch.randn(5, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    )
    assert torch.allclose(
        euler_ancestral(data.denoise, start, levels, 0.0, torch.Generator()),
        euler(data.denoise, start, levels),
        atol=1e-12,
    )
    ddpm = build("ddpm").sample(data.denoise, start, levels, generator=torch.Generator().manual_seed(3))
    ddim = build("ddim", eta=1.0).sample(data.denoise, start, levels, generator=torch.Generator().manual_seed(3))
    assert torch.equal(ddpm, ddim)
    sde = build("dpmpp_2m_sde", eta=0.0).sample(data.denoise, start, levels)
    assert torch.allclose(sde, build("dpmpp_2m").sample(data.denoise, start, levels), atol=1e-12)


@pytest.mark.parametrize(
    "name,params", [("ddpm", {}), ("ddim", {"eta": 0.5}), ("euler_ancestral", {}), ("dpmpp_2m_sde", {})]
)
def test_a_batch_with_per_sample_generators_equals_its_items_one_by_one(name, params):
    levels = sigmas(SCHEDULE, 20, "logsnr")
    seeds = [11, 12, 13, 14]
    sampler = build(name, **params)

    def denoise(x, sigma):  # a non-linear stand-in for a network, float32
        return torch.tanh(x) / (1 + sigma[:, None, None, None] ** 2) ** 0.5

    def start(seed):
        return torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(seed)) * levels[0].float()

    batch = sampler.sample(
        denoise,
        torch.cat([start(s) for s in seeds]),
        levels,
        generator=[torch.Generator().manual_seed(100 + s) for s in seeds],
    )
    alone = torch.cat(
        [sampler.sample(denoise, start(s), levels, generator=[torch.Generator().manual_seed(100 + s)]) for s in seeds]
    )
    assert torch.allclose(batch, alone, atol=1e-5)
    assert not torch.allclose(batch[0], batch[1]), "each sample draws its own noise"
    with pytest.raises(ValueError, match="got 2 generators for a batch of 4"):
        sampler.sample(denoise, torch.cat([start(s) for s in seeds]), levels, generator=[torch.Generator()] * 2)


def test_sampling_from_pure_noise_scales_it_to_the_first_level():
    data = GaussianData(mu=0.0, s=1.0)  # unit-variance data: noise x sqrt(1 + sigma_0^2) is its exact marginal
    levels = sigmas(SCHEDULE, 50, "logsnr")
    noise = torch.randn(POINTS, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = sample(build("dpmpp_2m"), data.denoise, noise, levels)
    assert data.distance(out.mean().item(), out.std().item()) < 0.01


@pytest.mark.parametrize("name", ["dpmpp_2m", "ddpm"])
def test_img2img_runs_the_last_steps_from_the_noised_latent(name):
    data = GaussianData()
    levels = sigmas(SCHEDULE, 20, "logsnr")
    gen = torch.Generator().manual_seed(0)
    init = data.mu + data.s * torch.randn(POINTS, 1, dtype=torch.float64, generator=gen)  # draws of the data itself
    noise = torch.randn(POINTS, 1, dtype=torch.float64, generator=gen)
    data.calls = 0
    out = sample(build(name), data.denoise, noise, levels, init=init, strength=0.25, generator=gen)
    assert data.calls == 5, "strength 0.25 of 20 steps runs the last 5"
    assert data.distance(out.mean().item(), out.std().item()) < 0.01, "data noised and denoised is still the data"
    correlation = torch.corrcoef(torch.cat([init, out], dim=1).T)[0, 1]
    assert correlation > 0.9, "the result stays close to where it started"
    assert torch.equal(sample(build(name), data.denoise, noise, levels, init=init, strength=0.0), init)
    with pytest.raises(ValueError, match="strength must be in"):
        sample(build(name), data.denoise, noise, levels, init=init, strength=1.5)


@pytest.mark.parametrize("name", sorted(REGISTRY.names("sampler")))
def test_masked_sampling_keeps_the_masked_region_and_samples_the_rest(name):
    data = GaussianData()
    levels = sigmas(SCHEDULE, 20, "logsnr")
    gen = torch.Generator().manual_seed(0)
    # The kept coordinate far from the data, to show it is kept; the other starts at the data's mean.
    init = torch.tensor([[3.0, 0.5]], dtype=torch.float64).expand(20_000, 2)
    mask = torch.tensor([[1.0, 0.0]], dtype=torch.float64)  # keep coordinate 0, sample coordinate 1
    noise = torch.randn(init.shape, dtype=torch.float64, generator=gen)
    out = sample(build(name), data.denoise, noise, levels, init=init, mask=mask, generator=gen)
    assert torch.allclose(out[:, 0], init[:, 0], atol=1e-12)
    # Coordinates are independent here, so the free one must fare as it does with no mask at all.
    free = sample(build(name), data.denoise, noise[:, 1:], levels, init=init[:, 1:], generator=gen)
    assert (
        abs(
            data.distance(out[:, 1].mean().item(), out[:, 1].std().item())
            - data.distance(free.mean().item(), free.std().item())
        )
        < 0.01
    )
    with pytest.raises(ValueError, match="a mask needs the latent it keeps"):
        sample(build(name), data.denoise, noise, levels, mask=mask)


@pytest.mark.parametrize("name", sorted(REGISTRY.names("sampler")))
def test_sampling_keeps_every_tensor_on_the_latents_device(name):
    # Levels live on the CPU; latents on a GPU must never meet a CPU tensor of more than one
    # number. A meta device refuses that mixing as CUDA does, so this runs without a GPU.
    levels = sigmas(SCHEDULE, 4, "logsnr")
    noise, init = torch.empty(3, 2, 4, 4, device="meta"), torch.empty(3, 2, 4, 4, device="meta")
    mask = torch.empty(3, 1, 4, 4, device="meta")

    def denoise(x, sigma):
        assert sigma.device == x.device and sigma.shape == (3,)
        return x * 0.5

    for kwargs in ({}, {"init": init, "strength": 0.5}, {"init": init, "mask": mask}):
        out = sample(build(name), denoise, noise, levels, generator=torch.Generator().manual_seed(0), **kwargs)
        assert out.device.type == "meta" and out.shape == noise.shape


def test_the_adapter_gives_the_network_its_inputs_on_the_latents_device():
    seen = []

    def network(x_t, t):
        seen.append((x_t.device.type, t.device.type))
        return x_t

    x = torch.empty(2, 3, device="meta")
    denoiser(network, SCHEDULE, "eps")(x, torch.ones(2))  # levels come from the CPU
    assert seen == [("meta", "meta")]


def test_ldm_spacing_takes_the_original_ddim_steps():
    """The original DDIMSampler's steps: range(0, T, T // n) + 1, so n = 30 gives 31 of them."""
    assert timesteps(SCHEDULE, 50, "ldm").tolist() == list(range(981, 0, -20))
    assert len(timesteps(SCHEDULE, 30, "ldm")) == 31
    assert sigmas(SCHEDULE, 50, "ldm")[-1] == SCHEDULE.sigmas[0]


def test_ddim_with_ldm_spacing_is_the_original_ddim_recursion():
    """x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev) eps with x0 = (x - sqrt(1 - a_t) eps) / sqrt(a_t),
    a_prev at the last step being alpha_bar_0 (so the result keeps a little noise), as the
    original DDIM sampler steps with eta 0."""

    def model(x, t):
        return 0.3 * x + 0.001 * t.reshape(-1, 1, 1, 1)

    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ours = sample(build("ddim"), denoiser(model, SCHEDULE, "eps"), noise, sigmas(SCHEDULE, 10, "ldm"))
    alphas = SCHEDULE.alphas_cumprod
    steps = list(range(0, 1000, 100))
    x = noise
    for i in reversed(range(len(steps))):
        t = steps[i] + 1
        a_t, a_prev = alphas[t], alphas[steps[i - 1] + 1] if i > 0 else alphas[0]
        eps = model(x, torch.full((2,), float(t), dtype=torch.float64))
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    torch.testing.assert_close(ours, x, rtol=1e-9, atol=1e-9)


RHO = 0.95
"""Correlation of the two coordinates of :func:`correlated`'s data."""


def correlated(x, sigma):
    """The exact denoiser of 2-d data N(0, [[1, RHO], [RHO, 1]]); x (B, 2)."""
    cov = torch.tensor([[1.0, RHO], [RHO, 1.0]], dtype=x.dtype)
    level = sigma.to(x.dtype).reshape(-1, 1, 1) ** 2
    return (cov @ torch.linalg.inv(cov + level * torch.eye(2, dtype=x.dtype)) @ x.unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("name", sorted(REGISTRY.names("sampler")))
def test_resampling_makes_the_generated_part_agree_with_the_kept_one(name):
    # Keep coordinate 0 of draws from the data and generate coordinate 1: the truth is
    # b | a ~ N(RHO a, 1 - RHO^2). Replacement alone ties b to a only loosely (the kept value
    # reaches the generated one through the denoiser late, when the noise is already small);
    # RePaint's reruns bring the conditional close.
    gen = torch.Generator().manual_seed(0)
    data = torch.randn(5_000, 2, dtype=torch.float64, generator=gen)
    data[:, 1] = RHO * data[:, 0] + math.sqrt(1 - RHO**2) * data[:, 1]
    noise = torch.randn(data.shape, dtype=torch.float64, generator=gen)
    keep = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    levels = sigmas(SCHEDULE, 20, "logsnr")
    calls = []

    def counted(x, sigma):
        calls.append(1)
        return correlated(x, sigma)

    def residual(times, jump=1):
        calls.clear()
        out = sample(
            build(name), counted, noise, levels, init=data, mask=keep, generator=gen, resample=times, jump=jump
        )
        assert torch.allclose(out[:, 0], data[:, 0], atol=1e-12)
        return (out[:, 1] - RHO * out[:, 0]).var().item(), len(calls)

    (once, evaluations), (ten, _) = residual(1), residual(10)
    truth = 1 - RHO**2
    assert once > 3 * truth
    assert abs(ten - truth) < 0.25 * truth, (ten, truth)
    assert residual(3, jump=len(levels) - 1)[1] == 3 * evaluations, "a stretch of the whole walk: 3 whole passes"
    with pytest.raises(ValueError, match="pass mask"):
        sample(build(name), counted, noise, levels, init=data, resample=2)
