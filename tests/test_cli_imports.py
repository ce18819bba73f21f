"""What each command-line entry imports: --help answers before torch loads, --list and --dry-run
before Lightning Fabric, TensorBoard or the evaluation code do (each costs seconds on a CPU)."""

import json
import subprocess
import sys

import pytest

import core.loader
import tasks.run
from tests.conftest import ROOT

PROBE = """
import sys
from tasks.run import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
heavy = ("torch", "lightning_fabric", "tensorboard", "torch.utils.tensorboard", "tasks.evaluation.task",
         "tasks.evaluation.judges", "tasks.evaluation.metrics", "tasks.evaluation.reference_classifier",
         "tasks.engine.trainer")
print("IMPORTED", [name for name in heavy if name in sys.modules], code, file=sys.stderr)
"""


def imported(*argv):
    """(heavy modules imported, exit code) of one command line, in a fresh interpreter."""
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *argv],
        cwd=ROOT,
        env={"LDM_DISABLE_PLUGIN_AUTOLOAD": "1", "PATH": "", "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    line = next(line for line in proc.stderr.splitlines() if line.startswith("IMPORTED"))
    names, code = line.removeprefix("IMPORTED ").rsplit(" ", 1)
    return json.loads(names.replace("'", '"')), int(code)


def test_help_imports_neither_torch_nor_fabric():
    names, code = imported("--help")
    assert code == 0
    assert names == []


@pytest.mark.parametrize("argv", [["--list"], ["configs/quickstart.json", "--dry-run"]])
def test_list_and_dry_run_import_no_fabric_tensorboard_or_evaluation(argv):
    names, code = imported(*argv)
    assert code == 0
    assert names == ["torch"], "only torch (components are torch modules); nothing of training or evaluation"


def test_the_help_text_names_the_autoload_switch_the_loader_reads():
    assert tasks.run.AUTOLOAD_SWITCH == core.loader.AUTOLOAD_SWITCH
