"""``digits``: scikit-learn's bundled 8x8 handwritten digits, with their labels, resized."""

from __future__ import annotations

from typing import Any, Literal

import torch
from einops import repeat
from pydantic import Field, PositiveInt
from torch.nn import functional as F

from core import Dataset, ExampleShape
from core.data import DataParams, fields_with_lowres, split_indices, with_lowres


class Digits(Dataset):
    """Handwritten digits 0-9 (1797 images, 8x8, shipped with scikit-learn), resized, with labels."""

    class Params(DataParams):
        size: PositiveInt = Field(8, description="Side of the square images (bilinear resize from 8).")
        channels: Literal[1, 3] = Field(3, description="1 for grey, 3 for grey repeated as RGB.")

    @classmethod
    def example_shape(cls, params: Digits.Params) -> ExampleShape:
        return ExampleShape(
            fields=fields_with_lowres({"image", "label"}, params),
            image_size=(params.size, params.size),
            image_channels=params.channels,
        )

    def __init__(self, params: Digits.Params) -> None:
        super().__init__(params)
        from sklearn.datasets import load_digits

        digits = load_digits()
        keep = split_indices(len(digits.target), params)
        images = torch.as_tensor(digits.images, dtype=torch.float32)[keep, None] / 16.0
        if params.size != 8:
            images = F.interpolate(
                images, size=(params.size, params.size), mode="bilinear", align_corners=False, antialias=params.size < 8
            ).clamp(0, 1)
        self.images = repeat(images * 2 - 1, "n 1 h w -> n c h w", c=params.channels).contiguous()
        self.labels = torch.as_tensor(digits.target, dtype=torch.long)[keep]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return with_lowres({"image": self.images[index], "label": int(self.labels[index])}, self.params)
