"""Checking a pretrained model's safetensors file against the names and shapes its config
makes, from the file's header alone (no tensor is read)."""

from __future__ import annotations

from pathlib import Path

from safetensors import SafetensorError, safe_open


def header_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Each tensor name in the safetensors file ``path`` with its shape; a ValueError naming
    ``path`` if it cannot be read as one."""
    try:
        with safe_open(str(path), framework="pt") as file:
            return {key: tuple(file.get_slice(key).get_shape()) for key in file.keys()}
    except (OSError, SafetensorError) as exc:
        raise ValueError(f"cannot read {path} as safetensors: {exc}") from None


def shape_problems(found: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]], prefix: str = "") -> str:
    """What differs between the ``found`` and ``expected`` names and shapes, as one clause
    ("missing: a, b; unexpected: c; wrong shape: d (1, 2) (expected (2, 2))", the first three
    of each, names shown with ``prefix``); empty when they agree."""
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    wrong = [
        f"{k} {found[k]} (expected {expected[k]})" for k in sorted(found) if k in expected and found[k] != expected[k]
    ]
    return "; ".join(
        f"{label}: {', '.join(prefix + item for item in items[:3])}{' ...' if len(items) > 3 else ''}"
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
        if items
    )
