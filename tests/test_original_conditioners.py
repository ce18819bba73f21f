"""The conditioners' options that express the original code's: `class_label` as its
`ClassEmbedder` (cin256 without a null class, cin256-v2 with class 1000 as the null class),
`semantic_map` as its `SpatialRescaler` (bilinear halvings, a 1x1 convolution without bias) and
`low_res` as bsr_sr's identity condition (the low-res image concatenated as it is).

The `SpatialRescaler` fixture was measured by running the original code (CompVis/latent-diffusion
a506df5, ``ldm/modules/encoders/modules.py``'s ``SpatialRescaler(n_stages=2, method="bilinear",
multiplier=0.5, in_channels=5, out_channels=3, bias=False)``) on the one-hot maps of
:func:`example_map` with the weight :func:`rescaler_weight` draws.
"""

import pytest
import torch

from core import original
from plugins.class_label import ClassLabel
from plugins.low_res import LowRes
from plugins.semantic_map import SemanticMap
from tests.original_fixtures import fingerprint


def example_map() -> torch.Tensor:
    """Class maps (2, 16, 16) of 5 classes."""
    return torch.randint(0, 5, (2, 16, 16), generator=torch.Generator().manual_seed(3))


def rescaler_weight() -> torch.Tensor:
    return torch.randn(3, 5, 1, 1, generator=torch.Generator().manual_seed(4))


def test_class_label_loads_the_original_rows_and_its_null_class():
    weight = torch.randn(6, 8)
    with_null = ClassLabel(ClassLabel.Params(num_classes=5, dim=8))
    with_null.load_state_dict(original.from_original(with_null, {"embedding.weight": weight}))
    cond = with_null(torch.tensor([0, 4]))
    torch.testing.assert_close(cond.context[:, 0], weight[[0, 4]])
    torch.testing.assert_close(with_null.unconditional(cond).context[:, 0], weight[[5, 5]])


def test_class_label_without_a_null_class_says_how_to_use_it():
    model = ClassLabel(ClassLabel.Params(num_classes=5, dim=8, null_class=False))
    assert model.embedding.weight.shape == (5, 8)
    cond = model(torch.tensor([1]))
    with pytest.raises(ValueError, match="class_label has no null class .* sample with guidance 1"):
        model.unconditional(cond)


ORIGINAL_RESCALED = [
    30.76818908751011,
    35.709598794579506,
    0.8619276881217957,
    -0.05074840784072876,
    0.8513262867927551,
    0.2779073119163513,
]


def test_semantic_map_as_the_original_spatial_rescaler():
    model = SemanticMap(SemanticMap.Params(num_classes=5, channels=3, factor=4, method="bilinear", bias=False)).eval()
    model.load_state_dict(original.from_original(model, {"channel_mapper.weight": rescaler_weight()}))
    with torch.no_grad():
        concat = model(example_map()).concat
    assert concat.shape == (2, 3, 4, 4)
    torch.testing.assert_close(fingerprint(concat), ORIGINAL_RESCALED, rtol=1e-5, atol=1e-6)


def test_low_res_can_concatenate_the_image_as_it_is():
    params = LowRes.Params(lowres_factor=4, factor=4, max_noise=0.0, vector_dim=None)
    assert LowRes.produces(params).vector is None
    model = LowRes(params)
    image = torch.rand(2, 3, 8, 8) * 2 - 1
    for mode in (True, False):
        cond = model.train(mode)(image)
        assert cond.vector is None and torch.equal(cond.concat, image)
    assert original.to_original(model) == {}
