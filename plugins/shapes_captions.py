"""Reading ``shapes`` captions and layouts back from pixels: which coloured shapes an image
shows, and where.

Each pixel takes the nearest of the palette's colours or the black background; each
4-connected region of one colour, large enough to be an object, is one object, and its
shape is told by how much of its bounding box it fills (a square all of it, a circle
pi / 4, a triangle half).
"""

from __future__ import annotations

from collections import Counter

import torch
from scipy import ndimage
from torch import Tensor

SQUARE_FILL, CIRCLE_FILL = 0.89, 0.64
"""Fill ratios above which a region is a square (1.0), else above which a circle (0.785), else a triangle (0.5)."""


def parse(caption: str, colours: tuple[str, ...], shapes: tuple[str, ...]) -> Counter[tuple[str, str]]:
    """The (colour, shape) pairs "a red circle and a blue square" names, with their counts."""
    found: Counter[tuple[str, str]] = Counter()
    for part in caption.split(" and "):
        words = part.split()
        if len(words) != 3 or words[0] != "a" or words[1] not in colours or words[2] not in shapes:
            raise ValueError(f"{caption!r} is not a shapes caption ('a <colour> <shape>' joined by ' and ')")
        found[(words[1], words[2])] += 1
    return found


def detect(
    image: Tensor, palette: dict[str, tuple[float, float, float]], shapes: tuple[str, ...], min_area: float
) -> list[tuple[str, str, tuple[float, float, float, float]]]:
    """The objects an image (3, H, W) in [-1, 1] shows: (colour, shape, box) each, the box
    (x0, y0, x1, y1) of the region's pixels as fractions of the image's width and height."""
    colours = list(palette)
    references = torch.tensor([(0.0, 0.0, 0.0), *palette.values()]) * 2 - 1  # background first
    nearest = torch.cdist(image.float().flatten(1).T, references).argmin(1).reshape(image.shape[1:])
    height, width = nearest.shape
    found = []
    for index, colour in enumerate(colours, start=1):
        labels, count = ndimage.label((nearest == index).numpy())  # 4-connected regions
        for label in range(1, count + 1):
            ys, xs = torch.nonzero(torch.from_numpy(labels == label), as_tuple=True)
            if len(ys) < min_area:
                continue
            top, bottom, left, right = ys.min().item(), ys.max().item() + 1, xs.min().item(), xs.max().item() + 1
            fill = len(ys) / ((bottom - top) * (right - left))
            shape = "square" if fill >= SQUARE_FILL else "circle" if fill >= CIRCLE_FILL else "triangle"
            box = (left / width, top / height, right / width, bottom / height)
            found.append((colour, shape if shape in shapes else "?", box))
    return found


def objects(
    image: Tensor, palette: dict[str, tuple[float, float, float]], shapes: tuple[str, ...], min_area: float
) -> Counter[tuple[str, str]]:
    """The (colour, shape) objects an image (3, H, W) in [-1, 1] shows, with their counts."""
    return Counter((colour, shape) for colour, shape, _ in detect(image, palette, shapes, min_area))


def box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over union of two boxes (x0, y0, x1, y1)."""
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
