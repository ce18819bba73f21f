"""Image grids and PNG files from image tensors in [-1, 1]."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from PIL import Image
from torch import Tensor


def make_grid(images: Tensor, nrow: int) -> Tensor:
    """Images (B, C, H, W) in [-1, 1] -> one grid (C, rows * H, nrow * W) in [0, 1].

    Images fill rows of ``nrow`` left to right; a short last row is padded with black.
    """
    images = (images.detach().float().cpu().clamp(-1, 1) + 1) / 2
    missing = -images.shape[0] % nrow
    if missing:
        images = torch.cat([images, images.new_zeros(missing, *images.shape[1:])])
    return rearrange(images, "(rows cols) c h w -> c (rows h) (cols w)", cols=nrow)


def to_pil(image: Tensor) -> Image.Image:
    """An image (C, H, W) in [0, 1], C being 1 or 3 -> a PIL image."""
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    array = rearrange(array, "c h w -> h w c").numpy()
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else np.ascontiguousarray(array))


def save_png(image: Tensor, path: Path) -> None:
    """Write an image (C, H, W) in [0, 1] as a PNG file."""
    to_pil(image).save(path, format="PNG")
