"""``shapes``: images of coloured shapes made by code, with labels, captions and maps that agree.

Example i is drawn from a generator seeded by (seed, i) alone, so every example is the same
on every machine and every run, and nothing is stored or downloaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, PositiveInt, model_validator
from torch import Tensor

from core import Dataset, ExampleShape
from core.data import DataParams, fields_with_lowres, split_indices, with_lowres
from plugins.shapes_captions import box_iou, detect, objects, parse

SHAPES = ("circle", "square", "triangle")
COLOURS = {
    "red": (1, 0, 0),
    "green": (0, 1, 0),
    "blue": (0, 0, 1),
    "yellow": (1, 1, 0),
    "magenta": (1, 0, 1),
    "cyan": (0, 1, 1),
}
NUM_CLASSES = len(SHAPES) * len(COLOURS)
"""Labels: colour index x 3 + shape index of the first object (red circle 0 ... cyan triangle 17)."""


MAX_OBJECTS = 3
"""Rows of the ``boxes`` field: the most objects an image can hold."""


def _layout(classes: list[int], boxes: list[tuple[int, int, int]], size: int) -> Tensor:
    """The ``boxes`` field (MAX_OBJECTS, 5): a row (class, x0, y0, x1, y1) per object, corners
    as fractions of the image side, then rows of class -1 (no object)."""
    rows = [
        [c, left / size, top / size, (left + side) / size, (top + side) / size]
        for c, (top, left, side) in zip(classes, boxes, strict=True)
    ]
    rows += [[-1.0, 0.0, 0.0, 0.0, 0.0]] * (MAX_OBJECTS - len(rows))
    return torch.tensor(rows, dtype=torch.float64)


def _mask(shape: str, size: int, top: int, left: int, side: int) -> np.ndarray:
    """A boolean (size, size) mask of one shape filling the square box at (top, left) of ``side``."""
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    y, x = (ys - top) / side, (xs - left) / side  # box coordinates in [0, 1]
    inside = (y >= 0) & (y <= 1) & (x >= 0) & (x <= 1)
    if shape == "square":
        return inside
    if shape == "circle":
        return (y - 0.5) ** 2 + (x - 0.5) ** 2 <= 0.25
    # An upward triangle: apex at the top middle, base along the bottom of the box.
    return inside & (np.abs(x - 0.5) <= y / 2)


class Shapes(Dataset):
    """Procedural shapes: 1-3 circles, squares or triangles in 6 pure colours, with captions and maps."""

    class Params(DataParams):
        size: PositiveInt = Field(32, ge=8, description="Side of the square images.")
        num_examples: PositiveInt = Field(5000, description="How many examples (before the split).")
        max_objects: Literal[1, 2, 3] = Field(
            2, description="Objects per image: 1, or 1 to max_objects at random (3: each count equally often)."
        )
        two_object_fraction: float = Field(
            0.5,
            ge=0,
            le=1,
            description=(
                "With max_objects 2, how often an image is drawn with two objects (a little less often "
                "in the end: a large first object can leave no room for a second)."
            ),
        )
        min_extent: float = Field(0.3, gt=0, le=1, description="Smallest object side, as a fraction of the image side.")
        max_extent: float = Field(0.6, gt=0, le=1, description="Largest object side, as a fraction of the image side.")
        seed: int = Field(0, description="Which set of images (example i depends on seed and i only).")

        @model_validator(mode="after")
        def _extents(self) -> Shapes.Params:
            if self.min_extent > self.max_extent:
                raise ValueError(f"min_extent {self.min_extent} is above max_extent {self.max_extent}; swap them")
            if self.max_objects > 1 and 2 * self.min_extent > 1:
                raise ValueError(
                    f"two objects of min_extent {self.min_extent} cannot sit side by side; "
                    "use min_extent <= 0.5 or max_objects 1"
                )
            return self

    @classmethod
    def example_shape(cls, params: Shapes.Params) -> ExampleShape:
        return ExampleShape(
            fields=fields_with_lowres({"image", "label", "caption", "segmentation", "boxes"}, params),
            image_size=(params.size, params.size),
            image_channels=3,
        )

    def __init__(self, params: Shapes.Params) -> None:
        super().__init__(params)
        self.indices = split_indices(params.num_examples, params)

    def __len__(self) -> int:
        return len(self.indices)

    def _place(self, rng: np.random.Generator, boxes: list[tuple[int, int, int]]) -> tuple[int, int, int] | None:
        """A box (top, left, side) inside the image a pixel's gap away from ``boxes``, or ``None``
        when 100 draws found none (a large first object can leave no room for a second)."""
        p, size = self.params, self.params.size
        lo, hi = max(1, round(p.min_extent * size)), max(1, round(p.max_extent * size))
        for _ in range(100):
            side = int(rng.integers(lo, hi + 1))
            top, left = (int(v) for v in rng.integers(0, size - side + 1, size=2))
            if all(top + side < t or t + s < top or left + side < lf or lf + s < left for t, lf, s in boxes):
                return top, left, side
        return None

    def _count(self, rng: np.random.Generator) -> int:
        """How many objects to draw (the draws for max_objects 1 and 2 are those examples always had)."""
        p = self.params
        if p.max_objects == 3:
            return 1 + int(rng.integers(3))
        return 2 if p.max_objects == 2 and rng.random() < p.two_object_fraction else 1

    def __getitem__(self, index: int) -> dict[str, Any]:
        p = self.params
        rng = np.random.default_rng([p.seed, int(self.indices[index])])
        image = np.zeros((3, p.size, p.size), dtype=np.float32)
        segmentation = np.zeros((p.size, p.size), dtype=np.int64)
        boxes: list[tuple[int, int, int]] = []
        classes: list[int] = []
        words = []
        for _ in range(self._count(rng)):
            shape = SHAPES[int(rng.integers(len(SHAPES)))]
            colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
            box = self._place(rng, boxes)
            if box is None:
                break
            boxes.append(box)
            classes.append(list(COLOURS).index(colour) * len(SHAPES) + SHAPES.index(shape))
            mask = _mask(shape, p.size, *box)
            image[:, mask] = np.asarray(COLOURS[colour], dtype=np.float32)[:, None]
            segmentation[mask] = SHAPES.index(shape) + 1
            words.append((colour, shape))
        first_colour, first_shape = words[0]
        example = {
            "image": torch.from_numpy(image * 2 - 1),
            "label": list(COLOURS).index(first_colour) * len(SHAPES) + SHAPES.index(first_shape),
            "caption": " and ".join(f"a {colour} {shape}" for colour, shape in words),
            "segmentation": torch.from_numpy(segmentation),
            "boxes": _layout(classes, boxes, p.size),
        }
        return with_lowres(example, p)

    def caption_matches(self, images: Tensor, captions: Sequence[str]) -> tuple[Tensor, list[str]]:
        """Whether each image shows exactly its caption's objects, each of the right colour and
        shape (read back from its pixels, see :mod:`plugins.shapes_captions`); grouped by count."""
        p = self.params
        min_area = (p.min_extent * p.size) ** 2 / 4  # a quarter of the smallest object's box
        wanted = [parse(caption, tuple(COLOURS), SHAPES) for caption in captions]
        matches = [
            objects(image, COLOURS, SHAPES, min_area) == want for image, want in zip(images, wanted, strict=True)
        ]
        groups = [f"{sum(want.values())} object{'s' if sum(want.values()) > 1 else ''}" for want in wanted]
        return torch.tensor(matches), groups

    def boxes_found(self, images: Tensor, boxes: Tensor) -> Tensor:
        """Whether each asked object shows in its box: an object of its colour and shape read
        from the image's pixels (as :meth:`caption_matches` reads them) whose box has IoU >= 0.5
        with the asked one."""
        p = self.params
        min_area = (p.min_extent * p.size) ** 2 / 4
        found = torch.zeros(boxes.shape[:2], dtype=torch.bool)
        for i, (image, layout) in enumerate(zip(images, boxes, strict=True)):
            seen = detect(image, COLOURS, SHAPES, min_area)
            for j, (label, *box) in enumerate(layout.tolist()):
                if label < 0:
                    continue
                wanted = (list(COLOURS)[int(label) // len(SHAPES)], SHAPES[int(label) % len(SHAPES)])
                found[i, j] = any((c, s) == wanted and box_iou(b, box) >= 0.5 for c, s, b in seen)
        return found
