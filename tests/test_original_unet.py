"""The `unet` with the original code's options loads a state dict in the original's names and
computes what the original `UNetModel` computes.

The fixture numbers were measured by running the original code (CompVis/latent-diffusion
a506df5, ``ldm/modules/diffusionmodules/openaimodel.py``'s ``UNetModel``, in eval mode) on the
weights :func:`original_state` makes and the inputs :func:`example_inputs` makes, built with
``image_size`` 8, ``in_channels`` = ``out_channels`` = 4, ``model_channels`` 32,
``channel_mult`` [1, 2], ``num_res_blocks`` 1, ``attention_resolutions`` [2] (level 1),
``num_head_channels`` 16, dropout 0 and: for ``transformer``, ``use_spatial_transformer``,
``transformer_depth`` 1, ``context_dim`` 24; for ``self``, plain attention blocks (legacy
head order), ``resblock_updown`` and ``use_scale_shift_norm``. The fingerprints are those of
:func:`tests.original_fixtures.fingerprint`.
"""

import pytest
import torch

from core import Conditioning, original
from plugins.unet import UNet
from tests.original_fixtures import fingerprint, seeded_state

COMMON = {
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 32,
    "channel_mult": [1, 2],
    "num_res_blocks": 1,
    "attention_levels": [1],
    "head_channels": 16,
    "norm_groups": 32,
}
VARIANTS = {
    "transformer": {"context_dim": 24, "scale_shift_norm": False, "attention_norm_eps": 1e-6},
    "self": {"attention": "self", "resblock_updown": True, "scale_shift_norm": True},
}


def build(variant: str) -> UNet:
    return UNet(UNet.Params(**COMMON, **VARIANTS[variant])).eval()


def original_state(model: UNet, seed: int = 0) -> dict[str, torch.Tensor]:
    """Seeded weights under the original's names and shapes (its 1-d convolutions' trailing 1)."""
    shapes = {key: tensor.shape for key, tensor in original.to_original(model).items()}
    one_d = {key for key in shapes if key.endswith((".qkv.weight", ".proj_out.weight")) and len(shapes[key]) == 2}
    return seeded_state(
        {key: torch.Size((*shape, 1)) if key in one_d else shape for key, shape in shapes.items()}, seed
    )


def example_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Latents (2, 4, 8, 8), timesteps (3, 977), a context (2, 5, 24)."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 8, 8, generator=generator)
    context = torch.randn(2, 5, 24, generator=generator)
    return x, torch.tensor([3, 977]), context


ORIGINAL = {
    "transformer": [
        -18.572912154879305,
        50.90993807355699,
        0.048323750495910645,
        0.05559205636382103,
        -0.005396800581365824,
        0.0852912962436676,
    ],
    "self": [
        28.75067998166378,
        43.55841660394617,
        -0.0961638018488884,
        -0.10553456842899323,
        -0.0846330001950264,
        -0.023239923641085625,
    ],
}


def loaded(variant: str) -> UNet:
    model = build(variant)
    model.load_state_dict(original.from_original(model, original_state(model)))
    return model


@pytest.mark.parametrize("variant", ["transformer", "self"])
def test_output_equals_the_original_codes(variant):
    x, t, context = example_inputs()
    with torch.no_grad():
        y = loaded(variant)(x, t, Conditioning(context=context if variant == "transformer" else None))
    torch.testing.assert_close(fingerprint(y), ORIGINAL[variant], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", ["transformer", "self"])
def test_names_round_trip(variant):
    model = loaded(variant)
    state = original.to_original(model)
    again = build(variant)
    again.load_state_dict(original.from_original(again, state))
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[key]), key
    assert {pair.ours for pair in model.original_names()} == set(model.state_dict())


def test_original_names_of_a_worked_example():
    """Names as the original's module lists number them (helper's reading of openaimodel.py)."""
    state = original.to_original(build("self"))
    assert "input_blocks.2.0.in_layers.2.weight" in state  # the down-resampling residual block
    assert "output_blocks.1.2.out_layers.3.weight" in state  # res, attention, then the up-resampling block
    assert state["middle_block.1.qkv.weight"].shape == (192, 64, 1)  # a 1-d convolution there
    assert "input_blocks.0.0.weight" in state and "out.2.bias" in state
    transformer = original.to_original(build("transformer"))
    assert transformer["input_blocks.3.1.transformer_blocks.0.attn2.to_k.weight"].shape == (64, 24)
    assert "input_blocks.2.0.op.weight" in original.to_original(build("transformer"))


def test_legacy_heads_are_regrouped():
    """Rows of the original's fused qkv run head by head; ours run q of every head, then k, then v."""
    model = build("self")
    state = original_state(model)
    ours = original.from_original(model, state)["middle.0.attn.qkv.weight"]
    theirs = state["middle_block.1.qkv.weight"].squeeze(-1)  # 4 heads of 16 channels: rows 0-15 q0, 16-31 k0...
    torch.testing.assert_close(ours[64:80], theirs[16:32])  # k of head 0
    torch.testing.assert_close(ours[16:32], theirs[48:64])  # q of head 1


def test_self_attention_refuses_a_context():
    with pytest.raises(ValueError, match="attention 'self' has no cross-attention but context_dim is 8"):
        UNet.Params(**COMMON, attention="self", context_dim=8)
