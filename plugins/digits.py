"""``digits``: scikit-learn's bundled 8x8 handwritten digits, with their labels, resized."""

from __future__ import annotations

from typing import Any, Literal

import torch
from einops import repeat
from pydantic import Field, PositiveInt
from torch.nn import functional as F

from core import Dataset, ExampleShape, Params


class Digits(Dataset):
    """Handwritten digits 0-9 (1797 images, 8x8, shipped with scikit-learn), resized, with labels."""

    class Params(Params):
        size: PositiveInt = Field(8, description="Side of the square images (bilinear resize from 8).")
        channels: Literal[1, 3] = Field(3, description="1 for grey, 3 for grey repeated as RGB.")
        split: Literal["all", "train", "test"] = Field(
            "all", description="'test' is every 10th image, 'train' the rest.")

    @classmethod
    def example_shape(cls, params: Digits.Params) -> ExampleShape:
        return ExampleShape(fields=frozenset({"image", "label"}), image_size=(params.size, params.size),
                            image_channels=params.channels)

    def __init__(self, params: Digits.Params) -> None:
        super().__init__(params)
        from sklearn.datasets import load_digits

        digits = load_digits()
        keep = torch.arange(len(digits.target))
        if params.split != "all":
            keep = keep[(keep % 10 == 0) == (params.split == "test")]
        images = torch.as_tensor(digits.images, dtype=torch.float32)[keep] / 16.0
        images = images[:, None]
        if params.size != 8:
            images = F.interpolate(images, size=(params.size, params.size), mode="bilinear",
                                   align_corners=False, antialias=params.size < 8).clamp(0, 1)
        self.images = repeat(images * 2 - 1, "n 1 h w -> n c h w", c=params.channels).contiguous()
        self.labels = torch.as_tensor(digits.target, dtype=torch.long)[keep]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self.images[index], "label": int(self.labels[index])}
