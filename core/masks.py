"""Inpainting masks: where an image is to be generated, and how such masks are drawn.

Convention everywhere a user sees a mask: 1 (white) is the region to generate (the hole),
0 the region to keep, as in the paper's ``scripts/inpaint.py``. Masks are float tensors
(1, H, W) of exactly 0 and 1. :func:`random_mask` draws the kinds the paper trained with:
large random boxes and free-form strokes, each from its own generator so a mask can be made
again from its seed.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, field_validator
from torch import Tensor
from torch.nn import functional as F

from core.params import SpecModel

MaskKind = Literal["box", "strokes", "mixed"]
_MAX_STROKES = 100  # a bound, never reached at sensible coverages
MASKED_IMAGE = "masked_image"
"""The example field an inpainting model reads: :func:`masked_input` of the image and its mask."""
THRESHOLD = 0.5
"""A grey level (0 to 1) at or above this is the hole, as the paper's inpainting script reads masks."""


def binarise(mask: Tensor) -> Tensor:
    """A mask of grey levels in [0, 1] as exactly 0 and 1 (hole where >= :data:`THRESHOLD`)."""
    return (mask >= THRESHOLD).to(torch.float32)


def _box(size: tuple[int, int], generator: torch.Generator, coverage: tuple[float, float]) -> Tensor:
    """One axis-aligned box covering a uniform fraction in ``coverage`` of the image, aspect
    ratio between 1:2 and 2:1 (clipped to the image), at a uniform position."""
    height, width = size
    area = (coverage[0] + (coverage[1] - coverage[0]) * torch.rand((), generator=generator).item()) * height * width
    aspect = math.exp((torch.rand((), generator=generator).item() * 2 - 1) * math.log(2))
    h = min(height, max(1, round(math.sqrt(area * aspect))))
    w = min(width, max(1, round(area / h)))
    top = int(torch.randint(0, height - h + 1, (), generator=generator))
    left = int(torch.randint(0, width - w + 1, (), generator=generator))
    mask = torch.zeros(1, height, width)
    mask[:, top : top + h, left : left + w] = 1
    return mask


def _strokes(size: tuple[int, int], generator: torch.Generator, coverage: tuple[float, float]) -> Tensor:
    """Free-form strokes: thick random polylines (as in the inpainting literature the paper
    follows), segment by segment until the hole covers a fraction drawn from ``coverage``; a
    segment that would take it past ``coverage[1]`` is left out."""
    height, width = size
    side = min(height, width)
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    mask = torch.zeros(height, width)
    target = coverage[0] + (coverage[1] - coverage[0]) * torch.rand((), generator=generator).item()
    for _ in range(_MAX_STROKES):
        radius = max(1.0, side * (0.04 + 0.06 * torch.rand((), generator=generator).item()))
        y, x = (torch.rand(2, generator=generator) * torch.tensor([height, width])).tolist()
        angle = torch.rand((), generator=generator).item() * 2 * math.pi
        for _ in range(int(torch.randint(2, 6, (), generator=generator))):
            angle += (torch.rand((), generator=generator).item() - 0.5) * math.pi
            length = side * (0.1 + 0.3 * torch.rand((), generator=generator).item())
            y2 = min(max(y + length * math.sin(angle), 0.0), height - 1.0)
            x2 = min(max(x + length * math.cos(angle), 0.0), width - 1.0)
            drawn = torch.maximum(mask, _segment(ys, xs, (y, x), (y2, x2), radius))
            if drawn.mean().item() <= coverage[1]:
                mask = drawn
            if mask.mean().item() >= target:
                return mask[None]
            y, x = y2, x2
    return mask[None]


def _segment(ys: Tensor, xs: Tensor, start: tuple[float, float], end: tuple[float, float], radius: float) -> Tensor:
    """1 where a pixel lies within ``radius`` of the segment from ``start`` to ``end``."""
    (y0, x0), (y1, x1) = start, end
    dy, dx = y1 - y0, x1 - x0
    t = (((ys - y0) * dy + (xs - x0) * dx) / max(dy * dy + dx * dx, 1e-9)).clamp(0, 1)
    distance = ((ys - (y0 + t * dy)) ** 2 + (xs - (x0 + t * dx)) ** 2).sqrt()
    return (distance <= radius).to(torch.float32)


def random_mask(
    size: tuple[int, int],
    generator: torch.Generator,
    kind: MaskKind = "mixed",
    coverage: tuple[float, float] = (0.25, 0.5),
) -> Tensor:
    """A mask (1, H, W) of 0 and 1 (1: generate) covering a fraction of the image drawn from
    ``coverage`` (to a pixel's rounding for a box, to a segment for strokes): ``box``,
    ``strokes``, or ``mixed`` (either, with even odds)."""
    if kind == "mixed":
        kind = "box" if torch.rand((), generator=generator).item() < 0.5 else "strokes"
    return (_box if kind == "box" else _strokes)(size, generator, coverage)


def masked_input(images: Tensor, masks: Tensor) -> Tensor:
    """What an inpainting model is shown of images (B, C, H, W) in [-1, 1] with masks
    (B, 1, H, W) of 0 and 1 (1: generate): (B, C + 1, H, W), the image with its hole at -1
    and then the mask as -1 (keep) / +1 (hole), the values the paper's inpainting script feeds
    its model (it masks in [0, 1], then maps everything by 2v - 1)."""
    return torch.cat([images * (1 - masks) - masks, 2 * masks - 1], dim=1)


def latent_keep_mask(mask: Tensor, factor: int) -> Tensor:
    """The latent cells to keep (B, 1, H/f, W/f) for pixel masks (B, 1, H, W) (1: generate):
    a cell is regenerated if any of its f x f pixels is in the hole, so the hole's edge is too."""
    return 1 - F.max_pool2d(mask, factor) if factor > 1 else 1 - mask


class RandomMasks(SpecModel):
    """Masks drawn by :func:`random_mask`, one per image from its own seed."""

    kind: MaskKind = Field("mixed", description="box, strokes, or mixed (either, with even odds).")
    coverage: tuple[float, float] = Field(
        (0.25, 0.5), description="The range of the fraction of the image the hole covers (lowest, highest)."
    )

    @field_validator("coverage")
    @classmethod
    def _a_range_inside_0_1(cls, coverage: tuple[float, float]) -> tuple[float, float]:
        low, high = coverage
        if not 0 < low <= high <= 1:
            raise ValueError(f"coverage {list(coverage)} is not a range inside (0, 1]; give [lowest, highest]")
        return coverage

    def draw(self, size: tuple[int, int], seed: int) -> Tensor:
        """The mask (1, H, W) of the image with seed ``seed``."""
        return random_mask(size, torch.Generator().manual_seed(seed), self.kind, self.coverage)
