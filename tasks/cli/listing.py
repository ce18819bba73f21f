"""``--list``: every installed component by kind, where it came from, and what each dataset gives."""

from __future__ import annotations

from pydantic import ValidationError

from core import INTERFACES
from core.data import DataParams
from core.loader import LoadedRegistry
from core.registry import Entry


def dataset_fields(entry: Entry) -> str:
    """The fields a dataset's examples hold with its default params, or what they depend on."""
    params_model = entry.cls.Params
    try:
        params = params_model()
    except ValidationError:
        required = [name for name, field in params_model.model_fields.items() if field.is_required()]
        return f"fields follow its params (set {', '.join(required)}; see --schema)"
    text = "fields " + ", ".join(sorted(entry.cls.example_shape(params).fields))
    if issubclass(params_model, DataParams) and not params.lowres_factor:
        text += " (+ lowres with lowres_factor)"
    return text


def component_list(registry: LoadedRegistry) -> str:
    """The ``--list`` text: one line per component, by kind, then the plugins that failed to load."""
    lines = []
    for kind in INTERFACES:
        lines.append(kind)
        entries = registry.entries(kind)
        width = max((len(e.name) for e in entries), default=0)
        for e in entries:
            fields = f"; {dataset_fields(e)}" if kind == "dataset" else ""
            lines.append(f"  {e.name.ljust(width)}  {e.summary}{fields}  [{e.origin}]")
        if not entries:
            lines.append("  (none installed)")
    if registry.report.failed:
        lines.append("plugins that failed to load")
        lines += [f"  {failure}" for failure in registry.report.failed]
    return "\n".join(lines)
