"""The engine's parts on their own: schedules, EMA, batches, checkpoints, runtime checks."""

import pytest
import torch
from torch import nn

from core import UserError
from tasks.engine.data import StepBatches
from tasks.engine.ema import Ema
from tasks.engine.optim import learning_rate
from tasks.engine.specs import EmaSpec, OptimizerSpec
from tasks.runs.checkpoint import Checkpoints, TrainingState, capture_rng, load_weights, read_state, restore_rng
from tasks.runs.runtime import resolve_runtime
from tasks.runs.spec import RuntimeSpec


def test_warmup_then_constant_or_cosine():
    constant = OptimizerSpec(lr=1.0, warmup_steps=4)
    assert [learning_rate(constant, s, 10) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    cosine = OptimizerSpec(lr=1.0, warmup_steps=2, schedule="cosine", min_lr=0.1)
    assert learning_rate(cosine, 2, 12) == pytest.approx(1.0)
    assert learning_rate(cosine, 7, 12) == pytest.approx(0.55)
    assert learning_rate(cosine, 12, 12) == pytest.approx(0.1)


def test_ema_follows_the_warmup_decay_and_copies_integer_buffers():
    model = nn.BatchNorm1d(2)
    ema = Ema(model, EmaSpec(decay=0.9))
    assert ema.decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    with torch.no_grad():
        model.weight.fill_(2.0)
    model.num_batches_tracked.fill_(7)
    ema.update(model)
    assert torch.allclose(ema.model.weight, torch.full((2,), 0.1 * 1.0 + 0.9 * 2.0))
    assert int(ema.model.num_batches_tracked) == 7
    assert ema.decay() == pytest.approx(2 / 11)
    for _ in range(100):
        ema.update(model)
    assert ema.decay() == 0.9, "the warm-up never exceeds the configured decay"
    restored = Ema(model, EmaSpec(decay=0.9))
    restored.load_state_dict(ema.state_dict())
    assert restored.updates == ema.updates and torch.equal(restored.model.weight, ema.model.weight)


def test_two_processes_with_batch_b_read_what_one_process_with_2b_reads():
    one = StepBatches(100, 8, 1, 0, seed=3)
    ranks = [StepBatches(100, 4, 2, r, seed=3) for r in range(2)]
    for k in range(30):  # several epochs of 12 global batches
        assert one.indices(k) == ranks[0].indices(k) + ranks[1].indices(k)
    assert one.indices(0) != one.indices(12)[:8] or one.indices(1) != one.indices(13), "each epoch reshuffles"
    epoch = sum((one.indices(k) for k in range(12)), [])
    assert len(set(epoch)) == 96, "no example twice within an epoch"
    resumed = iter(StepBatches(100, 8, 1, 0, seed=3, start=17))
    assert next(resumed) == one.indices(17)


def test_a_batch_larger_than_the_dataset_is_refused():
    with pytest.raises(UserError, match="train.batch_size: 64 per process x 2 process"):
        StepBatches(100, 64, 2, 0, seed=0)


def test_checkpoint_round_trip_keeps_everything_and_the_newest_k(tmp_path):
    model = nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(4, 3)).sum().backward()
    optimizer.step()
    torch.manual_seed(5)
    rng = capture_rng()
    expected = torch.rand(3)
    store = Checkpoints(tmp_path, keep=2)
    for step in (1, 2, 3):
        store.save(
            TrainingState(
                step=step,
                data_position=2 * step,
                models={"net": model.state_dict()},
                ema={"net": {**model.state_dict(), "__ema_updates__": torch.tensor(4)}},
                optimizers={"net": optimizer.state_dict()},
                rng=[rng],
            )
        )
    assert store.steps() == [2, 3] and store.latest() == store.path_for(3)
    state = read_state(store.latest())
    assert (state.step, state.data_position) == (3, 6)
    fresh = nn.Linear(3, 2)
    load_weights(fresh, state.models["net"], "test")
    assert torch.equal(fresh.weight, model.weight)
    restored = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    restored.load_state_dict(state.optimizers["net"])
    for key in ("exp_avg", "exp_avg_sq", "step"):
        assert torch.equal(restored.state_dict()["state"][0][key], optimizer.state_dict()["state"][0][key])
    torch.manual_seed(99)
    restore_rng(state.rng[0])
    assert torch.equal(torch.rand(3), expected)


def test_latest_ignores_partial_writes_and_a_stale_pointer(tmp_path):
    store = Checkpoints(tmp_path, keep=3)
    store.save(TrainingState(step=4, data_position=4, models={"net": nn.Linear(2, 2).state_dict()}))
    (tmp_path / ".tmp-step-00000005.safetensors.123").write_bytes(b"half a file")
    (tmp_path / "latest").write_text("step-00000009.safetensors")
    assert store.latest() == store.path_for(4)
    assert not list(tmp_path.glob(".tmp-*")), "partial writes are cleaned up"


def test_loading_weights_of_another_configuration_lists_every_mismatch():
    with pytest.raises(UserError) as info:
        load_weights(nn.Linear(3, 2), {"weight": torch.zeros(2, 4), "extra": torch.zeros(1)}, "ckpt.safetensors")
    message = str(info.value)
    assert "missing: bias" in message and "unexpected: extra" in message
    assert "wrong shape: weight (checkpoint (2, 4), model (2, 3))" in message


@pytest.mark.parametrize(
    ("runtime", "message"),
    [
        ({"precision": "16-mixed", "accelerator": "cpu"}, "runtime.precision: '16-mixed' needs a GPU"),
        ({"strategy": "fsdp", "accelerator": "cpu"}, "runtime.strategy: 'fsdp' shards the weights over processes"),
        ({"strategy": "fsdp", "devices": 2, "compile": True}, "runtime.compile: True is not supported with fsdp"),
        (
            {"strategy": "fsdp", "devices": 2, "memory_format": "channels_last"},
            "runtime.memory_format: 'channels_last' cannot be sharded",
        ),
        (
            {"devices": 2, "strategy": "single_device", "accelerator": "cpu"},
            "runtime.strategy: 'single_device' runs one process",
        ),
    ],
)
def test_runtimes_this_machine_cannot_run_are_refused(runtime, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        resolve_runtime(RuntimeSpec(**runtime))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_refused_and_auto_resolves_to_what_runs():
    with pytest.raises(UserError, match="runtime.accelerator: 'cuda' needs a CUDA GPU"):
        resolve_runtime(RuntimeSpec(accelerator="cuda"))
    resolved = resolve_runtime(RuntimeSpec(devices=2))
    assert (resolved.accelerator, resolved.strategy) == ("cpu", "ddp")
    assert resolve_runtime(RuntimeSpec()).strategy == "single_device"
    assert resolved.memory_format == "channels_last"
    assert resolve_runtime(RuntimeSpec(devices=2, strategy="fsdp")).memory_format == "contiguous"


def test_batch_indices_carry_their_epoch():
    """What datasets draw per-epoch augmentations from (and a resumed run repeats)."""
    import pickle

    from tasks.engine.data import StepBatches

    batches = StepBatches(size=10, batch_size=5, world_size=1, rank=0, seed=0)
    first, third = batches.indices(0), batches.indices(2)
    assert {i.epoch for i in first} == {0} and {i.epoch for i in third} == {1}
    again = pickle.loads(pickle.dumps(third))  # as data workers receive them
    assert again == third and [i.epoch for i in again] == [1] * 5
