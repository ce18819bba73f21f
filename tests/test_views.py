"""Grids that show what each sample was asked for (tasks.ldm.views)."""

import torch

from core.masks import masked_input
from tasks.images import make_grid
from tasks.ldm.views import PALETTE, condition_view, grid, pairs, shows_something


def test_a_map_is_shown_in_the_palette_at_the_images_size():
    seg = torch.tensor([[0, 1], [2, 0]])
    view = condition_view(seg, (4, 4), 3)
    assert view.shape == (3, 4, 4)
    assert torch.equal(view[:, 0, 0], PALETTE[0] / 127.5 - 1)
    assert torch.equal(view[:, 0, 3], PALETTE[1] / 127.5 - 1) and torch.equal(view[:, 3, 0], PALETTE[2] / 127.5 - 1)


def test_a_low_res_input_is_upscaled_and_a_masked_image_shows_its_hole_grey():
    low = torch.rand(3, 2, 2) * 2 - 1
    view = condition_view(low, (4, 4), 3)
    assert torch.equal(view[:, ::2, ::2], low) and torch.equal(view[:, 1::2, 1::2], low)
    image, mask = torch.rand(1, 3, 4, 4) * 2 - 1, torch.zeros(1, 1, 4, 4)
    mask[..., :2, :] = 1
    view = condition_view(masked_input(image, mask)[0], (4, 4), 3)
    assert (view[:, :2] == 0).all() and torch.equal(view[:, 2:], image[0, :, 2:])


def test_a_layout_is_drawn_as_box_outlines_in_its_class_colour():
    layout = torch.tensor([[2.0, 0.25, 0.25, 0.75, 0.75], [-1, 0, 0, 0, 0]], dtype=torch.float64)
    view = condition_view(layout, (8, 8), 3)
    colour = PALETTE[3] / 127.5 - 1
    assert (
        torch.equal(view[:, 2, 2], colour) and torch.equal(view[:, 5, 5], colour) and torch.equal(view[:, 2, 4], colour)
    )
    assert (view[:, 3:5, 3:5] == -1).all(), "inside the outline stays black"
    assert (view[:, 0] == -1).all()


def test_labels_have_no_picture_and_captions_go_under_their_row():
    assert condition_view(3, (4, 4), 3) is None and condition_view("a red circle", (4, 4), 3) is None
    images = torch.zeros(4, 3, 8, 8)
    plain = grid(images, 2, [{"label": 1}, {"label": 2}])
    assert torch.equal(plain, make_grid(images, 2)), "nothing to show: the plain grid"
    captioned = grid(images, 2, [{"caption": "a red circle"}, {"caption": "a blue square and a red circle"}])
    assert captioned.shape[1] > plain.shape[1] and captioned.shape[2] == plain.shape[2]
    assert captioned[:, 8:20].max() > 0.5, "white text under the first row"
    assert shows_something([{"caption": "x"}], (8, 8), 3) and not shows_something([{"label": 1}], (8, 8), 3)


def test_a_row_starts_with_its_condition_and_pairs_sit_side_by_side():
    images = torch.ones(4, 3, 8, 8)
    seg = torch.ones(2, 2, dtype=torch.long)
    rows = grid(images, 2, [{"segmentation": seg}, {"segmentation": seg * 2}])
    assert rows.shape == (3, 16, 24)
    assert torch.allclose(rows[:, 0, 0], PALETTE[1] / 255) and torch.allclose(rows[:, 8, 0], PALETTE[2] / 255)
    assert (rows[:, :, 8:] == 1).all()
    side = pairs(images, [{"segmentation": seg}] * 4, per_row=2)
    assert side.shape == (3, 16, 32)
