"""What the conditioners that give concat maps (``low_res``, ``semantic_map``) have in common."""

from __future__ import annotations

from typing import Any

from core import Conditioner


class ConcatConditioner(Conditioner):
    """A conditioner whose params name the example ``field`` it reads and the first stage's
    ``factor``, the f its concat maps are made for (the image's size / f)."""

    @classmethod
    def reads(cls, params: Any) -> str:
        return params.field

    @classmethod
    def concat_factor(cls, params: Any) -> int:
        return params.factor
