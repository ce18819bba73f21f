"""What the conditioners that encode a field into context tokens of their own width
(``text_bert``, ``layout``) have in common."""

from __future__ import annotations

from typing import Any

from core import Conditioner, ConditioningShape


class ContextConditioner(Conditioner):
    """A conditioner whose params name the example ``field`` it reads and the ``width`` of the
    context tokens (B, M, width) it gives for cross-attention."""

    @classmethod
    def reads(cls, params: Any) -> str:
        return params.field

    @classmethod
    def produces(cls, params: Any) -> ConditioningShape:
        return ConditioningShape(context=params.width)
