"""Task ``inspect``: build the components a spec names and report what each one is.

It checks that the components fit together (e.g. the conditioners' contexts have one width)
before building anything, builds each one under the spec's seed, and prints its origin,
parameter count and what it declares it produces. It writes no run directory.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import field_validator
from pydantic_core import PydanticCustomError

from core import (
    ComponentSpec,
    ConditionerSpec,
    ConditioningShape,
    DenoiserSpec,
    FirstStageSpec,
    SamplerSpec,
)
from tasks.runs.context import RunContext
from tasks.runs.spec import TaskSpec


class InspectSpec(TaskSpec):
    """Build the named components and print their parameter counts and declared outputs."""

    task: Literal["inspect"]
    first_stage: FirstStageSpec | None = None
    conditioners: list[ConditionerSpec] = []
    denoiser: DenoiserSpec | None = None
    sampler: SamplerSpec | None = None

    @field_validator("conditioners")
    @classmethod
    def _combinable(cls, conditioners: list[ConditionerSpec]) -> list[ConditionerSpec]:
        try:
            combined_shape(conditioners)
        except ValueError as exc:
            raise PydanticCustomError("conditioning_mismatch", str(exc)) from None
        return conditioners


def combined_shape(conditioners: list[ConditionerSpec]) -> ConditioningShape:
    """The conditioning all ``conditioners`` produce together, from their params alone."""
    return ConditioningShape.combine(
        [spec.cls.produces(spec.params) for spec in conditioners],
        [f"conditioners.{i} ({spec.name})" for i, spec in enumerate(conditioners)],
    )


def _parts(shape: ConditioningShape) -> str:
    return ", ".join(f"{part} {getattr(shape, part)}" for part in shape.parts) or "nothing"


def _describe(spec: ComponentSpec) -> str:
    cls, params = spec.cls, spec.params
    if spec.entry.kind == "first_stage":
        shape = cls.latent_shape(params)
        return f"latent {shape.channels} channels, f={shape.factor}, from {shape.image_channels}-channel images"
    if spec.entry.kind == "conditioner":
        return f"reads {cls.reads(params)!r}, produces {_parts(cls.produces(params))}"
    if spec.entry.kind == "dataset":
        shape = cls.example_shape(params)
        return f"fields {', '.join(sorted(shape.fields))}; image size {shape.image_size}"
    return ""


def run(spec: InspectSpec, ctx: RunContext) -> None:
    """Build every component of ``spec`` and print one line per component."""
    roles: list[tuple[str, ComponentSpec]] = [
        (role, value)
        for role in ("data", "first_stage", "denoiser", "sampler")
        if (value := getattr(spec, role)) is not None
    ] + [(f"conditioners.{i}", c) for i, c in enumerate(spec.conditioners)]
    if not roles:
        print("inspect: the spec names no component", file=ctx.out)
        return
    torch.manual_seed(spec.seed)
    rows = [("role", "component", "from", "parameters (trainable)", "declares")]
    for role, component_spec in roles:
        built = component_spec.build()
        tensors = list(built.parameters()) if isinstance(built, torch.nn.Module) else []
        total = sum(t.numel() for t in tensors)
        trainable = sum(t.numel() for t in tensors if t.requires_grad)
        declares = _describe(component_spec)
        if component_spec.entry.kind == "dataset":
            declares += f"; {len(built)} examples"
        rows.append(
            (role, component_spec.name, str(component_spec.entry.origin), f"{total:,} ({trainable:,})", declares)
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip(), file=ctx.out)
    if spec.conditioners:
        print(f"combined conditioning: {_parts(combined_shape(spec.conditioners))}", file=ctx.out)
