"""The engine end to end through `python -m tasks.run`, on a tiny autoencoder."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tests.conftest import sets


def checkpoint(run, step):
    return load_file(str(run / "checkpoints" / f"step-{step:08d}.safetensors"))


def losses(run):
    return [
        (line["step"], line["loss/first_stage"])
        for line in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    ]


def assert_same_tensors(a, b, prefix=""):
    keys = [k for k in a if k.startswith(prefix)]
    assert keys and set(keys) == {k for k in b if k.startswith(prefix)}
    different = [k for k in keys if not torch.equal(a[k], b[k])]
    assert different == []


def test_a_run_writes_spec_environment_metrics_checkpoints_and_images(cli, ae_spec, tmp_path):
    code, _, err = cli(ae_spec, "--set", "train.image_every=3")
    assert code == 0, err
    run = tmp_path / "runs" / "ae"
    spec = json.loads((run / "spec.json").read_text())
    assert spec["runtime"] == {
        "accelerator": "cpu",
        "devices": 1,
        "num_nodes": 1,
        "strategy": "single_device",
        "precision": "32-true",
        "memory_format": "channels_last",
        "compile": False,
        "tf32": True,
        "cudnn_benchmark": False,
    }, "the resolved spec records what ran"
    assert spec["model"]["params"]["regularizer"]["params"] == {"weight": 1e-6, "sample": True}
    [stamp] = json.loads((run / "environment.json").read_text())["starts"]
    assert stamp["torch"] == torch.__version__ and stamp["ldm-framework"] == "0.1.0"
    assert {"plugin": "builtin", "distribution": "ldm-framework", "version": "0.1.0"} in stamp["plugins"]
    assert [step for step, _ in losses(run)] == [1, 2, 3, 4, 5, 6]
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert record["lr/first_stage"] == pytest.approx(0.0005), "warm-up: half the rate at the first of 2 steps"
    assert {
        "loss/first_stage/pixel",
        "loss/first_stage/kl",
        "grad_norm/first_stage",
        "throughput/steps_per_s",
        "throughput/examples_per_s",
        "throughput/data_wait_share",
    } <= set(record)
    assert 0 < record["throughput/data_wait_share"] < 1, "the share of the time spent waiting for batches"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "latest",
        "step-00000003.safetensors",
        "step-00000006.safetensors",
    ]
    assert (run / "checkpoints" / "latest").read_text() == "step-00000006.safetensors"
    grids = sorted(p.name for p in (run / "samples").iterdir())
    assert grids == ["reconstructions-00000003.png", "reconstructions-00000006.png"]
    from PIL import Image

    assert Image.open(run / "samples" / grids[0]).size == (8 * 8, 2 * 8), "8 inputs over their 8 reconstructions"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard")).Reload()
    assert [e.step for e in events.Scalars("loss/first_stage")] == [1, 2, 3, 4, 5, 6]
    assert "reconstructions" in events.Tags()["images"]
    with safe_open(str(run / "checkpoints" / "step-00000006.safetensors"), "pt") as handle:
        assert json.loads(handle.metadata()["step"]) == 6


def test_n_steps_then_resume_then_n_steps_equals_2n_steps_bit_for_bit(cli, ae_spec, tmp_path):
    common = ["--set", "train.accumulate=2", "--set", "train.grad_clip=0.5", "--set", "train.checkpoint_every=100"]
    assert cli(ae_spec, *common, "--set", "name=whole")[0] == 0
    assert cli(ae_spec, *common, "--set", "name=split", "--set", "train.max_steps=3")[0] == 0
    code, _, err = cli(ae_spec, *common, "--set", "name=split", "--resume")
    assert code == 0, err
    whole, split = checkpoint(tmp_path / "runs" / "whole", 6), checkpoint(tmp_path / "runs" / "split", 6)
    for prefix in ("model/", "ema/", "optim/", "rng/"):
        assert_same_tensors(whole, split, prefix)
    assert losses(tmp_path / "runs" / "whole") == losses(tmp_path / "runs" / "split")
    starts = json.loads((tmp_path / "runs" / "split" / "environment.json").read_text())["starts"]
    assert len(starts) == 2, "each start is stamped"


def test_existing_runs_are_never_overwritten_and_resume_checks_the_spec(cli, ae_spec, tmp_path):
    assert cli(ae_spec)[0] == 0
    run = tmp_path / "runs" / "ae"
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    code, _, err = cli(ae_spec)
    assert code == 2 and "run directory 'runs/ae' already exists; continue it with --resume" in err
    code, _, err = cli(ae_spec, "--resume", "--set", "train.batch_size=4", "--set", "train.max_steps=9")
    assert code == 2 and "(train.batch_size: 8 -> 4);" in err
    code, _, err = cli(ae_spec, "--resume", "--set", "name=never-ran")
    assert code == 2 and "'runs/never-ran' is not a run directory" in err
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before, "refused runs write nothing"
    assert not (tmp_path / "runs" / "never-ran").exists()


def test_a_run_started_before_a_spec_field_existed_resumes_with_that_fields_default(cli, ae_spec, tmp_path):
    assert cli(ae_spec)[0] == 0
    stored = tmp_path / "runs" / "ae" / "spec.json"
    older = json.loads(stored.read_text())
    del older["runtime"]["memory_format"], older["model"]["params"]["regularizer"]["params"]["sample"]
    stored.write_text(json.dumps(older))
    code, _, err = cli(ae_spec, "--resume", "--set", "train.max_steps=9")
    assert code == 0, err
    assert json.loads(stored.read_text())["runtime"]["memory_format"] == "channels_last"


def test_init_from_starts_from_another_runs_weights_with_fresh_optimiser_state(cli, ae_spec, tmp_path):
    assert (
        cli(ae_spec, "--set", "name=base", "--set", "train.max_steps=30", "--set", "train.checkpoint_every=30")[0] == 0
    )
    code, _, err = cli(
        ae_spec,
        *sets(
            "name=tuned",
            'train.init_from={"run": "base", "weights": "raw"}',
            "train.optimizer.warmup_steps=0",
            "train.optimizer.lr=1e-9",
            "train.max_steps=1",
            "train.ema=null",
        ),
    )
    assert code == 0, err
    base, tuned = checkpoint(tmp_path / "runs" / "base", 30), checkpoint(tmp_path / "runs" / "tuned", 1)
    for key in (k for k in base if k.startswith("model/")):
        assert torch.allclose(base[key], tuned[key], atol=1e-6), key
    assert int(tuned["optim/first_stage/0/step"]) == 1, "the optimiser starts afresh"
    [stamp] = json.loads((tmp_path / "runs" / "tuned" / "environment.json").read_text())["starts"]
    assert stamp["reads"] == ["runs/base/checkpoints/step-00000030.safetensors"]

    code, _, err = cli(
        ae_spec, "--set", "name=other", "--set", 'train.init_from={"run": "base"}', "--set", "model.params.ch=4"
    )
    assert code == 2 and "does not fit the model" in err and "wrong shape" in err
    assert "another configuration (model.params.ch: 8 -> 4)" in err, "the spec values that differ"
    assert not (tmp_path / "runs" / "other").exists()
    code, _, err = cli(ae_spec, "--set", "name=other", "--set", 'train.init_from={"run": "nothing"}')
    assert code == 2 and "train.init_from.run: 'nothing' has no checkpoint" in err


def test_a_non_finite_loss_stops_before_a_checkpoint_and_names_the_last_good_one(cli, ae_spec, tmp_path):
    """Steps do not wait to read the loss back: the flags are read when logging or saving, so
    the run stops there and never saves the broken weights."""
    code, _, err = cli(
        ae_spec,
        *sets("train.optimizer.name=sgd", "train.optimizer.lr=1e8", "train.max_steps=50", "train.checkpoint_every=1"),
    )
    assert code == 1
    assert "is not finite from step" in err and "without saving the weights" in err
    assert "Traceback" not in err
    run = tmp_path / "runs" / "ae"
    latest = (run / "checkpoints" / "latest").read_text()
    assert f"the last good checkpoint is 'runs/ae/checkpoints/{latest}'" in err
    for value in checkpoint(run, int(latest[5:13])).values():
        assert not value.is_floating_point() or torch.isfinite(value).all()


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("model.params.in_channels", "3", "model takes 3-channel images but data (digits) gives 1-channel ones"),
        ("data.params.size", "9", "not divisible by the model's downsampling factor f=2"),
        ("model.params.norm_groups", "3", "norm_groups 3 does not divide the channel counts [8, 16]"),
        ("runtime.precision", "16-mixed", "runtime.precision: '16-mixed' needs a GPU"),
    ],
)
def test_specs_that_cannot_train_exit_2_before_writing(cli, ae_spec, tmp_path, key, value, message):
    code, _, err = cli(ae_spec, "--set", f"{key}={value}")
    assert code == 2 and message in err, err
    assert not (tmp_path / "runs").exists()


def start(ae_spec, tmp_path, *extra):
    return subprocess.Popen(
        [sys.executable, "-m", "tasks.run", str(ae_spec), *extra],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_steps(run, steps, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        metrics = run / "metrics.jsonl"
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= steps:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    raise AssertionError("the run made no progress")


def test_sigterm_checkpoints_at_the_next_step_and_resume_finishes_identically(ae_spec, tmp_path):
    long = ["--set", "train.max_steps=150", "--set", "train.checkpoint_every=1000"]
    proc = start(ae_spec, tmp_path, *long)
    run = tmp_path / "runs" / "ae"
    wait_for_steps(run, 5, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    stopped = int((run / "checkpoints" / "latest").read_text()[5:13])
    assert 5 <= stopped < 150 and f"stopped by SIGTERM at step {stopped}" in err
    resumed = subprocess.run(
        [sys.executable, "-m", "tasks.run", str(ae_spec), *long, "--resume"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    whole = subprocess.run(
        [sys.executable, "-m", "tasks.run", str(ae_spec), *long, "--set", "name=whole"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert whole.returncode == 0, whole.stderr
    assert_same_tensors(checkpoint(run, 150), checkpoint(tmp_path / "runs" / "whole", 150), "model/")
    assert losses(run) == losses(tmp_path / "runs" / "whole")


SGD_NO_NOISE = sets(
    "train.optimizer.name=sgd",
    "train.optimizer.lr=0.001",
    "train.optimizer.warmup_steps=0",
    "train.ema=null",
    "model.params.regularizer.params.sample=false",
    "train.max_steps=4",
)


def test_channels_last_and_contiguous_weights_train_alike(cli, ae_spec, tmp_path):
    # SGD: Adam would turn rounding noise in gradients that are zero in exact arithmetic (the
    # attention's key bias) into full-size steps of either sign.
    for layout in ("channels_last", "contiguous"):
        code, _, err = cli(
            ae_spec,
            *SGD_NO_NOISE,
            *sets("train.checkpoint_every=4", f"name={layout}", f"runtime.memory_format={layout}"),
        )
        assert code == 0, err
    a, b = (checkpoint(tmp_path / "runs" / layout, 4) for layout in ("channels_last", "contiguous"))
    for key in (k for k in a if k.startswith("model/")):
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)
    assert [loss for _, loss in losses(tmp_path / "runs" / "channels_last")] == pytest.approx(
        [loss for _, loss in losses(tmp_path / "runs" / "contiguous")], rel=1e-5
    )


def test_two_processes_with_batch_b_equal_one_process_with_batch_2b(tmp_path, ae_spec):
    def train(name, *extra):
        proc = subprocess.run(
            [sys.executable, "-m", "tasks.run", str(ae_spec), *SGD_NO_NOISE, "--set", f"name={name}", *extra],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        return checkpoint(tmp_path / "runs" / name, 4)

    two = train("two", "--set", "runtime.devices=2", "--set", "train.batch_size=4")
    one = train("one", "--set", "train.batch_size=8")
    # The same start with a rate too small to move the weights: how far the real steps went.
    start = train("start", "--set", "train.batch_size=8", "--set", "train.optimizer.lr=1e-30")
    weights = [k for k in one if k.startswith("model/")]
    assert max((one[k] - two[k]).abs().max().item() for k in weights) < 1e-6
    moved = max((one[k] - start[k]).abs().max().item() for k in weights)
    assert moved > 1e-4, "the steps moved the weights by far more than the tolerance"
    assert json.loads((tmp_path / "runs" / "two" / "spec.json").read_text())["runtime"]["strategy"] == "ddp"
    assert sorted(k for k in two if k.startswith("rng/") and k.endswith("/torch")) == ["rng/0/torch", "rng/1/torch"]


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_signal_to_one_of_two_processes_stops_both_with_a_checkpoint(ae_spec, tmp_path, strategy):
    proc = start(
        ae_spec,
        tmp_path,
        "--set",
        "runtime.devices=2",
        "--set",
        f"runtime.strategy={strategy}",
        "--set",
        "train.batch_size=4",
        "--set",
        "train.max_steps=100000",
        "--set",
        "train.checkpoint_every=100000",
    )
    run = tmp_path / "runs" / "ae"
    wait_for_steps(run, 3, proc)
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(children) == 1, "rank 1 runs as a child of rank 0"
    os.kill(int(children[0]), signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err
    assert "stopped by a signal to another process" in err
    latest = (run / "checkpoints" / "latest").read_text()
    assert sorted(k for k in checkpoint(run, int(latest[5:13])) if k.endswith("/torch")) == [
        "rng/0/torch",
        "rng/1/torch",
    ]
    assert not Path(f"/proc/{children[0]}").exists() or open(f"/proc/{children[0]}/status").read().find("zombie") >= 0


def test_more_bad_input_is_one_sentence_exit_2_and_writes_nothing(cli, ae_spec, tmp_path):
    code, _, err = cli(ae_spec, "--set", 'model={"name": "identity", "params": {"channels": 1}}')
    assert code == 2 and "has no trainable parameters; name a component with weights" in err
    (tmp_path / "w.safetensors").write_text("not weights")
    code, _, err = cli(
        ae_spec, "--set", f'loss.perceptual={{"kind": "lpips", "weights_file": "{tmp_path / "w.safetensors"}"}}'
    )
    assert code == 2 and "is not a safetensors file" in err
    code, _, err = cli(ae_spec, "--set", 'data={"name": "image_folder", "params": {"root": "ae.json", "size": 8}}')
    assert code == 2 and "data.params: root 'ae.json' is not a folder" in err, (
        "the JSON reading's error, not the string's"
    )
    assert not (tmp_path / "runs").exists()
    assert "Traceback" not in err


def test_a_damaged_checkpoint_is_named_on_resume(cli, ae_spec, tmp_path):
    assert cli(ae_spec, "--set", "train.max_steps=3")[0] == 0
    latest = tmp_path / "runs" / "ae" / "checkpoints" / "step-00000003.safetensors"
    latest.write_bytes(latest.read_bytes()[:100])
    code, _, err = cli(ae_spec, "--resume")
    assert code == 2 and "step-00000003.safetensors' cannot be read" in err and "delete it" in err


def test_steps_between_logs_read_nothing_back_from_the_device(cli, ae_spec, monkeypatch):
    """A step that neither logs nor saves leaves every value it computes where it is (on a GPU,
    reading one back makes the host wait for the device): no item(), float(), bool() or
    tolist() of a float or bool tensor in it (the batch sampler's integer indices live on the
    CPU and are read there, as they should be)."""
    import tasks.engine.trainer as trainer

    reads, inside = [], [False]
    for method in ("item", "tolist", "__float__", "__bool__"):
        original = getattr(torch.Tensor, method)

        def counting(self, *args, _original=original, _method=method, **kwargs):
            if inside[0] and (self.dtype.is_floating_point or self.dtype == torch.bool):
                reads.append(_method)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, method, counting)
    step = trainer._step

    def watched(*args, **kwargs):
        inside[0] = True
        try:
            return step(*args, **kwargs)
        finally:
            inside[0] = False

    monkeypatch.setattr(trainer, "_step", watched)
    code, _, err = cli(ae_spec, *sets("train.max_steps=6", "train.log_every=3", "train.checkpoint_every=6"))
    assert code == 0, err
    assert reads == []


@pytest.mark.slow
def test_compiled_and_eager_runs_write_the_same_checkpoints_and_resume_each_other(cli, ae_spec, tmp_path):
    """Compiled training saves the plain models (no compiler wrapper in the names) and computes
    the same losses up to rounding; a run resumes compiled from an eager checkpoint and eager
    from a compiled one. (Weights drift apart over steps: Adam turns rounding-level gradient
    differences of near-zero entries into whole steps, so losses are compared, not weights.)"""
    short = sets("train.max_steps=4", "train.checkpoint_every=2", "train.log_every=1")
    assert cli(ae_spec, *short)[0] == 0
    code, _, err = cli(ae_spec, *short, *sets("name=compiled", "runtime.compile=true"))
    assert code == 0, err
    runs = tmp_path / "runs"
    assert sorted(checkpoint(runs / "ae", 4)) == sorted(checkpoint(runs / "compiled", 4))
    eager_losses, compiled_losses = losses(runs / "ae"), losses(runs / "compiled")
    assert eager_losses[0][1] == pytest.approx(compiled_losses[0][1], rel=1e-4), "the same first step"
    for source, first, then in (("ae", "false", "true"), ("compiled", "true", "false")):
        name = f"from-{source}"
        halfway = sets(f"name={name}", "train.max_steps=2", "train.checkpoint_every=2", f"runtime.compile={first}")
        assert cli(ae_spec, *halfway)[0] == 0
        code, _, err = cli(ae_spec, *short, *sets(f"name={name}", f"runtime.compile={then}"), "--resume")
        assert code == 0, err
        resumed = [loss for step, loss in losses(runs / name) if step == 3][-1]
        original = [loss for step, loss in losses(runs / source) if step == 3][-1]
        assert resumed == pytest.approx(original, rel=1e-3), name
