"""``python -m tasks.run SPEC.json`` (also the ``ldm`` command): validate a spec, then run it.

Exit codes: 0 done; 1 a failure while running (e.g. the disk filled up); 2 the input is wrong
(one message naming the field, the value and the fix; nothing run, nothing written); 3
stopped by SIGTERM or SIGINT after writing a checkpoint (``--resume`` continues).

This module is also Lightning Fabric's launch target: a multi-process run re-runs the same
command once per extra process, so nothing here has side effects before a task launches.
Only global rank 0 prints. It imports only the standard library, so that ``--help`` answers
at once; :mod:`tasks.cli.command` (torch, the registry, the specs) is imported after parsing,
and a task's own modules only when that task runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

AUTOLOAD_SWITCH = "LDM_DISABLE_PLUGIN_AUTOLOAD"
"""core.loader.AUTOLOAD_SWITCH, repeated so that --help imports nothing (a test keeps them equal)."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tasks.run",
        description="Run a latent-diffusion task described by a JSON spec (see configs/).",
        epilog=f"Exit codes: 0 done, 1 failed while running, 2 bad input, 3 interrupted after a checkpoint. "
        f"Set {AUTOLOAD_SWITCH}=1 to load only the built-in components.",
    )
    parser.add_argument("spec", nargs="?", help="path of the task spec (JSON)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one field, e.g. --set train.max_steps=100 (VALUE is JSON, else a string); repeatable",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="validate and print the resolved spec of every stage with every default and size filled in; build nothing",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue the run named in the spec from its latest checkpoint"
    )
    parser.add_argument(
        "--runs-dir",
        type=Path,
        default=Path("runs"),
        metavar="DIR",
        help="where run directories live (default: ./runs)",
    )
    parser.add_argument("--list", action="store_true", help="list every installed component by kind and exit")
    parser.add_argument(
        "--schema",
        action="store_true",
        help="print the JSON schema of task specs, with every installed component's params, and exit",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not (args.spec or args.list or args.schema):
        parser.error("give a spec file, or --list or --schema")
    from tasks.cli.command import execute  # torch and the registry: only once there is work to do

    return execute(args)


if __name__ == "__main__":
    sys.exit(main())
