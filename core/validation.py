"""Every failure of spec validation as a clear sentence.

A spec that fails validation raises :class:`core.errors.SpecError`, one problem per line,
each naming the field's full location (``conditioners.0.params.num_classes``), the bad value
and what would be valid; :func:`problems` turns pydantic's errors into those lines.
"""

from __future__ import annotations

import re
from typing import Any, get_args

from pydantic import ValidationError
from pydantic_core.core_schema import ErrorType

from core.errors import did_you_mean

# pydantic's own error types; any other type is one of ours (or a plugin's), whose message
# already names the value and the fix.
_PYDANTIC_TYPES = frozenset(get_args(ErrorType))
_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
"""Pydantic's range errors, whose one bound (in the error's context) gives the fix."""


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def problems(err: ValidationError, prefix: tuple[str | int, ...] = ()) -> list[tuple[tuple[str | int, ...], str]]:
    """Each error of a pydantic ``ValidationError`` as ``(location, one-sentence message)``.

    A component's params are validated by its own model inside the spec's; those inner
    errors are expanded here with their full location.
    """
    found = []
    for error in err.errors(include_url=False):
        loc = prefix + tuple(error["loc"])
        inner = (error.get("ctx") or {}).get("error")
        if isinstance(inner, ValidationError):
            found.extend(problems(inner, loc))
            continue
        kind, message = error["type"], error["msg"]
        if kind == "missing":
            message = "this field is required"
        elif kind in ("value_error", "assertion_error"):
            message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
        elif kind == "literal_error":
            expected = re.findall(r"'([^']*)'", error["ctx"]["expected"])
            message = f"{message}, got {_show(error['input'])}{did_you_mean(str(error['input']), expected)}"
        elif kind in _BOUNDS:
            bound = next(iter(error["ctx"].values()))
            message = f"{message}, got {_show(error['input'])}; use a value {_BOUNDS[kind]} {bound}"
        elif kind in _PYDANTIC_TYPES:
            message = f"{message}, got {_show(error['input'])}"
        found.append((loc, message))
    return found
