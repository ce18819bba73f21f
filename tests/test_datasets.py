"""The built-in datasets: their fields agree, and they are the same every time."""

import pytest
import torch

from plugins.digits import Digits
from plugins.shapes import COLOURS, SHAPES, Shapes


def test_digits_are_the_bundled_set_resized_with_labels():
    train = Digits(Digits.Params(size=16, channels=3, split="train"))
    test = Digits(Digits.Params(size=16, channels=1, split="val", lowres_factor=4))
    assert len(train) + len(test) == 1797 and len(test) == 180
    example = train[0]
    assert example["image"].shape == (3, 16, 16) and isinstance(example["label"], int)
    assert example["image"].min() >= -1 and example["image"].max() <= 1
    assert torch.equal(example["image"][0], example["image"][2]), "grey repeated as RGB"
    assert Digits.example_shape(train.params).fields == {"image", "label"}
    assert test[0]["lowres"].shape == (1, 4, 4) and Digits.example_shape(test.params).fields == {
        "image",
        "label",
        "lowres",
    }
    assert torch.allclose(test[0]["lowres"][0, 0, 0], test[0]["image"][0, :4, :4].mean())


def caption_pairs(caption):
    return {tuple(part.split()[1:]) for part in caption.split(" and ")}


def test_shapes_fields_agree_pixel_for_pixel():
    ds = Shapes(Shapes.Params(size=24, num_examples=200))
    assert Shapes.example_shape(ds.params).fields == {"image", "label", "caption", "segmentation", "boxes"}
    counts = {1: 0, 2: 0}
    for i in range(len(ds)):
        ex = ds[i]
        image, seg, pairs = ex["image"], ex["segmentation"], caption_pairs(ex["caption"])
        assert image.shape == (3, 24, 24) and seg.shape == (24, 24) and seg.dtype == torch.long
        assert (image[:, seg == 0] == -1).all(), "background is black"
        found = set()
        for shape_id in seg.unique().tolist():
            if shape_id == 0:
                continue
            colours = {tuple(((c + 1) / 2).int().tolist()) for c in image[:, seg == shape_id].T}
            names = {name for name, rgb in COLOURS.items() if rgb in colours}
            assert len(names) == len(colours), f"example {i}: a colour outside the palette"
            found |= {(name, SHAPES[shape_id - 1]) for name in names}
        assert found == pairs, f"example {i}: pixels show {found}, caption says {ex['caption']!r}"
        colour, shape = ex["caption"].split(" and ")[0].split()[1:]
        assert ex["label"] == list(COLOURS).index(colour) * 3 + SHAPES.index(shape)
        counts[len(ex["caption"].split(" and "))] += 1
    assert counts[1] > 40 and counts[2] > 40, counts


def test_object_sides_stay_within_the_extent():
    ds = Shapes(Shapes.Params(size=40, num_examples=100, max_objects=1, min_extent=0.3, max_extent=0.6))
    for i in range(len(ds)):
        rows, cols = torch.nonzero(ds[i]["segmentation"], as_tuple=True)
        side = max(rows.max() - rows.min(), cols.max() - cols.min()) + 1
        assert 12 <= side <= 24, (i, side)


@pytest.mark.parametrize(("fraction", "low", "high"), [(0.0, 0, 0), (0.5, 70, 110), (0.9, 140, 180), (1.0, 160, 200)])
def test_two_object_fraction_sets_how_many_images_hold_two(fraction, low, high):
    ds = Shapes(Shapes.Params(size=24, num_examples=200, split="all", two_object_fraction=fraction))
    two = sum(" and " in ds[i]["caption"] for i in range(len(ds)))
    assert low <= two <= high, (fraction, two)


def test_shapes_are_deterministic_and_splits_are_disjoint():
    a, b = Shapes(Shapes.Params(num_examples=50)), Shapes(Shapes.Params(num_examples=50))
    assert all(torch.equal(a[i]["image"], b[i]["image"]) and a[i]["caption"] == b[i]["caption"] for i in range(50))
    other = Shapes(Shapes.Params(num_examples=50, seed=1))
    assert any(not torch.equal(a[i]["image"], other[i]["image"]) for i in range(50))
    train = Shapes(Shapes.Params(num_examples=50, split="train"))
    val = Shapes(Shapes.Params(num_examples=50, split="val"))
    assert len(train) == 45 and len(val) == 5
    assert set(train.indices.tolist()).isdisjoint(val.indices.tolist())
    assert torch.equal(val[1]["image"], a[10]["image"]), "validation is every 10th example"


def test_shapes_lowres_is_the_area_average():
    ds = Shapes(Shapes.Params(size=32, num_examples=5, lowres_factor=4))
    ex = ds[0]
    assert ex["lowres"].shape == (3, 8, 8)
    assert torch.allclose(ex["lowres"], torch.nn.functional.avg_pool2d(ex["image"][None], 4)[0])


def test_impossible_extents_are_refused_with_the_fix():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="min_extent 0.7 is above max_extent 0.6"):
        Shapes.Params(min_extent=0.7)
    with pytest.raises(ValidationError, match="cannot sit side by side"):
        Shapes.Params(min_extent=0.55, max_extent=0.6)
