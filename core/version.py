"""Versions a plugin or a file can check against.

``PLUGIN_API_VERSION`` is ``"major.minor"``: the minor number grows when the plugin API
gains something (a hook, an interface method with a default), the major when something a
plugin relies on changes. A plugin states what it needs at import time::

    core.require_plugin_api("1.0")

and is then reported as failed to load, with the reason, by an ldm-framework too old for it.
"""

from __future__ import annotations

from core.errors import UserError

PLUGIN_API_VERSION = "1.8"


class PluginAPIError(UserError):
    """The installed ldm-framework does not offer the plugin API a plugin needs."""


def _parse(version: str) -> tuple[int, int]:
    try:
        major, minor = (int(part) for part in version.split("."))
    except ValueError:
        raise ValueError(f"a plugin API version is 'major.minor', e.g. '1.0', got {version!r}") from None
    return major, minor


def require_plugin_api(needed: str) -> None:
    """Raise :class:`PluginAPIError` unless this ldm-framework offers plugin API ``needed``.

    Offered means the same major version and a minor version at least as high.
    """
    have, want = _parse(PLUGIN_API_VERSION), _parse(needed)
    if have[0] != want[0] or have[1] < want[1]:
        raise PluginAPIError(
            f"this plugin needs ldm plugin API {needed}, but the installed ldm-framework offers "
            f"{PLUGIN_API_VERSION}; install an ldm-framework whose plugin API is {want[0]}.x with x >= {want[1]}"
        )
