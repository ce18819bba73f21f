"""The states a frozen text encoder gave for recent captions, so that a caption seen again
(a dataset's captions repeat every epoch) is encoded once."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence

import torch
from pydantic import Field
from torch import Tensor

from core import Params


class CaptionParams(Params):
    """The params every frozen text encoder has: where the caption is, and how many captions'
    states to keep."""

    field: str = Field("caption", description="The example field holding the caption.")
    cache_size: int = Field(
        4096,
        ge=0,
        description=(
            "Captions whose states are kept while the encoder is frozen, so a repeated caption is encoded once "
            "(about max_length x width x 4 bytes each); 0: none."
        ),
    )


class CaptionCache:
    """Up to ``size`` captions' states (each (M, width)), the least recently used dropped first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._states: OrderedDict[str, Tensor] = OrderedDict()  # caption -> states, newest last

    def __iter__(self) -> Iterator[str]:
        """The kept captions, least recently used first."""
        return iter(self._states)

    def __len__(self) -> int:
        return len(self._states)

    def clear(self) -> None:
        """Forget every caption (the encoder's weights changed)."""
        self._states.clear()

    @torch.no_grad()
    def states(self, captions: Sequence[str], encode: Callable[[list[str]], Tensor], like: Tensor) -> Tensor:
        """States (B, M, width) of ``captions``, calling ``encode`` (a list of N captions ->
        (N, M, width)) on those not kept; ``like`` is a weight of the encoder, whose device and
        dtype kept states must share (else they are dropped: the encoder moved or was cast)."""
        stale = next(iter(self._states.values()), None)
        if stale is not None and (stale.device, stale.dtype) != (like.device, like.dtype):
            self._states.clear()
        missing = [c for c in dict.fromkeys(captions) if c not in self._states]
        if missing:
            self._states.update(zip(missing, encode(missing), strict=True))
        states = torch.stack([self._states[c] for c in captions])
        for caption in dict.fromkeys(captions):
            self._states.move_to_end(caption)
        while len(self._states) > self.size:
            self._states.popitem(last=False)
        return states
