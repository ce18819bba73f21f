"""``box_map``: a layout of labelled boxes painted onto the latent grid and concatenated, the
spatial half of layout conditioning.

The paper's layout-to-image model sees boxes only as tokens through cross-attention, so the
UNet must learn from data alone which latent positions a corner token stands for (its
feature maps carry no coordinates). ``box_map`` gives each latent cell what lies on it
instead: every object's learned class embedding, weighted by the fraction of the cell its box
covers, summed over objects. Used beside ``layout`` (both read the same field) it makes the
"hybrid" conditioning of the original code (concat + cross-attention); ``layout`` alone keeps
the released model's format.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from pydantic import Field, PositiveInt, model_validator
from torch import Tensor, nn

from core import Conditioning, ConditioningShape, Params
from plugins.concat import ConcatConditioner
from plugins.layout import batch_layouts, layout_objects


def _cell_coverage(lo: Tensor, hi: Tensor, cells: int) -> Tensor:
    """The fraction (N, cells) of each of ``cells`` equal cells of [0, 1] that [lo, hi] (N,) covers."""
    edges = torch.linspace(0, 1, cells + 1, dtype=lo.dtype, device=lo.device)
    overlap = torch.minimum(hi[:, None], edges[None, 1:]) - torch.maximum(lo[:, None], edges[None, :-1])
    return overlap.clamp(min=0) * cells


def box_coverage(objects: Tensor, height: int, width: int) -> Tensor:
    """Coverage (N, height, width) in [0, 1] of a height x width grid by N boxes (N, 4) given as
    ``(x0, y0, x1, y1)`` fractions of the image (y down)."""
    x0, y0, x1, y1 = objects.unbind(-1)
    return _cell_coverage(y0, y1, height)[:, :, None] * _cell_coverage(x0, x1, width)[:, None, :]


class BoxMap(ConcatConditioner):
    """Layouts -> concat (B, channels, size / factor, size / factor): each object's class
    embedding times its box's coverage of each latent cell, summed over the objects.

    The field (``"boxes"``, as for ``layout``) holds one layout per example: a (B, N, 5) tensor
    or a list of B lists of ``[class, x0, y0, x1, y1]`` (class -1 for an empty row; corners as
    fractions of the image, y down), checked as ``layout`` checks them. The empty layout gives
    zeros; the "no condition" output is a learned map (used only with ``drop_concat``).
    """

    class Params(Params):
        num_classes: PositiveInt = Field(description="Class indices are 0 to num_classes - 1.")
        channels: PositiveInt = Field(16, description="Channels of the concat output (the class embedding's width).")
        size: PositiveInt = Field(description="The images' side in pixels (square images).")
        factor: PositiveInt = Field(4, description="The first stage's f: the maps are size / factor a side.")
        field: str = Field("boxes", description="The example field holding the layout.")

        @model_validator(mode="after")
        def _factor_divides_size(self) -> BoxMap.Params:
            if self.size % self.factor:
                raise ValueError(
                    f"size {self.size} is not a multiple of factor {self.factor}; give the images' side and the "
                    "first stage's f"
                )
            return self

    def __init__(self, params: BoxMap.Params) -> None:
        super().__init__(params)
        self.classes = nn.Embedding(params.num_classes, params.channels)
        self.null_map = nn.Parameter(torch.zeros(params.channels))

    @classmethod
    def produces(cls, params: BoxMap.Params) -> ConditioningShape:
        return ConditioningShape(concat=params.channels)

    def _paint(self, objects: Sequence[Sequence[float]], side: int) -> Tensor:
        checked = layout_objects(objects, self.params.num_classes)
        weight = self.classes.weight
        if not checked:
            return weight.new_zeros(self.params.channels, side, side)
        rows = torch.tensor(checked, dtype=torch.float64, device=weight.device)
        coverage = box_coverage(rows[:, 1:], side, side).to(weight.dtype)
        return torch.einsum("nhw,nc->chw", coverage, self.classes(rows[:, 0].long()))

    def forward(self, y: Tensor | Sequence[Any]) -> Conditioning:
        """Layouts ((B, N, 5) or a list of B) -> concat (B, channels, size / factor, size / factor)."""
        side = self.params.size // self.params.factor
        maps = []
        for i, objects in enumerate(batch_layouts(y)):
            try:
                maps.append(self._paint(objects, side))
            except ValueError as exc:
                raise ValueError(f"example {i}: {exc}") from None
        return Conditioning(concat=torch.stack(maps))

    def unconditional(self, cond: Conditioning) -> Conditioning:
        """A learned value per channel, repeated to ``cond``'s shape."""
        return Conditioning(concat=self.null_map[None, :, None, None].expand_as(cond.concat))
