"""The typed parts of a task spec.

A component is referenced as ``{"name": "<registered name>", "params": {...}}`` and its
params are validated by that component's own ``Params``. There are no import paths: a
name is looked up in the frozen registry handed to validation as context
(``Model.model_validate(data, context={"registry": registry})``), so a spec can only
name what a plugin registered.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import (
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from core.interfaces import Component
from core.params import SpecModel
from core.registry import Entry, Registry


def registry_from(info: ValidationInfo) -> Registry:
    """The frozen registry passed as validation context (a bug if it is missing)."""
    registry = (info.context or {}).get("registry")
    if not isinstance(registry, Registry) or not registry.frozen:
        raise RuntimeError("validate specs with context={'registry': <a frozen Registry>}")
    return registry


class ComponentSpec(SpecModel):
    """A reference to a registered component and its params (use a kind's subclass below)."""

    kind: ClassVar[str] = ""
    name: str = Field(description="A registered component name (see `--list`).")
    params: Any = Field(default_factory=dict, validate_default=True, description="The component's params.")
    _entry: Entry = PrivateAttr()

    @field_validator("name")
    @classmethod
    def _known_name(cls, name: str, info: ValidationInfo) -> str:
        registry = registry_from(info)
        if name not in registry.names(cls.kind):
            raise PydanticCustomError("unknown_component", registry.unknown_message(cls.kind, name))
        return name

    @field_validator("params")
    @classmethod
    def _valid_params(cls, params: Any, info: ValidationInfo) -> Any:
        if "name" not in info.data:
            return params  # the name is already reported as wrong
        component = registry_from(info).get(cls.kind, info.data["name"]).cls
        if isinstance(params, component.Params):
            return params
        if not isinstance(params, dict):
            raise PydanticCustomError("params_type", "params must be an object of the component's params")
        # A ValidationError raised here is a ValueError: pydantic keeps it in the error's ctx,
        # and core.validation expands it so each inner error keeps its full location.
        return component.Params.model_validate(params, context=info.context)

    @model_validator(mode="after")
    def _resolve(self, info: ValidationInfo) -> ComponentSpec:
        self._entry = registry_from(info).get(self.kind, self.name)
        return self

    @property
    def entry(self) -> Entry:
        """The registry entry this spec names (class and origin)."""
        return self._entry

    @property
    def cls(self) -> type[Component]:
        """The component class this spec names."""
        return self._entry.cls

    def build(self, **context: Any) -> Component:
        """A new instance of the component, built from the validated params.

        ``context`` holds what the interface's constructor takes besides params (e.g. a
        regulariser's ``latent_channels``).
        """
        return self._entry.cls(self.params, **context)


def _kind_spec(kind: str, title: str) -> type[ComponentSpec]:
    return type(
        f"{title}Spec",
        (ComponentSpec,),
        {
            "__doc__": f"A registered {kind} and its params.",
            "__module__": __name__,
            "kind": kind,
            # core.validation.task_schema replaces this model by the installed components.
            "model_config": {**SpecModel.model_config, "json_schema_extra": {"x-ldm-kind": kind}},
        },
    )


FirstStageSpec = _kind_spec("first_stage", "FirstStage")
RegularizerSpec = _kind_spec("regularizer", "Regularizer")
DenoiserSpec = _kind_spec("denoiser", "Denoiser")
ConditionerSpec = _kind_spec("conditioner", "Conditioner")
SamplerSpec = _kind_spec("sampler", "Sampler")
DatasetSpec = _kind_spec("dataset", "Dataset")

__all__ = [
    "ComponentSpec",
    "ConditionerSpec",
    "DatasetSpec",
    "DenoiserSpec",
    "FirstStageSpec",
    "RegularizerSpec",
    "SamplerSpec",
]
