"""Image grids and PNG files from image tensors in [-1, 1], and image and mask files read back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from PIL import Image
from torch import Tensor

from core import UserError
from core.masks import binarise


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


def read_image(path: Path, channels: int, size: tuple[int, int], field: str) -> Tensor:
    """The image file ``path`` as (C, H, W) in [-1, 1]; a :class:`UserError` naming ``field`` if it
    cannot be read or is not ``size`` (H, W) with ``channels`` channels (1: grey, 3: RGB)."""
    image = _open(path, field)
    found = {"L": 1, "RGB": 3}.get(image.mode)
    if found != channels:
        raise UserError(
            f"{field}: {str(path)!r} is a {image.mode} image but the model takes {channels}-channel ones; "
            f"convert it to {'RGB' if channels == 3 else 'grey (L)'}"
        )
    array = torch.from_numpy(np.array(_sized(image, size, path, field), dtype=np.float32) / 127.5 - 1)
    return array[None] if array.ndim == 2 else rearrange(array, "h w c -> c h w")


def read_mask(path: Path, size: tuple[int, int], field: str) -> Tensor:
    """The mask file ``path`` (white: generate) as (1, H, W) of 0 and 1, grey levels cut at
    :data:`core.masks.THRESHOLD`; a :class:`UserError` naming ``field`` if it is not ``size``."""
    image = _sized(_open(path, field).convert("L"), size, path, field)
    return binarise(torch.from_numpy(np.array(image, dtype=np.float32) / 255)[None])


def _open(path: Path, field: str) -> Image.Image:
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except (OSError, ValueError) as exc:
        raise UserError(f"{field}: {str(path)!r} cannot be read as an image ({exc}); give a PNG or JPEG file") from None


def _sized(image: Image.Image, size: tuple[int, int], path: Path, field: str) -> Image.Image:
    if (image.height, image.width) != tuple(size):
        raise UserError(
            f"{field}: {str(path)!r} is {image.height}x{image.width} but the model makes {size[0]}x{size[1]} "
            "images; resize it to that size"
        )
    return image
