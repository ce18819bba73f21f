"""The ``inpainting`` conditioner and the ``masked`` dataset: the paper's inpainting format.

The format fixture (``ORIGINAL``) comes from running the original code's ``make_batch``
(CompVis/latent-diffusion ``scripts/inpaint.py``, at a506df5) on the inputs of
:func:`original_inputs`, as docs/original_formats.md (A4) records: the sums of what it gives
the model, and its mask brought to the 4 x 4 latent of a 16 x 16 image. Its encoder step
needs weights, so the encoding is checked against our own first stage's mode instead.
"""

import copy

import pytest
import torch
from torch.nn import functional as F

from core import DenoiserSpec, FrozenEncoder, LatentShape, UserError, load_registry
from core.masks import masked_input
from core.testing import ConditionerContract
from plugins.autoencoder import Autoencoder
from plugins.inpainting import Inpainting
from plugins.masked import Masked
from tasks.ldm.model import ConditionerUse, fill_denoiser

REGISTRY = load_registry()
ORIGINAL = {
    "image_sum": -1.906085,  # the image mapped to [-1, 1]
    "masked_image_sum": -413.610901,  # the hole at -1
    "mask_sum": 16.0,  # the mask as -1 (keep) / +1 (hole)
    "latent_mask": [[-1, 1, 1, -1], [1, 1, -1, 1], [-1, 1, 1, -1], [-1, -1, 1, 1]],
    "hole_fraction": 0.53125,
}


def original_inputs():
    """The worked example's image in [0, 1] (1, 3, 16, 16) and mask (1, 1, 16, 16), 1: hole."""
    torch.manual_seed(0)
    image = torch.rand(1, 3, 16, 16)
    mask = (torch.rand(1, 1, 16, 16) > 0.5).float()
    return image, mask


def first_stage(factor=4, regularizer="kl", seed=0):
    torch.manual_seed(seed)
    ch_mult = [1] + [2] * (factor.bit_length() - 1)
    params = Autoencoder.Params.model_validate(
        {
            "ch": 8,
            "ch_mult": ch_mult,
            "num_res_blocks": 1,
            "z_channels": 3,
            "norm_groups": 4,
            "mid_attention": False,
            "regularizer": {"name": regularizer},
        },
        context={"registry": REGISTRY},
    )
    return Autoencoder(params).eval()


def conditioner(factor=4, regularizer="kl"):
    module = Inpainting(Inpainting.Params(factor=factor))
    module.use_first_stage(FrozenEncoder(first_stage(factor, regularizer)))
    return module


class TestInpainting(ConditionerContract):
    component = Inpainting
    params = {"factor": 2}

    def build(self, seed=0):
        module = super().build(seed)
        module.use_first_stage(FrozenEncoder(first_stage(2)))
        return module

    def example(self, batch_size, generator):
        images = torch.rand(batch_size, 3, 8, 8, generator=generator) * 2 - 1
        masks = (torch.rand(batch_size, 1, 8, 8, generator=generator) > 0.5).float()
        return masked_input(images, masks)


def test_what_the_model_is_shown_equals_the_original_format():
    image, mask = original_inputs()
    assert mask.mean().item() == ORIGINAL["hole_fraction"]
    shown = masked_input(image * 2 - 1, mask)
    assert (image * 2 - 1).sum().item() == pytest.approx(ORIGINAL["image_sum"], abs=1e-4)
    assert shown[:, :3].sum().item() == pytest.approx(ORIGINAL["masked_image_sum"], abs=1e-3)
    assert shown[:, 3].sum().item() == ORIGINAL["mask_sum"]
    assert torch.all(shown[:, :3][mask.expand(1, 3, 16, 16) == 1] == -1)

    module = conditioner(factor=4)
    concat = module(shown).concat
    assert concat.shape == (1, 4, 4, 4)
    assert concat[0, 3].tolist() == ORIGINAL["latent_mask"]
    assert torch.equal(concat[:, :3], first_stage(4).mode(shown[:, :3]))


def test_the_encoding_is_the_posterior_mean_never_a_draw():
    module = conditioner(factor=2)
    images = torch.rand(2, 3, 8, 8) * 2 - 1
    shown = masked_input(images, torch.zeros(2, 1, 8, 8))
    a, b = module(shown).concat, module(shown).concat
    assert torch.equal(a, b)
    moments = first_stage(2).encoder(images)
    assert torch.allclose(a[:, :3], moments[:, :3], atol=1e-6)  # the mean half of (mean, logvar)


