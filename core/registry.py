"""The registry: every component name a spec may use, with the plugin it came from.

Plugins fill it through the ``ldm_register`` hook; it is frozen before any spec is
validated, so a spec can only ever name what an installed plugin registered.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from core.errors import PluginError, did_you_mean
from core.interfaces import INTERFACES, Component
from core.params import Params

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class Origin:
    """Where registrations come from: the plugin's name and its distribution (if any)."""

    plugin: str
    distribution: str | None = None
    version: str | None = None

    def __str__(self) -> str:
        if self.distribution is None:
            return f"plugin {self.plugin!r}"
        return f"plugin {self.plugin!r} ({self.distribution} {self.version})"


@dataclass(frozen=True)
class Entry:
    """One registered component: its kind, name, class and origin."""

    kind: str
    name: str
    cls: type[Component]
    origin: Origin

    @property
    def summary(self) -> str:
        """The first line of the class's docstring."""
        doc = (self.cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


def kind_of(cls: type) -> str:
    """The kind ("conditioner", ...) of a component class: the one interface it implements."""
    kinds = [kind for kind, base in INTERFACES.items() if isinstance(cls, type) and issubclass(cls, base)]
    if len(kinds) != 1:
        interfaces = ", ".join(base.__name__ for base in INTERFACES.values())
        what = f"{len(kinds)} of them" if kinds else "none"
        raise TypeError(f"{cls!r} must implement exactly one of core's interfaces ({interfaces}); it implements {what}")
    return kinds[0]


class Registry:
    """Component classes by kind and name.

    A plugin's ``ldm_register(registry)`` calls :meth:`add`. Names are unique per kind: a
    second plugin claiming a taken name is a :class:`core.errors.PluginError` naming both.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], Entry] = {}
        self._staged: list[Entry] | None = None
        self._origin: Origin | None = None
        self._frozen = False

    def add(self, name: str, cls: type[Component]) -> None:
        """Register ``cls`` under ``name``; its kind follows from the interface it implements.

        ``name`` is lower case letters, digits and underscores, starting with a letter (never
        a dotted path). ``cls.Params`` must derive from :class:`core.Params`. Raises
        ``TypeError`` or ``ValueError`` for a malformed registration and ``RuntimeError``
        once the registry is frozen.
        """
        if self._frozen:
            raise RuntimeError(f"the registry is frozen; {name!r} must be added from an ldm_register hook")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(
                f"component name {name!r} must be lower case letters, digits and '_', starting with a letter"
            )
        kind = kind_of(cls)
        params = getattr(cls, "Params", None)
        if not (isinstance(params, type) and issubclass(params, Params)):
            raise TypeError(f"{cls.__qualname__}.Params must be a subclass of core.Params")
        entry = Entry(kind, name, cls, self._origin or Origin("<direct>"))
        if self._staged is not None:
            self._staged.append(entry)
        else:
            self._commit([entry])

    @contextmanager
    def registering(self, origin: Origin) -> Iterator[None]:
        """Collect one plugin's registrations (the loader calls its hook inside this).

        They land only if the block finishes normally; a clash with an earlier plugin raises
        :class:`core.errors.PluginError` on leaving it.
        """
        self._staged, self._origin = [], origin
        try:
            yield
            staged = self._staged
        finally:
            self._staged, self._origin = None, None
        self._commit(staged)

    def _commit(self, entries: list[Entry]) -> None:
        merged = dict(self._entries)
        for entry in entries:
            other = merged.setdefault((entry.kind, entry.name), entry)
            if other is not entry:
                raise PluginError(
                    f"{entry.kind} name {entry.name!r} is registered by both {other.origin} and "
                    f"{entry.origin}; uninstall one of them (or set LDM_DISABLE_PLUGIN_AUTOLOAD=1 "
                    "to load only the built-in components)"
                )
        self._entries = merged

    def freeze(self) -> None:
        """Refuse further registrations (done before any spec is validated)."""
        self._frozen = True

    @property
    def frozen(self) -> bool:
        """Whether :meth:`freeze` has been called."""
        return self._frozen

    def names(self, kind: str) -> list[str]:
        """The registered names of one kind, sorted."""
        return sorted(name for k, name in self._entries if k == kind)

    def entries(self, kind: str | None = None) -> list[Entry]:
        """All entries (or those of one kind), sorted by kind then name."""
        order = list(INTERFACES)
        found = [e for e in self._entries.values() if kind is None or e.kind == kind]
        return sorted(found, key=lambda e: (order.index(e.kind), e.name))

    def get(self, kind: str, name: str) -> Entry:
        """The entry of that kind and name; ``KeyError`` with the valid names otherwise."""
        try:
            return self._entries[(kind, name)]
        except KeyError:
            raise KeyError(self.unknown_message(kind, name)) from None

    def unknown_message(self, kind: str, name: str) -> str:
        """One sentence saying ``name`` is not a registered ``kind`` and what would be valid."""
        valid = self.names(kind)
        listed = ", ".join(valid) if valid else "none is installed"
        return f"unknown {kind} {name!r}{did_you_mean(name, valid)}; installed {kind}s: {listed}"
