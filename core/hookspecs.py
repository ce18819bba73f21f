"""Hook specifications: the functions a plugin may implement.

A plugin is a module (or any object) with functions marked ``@core.hookimpl`` whose names
and arguments match the specifications below; it reaches us through an entry point in group
``"ldm"`` (see CONTRIBUTING.md). A plugin may take any subset of a hook's arguments. Hooks
are only ever added, never changed, so a plugin written today keeps working.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from core.registry import Registry

PROJECT = "ldm"

hookspec = pluggy.HookspecMarker(PROJECT)
"""Marks a hook specification in this module."""

hookimpl = pluggy.HookimplMarker(PROJECT)
"""Marks a plugin's implementation of a hook: ``@core.hookimpl def ldm_register(registry): ...``."""


@hookspec
def ldm_register(registry: Registry) -> None:
    """Add this plugin's components to ``registry``.

    Call ``registry.add("<name>", SomeClass)`` once per component. The kind (first stage,
    regularizer, denoiser, conditioner, sampler, dataset) follows from which ``core``
    interface the class implements; names are unique per kind, and a name another plugin
    already registered is an error that names both plugins.

    Called once per plugin, in isolation: if it raises, none of this plugin's registrations
    are kept, the failure is reported with the plugin's name and distribution, and every other
    plugin still loads. The return value is ignored.
    """
