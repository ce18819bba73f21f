"""Errors a user can cause and fix, and the wording they are reported in.

Anything derived from :class:`UserError` is the user's to fix (a bad spec, a missing file,
two plugins claiming one name): the command line prints its message and exits with code 2,
without a traceback. Every other exception is a bug or a failure while running (exit 1).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence


class UserError(Exception):
    """A mistake in what the user gave us, stated in one sentence that says how to fix it."""


class SpecError(UserError):
    """A spec that does not validate.

    ``problems`` holds one ``(location, message)`` pair per problem; the location is the
    path of the offending field inside the spec (e.g. ``("conditioners", 0, "params", "dim")``).
    """

    def __init__(self, problems: Sequence[tuple[tuple[str | int, ...], str]], source: str = "spec"):
        self.problems = list(problems)
        self.source = source
        lines = [f"{dotted(loc) or '(top level)'}: {msg}" for loc, msg in self.problems]
        if len(lines) == 1:
            text = f"{source}: {lines[0]}"
        else:
            text = f"{source} has {len(lines)} problems:\n" + "\n".join(f"  {ln}" for ln in lines)
        super().__init__(text)


class PluginError(UserError):
    """Installed plugins that cannot work together (e.g. two claim the same component name)."""


def dotted(loc: Iterable[str | int]) -> str:
    """Join a field location the way ``--set`` spells it: ``conditioners.0.params.dim``."""
    return ".".join(str(part) for part in loc)


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The valid choice nearest to a misspelled ``word``, or ``None`` if none is near."""
    found = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return found[0] if found else None


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` when a near choice exists, else an empty string."""
    near = closest(word, choices)
    return f"; did you mean {near!r}?" if near else ""
