"""Finding and loading plugins: the plugin-manager factory and the registry it fills.

Built-in components and third-party ones take one path: an entry point in group ``"ldm"``
(our own is ``builtin = "plugins"`` in pyproject.toml). Each plugin is loaded in isolation:
one that fails to import, implements a hook that does not exist, or raises while
registering is reported with its name, distribution and error, and the others still load.

``LDM_DISABLE_PLUGIN_AUTOLOAD`` (any non-empty value) loads only this distribution's own
entry points, as ``PYTEST_DISABLE_PLUGIN_AUTOLOAD`` does for pytest.
"""

from __future__ import annotations

import os
import re
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points

import pluggy

from core import hookspecs
from core.errors import PluginError, UserError, did_you_mean
from core.registry import Origin, Registry

ENTRY_POINT_GROUP = "ldm"
OWN_DISTRIBUTION = "ldm-framework"
AUTOLOAD_SWITCH = "LDM_DISABLE_PLUGIN_AUTOLOAD"


@dataclass(frozen=True)
class Failure:
    """A plugin that could not be loaded, and why (one line)."""

    origin: Origin
    error: str

    def __str__(self) -> str:
        return f"{self.origin} failed to load: {self.error}"


@dataclass
class LoadReport:
    """Which plugins loaded and which failed."""

    loaded: list[Origin] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)


class LoadedRegistry(Registry):
    """A frozen :class:`Registry` that also remembers how its plugins loaded."""

    def __init__(self, report: LoadReport) -> None:
        super().__init__()
        self.report = report


def make_plugin_manager() -> pluggy.PluginManager:
    """A fresh plugin manager that knows our hook specifications and no plugin yet."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


def _normalise(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


def _one_line(exc: BaseException) -> str:
    where = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    at = f" (at {os.path.basename(where[0].filename)}:{where[0].lineno})" if where else ""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {message}{at}" if message else f"{type(exc).__name__}{at}"


def _unknown_hook(pm: pluggy.PluginManager, name: str) -> str | None:
    """Why plugin ``name`` fails validation when it implements a hook no hookspec defines
    (one line naming that hook and the nearest real one, or all of them); ``None`` otherwise."""
    plugin = pm.get_plugin(name)
    unknown = [
        caller.name
        for caller in pm.get_hookcallers(plugin) or []
        if not caller.has_spec() and any(i.plugin is plugin and not i.optionalhook for i in caller.get_hookimpls())
    ]
    if not unknown:
        return None
    known = sorted(hook for hook, caller in vars(pm.hook).items() if not hook.startswith("_") and caller.has_spec())
    hint = did_you_mean(unknown[0], known) or f"; a plugin may implement only {', '.join(map(repr, known))}"
    return f"PluginValidationError: unknown hook {unknown[0]!r}{hint}"


def _origin(ep: EntryPoint) -> Origin:
    dist = ep.dist
    return Origin(ep.name, dist.name if dist else None, dist.version if dist else None)


def discover(env: Mapping[str, str] | None = None) -> list[EntryPoint]:
    """The entry points to load: all of group ``ldm``, or only our own when autoload is off."""
    env = os.environ if env is None else env
    found = sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: (ep.dist is None, ep.name))
    own = [ep for ep in found if ep.dist is not None and _normalise(ep.dist.name) == OWN_DISTRIBUTION]
    if not own:
        raise UserError(
            f"the built-in components are not registered (no entry point of {OWN_DISTRIBUTION} in "
            f"group {ENTRY_POINT_GROUP!r}); install this project with `pip install -e .`"
        )
    if env.get(AUTOLOAD_SWITCH):
        return own
    # Built-ins first, so a third party clashing with one of our names is the one named second.
    return own + [ep for ep in found if ep not in own]


def load_registry(
    plugins: Iterable[object] = (),
    *,
    autoload: bool = True,
    env: Mapping[str, str] | None = None,
) -> LoadedRegistry:
    """Load plugins into a fresh registry and freeze it.

    ``autoload`` loads the entry points of group ``ldm`` (see :func:`discover`); ``plugins``
    are extra plugin objects (e.g. a module or a class with ``ldm_register``) registered in
    process, as tests and embedding applications do. Raises :class:`core.errors.PluginError`
    when two plugins claim one name.
    """
    pm = make_plugin_manager()
    report = LoadReport()
    origins: dict[str, Origin] = {}

    def admit(origin: Origin, obtain) -> None:
        registered = None
        try:
            registered = pm.register(obtain(), name=origin.plugin)
            pm.check_pending()
        except Exception as exc:
            error = None
            if registered is not None:
                # pluggy's own message has no hint; ask before unregistering, while its hooks are known.
                error = _unknown_hook(pm, origin.plugin)
                pm.unregister(name=origin.plugin)
            report.failed.append(Failure(origin, error or _one_line(exc)))
            return
        origins[origin.plugin] = origin

    if autoload:
        for ep in discover(env):
            admit(_origin(ep), ep.load)
    for plugin in plugins:
        name = getattr(plugin, "__name__", None) or type(plugin).__name__
        admit(Origin(name), lambda plugin=plugin: plugin)

    registry = LoadedRegistry(report)
    for name, origin in origins.items():
        plugin = pm.get_plugin(name)
        others = [p for p in pm.get_plugins() if p is not plugin]
        call = pm.subset_hook_caller("ldm_register", remove_plugins=others)
        try:
            with registry.registering(origin):
                call(registry=registry)
        except PluginError:
            raise
        except Exception as exc:
            report.failed.append(Failure(origin, _one_line(exc)))
            continue
        report.loaded.append(origin)
    registry.freeze()
    return registry
