"""``class_label``: a class index -> a learned embedding, with a learned null class for guidance."""

from __future__ import annotations

from typing import Literal

import torch
from einops import rearrange
from pydantic import Field, PositiveInt
from torch import Tensor, nn

from core import Conditioner, Conditioning, ConditioningShape, Params
from core.original import Pair


class ClassLabel(Conditioner):
    """Class label: a learned embedding per class plus one for "no class", as context or vector."""

    class Params(Params):
        num_classes: PositiveInt = Field(description="Number of real classes; index num_classes is the null class.")
        null_class: bool = Field(
            True,
            description=(
                "A learned 'no class' row at index num_classes, for guidance and condition dropout (the original "
                "cin256 has none: train it with drop_rate 0 and sample it with guidance 1)."
            ),
        )
        dim: PositiveInt = Field(512, description="Embedding width.")
        output: Literal["context", "vector"] = Field(
            "context", description="A one-token cross-attention context (the paper's way) or a vector."
        )
        field: str = Field("label", description="The example field holding the class index.")

    def __init__(self, params: ClassLabel.Params) -> None:
        super().__init__(params)
        self.embedding = nn.Embedding(params.num_classes + params.null_class, params.dim)

    @classmethod
    def reads(cls, params: ClassLabel.Params) -> str:
        return params.field

    @classmethod
    def produces(cls, params: ClassLabel.Params) -> ConditioningShape:
        return ConditioningShape(**{params.output: params.dim})

    def original_names(self) -> list[Pair]:
        """The original ``ClassEmbedder``'s name (its rows: the classes, then cin256-v2's null class 1000)."""
        return [Pair("embedding.weight", ("embedding.weight",))]

    def _wrap(self, embedding: Tensor) -> Conditioning:
        if self.params.output == "context":
            return Conditioning(context=rearrange(embedding, "b d -> b 1 d"))
        return Conditioning(vector=embedding)

    def forward(self, y: Tensor) -> Conditioning:
        """Class indices (B,) in [0, num_classes) -> context (B, 1, dim) or vector (B, dim)."""
        y = torch.as_tensor(y, device=self.embedding.weight.device)
        if y.ndim != 1 or y.dtype.is_floating_point:
            raise ValueError(f"class_label takes integer class indices of shape (B,), got {y.dtype} {tuple(y.shape)}")
        outside = y[(y < 0) | (y >= self.params.num_classes)]
        if outside.numel():
            raise ValueError(
                f"class_label got class {int(outside[0])}, outside [0, {self.params.num_classes}); "
                "raise num_classes or fix the labels"
            )
        return self._wrap(self.embedding(y))

    def unconditional(self, cond: Conditioning) -> Conditioning:
        """The learned null-class embedding, repeated over the batch of ``cond``."""
        if not self.params.null_class:
            raise ValueError(
                "class_label has no null class (null_class is false); train with drop_rate 0 and sample with guidance 1"
            )
        null = self.embedding.weight[self.params.num_classes]
        return self._wrap(null.expand(cond.batch_size, -1))
