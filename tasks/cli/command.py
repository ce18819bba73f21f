"""What the command line does once its arguments are parsed (see :mod:`tasks.run`)."""

from __future__ import annotations

import argparse
import json
import sys

from core import UserError, load_registry
from tasks.cli.catalog import CATALOGUE, context
from tasks.cli.listing import component_list
from tasks.cli.overrides import resolve
from tasks.engine.allocator import keep_freed_memory
from tasks.engine.errors import EXIT_INTERRUPTED, Interrupted, TrainingFailed
from tasks.runs.runtime import is_rank_zero
from tasks.runs.validation import read_spec_file, task_schema, validate_task

EXIT_OK, EXIT_FAILED, EXIT_USER_ERROR = 0, 1, 2


def _say(prefix: str, exc: BaseException | str) -> None:
    if is_rank_zero():
        print(f"{prefix}: {exc}", file=sys.stderr)


def _execute(args: argparse.Namespace) -> int:
    registry = load_registry()
    if args.list:
        print(component_list(registry))
        return EXIT_OK
    for failure in registry.report.failed if is_rank_zero() else ():
        print(f"warning: {failure}; its components are unavailable", file=sys.stderr)
    if args.schema:
        print(json.dumps(task_schema(CATALOGUE.specs, registry), indent=2))
        return EXIT_OK
    data = read_spec_file(args.spec)
    spec = resolve(data, args.set, lambda d: validate_task(d, CATALOGUE.specs, registry, source=args.spec))
    ctx = context(registry, args.runs_dir, args.resume)
    if args.dry_run:
        print(CATALOGUE.resolve(spec, ctx).model_dump_json(indent=2))
        return EXIT_OK
    keep_freed_memory()
    CATALOGUE.run(spec, ctx)
    return EXIT_OK


def execute(args: argparse.Namespace) -> int:
    """Run the command the arguments ask for; returns the exit code (messages on stderr)."""
    try:
        return _execute(args)
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
