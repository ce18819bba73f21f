"""What every dataset offers the same way: a train / validation split and low-res copies.

A dataset's ``Params`` derive from :class:`DataParams`; the dataset keeps the indices
:func:`split_indices` gives and passes each example through :func:`with_lowres`.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, PositiveInt
from torch.nn import functional as F

from core.params import Params


class DataParams(Params):
    """The params every dataset shares."""

    split: Literal["all", "train", "val"] = Field(
        "all", description="Every val_every-th example is validation ('val'); 'train' is the rest."
    )
    val_every: PositiveInt = Field(10, ge=2, description="One example in this many is validation.")
    lowres_factor: PositiveInt | None = Field(
        None, ge=2, description="Also give 'lowres': the image downsampled by this factor (area average)."
    )


def split_indices(size: int, params: DataParams) -> torch.Tensor:
    """The indices of the examples in ``params.split``, out of ``size``, always the same."""
    every = torch.arange(size)
    if params.split == "all":
        return every
    return every[(every % params.val_every == 0) == (params.split == "val")]


def fields_with_lowres(fields: set[str], params: DataParams) -> frozenset[str]:
    """``fields`` plus ``"lowres"`` when the params ask for it."""
    return frozenset(fields | ({"lowres"} if params.lowres_factor else set()))


def with_lowres(example: dict[str, Any], params: DataParams) -> dict[str, Any]:
    """``example`` with ``"lowres"`` (C, H / f, W / f) added when ``lowres_factor`` f is set."""
    if params.lowres_factor:
        image = example["image"]
        size = (image.shape[-2] // params.lowres_factor, image.shape[-1] // params.lowres_factor)
        example["lowres"] = F.interpolate(image[None], size=size, mode="area")[0]
    return example


class EpochIndex(int):
    """An example index that also says which pass over the data asks for it: what training's
    batch sampler hands a dataset's ``__getitem__``, so that augmentations (a flip, a random
    crop) can differ from one epoch to the next yet be the same in a resumed run. It is an
    ``int`` everywhere else; a plain ``int`` index is epoch 0."""

    epoch: int

    def __new__(cls, index: int, epoch: int) -> EpochIndex:
        made = super().__new__(cls, index)
        made.epoch = epoch
        return made

    def __getnewargs__(self) -> tuple[int, int]:  # so that data workers receive it whole
        return int(self), self.epoch


def epoch_of(index: int) -> int:
    """The epoch an index was asked for in (0 for a plain ``int``)."""
    return getattr(index, "epoch", 0)
