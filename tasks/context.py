"""What every task gets besides its spec."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from core.loader import LoadedRegistry


@dataclass(frozen=True)
class RunContext:
    """The loaded registry, where run directories live, ``--resume``, and where to print."""

    registry: LoadedRegistry
    runs_dir: Path = Path("runs")
    resume: bool = False
    out: TextIO = field(default_factory=lambda: sys.stdout)
