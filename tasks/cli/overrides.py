"""``--set a.b.c=VALUE``: one field of the spec overridden from the command line.

VALUE is read as JSON (``100``, ``true``, ``[1, 2]``, ``{"dim": 64}``) and otherwise taken as a
string. Where the JSON reading does not fit the field but the plain string does (``--set
name=2024`` for a string field), the string is used: the spec's types decide, not the
look of the value.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from core.errors import SpecError, UserError

T = TypeVar("T")


@dataclass(frozen=True)
class Override:
    """One ``--set``: the field's path and its value as JSON (``parsed``) and as typed (``raw``)."""

    path: tuple[str, ...]
    raw: str
    parsed: Any

    @classmethod
    def parse(cls, text: str) -> Override:
        """Read ``a.b.c=VALUE``; a :class:`UserError` if there is no key."""
        key, sep, raw = text.partition("=")
        path = tuple(key.strip().split("."))
        if not sep or not all(path):
            raise UserError(
                f"--set {text!r} is not KEY=VALUE; write e.g. --set train.max_steps=100 or --set name=my-run"
            )
        try:
            parsed = json.loads(raw)
        except json.JSONDecodeError:
            parsed = raw
        return cls(path, raw, parsed)

    def apply(self, data: dict[str, Any], value: Any) -> dict[str, Any]:
        """A copy of ``data`` with this field set to ``value``.

        Missing objects on the way are created; a list index one past the end appends.
        """
        data = copy.deepcopy(data)
        node: Any = data
        for depth, key in enumerate(self.path):
            last = depth == len(self.path) - 1
            where = ".".join(self.path[:depth]) or "the spec"
            if isinstance(node, dict):
                if last:
                    node[key] = value
                else:
                    node = node.setdefault(key, {})
            elif isinstance(node, list) and key.isdigit() and int(key) < len(node) + last:
                if int(key) == len(node):
                    node.append(value)  # one past the end appends, e.g. another conditioner
                elif last:
                    node[int(key)] = value
                else:
                    node = node[int(key)]
            else:
                kind = f"a list of {len(node)}" if isinstance(node, list) else f"a {type(node).__name__}"
                raise UserError(f"--set {'.'.join(self.path)}: {where} is {kind}, so it has no field {key!r}")
        return data


def resolve(data: dict[str, Any], texts: Sequence[str], validate: Callable[[dict[str, Any]], T]) -> T:
    """Apply every ``--set`` in ``texts`` to ``data`` and validate the result.

    An override whose JSON reading is rejected at its own field is retried as a plain string.
    """
    overrides = [Override.parse(text) for text in texts]
    values = [o.parsed for o in overrides]

    def attempt() -> T:
        result = data
        for override, value in zip(overrides, values, strict=True):
            result = override.apply(result, value)
        return validate(result)

    try:
        return attempt()
    except SpecError as err:
        bad = [tuple(str(part) for part in loc) for loc, _ in err.problems]
        retry = [
            i
            for i, o in enumerate(overrides)
            if not isinstance(o.parsed, str) and any(loc[: len(o.path)] == o.path for loc in bad)
        ]
        if not retry:
            raise
        for i in retry:
            values[i] = overrides[i].raw
        try:
            return attempt()
        except SpecError:
            raise err from None  # neither reading fits: report what the JSON reading got wrong
