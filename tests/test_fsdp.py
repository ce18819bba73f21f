"""Sharded training (`runtime.strategy: "fsdp"`, FSDP2 over gloo) with 2 CPU processes, on the
tiny autoencoder: the same steps as one process, bit-exact resume, whole checkpoints that
other runs load, and the refusals; on the stored tiny LDM: the same steps as DDP, and a
checkpoint `sample` reads like any other."""

import json

import pytest
import torch
from torch import nn

from core import UserError
from tasks.api import load
from tasks.engine.sharding import check_shardable, units
from tests.conftest import run_task, sets
from tests.test_training import SGD_NO_NOISE, assert_same_tensors, checkpoint, losses

FSDP = sets("runtime.devices=2", "runtime.strategy=fsdp", "train.batch_size=4")
CLIP_ACCUMULATE = sets("train.grad_clip=0.5", "train.accumulate=2")


@pytest.mark.slow
def test_two_sharded_processes_with_batch_b_equal_one_process_with_batch_2b(tmp_path, ae_spec):
    """Each sharded process accumulates two micro-batches of 2; both clip the whole gradient's norm."""
    five = sets("train.max_steps=5", "train.checkpoint_every=5", "train.grad_clip=0.02", "train.optimizer.lr=0.5")
    accumulated = sets("train.batch_size=2", "train.accumulate=2")
    sharded = checkpoint(run_task(tmp_path, ae_spec, "two", *SGD_NO_NOISE, *five, *FSDP, *accumulated), 5)
    one = checkpoint(run_task(tmp_path, ae_spec, "one", *SGD_NO_NOISE, *five, "--set", "train.batch_size=8"), 5)
    weights = [k for k in one if k.startswith("model/")]
    assert set(weights) == {k for k in sharded if k.startswith("model/")}
    assert all(one[k].shape == sharded[k].shape for k in weights), "checkpoints hold whole tensors"
    assert max((one[k] - sharded[k]).abs().max().item() for k in weights) < 1e-6
    rows = [json.loads(line) for line in (tmp_path / "runs" / "one" / "metrics.jsonl").read_text().splitlines()]
    norms = [row["grad_norm/first_stage"] for row in rows if "grad_norm/first_stage" in row]
    assert len(norms) == 5 and min(norms) > 0.02, "every step was clipped"
    assert json.loads((tmp_path / "runs" / "two" / "spec.json").read_text())["runtime"]["strategy"] == "fsdp"
    # A DDP run (channels-last weights) resumed under fsdp takes the same steps.
    ddp = [*SGD_NO_NOISE, *five, *accumulated, *sets("runtime.devices=2", "runtime.strategy=ddp")]
    run_task(tmp_path, ae_spec, "ddp", *ddp, "--set", "train.max_steps=3")
    resumed = checkpoint(run_task(tmp_path, ae_spec, "ddp", *SGD_NO_NOISE, *five, *FSDP, *accumulated, "--resume"), 5)
    assert max((resumed[k] - sharded[k]).abs().max().item() for k in weights) < 1e-6
    three = checkpoint(tmp_path / "runs" / "ddp", 3)
    assert max((three[k] - sharded[k]).abs().max().item() for k in weights) > 1e-4, "the last 2 steps moved weights"
    # A 1-process checkpoint resumes on 2 processes under fsdp as under ddp.
    for strategy in ("fsdp", "ddp"):
        run_task(
            tmp_path, ae_spec, f"single-{strategy}", *SGD_NO_NOISE, *five, *accumulated, "--set", "train.max_steps=3"
        )
        two_processes = sets("runtime.devices=2", f"runtime.strategy={strategy}", "runtime.memory_format=auto")
        run_task(
            tmp_path, ae_spec, f"single-{strategy}", *SGD_NO_NOISE, *five, *accumulated, *two_processes, "--resume"
        )
    on = {strategy: checkpoint(tmp_path / "runs" / f"single-{strategy}", 5) for strategy in ("fsdp", "ddp")}
    assert json.loads((tmp_path / "runs" / "single-fsdp" / "spec.json").read_text())["runtime"]["strategy"] == "fsdp"
    assert max((on["fsdp"][k] - on["ddp"][k]).abs().max().item() for k in weights) < 1e-6
    assert (
        max((on["fsdp"][k] - checkpoint(tmp_path / "runs" / "single-fsdp", 3)[k]).abs().max().item() for k in weights)
        > 1e-4
    )


