"""``masked``: any dataset's examples with an inpainting mask and the masked image added.

Example i of the wrapped ``data`` gains ``"mask"`` (1, H, W), 1 (white) where to generate,
drawn by :class:`core.masks.RandomMasks` from seed ``seed * 1000003 + i`` (the same mask
every time, in every process; torch seeds its generator with 32 bits, so the seed stays
below 2^32), and ``"masked_image"`` (C + 1, H, W) from
:func:`core.masks.masked_input`: the image with its hole at -1, then the mask as -1 / +1,
which the ``inpainting`` conditioner reads.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, NonNegativeInt

from core import Dataset, DatasetSpec, ExampleShape, Params
from core.masks import MASKED_IMAGE, RandomMasks, masked_input


class Masked(Dataset):
    """The examples of ``data`` with ``mask`` and ``masked_image``."""

    class Params(Params):
        data: DatasetSpec = Field(description='The dataset to mask, e.g. {"name": "shapes", "params": {...}}.')
        masks: RandomMasks = Field(default_factory=RandomMasks, description="How the masks are drawn.")
        seed: NonNegativeInt = Field(0, lt=4294, description="Masks come from seed * 1000003 + the example's index.")
        split: Literal["all", "train", "val"] | None = Field(
            None, description="Sets the wrapped data's split when given (how evaluate takes validation examples)."
        )

    @staticmethod
    def _inner(params: Masked.Params) -> DatasetSpec:
        if params.split is None or "split" not in type(params.data.params).model_fields:
            return params.data
        return params.data.model_copy(update={"params": params.data.params.model_copy(update={"split": params.split})})

    @classmethod
    def example_shape(cls, params: Masked.Params) -> ExampleShape:
        inner = cls._inner(params)
        shape = inner.cls.example_shape(inner.params)
        return ExampleShape(shape.fields | {"mask", MASKED_IMAGE}, shape.image_size, shape.image_channels)

    def __init__(self, params: Masked.Params) -> None:
        super().__init__(params)
        self.data = self._inner(params).build()

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict[str, Any]:
        example = dict(self.data[index])
        image = example["image"]
        mask = self.params.masks.draw(tuple(image.shape[-2:]), (self.params.seed * 1000003 + index) % 2**32)
        return {**example, "mask": mask, MASKED_IMAGE: masked_input(image[None], mask[None])[0]}
