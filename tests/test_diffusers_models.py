"""Our ``unet`` and ``autoencoder`` as diffusers models: the pairs and configs that
``diffusers_model()`` gives load into diffusers' own classes with nothing missing or left over,
and give our outputs; ``from_diffusers`` reads the configs back; what no class can express is
refused naming the param."""

from pathlib import Path

import diffusers
import pytest
import torch

from core import Conditioning, NotExpressible, load_registry
from core.original import from_pairs, to_pairs
from plugins.autoencoder import Autoencoder
from plugins.unet import UNet

REGISTRY = load_registry(env={"LDM_DISABLE_PLUGIN_AUTOLOAD": "1"})
TOLERANCE = 1e-4


def randomized(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """``model`` with every tensor redrawn (the zero-initialised output layers included, so a
    wrong pairing cannot hide behind zeros)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.parameters():
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.2)
    return model.eval()


def unet(**params) -> UNet:
    base = {
        "in_channels": 4,
        "out_channels": 4,
        "model_channels": 16,
        "channel_mult": [1, 2],
        "num_res_blocks": 1,
        "attention_levels": [1],
        "norm_groups": 8,
    }
    return randomized(UNet(UNet.Params(**{**base, **params})))


def autoencoder(regularizer: dict, **params) -> Autoencoder:
    base = {
        "ch": 8,
        "ch_mult": [1, 2],
        "num_res_blocks": 1,
        "z_channels": 3,
        "norm_groups": 4,
        "norm_eps": 1e-6,
        "downsample_pad": "bottom_right",
        "quant_conv": True,
        "regularizer": regularizer,
    }
    values = {**base, **params}
    return randomized(Autoencoder(Autoencoder.Params.model_validate(values, context={"registry": REGISTRY})))


def as_diffusers(model: torch.nn.Module) -> torch.nn.Module:
    form = model.diffusers_model()
    theirs = getattr(diffusers, form.class_name).from_config(form.config).eval()
    theirs.load_state_dict(to_pairs(model, form.pairs), strict=True)
    return theirs


UNETS = {
    "cross, head_channels": {"context_dim": 12, "attention_norm_eps": 1e-6, "head_channels": 8},
    "cross, depth 2, no scale-shift": {
        "context_dim": 12,
        "attention_norm_eps": 1e-6,
        "num_heads": 2,
        "scale_shift_norm": False,
        "transformer_depth": 2,
        "channel_mult": [1, 2, 2],
        "attention_levels": [0, 2],
    },
    "plain": {"attention": "self", "head_channels": 8},
    "plain, no middle attention": {
        "attention": "self",
        "head_channels": 8,
        "scale_shift_norm": False,
        "mid_attention": False,
        "channel_mult": [1, 2, 2],
        "attention_levels": [0, 2],
    },
}


@pytest.mark.parametrize("case", UNETS)
def test_unet_equals_diffusers(case):
    torch.manual_seed(1)
    ours = unet(**UNETS[case])
    theirs = as_diffusers(ours)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10.0, 500.0])
    context = torch.randn(2, 5, 12) if ours.params.context_dim else None
    with torch.no_grad():
        expected = ours(x, t, Conditioning(context=context))
        got = theirs(x, t, encoder_hidden_states=context).sample if context is not None else theirs(x, t).sample
    assert expected.abs().max() > 0.1
    assert (expected - got).abs().max() <= TOLERANCE * expected.abs().max()


@pytest.mark.parametrize("case", UNETS)
def test_unet_read_back_from_diffusers(case):
    ours = unet(**UNETS[case])
    form = ours.diffusers_model()
    again = UNet(UNet.Params(**UNet.from_diffusers(form.class_name, form.config, Path("unet")))).eval()
    again.load_state_dict(from_pairs(again, again.diffusers_model().pairs, to_pairs(ours, form.pairs)))
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([250.0])
    cond = Conditioning(context=torch.randn(1, 3, 12) if ours.params.context_dim else None)
    with torch.no_grad():
        assert torch.equal(ours(x, t, cond), again(x, t, cond))


AUTOENCODERS = {
    "kl": ({"name": "kl"}, {}),
    "kl, level attention, no quant_conv": ({"name": "kl"}, {"attention_levels": [1], "quant_conv": False}),
    "vq, no middle attention": (
        {"name": "vq", "params": {"codebook_size": 16}},
        {"attention_levels": [0], "mid_attention": False},
    ),
}


@pytest.mark.parametrize("case", AUTOENCODERS)
def test_autoencoder_equals_diffusers(case):
    regularizer, params = AUTOENCODERS[case]
    ours = autoencoder(regularizer, **params)
    theirs = as_diffusers(ours)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        z = ours.mode(x)
        encoded = theirs.encode(x)
        z_theirs = encoded.latent_dist.mode() if regularizer["name"] == "kl" else encoded.latents
        decoded, decoded_theirs = ours.decode(z), theirs.decode(z).sample
    assert (z - z_theirs).abs().max() <= TOLERANCE * z.abs().max()
    assert (decoded - decoded_theirs).abs().max() <= TOLERANCE * decoded.abs().max()
    back = Autoencoder.from_diffusers(ours.diffusers_model().class_name, ours.diffusers_model().config, Path("vae"))
    assert Autoencoder.Params.model_validate(back, context={"registry": REGISTRY}) == ours.params


def test_a_wrong_pairing_is_seen():
    """The comparison above can fail: cross-attention's key and value swapped (what a wrong
    split of our fused kv would do) changes the output far beyond the tolerance."""
    ours = unet(**UNETS["cross, head_channels"])
    theirs = as_diffusers(ours)
    attention = theirs.mid_block.attentions[0].transformer_blocks[0].attn2
    with torch.no_grad():
        key = attention.to_k.weight.clone()
        attention.to_k.weight.copy_(attention.to_v.weight)
        attention.to_v.weight.copy_(key)
        x, t, context = torch.randn(1, 4, 8, 8), torch.tensor([10.0]), torch.randn(1, 5, 12)
        difference = ours(x, t, Conditioning(context=context)) - theirs(x, t, encoder_hidden_states=context).sample
    assert difference.abs().max() > 1e-3


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"resblock_updown": True, "context_dim": 12, "attention_norm_eps": 1e-6}, "resblock_updown"),
        ({"vector_dim": 6, "context_dim": 12, "attention_norm_eps": 1e-6}, "vector_dim 6"),
        ({}, "without context_dim"),
        ({"context_dim": 12}, "attention_norm_eps 1e-05"),
        ({"context_dim": 12, "attention_norm_eps": 1e-6, "ff_mult": 2}, "ff_mult 2"),
        ({"attention": "self", "num_heads": 2, "attention_levels": [0]}, "train with head_channels"),
    ],
)
def test_unet_diffusers_cannot_express_is_named(params, named):
    with pytest.raises(NotExpressible, match=named):
        unet(**params).diffusers_model()


@pytest.mark.parametrize(
    ("params", "named"),
    [({"norm_eps": 1e-5}, "norm_eps 1e-05"), ({"downsample_pad": "both"}, "downsample_pad 'both'")],
)
def test_autoencoder_diffusers_cannot_express_is_named(params, named):
    with pytest.raises(NotExpressible, match=named):
        autoencoder({"name": "kl"}, **params).diffusers_model()


def test_reading_a_config_ours_cannot_express_names_the_key():
    form = unet(**UNETS["cross, head_channels"]).diffusers_model()
    with pytest.raises(NotExpressible, match="use_linear_projection True"):
        UNet.from_diffusers(form.class_name, {**form.config, "use_linear_projection": True}, Path("unet"))
    assert UNet.from_diffusers("AutoencoderKL", form.config, Path("vae")) is None
