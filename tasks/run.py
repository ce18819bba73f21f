"""``python -m tasks.run SPEC.json`` (also the ``ldm`` command): validate a spec, then run it.

Exit codes: 0 done; 1 a failure while running (e.g. the disk filled up); 2 the input is wrong (one message naming the
field, the value and the fix; nothing run, nothing written); 3 stopped by SIGTERM or SIGINT
after writing a checkpoint (``--resume`` continues).

This module is also Lightning Fabric's launch target: a multi-process run re-runs the same
command once per extra process, so nothing here has side effects before a task launches.
Only global rank 0 prints.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from core import INTERFACES, UserError, load_registry
from core.loader import AUTOLOAD_SWITCH, LoadedRegistry
from core.validation import read_spec_file, task_schema, validate_task
from tasks.catalog import TASKS, spec_models
from tasks.context import RunContext
from tasks.engine import EXIT_INTERRUPTED, Interrupted, TrainingFailed
from tasks.engine.allocator import keep_freed_memory
from tasks.engine.runtime import is_rank_zero
from tasks.overrides import resolve

EXIT_OK, EXIT_FAILED, EXIT_USER_ERROR = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tasks.run",
        description="Run a latent-diffusion task described by a JSON spec (see configs/).",
        epilog=f"Exit codes: 0 done, 1 failed while running, 2 bad input. Set {AUTOLOAD_SWITCH}=1 "
        "to load only the built-in components.",
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
        help="validate and print the resolved spec with every default filled in; build nothing",
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


def _list(registry: LoadedRegistry) -> str:
    lines = []
    for kind in INTERFACES:
        lines.append(kind)
        entries = registry.entries(kind)
        width = max((len(e.name) for e in entries), default=0)
        lines += [f"  {e.name.ljust(width)}  {e.summary}  [{e.origin}]" for e in entries] or ["  (none installed)"]
    if registry.report.failed:
        lines.append("plugins that failed to load")
        lines += [f"  {failure}" for failure in registry.report.failed]
    return "\n".join(lines)


def _say(prefix: str, exc: BaseException) -> None:
    if is_rank_zero():
        print(f"{prefix}: {exc}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not (args.spec or args.list or args.schema):
        parser.error("give a spec file, or --list or --schema")
    try:
        registry = load_registry()
        if args.list:
            print(_list(registry))
            return EXIT_OK
        for failure in registry.report.failed if is_rank_zero() else ():
            print(f"warning: {failure}; its components are unavailable", file=sys.stderr)
        if args.schema:
            print(json.dumps(task_schema(spec_models(), registry), indent=2))
            return EXIT_OK
        data = read_spec_file(args.spec)
        spec = resolve(data, args.set, lambda d: validate_task(d, spec_models(), registry, source=args.spec))
        if args.dry_run:
            print(spec.model_dump_json(indent=2))
            return EXIT_OK
        keep_freed_memory()
        TASKS[spec.task].run(spec, RunContext(registry=registry, runs_dir=args.runs_dir, resume=args.resume))
    except UserError as exc:
        _say("error", exc)
        return EXIT_USER_ERROR
    except Interrupted as exc:
        _say("interrupted", exc)
        return EXIT_INTERRUPTED
    except TrainingFailed as exc:
        _say("failed", exc)
        return EXIT_FAILED
    except OSError as exc:  # a full disk, an unwritable folder: the files written before stay intact
        where = f" {exc.filename}" if exc.filename else ""
        _say(
            "failed",
            f"cannot write or read{where}: {exc.strerror or exc}; free disk space or make the runs "
            "directory writable, then run again with --resume (earlier checkpoints are intact)",
        )
        return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