@pytest.mark.slow
def test_a_sharded_run_resumes_bit_for_bit_and_its_checkpoint_loads_anywhere(tmp_path, ae_spec):
    """AdamW, EMA, clipping and accumulation, 3 + resume + 3 steps against 6; then the checkpoint in one process."""
    whole = run_task(tmp_path, ae_spec, "whole", *FSDP, *CLIP_ACCUMULATE)
    part = run_task(tmp_path, ae_spec, "part", *FSDP, *CLIP_ACCUMULATE, "--set", "train.max_steps=3")
    resumed = run_task(tmp_path, ae_spec, "part", *FSDP, *CLIP_ACCUMULATE, "--resume")
    assert resumed == part
    a, b = checkpoint(part, 6), checkpoint(whole, 6)
    for prefix in ("model/", "ema/", "optim/"):
        assert_same_tensors(a, b, prefix)
    assert losses(part) == losses(whole)
    # One process starts from the sharded run's (EMA) weights; its checkpoint has the same tensors.
    init = sets("train.max_steps=1", 'train.init_from={"run": "whole"}', "train.optimizer.lr=1e-30")
    single = checkpoint(run_task(tmp_path, ae_spec, "from-sharded", *init), 1)
    for prefix in ("model/", "ema/", "optim/"):
        keys = sorted(k for k in single if k.startswith(prefix))
        assert keys == sorted(k for k in b if k.startswith(prefix)), prefix
        assert all(single[k].shape == b[k].shape for k in keys), prefix
    assert max((single[k] - b["ema/" + k[6:]]).abs().max().item() for k in b if k.startswith("model/")) < 1e-6


def test_a_sharded_ldm_takes_the_steps_ddp_takes_and_samples_from_its_checkpoint(old_runs, tmp_path):
    """The stored tiny LDM's spec (UNet, class-label conditioner, the frozen first stage kept
    whole), 4 SGD steps on 2 processes with sample grids on the way; each rank draws the same
    noise under either strategy."""
    spec = json.loads((old_runs / "old-ldm" / "spec.json").read_text())
    path = tmp_path / "ldm.json"
    path.write_text(json.dumps({k: v for k, v in spec.items() if k != "spec_version"}))
    steps = sets(
        "runtime.devices=2",
        "runtime.memory_format=auto",
        "train.batch_size=4",
        "train.optimizer.name=sgd",
        "train.optimizer.lr=0.01",
        "train.ema=null",
        "train.image_every=2",  # sampling mid-run with every unit gathered, then training on
    )
    sharded = checkpoint(run_task(tmp_path, path, "sharded", *steps, *sets("runtime.strategy=fsdp")), 4)
    assert len(list((tmp_path / "runs" / "sharded" / "samples").glob("**/*.png"))) == 2, "grids at steps 2 and 4"
    ddp = checkpoint(run_task(tmp_path, path, "ddp", *steps, *sets("runtime.strategy=ddp")), 4)
    old = checkpoint(old_runs / "old-ldm", 4)
    weights = sorted(k for k in old if k.startswith("model/"))
    assert weights == sorted(k for k in sharded if k.startswith("model/"))
    assert all(sharded[k].shape == old[k].shape for k in weights), "checkpoints hold whole tensors"
    assert max((sharded[k] - ddp[k]).abs().max().item() for k in weights) < 1e-6
    images = [
        load(name, runs_dir=tmp_path / "runs", weights="raw").sample({"label": [1, 2]}, steps=2, seed=0)
        for name in ("sharded", "ddp")
    ]
    assert images[0].shape == (2, 1, 8, 8) and torch.isfinite(images[0]).all()
    assert (images[0] - images[1]).abs().max().item() < 1e-4


def test_fsdp_with_one_process_or_an_adaptive_adversarial_loss_is_refused(cli, ae_spec, tmp_path):
    code, _, err = cli(ae_spec, *sets("runtime.strategy=fsdp"))
    assert code == 2 and "runtime.strategy: 'fsdp' shards the weights over processes but devices" in err
    adversarial = '{"weight": 0.5, "start": 0}'
    code, _, err = cli(ae_spec, *sets("runtime.strategy=fsdp", "runtime.devices=2", f"loss.adversarial={adversarial}"))
    assert code == 2 and "loss.adversarial.adaptive: the adaptive weight differentiates through" in err
    assert not (tmp_path / "runs").exists()


class _Flat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(2, 2)


class _Blocks(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
        self.frozen = nn.Linear(2, 2).requires_grad_(False)
        self.heads = nn.ModuleList([nn.Linear(2, 2)])


def test_the_policy_shards_blocks_and_each_trained_child_and_refuses_what_it_cannot():
    assert [name for name, _ in units(_Blocks())] == ["body.0", "body.1", "heads.0"]
    check_shardable(_Blocks(), "x")
    with pytest.raises(UserError, match=r"finds one piece to shard in the 'x' model \(_Flat\): a; every process"):
        check_shardable(_Flat(), "x")
    own = _Blocks()
    own.scale = nn.Parameter(torch.ones(1))
    with pytest.raises(UserError, match=r"holds trainable weights of its own \(scale\)"):
        check_shardable(own, "x")
