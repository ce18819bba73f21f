"""Grids that show what each sample was asked for: its data condition as the first column of
its row (a map in a fixed palette, a low-res input upscaled, a masked image with its hole
grey, a layout's boxes drawn in their class's colour) and captions as text under the row."""

from __future__ import annotations

import textwrap
from typing import Any

import numpy as np
import torch
from einops import rearrange
from PIL import Image, ImageDraw
from torch import Tensor
from torch.nn import functional as F

from tasks.images import make_grid

PALETTE = torch.tensor(
    [
        (0, 0, 0),
        (230, 25, 75),
        (60, 180, 75),
        (255, 225, 25),
        (0, 130, 200),
        (245, 130, 48),
        (145, 30, 180),
        (70, 240, 240),
        (240, 50, 230),
        (210, 245, 60),
        (250, 190, 212),
        (0, 128, 128),
    ],
    dtype=torch.float32,
)
"""Class colours (class 0, the background of a map, black; then cycled), RGB 0-255."""


def _colours(classes: Tensor, channels: int) -> Tensor:
    """Palette colours (..., channels) in [-1, 1] of class indices (grey where one channel)."""
    rgb = PALETTE[1:][(classes - 1) % (len(PALETTE) - 1)] / 127.5 - 1
    rgb = torch.where((classes == 0)[..., None], PALETTE[0] / 127.5 - 1, rgb)
    return rgb.mean(-1, keepdim=True) if channels == 1 else rgb


def _boxes(layout: Tensor, size: tuple[int, int], channels: int) -> Tensor:
    """Outlines of a layout's boxes (rows class, x0, y0, x1, y1; class -1 empty) on black."""
    height, width = size
    image = torch.full((channels, height, width), -1.0)
    for label, x0, y0, x1, y1 in layout.tolist():
        if label < 0:
            continue
        left, right = round(x0 * width), max(round(x0 * width) + 1, round(x1 * width))
        top, bottom = round(y0 * height), max(round(y0 * height) + 1, round(y1 * height))
        colour = _colours(torch.tensor(int(label) + 1), channels)[:, None, None]
        for column in (left, right - 1):
            image[:, top:bottom, column : column + 1] = colour
        for row in (top, bottom - 1):
            image[:, row : row + 1, left:right] = colour
    return image


def condition_view(value: Any, size: tuple[int, int], channels: int) -> Tensor | None:
    """An image (channels, H, W) in [-1, 1] showing one data condition, or ``None`` for what
    has no picture (class labels; captions are written under their rows by :func:`grid`)."""
    if not isinstance(value, Tensor):
        return None
    if value.ndim == 2 and not value.is_floating_point():  # a map of class indices
        image = rearrange(_colours(value.long(), channels), "h w c -> 1 c h w")
        return F.interpolate(image, size=size, mode="nearest")[0]
    if value.ndim == 2 and value.shape[-1] == 5:
        return _boxes(value, size, channels)
    if value.ndim == 3 and value.shape[0] == channels + 1:  # a masked image and its +-1 mask
        return value[:channels].float() * (value[channels:] < 0).float()
    if value.ndim == 3 and value.shape[0] == channels:  # a low-res image
        return F.interpolate(value[None].float(), size=size, mode="nearest")[0]
    return None


def _caption_strip(text: str, width: int, channels: int) -> Tensor:
    """A strip (channels, 12 per line, width) in [0, 1] with ``text`` in white on black,
    wrapped at about 6 px a character (PIL's default font)."""
    lines = textwrap.wrap(text, max(1, (width - 4) // 6)) or [""]
    strip = Image.new("L", (width, 12 * len(lines)))
    draw = ImageDraw.Draw(strip)
    for i, line in enumerate(lines):
        draw.text((2, 12 * i), line, fill=255)
    values = torch.from_numpy(np.array(strip, dtype=np.float32) / 255)
    return values.expand(channels, -1, -1)


def grid(images: Tensor, nrow: int, conditions: list[dict[str, Any]]) -> Tensor:
    """A grid (C, H', W') in [0, 1] of ``images`` (B, C, H, W), ``nrow`` a row, with row r's
    condition ``conditions[r]`` (example fields) shown first and its captions under it."""
    rows = []
    size, channels = tuple(images.shape[-2:]), images.shape[1]
    for r, condition in enumerate(conditions):
        row = images[r * nrow : (r + 1) * nrow]
        views = [v for v in (condition_view(x, size, channels) for x in condition.values()) if v is not None]
        row = make_grid(torch.cat([torch.stack(views[:1]), row]) if views else row, len(row) + bool(views))
        texts = [x for x in condition.values() if isinstance(x, str)]
        parts = [row, *(_caption_strip(text, row.shape[-1], channels) for text in texts)]
        rows.append(torch.cat(parts, dim=1))
    width = max(row.shape[-1] for row in rows)
    return torch.cat([F.pad(row, (0, width - row.shape[-1])) for row in rows], dim=1)


def pairs(images: Tensor, conditions: list[dict[str, Any]], per_row: int = 5) -> Tensor:
    """A grid (C, H', W') in [0, 1] of each image (B, C, H, W) beside its own condition,
    ``per_row`` such pairs a row."""
    tiles = [grid(images[i : i + 1], 1, [condition]) for i, condition in enumerate(conditions)]
    height, width = max(t.shape[1] for t in tiles), max(t.shape[2] for t in tiles)
    tiles = [F.pad(t, (0, width - t.shape[2], 0, height - t.shape[1])) for t in tiles]
    return make_grid(torch.stack(tiles) * 2 - 1, per_row)


def shows_something(conditions: list[dict[str, Any]], size: tuple[int, int], channels: int) -> bool:
    """Whether any of the conditions has a picture or a caption to show."""
    return any(
        isinstance(v, str) or condition_view(v, size, channels) is not None for c in conditions for v in c.values()
    )
