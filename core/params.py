"""The base of every typed model in a spec: component ``Params`` and the task specs.

Unknown keys are refused with the closest valid key suggested, so that a misspelled
``num_clases`` is never silently ignored.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic_core import PydanticCustomError

from core.errors import did_you_mean


class SpecModel(BaseModel):
    """A frozen pydantic model that refuses unknown keys and names the closest valid one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _refuse_unknown_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        known: set[str] = set()
        for field_name, field in cls.model_fields.items():
            known.add(field_name)
            if field.alias:
                known.add(field.alias)
        unknown = [key for key in data if key not in known]
        if unknown:
            key = str(unknown[0])
            raise PydanticCustomError(
                "unknown_key",
                "unknown key {key}{hint}; valid keys: {valid}",
                {
                    "key": repr(key),
                    "hint": did_you_mean(key, known),
                    "valid": ", ".join(sorted(known)) or "(none)",
                },
            )
        return data


class Params(SpecModel):
    """Base class of every component's ``Params``.

    A component class sets ``Params`` to a subclass of this with its hyper-parameters as
    typed fields with defaults where a sensible one exists. The registry refuses a component
    whose ``Params`` does not derive from this class, so every component forbids extra keys
    and is frozen (params are values, never mutated after validation).
    """
