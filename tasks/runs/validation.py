"""Spec files and task specs: a JSON object read from a file, validated as its task's spec.

Validation happens before any work: a spec that fails it raises :class:`core.SpecError`,
one problem per line (see :func:`core.validation.problems`). The validation context holds
the frozen registry (component names) and the task models (a pipeline validates its stages
with them).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from core import Registry, SpecError, UserError
from core.errors import did_you_mean
from core.validation import problems
from tasks.runs.spec import TaskSpec


def read_spec_file(path: str | Path) -> dict[str, Any]:
    """The JSON object in ``path``; a :class:`UserError` if it is missing, not JSON, not an object or empty."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"spec file {str(path)!r} does not exist; give the path of a JSON spec (see configs/)")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise UserError(f"spec file {str(path)!r} is empty; it must hold a JSON object with at least 'task' and 'name'")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(
            f"spec file {str(path)!r} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        ) from None
    if not isinstance(data, dict):
        raise UserError(
            f"spec file {str(path)!r} holds a JSON {type(data).__name__}, not an object; a spec is an object "
            "with 'task', 'name', ..."
        )
    if not data:
        raise UserError(f"spec file {str(path)!r} holds an empty object; a spec needs at least 'task' and 'name'")
    return data


def validate_task(data: Any, tasks: Mapping[str, type[TaskSpec]], registry: Registry, source: str = "spec") -> TaskSpec:
    """Validate ``data`` as the task spec its ``task`` field names; raise :class:`SpecError` if it is wrong."""
    if not isinstance(data, dict) or not data:
        raise SpecError([((), "a spec must be a non-empty JSON object with at least 'task' and 'name'")], source)
    valid = ", ".join(sorted(tasks))
    task = data.get("task")
    if task is None:
        raise SpecError([(("task",), f"this field is required; valid tasks: {valid}")], source)
    if not isinstance(task, str) or task not in tasks:
        raise SpecError(
            [(("task",), f"unknown task {task!r}{did_you_mean(str(task), tasks)}; valid tasks: {valid}")], source
        )
    try:
        return tasks[task].model_validate(data, context={"registry": registry, "tasks": tasks})
    except ValidationError as err:
        raise SpecError(problems(err), source) from None


def task_schema(tasks: Mapping[str, type[TaskSpec]], registry: Registry) -> dict[str, Any]:
    """The JSON schema of every task spec, with the params of every installed component.

    Component references appear as a ``oneOf`` over the registered components of their kind,
    each with ``name`` fixed and ``params`` given by that component's ``Params``.
    """
    defs: dict[str, Any] = {}
    variants = []
    for cls in tasks.values():
        schema = cls.model_json_schema(ref_template="#/$defs/{model}")
        defs.update(schema.pop("$defs", {}))
        variants.append(schema)
    pending = [key for key, value in defs.items() if "x-ldm-kind" in value]
    done: set[str] = set()
    while pending:
        key = pending.pop()
        done.add(key)
        kind = defs[key]["x-ldm-kind"]
        # Fields a spec class adds beside name and params (e.g. a conditioner's drop_rate in an LDM).
        extra = {k: v for k, v in defs[key].get("properties", {}).items() if k not in ("name", "params")}
        choices = []
        for entry in registry.entries(kind):
            prefix = f"{kind}.{entry.name}."
            params = entry.cls.Params.model_json_schema(ref_template=f"#/$defs/{prefix}{{model}}")
            for name, sub in params.pop("$defs", {}).items():
                if prefix + name in done:  # a component whose params name its own kind (masked's data)
                    continue
                defs[prefix + name] = sub
                if "x-ldm-kind" in sub:
                    pending.append(prefix + name)
            choices.append(
                {
                    "title": f"{kind} {entry.name}",
                    "description": entry.summary,
                    "type": "object",
                    "properties": {"name": {"const": entry.name}, "params": params, **extra},
                    "required": ["name"],
                    "additionalProperties": False,
                }
            )
        defs[key] = (
            {"description": f"A registered {kind}.", "oneOf": choices}
            if choices
            else {"description": f"no {kind} is installed", "not": {}}
        )
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "ldm task spec",
        "oneOf": variants,
        "$defs": defs,
    }
