"""The `unet` denoiser: contract, shapes, conditioning paths, checks on its params."""

import pytest
import torch
from pydantic import ValidationError

from core import Conditioning, load_registry
from core.testing import DenoiserContract
from plugins.unet import UNet, timestep_embedding
from tests.test_ldm import UNET

TINY = UNET["params"]  # the tiny UNet the LDM tests train


class TestUNetUnconditional(DenoiserContract):
    component = UNet
    params = {**TINY, "in_channels": 4, "out_channels": 4}


class TestUNetHybrid(DenoiserContract):
    """Cross-attention context, concat maps and a vector, all at once (the paper's hybrid conditioning)."""

    component = UNet
    params = {
        **TINY,
        "in_channels": 4 + 3,
        "out_channels": 4,
        "context_dim": 6,
        "vector_dim": 5,
        "transformer_depth": 2,
        "head_channels": 4,
        "scale_shift_norm": False,
        "prediction": "v",
    }

    def condition(self, batch_size, generator):
        return Conditioning(
            context=torch.randn(batch_size, 3, 6, generator=generator),
            concat=torch.randn(batch_size, 3, self.latent_size, self.latent_size, generator=generator),
            vector=torch.randn(batch_size, 5, generator=generator),
        )


def test_the_unet_is_registered_and_small_configs_are_small():
    registry = load_registry(env={"LDM_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert registry.get("denoiser", "unet").cls is UNet
    model = UNet(UNet.Params(**TINY, in_channels=4, out_channels=4))
    assert sum(p.numel() for p in model.parameters()) < 100_000
    assert UNet.downsamplings(UNet.Params(**TINY)) == 1


def test_a_fresh_unet_predicts_zero_and_learns_away_from_it():
    torch.manual_seed(0)
    model = UNet(UNet.Params(**TINY, in_channels=4, out_channels=4))
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10.0, 900.0])
    assert torch.equal(model(x, t, Conditioning()), torch.zeros_like(x)), "zero-initialised output layer"
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = (model(x, t, Conditioning()) - x).pow(2).mean()
    loss.backward()
    optimizer.step()
    assert (model(x, t, Conditioning()) - x).pow(2).mean() < loss


@pytest.mark.parametrize("size,mult", [(8, [1, 2]), (16, [1, 2, 2]), (32, [1, 1, 2, 2])])
def test_output_keeps_the_latent_shape_at_every_depth(size, mult):
    model = UNet(UNet.Params(**{**TINY, "channel_mult": mult, "attention_levels": []}, in_channels=3, out_channels=3))
    x = torch.randn(2, 3, size, size)
    assert model(x, torch.rand(2) * 999, Conditioning()).shape == x.shape


def test_gradient_checkpointing_gives_the_same_outputs_and_gradients():
    params = UNet.Params(**TINY, in_channels=4, out_channels=4, context_dim=6)
    cond = Conditioning(context=torch.randn(2, 3, 6))
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([3.0, 700.0])
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = UNet(params.model_copy(update={"gradient_checkpointing": checkpointing})).train()
        torch.nn.init.normal_(model.out[-1].weight, std=0.1)
        out = model(x, t, cond)
        out.square().sum().backward()
        results.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    (out_a, grads_a), (out_b, grads_b) = results
    assert torch.allclose(out_a, out_b, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(grads_a, grads_b, strict=True))


def test_conditioning_other_than_the_unet_was_built_for_is_refused():
    model = UNet(UNet.Params(**TINY, in_channels=4, out_channels=4, context_dim=6))
    with pytest.raises(ValueError, match="built for context_dim 6 and vector_dim None"):
        model(torch.randn(1, 4, 8, 8), torch.zeros(1), Conditioning())


@pytest.mark.parametrize(
    "change,message",
    [
        (
            {"norm_groups": 3},
            r"norm_groups 3 does not divide the channel counts \[8, 16\] \(model_channels 8 x "
            r"channel_mult \[1, 2\]\); use norm_groups 8",
        ),
        ({"attention_levels": [2]}, r"attention_levels \[2\] do not exist: channel_mult \[1, 2\] has levels 0 to 1"),
        ({"num_heads": 3}, r"num_heads 3 does not divide level 1's 16 channels"),
        ({"head_channels": 5}, r"head_channels 5 does not divide level 1's 16 channels"),
    ],
)
def test_params_that_cannot_build_are_refused_with_the_fix(change, message):
    with pytest.raises(ValidationError, match=message):
        UNet.Params(**{**TINY, **change})


def test_timestep_embedding_tells_fractional_timesteps_apart():
    e = timestep_embedding(torch.tensor([100.0, 100.5, 101.0, 900.0]), 16)
    assert e.shape == (4, 16)
    assert (e[1] - e[0]).norm() < (e[3] - e[0]).norm()
    assert (e[1] - e[0]).norm() > 0.1 and (e[2] - e[1]).norm() > 0.1
    assert timestep_embedding(torch.tensor([1.0]), 7).shape == (1, 7)