def test_vq_encoding_is_the_latent_before_quantisation():
    module = conditioner(factor=2, regularizer="vq")
    images = torch.rand(2, 3, 8, 8) * 2 - 1
    encoded = module(masked_input(images, torch.zeros(2, 1, 8, 8))).concat[:, :3]
    assert torch.allclose(encoded, first_stage(2, "vq").encoder(images), atol=1e-6)


def test_unconditional_is_the_output_for_an_image_that_is_all_hole():
    module = conditioner(factor=2)
    cond = module(masked_input(torch.rand(3, 3, 8, 8), torch.zeros(3, 1, 8, 8)))
    null = module.unconditional(cond).concat
    hole = module(masked_input(torch.zeros(3, 3, 8, 8), torch.ones(3, 1, 8, 8))).concat
    assert torch.equal(null, hole)
    assert torch.all(null[:, 3] == 1)


def test_an_ema_copy_shares_the_first_stage():
    module = conditioner(factor=2)
    copied = copy.deepcopy(module)
    assert copied.encoder is module.encoder
    assert not list(module.state_dict())


@pytest.mark.parametrize(
    ("y", "message"),
    [
        (torch.zeros(1, 3, 8, 8), r"float \(B, 4, H, W\)"),
        (torch.zeros(1, 4, 8, 8), "values other than -1 \\(keep\\) and \\+1 \\(hole\\)"),
        (torch.ones(1, 4, 6, 6), r"do not divide by the factor 4"),
    ],
)
def test_bad_input_is_refused(y, message):
    with pytest.raises(ValueError, match=message):
        conditioner(factor=4)(y)


def test_a_first_stage_of_other_channels_is_refused_before_anything_is_built(registry):
    use = ConditionerUse.model_validate(
        {"name": "inpainting", "params": {"latent_channels": 4, "factor": 4}}, context={"registry": registry}
    )
    denoiser = {"name": "unet", "params": {"model_channels": 8, "norm_groups": 4}}
    spec = DenoiserSpec.model_validate(denoiser, context={"registry": registry})
    with pytest.raises(UserError, match="encodes with a first stage of 4 latent channels but the first stage has 3"):
        fill_denoiser(spec, LatentShape(channels=3, factor=4), [use], {"registry": registry})
    filled = fill_denoiser(spec, LatentShape(channels=4, factor=4), [use], {"registry": registry})
    assert filled.params.in_channels == 4 + 5


def masked_digits(**params):
    data = {"name": "digits", "params": {"size": 16, "channels": 3, "split": "train"}}
    return Masked(Masked.Params.model_validate({"data": data, **params}, context={"registry": REGISTRY}))


def test_masked_examples_hold_the_mask_and_the_masked_image():
    data = masked_digits(masks={"kind": "box", "coverage": [0.25, 0.5]})
    example = data[3]
    image, mask = example["image"], example["mask"]
    assert mask.shape == (1, 16, 16) and set(mask.unique().tolist()) == {0.0, 1.0}
    assert 0.2 <= mask.mean().item() <= 0.55
    assert torch.equal(example["masked_image"], masked_input(image[None], mask[None])[0])
    assert torch.equal(data[3]["mask"], mask), "the same index gives the same mask"
    assert not torch.equal(data[4]["mask"], mask)
    assert not torch.equal(masked_digits(seed=1)[3]["mask"], masked_digits(seed=0)[3]["mask"])
    shape = Masked.example_shape(data.params)
    assert {"image", "label", "mask", "masked_image"} <= shape.fields


def test_masked_split_reaches_the_wrapped_data():
    train, val = masked_digits(), masked_digits(split="val")
    assert len(val) < len(train)
    assert torch.equal(val[0]["image"], masked_digits(split="val")[0]["image"])


def test_a_mask_of_the_latent_takes_each_blocks_top_left_pixel():
    mask = (torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    shown = masked_input(torch.zeros(2, 3, 16, 16), mask)
    concat = conditioner(factor=4)(shown).concat
    assert torch.equal(concat[:, 3:], mask[..., ::4, ::4] * 2 - 1)
    assert torch.equal(concat[:, 3:], F.interpolate(shown[:, 3:], size=(4, 4), mode="nearest"))
