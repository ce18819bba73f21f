"""How a condition reaches the denoiser: one value with three optional parts.

* ``context`` (B, M, d): tokens the denoiser attends to with cross-attention;
* ``concat``  (B, C, h, w): maps joined to the noisy latent z_t along channels;
* ``vector``  (B, d): added to the time embedding.

Several conditioners combine into one :class:`Conditioning`: contexts join along M (so their
widths must agree), concat maps along C and vectors along d. :class:`ConditioningShape` is
the same thing without tensors: the widths a conditioner declares from its params, which
builders use to size the denoiser before any tensor exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor

PARTS = ("context", "concat", "vector")
_RANK = {"context": 3, "concat": 4, "vector": 2}
# The axis that holds a part's width: d for context (B, M, d) and vector (B, d), C for concat.
_WIDTH_AXIS = {"context": -1, "concat": 1, "vector": -1}


@dataclass(frozen=True)
class ConditioningShape:
    """Widths of the parts a conditioner produces (``None``: the part is absent).

    ``context`` is d of (B, M, d), ``concat`` is C of (B, C, h, w), ``vector`` is d of (B, d).
    """

    context: int | None = None
    concat: int | None = None
    vector: int | None = None

    def __post_init__(self) -> None:
        for part in PARTS:
            width = getattr(self, part)
            if width is not None and (not isinstance(width, int) or width <= 0):
                raise ValueError(f"ConditioningShape.{part} must be a positive int or None, got {width!r}")

    @property
    def parts(self) -> tuple[str, ...]:
        """The names of the parts present, in the order context, concat, vector."""
        return tuple(part for part in PARTS if getattr(self, part) is not None)

    @staticmethod
    def combine(shapes: Sequence[ConditioningShape], names: Sequence[str] | None = None) -> ConditioningShape:
        """The shape of several conditioners' outputs combined.

        Concat channels and vector widths add up. Contexts are joined along the token axis,
        so every context must have the same width; otherwise a ``ValueError`` names each
        conditioner (by ``names``, if given) with its width.
        """
        names = list(names) if names is not None else [f"#{i}" for i in range(len(shapes))]
        contexts = {name: s.context for name, s in zip(names, shapes, strict=True) if s.context is not None}
        if len(set(contexts.values())) > 1:
            listed = ", ".join(f"{name} gives {width}" for name, width in contexts.items())
            raise ValueError(
                "cross-attention contexts are joined along the token axis, so their widths must "
                f"agree, but {listed}; give them the same width"
            )

        def total(part: str) -> int | None:
            widths = [getattr(s, part) for s in shapes if getattr(s, part) is not None]
            return sum(widths) if widths else None

        return ConditioningShape(
            context=next(iter(contexts.values()), None), concat=total("concat"), vector=total("vector")
        )

    def mismatches(self, given: Conditioning) -> list[str]:
        """How ``given`` (what a forward pass returned) departs from this declaration, one phrase
        per part (e.g. ``"declares a vector of width 16 but gave one shaped (8, 8)"``); empty if it agrees."""
        found = []
        for part in PARTS:
            width, tensor = getattr(self, part), getattr(given, part)
            if width is None and tensor is not None:
                found.append(f"declares no {part} but gave one shaped {tuple(tensor.shape)}")
            elif width is not None and tensor is None:
                found.append(f"declares a {part} of width {width} but gave none")
            elif width is not None and tensor.shape[_WIDTH_AXIS[part]] != width:
                found.append(f"declares a {part} of width {width} but gave one shaped {tuple(tensor.shape)}")
        return found


@dataclass(frozen=True)
class Conditioning:
    """A condition as the denoiser receives it; every present part has the same batch size B."""

    context: Tensor | None = None
    concat: Tensor | None = None
    vector: Tensor | None = None

    def __post_init__(self) -> None:
        sizes = set()
        for part in PARTS:
            value = getattr(self, part)
            if value is None:
                continue
            if not isinstance(value, Tensor) or value.ndim != _RANK[part]:
                got = f"shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(f"Conditioning.{part} must be a tensor of rank {_RANK[part]}, got {got}")
            sizes.add(value.shape[0])
        if len(sizes) > 1:
            raise ValueError(f"Conditioning parts disagree on the batch size: {sorted(sizes)}")

    def _parts(self) -> dict[str, Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    @property
    def batch_size(self) -> int | None:
        """B, or ``None`` for an empty conditioning (unconditional models)."""
        return next((t.shape[0] for t in self._parts().values()), None)

    @property
    def shape(self) -> ConditioningShape:
        """The widths of the parts present (what a conditioner declares it produces)."""
        return ConditioningShape(**{part: t.shape[_WIDTH_AXIS[part]] for part, t in self._parts().items()})

    @staticmethod
    def combine(items: Sequence[Conditioning]) -> Conditioning:
        """Join several conditioners' outputs: contexts along M, concat along C, vectors along d.

        Each of those is axis 1 of its part, so one ``torch.cat(dim=1)`` serves all three.
        """
        joined: dict[str, Tensor] = {}
        for part in PARTS:
            pieces = [getattr(c, part) for c in items if getattr(c, part) is not None]
            if pieces:
                joined[part] = torch.cat(pieces, dim=1)
        return Conditioning(**joined)

    @staticmethod
    def cat(items: Sequence[Conditioning]) -> Conditioning:
        """Stack conditionings with the same parts along the batch axis (B1 + B2 + ...).

        This is how the conditional and unconditional halves of classifier-free guidance go
        through the denoiser in one call.
        """
        parts = {tuple(c._parts()) for c in items}
        if len(parts) != 1:
            raise ValueError(f"cannot stack conditionings with different parts: {sorted(parts)}")
        return Conditioning(**{part: torch.cat([getattr(c, part) for c in items]) for part in parts.pop()})

    def where(self, keep: Tensor, other: Conditioning) -> Conditioning:
        """Per sample, this value where ``keep`` (B,) is true and ``other`` where it is false.

        Used for condition dropout in training: ``other`` is the conditioner's "no condition"
        output, with the same parts and shapes as this one.
        """
        if self.shape != other.shape:
            raise ValueError(f"cannot mix conditionings of shapes {self.shape} and {other.shape}")
        mixed = {}
        for part, value in self._parts().items():
            mask = keep.reshape(-1, *([1] * (value.ndim - 1)))
            mixed[part] = torch.where(mask, value, getattr(other, part))
        return Conditioning(**mixed)

    def to(self, *args, **kwargs) -> Conditioning:
        """Every part moved or cast as :meth:`torch.Tensor.to` does."""
        return Conditioning(**{part: t.to(*args, **kwargs) for part, t in self._parts().items()})
