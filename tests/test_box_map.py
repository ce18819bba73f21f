"""`box_map`: the contract, the coverage arithmetic on a worked example, and the layout checks it
shares with `layout`."""

import pytest
import torch
from pydantic import ValidationError

from core.testing import ConditionerContract
from plugins.box_map import BoxMap, box_coverage
from tests.test_layout import random_layouts

TINY = {"num_classes": 10, "channels": 4, "size": 16, "factor": 4}


class TestBoxMap(ConditionerContract):
    component = BoxMap
    params = TINY

    def example(self, batch_size, generator):
        return random_layouts(batch_size, generator)


class TestBoxMapFromJsonLists(TestBoxMap):
    def example(self, batch_size, generator):
        return [[row for row in layout.tolist() if row[0] != -1] for layout in random_layouts(batch_size, generator)]


def test_coverage_of_a_worked_example():
    """(0.1, 0.25)-(0.5, 1.0) on a 4 x 4 grid of cells 0.25 wide: columns covered 0.6, 1, 0, 0
    (0.15 of the first cell's 0.25, all of the second, none past 0.5); rows 0, 1, 1, 1."""
    coverage = box_coverage(torch.tensor([[0.1, 0.25, 0.5, 1.0]], dtype=torch.float64), 4, 4)
    columns = torch.tensor([0.6, 1.0, 0.0, 0.0], dtype=torch.float64)
    rows = torch.tensor([0.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(coverage[0], rows[:, None] * columns[None, :])


def test_each_object_paints_its_class_embedding_where_its_box_lies():
    module = BoxMap(BoxMap.Params(**TINY)).eval()
    with torch.no_grad():
        module.classes.weight.copy_(torch.arange(40.0).view(10, 4))
    boxes = [[[2, 0.0, 0.0, 0.5, 0.5], [7, 0.5, 0.5, 1.0, 1.0]], [[2, 0.0, 0.0, 0.5, 0.5], [2, 0.0, 0.0, 0.25, 0.25]]]
    concat = module(boxes).concat
    assert concat.shape == (2, 4, 4, 4)
    torch.testing.assert_close(concat[0, :, 0, 0], module.classes.weight[2])
    torch.testing.assert_close(concat[0, :, 3, 3], module.classes.weight[7])
    assert concat[0, :, 0, 3].abs().sum() == 0
    # Overlapping objects add up.
    torch.testing.assert_close(concat[1, :, 0, 0], 2 * module.classes.weight[2])
    assert module([[]]).concat.abs().sum() == 0


def test_bad_layouts_are_refused_as_layout_refuses_them():
    module = BoxMap(BoxMap.Params(**TINY))
    with pytest.raises(ValueError, match=r"^example 1: object 0 has class 10, outside \[0, 10\)"):
        module([[], [[10, 0.1, 0.1, 0.5, 0.5]]])
    with pytest.raises(ValueError, match=r"object 0 has box .* with no area"):
        module([[[1, 0.5, 0.1, 0.5, 0.5]]])


def test_size_must_be_a_multiple_of_the_factor():
    with pytest.raises(ValidationError, match="size 18 is not a multiple of factor 4"):
        BoxMap.Params(**{**TINY, "size": 18})
