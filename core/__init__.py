"""The core of ldm-framework: interfaces, plugin hooks, registry, spec types and diffusion maths.

``core`` knows no concrete model: components come from plugins (our own ``plugins``
package included) through the entry-point group ``ldm``. Plugin authors need only what is
exported here, plus :mod:`core.testing` for their tests.
"""

from core.conditioning import Conditioning, ConditioningShape
from core.errors import PluginError, SpecError, UserError
from core.hookspecs import hookimpl, hookspec
from core.interchange import DiffusersModel, NotExpressible
from core.interfaces import (
    INTERFACES,
    Component,
    Conditioner,
    Dataset,
    Denoiser,
    ExampleShape,
    FirstStage,
    FrozenEncoder,
    LatentShape,
    Regularizer,
    Sampler,
)
from core.loader import load_registry, make_plugin_manager
from core.params import Params, SpecModel
from core.registry import Registry
from core.specs import (
    ComponentSpec,
    ConditionerSpec,
    DatasetSpec,
    DenoiserSpec,
    FirstStageSpec,
    RegularizerSpec,
    SamplerSpec,
)
from core.version import PLUGIN_API_VERSION, PluginAPIError, require_plugin_api

__all__ = [
    "INTERFACES",
    "PLUGIN_API_VERSION",
    "Component",
    "ComponentSpec",
    "Conditioner",
    "ConditionerSpec",
    "Conditioning",
    "ConditioningShape",
    "Dataset",
    "DatasetSpec",
    "Denoiser",
    "DenoiserSpec",
    "DiffusersModel",
    "ExampleShape",
    "FirstStage",
    "FrozenEncoder",
    "FirstStageSpec",
    "LatentShape",
    "NotExpressible",
    "Params",
    "PluginAPIError",
    "PluginError",
    "Regularizer",
    "RegularizerSpec",
    "Registry",
    "Sampler",
    "SamplerSpec",
    "SpecError",
    "SpecModel",
    "UserError",
    "hookimpl",
    "hookspec",
    "load_registry",
    "make_plugin_manager",
    "require_plugin_api",
]
