"""The `autoencoder` with the original code's options (GroupNorm eps 1e-6, bottom-right padding
before strided convolutions, quant_conv / post_quant_conv) loads a state dict in the original's
names and computes what the original computes.

The fixture numbers were measured by running the original code (CompVis/latent-diffusion
a506df5: ``Encoder``, ``Decoder`` and ``DiagonalGaussianDistribution`` of
``ldm/modules/diffusionmodules/model.py`` and ``ldm/modules/distributions/distributions.py``,
taming-transformers 3ba01b2's ``VectorQuantizer2`` with ``legacy=True``, ``quant_conv`` and
``post_quant_conv`` as ``AutoencoderKL`` / ``VQModel`` build them) on the state dict that
:func:`original_state` makes, with ddconfig ``double_z`` (KL) or not (VQ), ``z_channels`` 2,
``resolution`` 16, ``in_channels`` = ``out_ch`` = 3, ``ch`` 32, ``ch_mult`` [1, 2],
``num_res_blocks`` 1, ``attn_resolutions`` [8], dropout 0, ``embed_dim`` 2, ``n_embed`` 16,
on the input :func:`example_input`: the sum, the sum of absolute values and the first four
values of each output, in float64 from float32 computations.
"""

import pytest
import torch

from core import load_registry, original
from plugins.autoencoder import Autoencoder
from tests.original_fixtures import fingerprint, seeded_state

ORIGINAL_OPTIONS = {"norm_eps": 1e-6, "downsample_pad": "bottom_right", "quant_conv": True}
TINY = {
    "in_channels": 3,
    "ch": 32,
    "ch_mult": [1, 2],
    "num_res_blocks": 1,
    "attention_levels": [1],
    "z_channels": 2,
    "norm_groups": 32,
    **ORIGINAL_OPTIONS,
}
REGISTRY = load_registry(env={"LDM_DISABLE_PLUGIN_AUTOLOAD": "1"})
REGULARIZERS = {"kl": {"name": "kl"}, "vq": {"name": "vq", "params": {"codebook_size": 16}}}


def build(kind: str, **params) -> Autoencoder:
    values = {**TINY, "regularizer": REGULARIZERS[kind], **params}
    return Autoencoder(Autoencoder.Params.model_validate(values, context={"registry": REGISTRY})).eval()


def original_state(model: Autoencoder, seed: int = 0) -> dict[str, torch.Tensor]:
    """Seeded weights (:func:`seeded_state`) under the original's names."""
    return seeded_state({key: tensor.shape for key, tensor in original.to_original(model).items()}, seed)


def example_input() -> torch.Tensor:
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))


ORIGINAL = {
    "kl": {
        "moments": [
            44.95320086739957,
            197.97981455735862,
            -0.0371549054980278,
            0.06826942414045334,
            0.43119242787361145,
            -0.02961919642984867,
        ],
        "decoded": [
            -4.182829324505292,
            700.2547807887895,
            -0.025597644969820976,
            -0.3068709373474121,
            -0.07263358682394028,
            0.6670181751251221,
        ],
    },
    "vq": {
        "moments": [
            -22.294387388043106,
            58.991930338554084,
            -0.06554187834262848,
            -0.16786491870880127,
            -0.0975990891456604,
            0.09938535839319229,
        ],
        "decoded": [
            8.22726160477032,
            665.0246385407227,
            0.39146363735198975,
            0.3130853772163391,
            -0.13620668649673462,
            0.09659428149461746,
        ],
    },
}
ORIGINAL_VQ_INDICES = [
    9,
    9,
    9,
    9,
    9,
    9,
    9,
    13,
    9,
    9,
    13,
    13,
    1,
    13,
    9,
    13,
    3,
    10,
    9,
    13,
    9,
    9,
    9,
    9,
    15,
    10,
    13,
    13,
    9,
    1,
    13,
    9,
    9,
    9,
    9,
    9,
    9,
    13,
    13,
    9,
    9,
    9,
    9,
    10,
    9,
    15,
    13,
    9,
    9,
    9,
    13,
    9,
    9,
    9,
    9,
    9,
    9,
    10,
    9,
    13,
    9,
    9,
    9,
    9,
    9,
    9,
    9,
    13,
    9,
    10,
    9,
    9,
    15,
    13,
    9,
    9,
    15,
    7,
    9,
    9,
    9,
    10,
    9,
    9,
    3,
    1,
    13,
    10,
    2,
    9,
    10,
    13,
    9,
    9,
    13,
    9,
    13,
    9,
    15,
    7,
    9,
    9,
    2,
    9,
    9,
    13,
    9,
    13,
    10,
    10,
    9,
    9,
    9,
    9,
    9,
    9,
    10,
    9,
    2,
    13,
    10,
    9,
    13,
    9,
    9,
    9,
    9,
    9,
]


def loaded(kind: str) -> Autoencoder:
    model = build(kind)
    model.load_state_dict(original.from_original(model, original_state(model)))
    return model


@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_outputs_equal_the_original_codes(kind):
    model = loaded(kind)
    with torch.no_grad():
        moments = model.moments(example_input())
        decoded = model.decode(model.mode(example_input()))
    torch.testing.assert_close(fingerprint(moments), ORIGINAL[kind]["moments"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fingerprint(decoded), ORIGINAL[kind]["decoded"], rtol=1e-5, atol=1e-6)
    if kind == "vq":
        assert model.regularizer.assign(moments).flatten().tolist() == ORIGINAL_VQ_INDICES


def test_the_original_options_matter():
    """Each option changes the output, so the fixture checks all three."""
    reference = fingerprint(loaded("kl").moments(example_input()).detach())
    for key, ours in (("norm_eps", 1e-5), ("downsample_pad", "both")):
        model = build("kl", **{key: ours})
        model.load_state_dict(original.from_original(model, original_state(build("kl"))))
        assert abs(fingerprint(model.moments(example_input()).detach())[1] - reference[1]) > 1e-4, key


def test_names_round_trip_and_cover_every_weight():
    model = loaded("vq")
    state = original.to_original(model)
    assert len(state) == 155 and "encoder.down.0.downsample.conv.weight" in state
    assert {"decoder.up.1.upsample.conv.weight", "decoder.up.1.attn.1.q.weight"} <= state.keys()
    again = build("vq")
    again.load_state_dict(original.from_original(again, state))
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[key]), key
    mapped = {pair.ours for pair in model.original_names()}
    assert set(model.state_dict()) - mapped == {"regularizer.usage", "regularizer.initialized"}


def test_defaults_keep_the_layout_of_our_checkpoints():
    model = Autoencoder(
        Autoencoder.Params.model_validate(
            {**TINY, "norm_eps": 1e-5, "downsample_pad": "both", "quant_conv": False, "regularizer": {"name": "kl"}},
            context={"registry": REGISTRY},
        )
    )
    assert not any("quant_conv" in key for key in model.state_dict())
    assert "encoder.2.weight" in model.state_dict()  # the strided conv, unwrapped


def test_a_missing_or_misshapen_weight_is_named():
    model = build("kl")
    state = original_state(model)
    with pytest.raises(KeyError, match="decoder.conv_out.bias"):
        original.from_original(model, {k: v for k, v in state.items() if k != "decoder.conv_out.bias"})
    state["quant_conv.weight"] = torch.zeros(4, 4, 3, 3)
    with pytest.raises(ValueError, match=r"quant_conv.weight has shape \(4, 4, 3, 3\) where the params make"):
        original.from_original(model, state)
