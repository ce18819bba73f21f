"""Weights under another code's names: the pairing of a component's tensors with theirs (the
original CompVis code's: what :meth:`core.Component.original_names` gives; diffusers': the
``pairs`` of :meth:`core.Component.diffusers_model`), and the conversion of state dicts both
ways.

A :class:`Pair` says which original tensors make one of ours: usually one under another
name; several stacked along the first axis where we fuse projections the original keeps
apart (attention's q, k, v); rows regrouped where the original interleaves heads (its legacy
attention's fused qkv, head by head); reshaped where it uses a 1-d convolution for what is a
linear map here.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class Pair:
    """Our tensor ``ours`` is the other code's tensors ``originals`` stacked along the first
    axis; with ``heads`` set, one fused qkv tensor whose rows run head by head (q, k, v of head
    0, then of head 1...), where ours run q of every head, then k, then v. ``ndim``: the other
    code stores this weight with that many dims where ours has another count, the same numbers
    with trailing ones added or dropped (our 1x1 convolution (C_out, C_in, 1, 1) as its linear
    map: 2; our linear map as its 1-d convolution (C_out, C_in, 1): 3)."""

    ours: str
    originals: tuple[str, ...]
    heads: int | None = None
    ndim: int | None = None


def module_pairs(
    ours: str, theirs: str, subs: Iterable[tuple[str, str | tuple[str, ...]]], bias: bool = True
) -> Iterator[Pair]:
    """The weight (and bias) pairs of the submodules ``subs`` (our name, the original name or
    names) of a module at our prefix ``ours`` and the original prefix ``theirs``."""
    leaves = ("weight", "bias") if bias else ("weight",)
    for mine, originals in subs:
        names = (originals,) if isinstance(originals, str) else originals
        for leaf in leaves:
            ours_name = ".".join(part for part in (ours, mine, leaf) if part)
            yield Pair(ours_name, tuple(".".join(part for part in (theirs, name, leaf) if part) for name in names))


def _regroup(tensor: Tensor, heads: int, from_original: bool) -> Tensor:
    outer = (heads, 3) if from_original else (3, heads)
    return tensor.reshape(*outer, -1, *tensor.shape[1:]).transpose(0, 1).reshape(tensor.shape)


def _trimmed(shape: torch.Size) -> torch.Size:
    # A 1x1 convolution (C_out, C_in, 1, 1), a 1-d one (C_out, C_in, 1) and a linear map
    # (C_out, C_in) hold the same numbers.
    while len(shape) > 2 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def from_pairs(model: nn.Module, pairs: Iterable[Pair], state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``model``'s state dict with every tensor of ``pairs`` taken from ``state`` (the other
    code's names); a ``KeyError`` names the first missing one and a ``ValueError`` a tensor
    whose size is not what ``model``'s params make."""
    ours = model.state_dict()
    for pair in pairs:
        missing = [key for key in pair.originals if key not in state]
        if missing:
            raise KeyError(missing[0])
        parts = [state[key] for key in pair.originals]
        stacked = parts[0] if len(parts) == 1 else torch.cat(parts)
        target = ours[pair.ours]
        if _trimmed(stacked.shape) != _trimmed(target.shape):
            raise ValueError(
                f"{' + '.join(pair.originals)} has shape {tuple(stacked.shape)} where the params make "
                f"{tuple(target.shape)}"
            )
        stacked = stacked.reshape(target.shape)
        if pair.heads is not None:
            stacked = _regroup(stacked, pair.heads, from_original=True)
        ours[pair.ours] = stacked.to(target.dtype)
    return ours


def to_pairs(model: nn.Module, pairs: Iterable[Pair]) -> dict[str, Tensor]:
    """``model``'s tensors that ``pairs`` name, under the other code's names and layouts (a
    pair's ``ndim`` reshapes a weight to the other code's dims); views of the model's own
    tensors where no regrouping was needed, so no copy is made: clone before changing them."""
    ours = model.state_dict()
    state = {}
    for pair in pairs:
        tensor = ours[pair.ours]
        if pair.heads is not None:
            tensor = _regroup(tensor, pair.heads, from_original=False)
        for key, part in zip(pair.originals, tensor.chunk(len(pair.originals)), strict=True):
            if pair.ndim is not None:
                part = part.reshape(*_trimmed(part.shape), *[1] * (pair.ndim - len(_trimmed(part.shape))))
            state[key] = part
    return state


def from_original(model: nn.Module, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """:func:`from_pairs` with the model's ``original_names()``: ``state`` under the original's names."""
    return from_pairs(model, model.original_names(), state)


def to_original(model: nn.Module) -> dict[str, Tensor]:
    """:func:`to_pairs` with the model's ``original_names()``: its tensors under the original's names."""
    return to_pairs(model, model.original_names())
