"""Faults lose nothing: SIGKILL at random moments and in the middle of a checkpoint write,
a full disk, an unwritable runs directory."""

import errno
import json
import random
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

from tests.test_pipeline import stages
from tests.test_training import assert_same_tensors, checkpoint, wait_for_steps

STEPS = 40
EVERY_STEP = ["--set", f"train.max_steps={STEPS}", "--set", "train.checkpoint_every=1", "--set", "train.log_every=1"]


def command(ae_spec, *extra):
    return [sys.executable, "-m", "tasks.run", str(ae_spec), *EVERY_STEP, *extra]


def partial_files(run):
    return sorted(str(p.relative_to(run)) for p in run.rglob(".tmp-*"))


def next_start(run):
    """What a user runs after a kill: --resume once the run has its spec, else the same start."""
    return ["--resume"] if (run / "spec.json").is_file() else []


def assert_latest_loads(run):
    latest = run / "checkpoints" / "latest"
    if latest.is_file():
        assert load_file(str(run / "checkpoints" / latest.read_text())), "the newest checkpoint is loadable"


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_nothing_and_resume_ends_as_an_unbroken_run(ae_spec, tmp_path):
    run, chance = tmp_path / "runs" / "ae", random.Random(0)
    # One kill during start-up, then kills at random moments after random steps: inside a
    # step, a metrics line or a checkpoint write (a checkpoint follows every step).
    targets = [0, *sorted(chance.sample(range(3, STEPS - 3), 5))]
    reached = []
    for target in targets:
        proc = subprocess.Popen(
            command(ae_spec, *next_start(run)),
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        if target:
            wait_for_steps(run, target, proc, timeout=300)
            time.sleep(chance.uniform(0.0, 0.2))
        else:
            time.sleep(chance.uniform(0.3, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert_latest_loads(run)
        latest = run / "checkpoints" / "latest"
        reached.append(int(latest.read_text()[5:13]) if latest.is_file() else 0)
    finished = subprocess.run(
        command(ae_spec, *next_start(run)), cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert finished.returncode == 0, finished.stderr
    assert len(set(reached)) >= 4, f"kills at too few moments: checkpoints reached {reached}"
    assert partial_files(run) == [], "resume cleans up partial writes"
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, STEPS + 1)), "each step logged once, torn lines dropped"
    whole = subprocess.run(
        command(ae_spec, "--set", "name=whole"), cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert whole.returncode == 0, whole.stderr
    assert_same_tensors(checkpoint(run, STEPS), checkpoint(tmp_path / "runs" / "whole", STEPS), "model/")


KILL_INSIDE_A_CHECKPOINT_WRITE = """
import os, signal, sys
import tasks.runs.checkpoint as checkpoint
writes = 0
def half_then_die(tmp, _save=checkpoint.save_file):
    def save(tensors, path, metadata=None):
        global writes
        writes += 1
        _save(tensors, path, metadata=metadata)
        if writes == 5:  # the fifth checkpoint: cut the file in half, then die before the rename
            os.truncate(path, os.path.getsize(path) // 2)
            os.kill(os.getpid(), signal.SIGKILL)
    return save
checkpoint.save_file = half_then_die(None)
from tasks.run import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_kill_in_the_middle_of_a_checkpoint_write_keeps_the_previous_one(ae_spec, tmp_path):
    run = tmp_path / "runs" / "ae"
    args = [str(ae_spec), *EVERY_STEP, "--set", "train.keep_checkpoints=2"]
    killed = subprocess.run(
        [sys.executable, "-c", KILL_INSIDE_A_CHECKPOINT_WRITE, *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL
    assert (run / "checkpoints" / "latest").read_text() == "step-00000004.safetensors"
    assert_latest_loads(run)
    assert partial_files(run) == ["checkpoints/.tmp-step-00000005.safetensors." + str(partial_pid(run))]
    resumed = subprocess.run(
        command(ae_spec, "--resume", "--set", "train.keep_checkpoints=2"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert partial_files(run) == []
    assert (run / "checkpoints" / "latest").read_text() == f"step-{STEPS:08d}.safetensors"


def partial_pid(run):
    [partial] = run.glob("checkpoints/.tmp-*")
    return int(partial.name.rsplit(".", 1)[1])


def test_a_full_disk_is_one_clear_error_and_loses_no_checkpoint(cli, ae_spec, tmp_path, monkeypatch):
    import tasks.runs.checkpoint as ckpt

    real, calls = ckpt.save_file, []

    def fill_up(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 3:
            with open(path, "wb") as handle:
                handle.write(b"half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device", path)
        real(tensors, path, metadata=metadata)

    monkeypatch.setattr(ckpt, "save_file", fill_up)
    code, _, err = cli(ae_spec, *EVERY_STEP)
    assert code == 1
    last = err.strip().splitlines()[-1]  # after the progress bar
    assert last.startswith("failed: cannot write") and "No space left on device" in last and "free disk space" in last
    assert "Traceback" not in err
    run = tmp_path / "runs" / "ae"
    assert (run / "checkpoints" / "latest").read_text() == "step-00000002.safetensors"
    assert_latest_loads(run)
    assert partial_files(run) == [], "the half-written file is removed"
    monkeypatch.setattr(ckpt, "save_file", real)
    code, _, err = cli(ae_spec, *EVERY_STEP, "--resume")
    assert code == 0, err


def test_an_unwritable_runs_directory_is_one_clear_error(cli, ae_spec, tmp_path, monkeypatch):
    from pathlib import Path

    real = Path.mkdir

    def refuse(self, *args, **kwargs):
        if "runs" in self.parts:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refuse)  # root ignores chmod, so refuse as the OS would
    code, _, err = cli(ae_spec)
    assert code == 1 and "Permission denied" in err and "make the runs directory writable" in err, err
    assert "Traceback" not in err


def test_a_start_killed_before_writing_its_spec_can_simply_be_run_again(cli, ae_spec, tmp_path):
    (tmp_path / "runs" / "ae" / "checkpoints").mkdir(parents=True)  # what such a kill leaves
    code, _, err = cli(ae_spec)
    assert code == 0, err
    (tmp_path / "runs" / "other" / "checkpoints").mkdir(parents=True)
    (tmp_path / "runs" / "other" / "notes.txt").write_text("someone's file")
    code, _, err = cli(ae_spec, "--set", "name=other")
    assert code == 2 and "already exists" in err


def test_sigint_stops_with_a_checkpoint_that_resume_continues(ae_spec, tmp_path):
    run = tmp_path / "runs" / "ae"
    long = ["--set", "train.max_steps=100000", "--set", "train.checkpoint_every=100000"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tasks.run", str(ae_spec), *long],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_steps(run, 3, proc)
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3 and "stopped by SIGINT at step" in err, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert_latest_loads(run)
    stopped = int((run / "checkpoints" / "latest").read_text()[5:13])
    resumed = subprocess.run(
        [sys.executable, "-m", "tasks.run", str(ae_spec), *long, "--resume", "--set", f"train.max_steps={stopped + 2}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr


@pytest.mark.slow
def test_sigterm_in_a_pipelines_ldm_stage_then_running_it_again_ends_as_an_unbroken_pipeline(tmp_path):
    spec = {"task": "pipeline", "name": "all", "seed": 3, "runtime": {"accelerator": "cpu"}, "stages": stages(120)}
    spec["stages"][1]["train"]["checkpoint_every"] = 1000
    path = tmp_path / "pipeline.json"
    path.write_text(json.dumps(spec))

    def command(runs):
        return [sys.executable, "-m", "tasks.run", str(path), "--runs-dir", str(tmp_path / runs)]

    runs, whole = tmp_path / "runs", tmp_path / "whole"
    proc = subprocess.Popen(command("runs"), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_steps(runs / "ldm", 5, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3 and "stopped by SIGTERM at step" in err, err
    assert not (runs / "grid").exists(), "the stage after the stopped one has not started"
    again = subprocess.run(command("runs"), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "'ae' (train_autoencoder): done earlier, skipped" in again.stdout
    assert "'ldm' (train_ldm): resuming" in again.stdout
    unbroken = subprocess.run(command("whole"), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert unbroken.returncode == 0, unbroken.stderr
    # Weights, EMA, optimiser state and RNG: everything the stopped run saved at the end.
    assert_same_tensors(checkpoint(runs / "ldm", 120), checkpoint(whole / "ldm", 120))
    logged = [
        [row["step"] for row in map(json.loads, (r / "ldm" / "metrics.jsonl").read_text().splitlines())]
        for r in (runs, whole)
    ]
    assert logged[0] == logged[1] == list(range(1, 121)), "each step logged once"
    grids = [(r / "grid" / "grid.png").read_bytes() for r in (runs, whole)]
    assert grids[0] == grids[1]
