"""The one training loop every training task runs, on Lightning Fabric, in named phases.

A task describes what it trains as an :class:`~tasks.engine.objective.Objective`;
:func:`train` does the rest: processes and devices, the run directory, seeding, data,
gradient accumulation and clipping, learning-rate schedules, EMA, logging, checkpoints,
``--resume``, ``init_from``, signals and non-finite losses. The phases, in order:
:func:`_checked_run` (rank 0 refuses bad input before anything is written), :func:`_set_up`
(models, ``init_from``, EMA, optimisers), :func:`_restore` (``--resume``), :func:`_open`
(the run directory, data, monitor), then :func:`_step` and :func:`_after_step` per step.
"""

from __future__ import annotations

import json
import math
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch._inductor.config
from lightning_fabric import Fabric
from pydantic import ValidationError
from torch import Tensor, nn

from core import Dataset, UserError
from tasks.engine.data import StepBatches, make_loader
from tasks.engine.ema import Ema
from tasks.engine.errors import Interrupted, TrainingFailed
from tasks.engine.fabric import data_parallel_mesh, make_fabric, sharded_compute_dtype
from tasks.engine.monitor import Monitor
from tasks.engine.objective import Objective
from tasks.engine.optim import learning_rate, make_optimizer, set_learning_rate
from tasks.engine.sharding import (
    check_shardable,
    full_optimizer_state,
    full_state_dict,
    gathered,
    is_sharded,
    load_full_optimizer_state,
    load_full_state_dict,
    shard,
    whole,
)
from tasks.engine.specs import OptimizerSpec, TrainingTaskSpec
from tasks.runs.checkpoint import (
    Checkpoints,
    TrainingState,
    capture_rng,
    load_weights,
    read_state,
    read_weights,
    restore_rng,
)
from tasks.runs.context import RunContext
from tasks.runs.rundir import RunDir, architecture_changes, check_run_dir, environment_stamp, open_run_dir
from tasks.runs.runtime import resolve_runtime


class _StopFlag:
    """Remembers a SIGTERM or SIGINT until the next step boundary."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


@dataclass
class _Session:
    """Everything the loop works on, once set up."""

    fabric: Fabric
    spec: TrainingTaskSpec
    objective: Objective
    originals: dict[str, nn.Module]  # the unwrapped models: what checkpoints save and EMAs follow
    emas: dict[str, Ema]
    optimizers: dict[str, torch.optim.Optimizer]
    optimizer_specs: dict[str, OptimizerSpec]
    dataset: Dataset
    start: int = 0
    position: int = 0
    last: Path | None = None
    # The first step whose loss (0) or gradient norm (1) was not finite, -1 while none was: kept
    # on the device, so that no step waits to read it back; checked when logging or saving.
    first_bad: Tensor | None = None
    data_wait: float = 0.0  # seconds spent waiting for batches since the last logged step


def _agree(fabric: Fabric, *flags: bool) -> list[bool]:
    """Each flag, true on every process if it is true on any (one message each, no collective per flag)."""
    if fabric.world_size == 1:
        return list(flags)
    total = fabric.all_reduce(torch.tensor([float(f) for f in flags], device=fabric.device), reduce_op="sum")
    return [bool(v > 0) for v in total.tolist()]


def _mean_over_processes(fabric: Fabric, values: dict[str, float]) -> dict[str, float]:
    if fabric.world_size == 1 or not values:
        return values
    keys = sorted(values)
    total = fabric.all_reduce(torch.tensor([values[k] for k in keys], device=fabric.device), reduce_op="mean")
    return dict(zip(keys, total.tolist(), strict=True))


def _backward(
    fabric: Fabric, objective: Objective, name: str, micro: list[dict[str, Any]], step: int
) -> tuple[Tensor, dict[str, Any]]:
    """Accumulate the gradients of optimiser ``name``'s loss over the micro-batches.

    Processes synchronise gradients only on the last micro-batch. Returns the loss and its
    terms, averaged over the micro-batches, as tensors where they are (read back only when logged).
    """
    total: Any = 0.0
    terms: dict[str, Any] = {}
    for i, batch in enumerate(micro):
        with fabric.no_backward_sync(objective.nets[name], enabled=i < len(micro) - 1):
            loss, parts = objective.loss(name, batch, step)
            fabric.backward(loss / len(micro))
        total = total + loss.detach() / len(micro)
        for key, value in parts.items():
            value = value.detach() if isinstance(value, Tensor) else value
            terms[key] = terms.get(key, 0.0) + value / len(micro)
    return total, terms


def _mark_non_finite(session: _Session, loss: Tensor, norm: Tensor, step: int, check_norm: bool) -> None:
    """Remember ``step`` as the first with a non-finite loss or gradient norm (device-side)."""
    flags = torch.stack([~torch.isfinite(loss), ~torch.isfinite(norm) & check_norm]).to(loss.device)
    if session.first_bad is None:
        session.first_bad = torch.full((2,), -1, dtype=torch.long, device=loss.device)
    session.first_bad = torch.where(flags & (session.first_bad < 0), step, session.first_bad)


def _check_finite(session: _Session, done: int) -> None:
    """:class:`TrainingFailed` if any step so far had a non-finite loss or gradient norm (the one
    read-back of the flags, when logging or before saving, so a broken model is never saved)."""
    if session.first_bad is None:
        return
    bad = session.first_bad.clone()
    if session.fabric.world_size > 1:
        bad = session.fabric.all_reduce(bad.float(), reduce_op="max").long()
    loss_step, norm_step = bad.tolist()
    if max(loss_step, norm_step) < 0:
        return
    is_loss = loss_step >= 0 and (norm_step < 0 or loss_step <= norm_step)
    last = session.last
    kept = f"the last good checkpoint is {str(last)!r}" if last else "no checkpoint was written yet"
    raise TrainingFailed(
        f"the {'loss' if is_loss else 'gradient norm'} is not finite from step {loss_step if is_loss else norm_step} "
        f"on; stopped at step {done} without saving the weights; {kept}; lower the learning rate or check the data"
    )


def _finish(session: _Session, run_dir: Path) -> dict[str, Tensor]:
    """Run :meth:`Objective.finish` on the downstream weights, leaving the training state as it was."""
    rng = capture_rng()
    models = {name: session.emas[name].model if name in session.emas else m for name, m in session.originals.items()}
    modes = {name: module.training for name, module in models.items()}
    try:
        with torch.no_grad(), gathered(*models.values()):
            evaluated = {name: module.eval() for name, module in models.items()}
            return session.objective.finish(session.fabric, evaluated, run_dir)
    finally:
        for name, module in models.items():
            module.train(modes[name])
        restore_rng(rng)


def _state_in_parameter_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give each loaded state tensor its parameter's memory layout (checkpoints store contiguous
    tensors): the fused AdamW walks parameter, gradient and state in memory order, so a
    channels-last parameter with a contiguous state would be updated with the wrong moments."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                    state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def _prepare_run(
    spec: TrainingTaskSpec, ctx: RunContext, resolved: dict[str, Any]
) -> tuple[RunDir, Path | None, list[Path]]:
    """Rank 0's checks before anything is written: the run directory, the checkpoint to resume,
    the runs ``init_from`` reads. Raises :class:`UserError`."""

    def read_as_now(stored: dict[str, Any]) -> dict[str, Any]:
        try:
            return type(spec).model_validate(stored, context={"registry": ctx.registry}).model_dump(mode="json")
        except ValidationError:  # not valid any more: compared as written, so the differences are listed
            return stored

    run = check_run_dir(ctx.runs_dir, spec.name, resolved, ctx.resume, read_as_now)
    resume_from = Checkpoints(run.checkpoints, spec.train.keep_checkpoints).latest() if ctx.resume else None
    reads = []
    if spec.train.init_from is not None and resume_from is None:
        source = ctx.runs_dir / spec.train.init_from.run
        latest = Checkpoints(source / "checkpoints", 1).latest()
        if latest is None:
            raise UserError(
                f"train.init_from.run: {spec.train.init_from.run!r} has no checkpoint in "
                f"{str(source / 'checkpoints')!r}; train it first or name another run"
            )
        reads.append(latest)
    return run, resume_from, reads


def _checked_run(
    fabric: Fabric, spec: TrainingTaskSpec, ctx: RunContext, resolved: dict[str, Any]
) -> tuple[RunDir, Path | None, list[Path]]:
    """:func:`_prepare_run` on rank 0, its verdict shared with every process (all raise alike)."""
    verdict: tuple[str, Any] = ("ok", None)
    if fabric.is_global_zero:
        try:
            verdict = ("ok", _prepare_run(spec, ctx, resolved))
        except UserError as exc:
            verdict = ("error", str(exc))
    verdict = fabric.broadcast(verdict, src=0)
    if verdict[0] == "error":
        raise UserError(verdict[1])
    return verdict[1]


def _load_init_from(originals: dict[str, nn.Module], paths: list[Path], spec: TrainingTaskSpec) -> None:
    """Each model's weights from the ``init_from`` run's checkpoint; a mismatch names the spec fields that differ."""
    resolved = spec.model_dump(mode="json")
    for path in paths:
        theirs = path.parent.parent / "spec.json"
        differs = architecture_changes(json.loads(theirs.read_text()), resolved) if theirs.is_file() else []
        for name, module in originals.items():
            load_weights(module, read_weights(path, name, spec.train.init_from.weights), f"{path} ({name})", differs)


def _set_up(
    fabric: Fabric,
    spec: TrainingTaskSpec,
    build: Callable[[TrainingTaskSpec, Dataset], Objective],
    init_reads: list[Path],
) -> _Session:
    """The objective built under the spec's seed, ``init_from`` loaded, EMAs made, models and
    optimisers handed to Fabric. A :class:`UserError` for a model with nothing to train."""
    fabric.seed_everything(spec.seed, verbose=False)  # every process builds the same weights
    dataset = spec.data.build()
    objective = build(spec, dataset)
    originals = dict(objective.nets)
    for name, module in originals.items():
        if not any(p.requires_grad for p in module.parameters()):
            raise UserError(
                f"the model trained as {name!r} ({type(module).__name__}) has no trainable parameters; "
                "name a component with weights (e.g. an autoencoder instead of identity)"
            )
    _load_init_from(originals, init_reads, spec)
    if spec.runtime.memory_format == "channels_last":
        # Convolutions follow their weights' layout, so the activations go channels-last with them.
        for module in originals.values():
            module.to(memory_format=torch.channels_last)
    emas = {name: Ema(module, spec.train.ema) for name, module in originals.items()} if spec.train.ema else {}
    optimizer_specs = objective.optimizers()
    optimizers = {}
    if spec.runtime.compile:
        # Compiled kernels draw random numbers as eager code does (inductor has its own
        # generator otherwise), so a compiled run samples the noise an eager one samples.
        torch._inductor.config.fallback_random = True
    mesh = data_parallel_mesh(fabric)
    for name, opt_spec in optimizer_specs.items():
        if mesh is not None:
            check_shardable(originals[name], name)
        # Checkpoints and EMAs keep to the originals, so compiled and eager runs load each other.
        net = torch.compile(originals[name]) if spec.runtime.compile else originals[name]
        # The optimiser after the module: sharding replaces the parameters with their shards.
        objective.nets[name] = fabric.setup_module(net)
        optimizers[name] = fabric.setup_optimizers(make_optimizer(opt_spec, originals[name]))
    for name, ema in emas.items():
        if mesh is None:
            fabric.to_device(ema.model)
        else:
            shard(ema.model, mesh, sharded_compute_dtype(spec.runtime), like=originals[name])
    objective.setup(fabric)
    return _Session(fabric, spec, objective, originals, emas, optimizers, optimizer_specs, dataset)


def _restore(session: _Session, resume_from: Path | None) -> None:
    """Weights, EMAs, optimiser states, RNGs, step and data position from ``resume_from``; for a
    fresh run, the training RNGs seeded per process."""
    fabric, seed = session.fabric, session.spec.seed
    if resume_from is None:
        fabric.seed_everything(seed * 7919 + 101 + fabric.global_rank, verbose=False)
        return
    state = read_state(resume_from)
    for name, module in session.originals.items():
        if is_sharded(module):
            load_full_state_dict(module, state.models[name])
        else:
            load_weights(module, state.models[name], f"{resume_from} ({name})")
        if name in session.emas:
            session.emas[name].load_state_dict(state.ema[name])
    for name, optimizer in session.optimizers.items():
        load_full_optimizer_state(session.originals[name], optimizer, state.optimizers[name])
        _state_in_parameter_layout(optimizer)
    if len(state.rng) == fabric.world_size:
        restore_rng(state.rng[fabric.global_rank])
    else:
        # Resumed on another number of processes: no stream can continue, so each process
        # draws a new one from the seed and the step (the run is no longer bit-exact).
        fabric.seed_everything(seed * 7919 + 101 + fabric.global_rank + 1_000_003 * state.step, verbose=False)
    session.start, session.position, session.last = state.step, state.data_position, resume_from


def _open(session: _Session, ctx: RunContext, run: RunDir, reads: Sequence[Path]) -> tuple[Any, Monitor]:
    """Every check that can refuse the run has passed: write the run directory (rank 0), then
    make the batch iterator and the monitor."""
    fabric, spec = session.fabric, session.spec
    resolved = spec.model_dump(mode="json")
    if fabric.is_global_zero:
        open_run_dir(run, resolved, environment_stamp(ctx.registry, fabric.world_size, [str(p) for p in reads]))
    fabric.barrier()
    cfg = spec.train
    batches = StepBatches(
        len(session.dataset), cfg.batch_size, fabric.world_size, fabric.global_rank, spec.seed, start=session.position
    )
    data = session.objective.training_data(fabric, session.dataset)
    loader = iter(make_loader(data, batches, cfg.num_workers, spec.seed, pin=fabric.device.type == "cuda"))
    return loader, Monitor(run, resolved, session.start, cfg.max_steps, enabled=fabric.is_global_zero)


def _save(session: _Session, checkpoints: Checkpoints, step: int, extra: dict[str, Tensor] | None) -> Path:
    """Write the checkpoint of ``step`` (rank 0; every process's RNG state in it); its path."""
    fabric = session.fabric
    rngs = [capture_rng()]
    if fabric.world_size > 1:
        rngs = [None] * fabric.world_size
        torch.distributed.all_gather_object(rngs, capture_rng())
    path = checkpoints.path_for(step)
    # Every process takes part in gathering sharded weights; rank 0 writes them.
    models = {n: full_state_dict(m) for n, m in session.originals.items()}
    emas = {n: e.state_dict() for n, e in session.emas.items()}
    optimizers = {n: full_optimizer_state(session.originals[n], o) for n, o in session.optimizers.items()}
    if fabric.is_global_zero:
        checkpoints.save(
            TrainingState(
                step=step,
                data_position=step * session.spec.train.accumulate,
                models=models,
                ema=emas,
                optimizers=optimizers,
                rng=rngs,
                extra=extra or {},
            )
        )
    fabric.barrier()
    return path


def _update(session: _Session, name: str, micro: list[dict[str, Any]], step: int) -> dict[str, float]:
    """One optimiser step of model ``name``: gradients, clipping, the finiteness flags, the
    update and its EMA. Returns what to log (tensors, read back only on logged steps)."""
    fabric, cfg = session.fabric, session.spec.train
    optimizer = session.optimizers[name]
    lr = learning_rate(session.optimizer_specs[name], step, cfg.max_steps)
    set_learning_rate(optimizer, lr)
    for other in session.optimizers.values():
        other.zero_grad(set_to_none=True)
    loss, terms = _backward(fabric, session.objective, name, micro, step)
    # An infinite max_norm measures the norm for logging and leaves the gradients as they are.
    norm = whole(
        fabric.clip_gradients(
            session.objective.nets[name], optimizer, max_norm=cfg.grad_clip or math.inf, error_if_nonfinite=False
        )
    )
    fp16 = session.spec.runtime.precision == "16-mixed"  # the grad scaler skips non-finite steps itself
    _mark_non_finite(session, loss, torch.as_tensor(norm), step + 1, not fp16)
    optimizer.step()
    if name in session.emas:
        session.emas[name].update(session.originals[name])
    logs = {f"loss/{name}": loss, **{f"loss/{name}/{k}": v for k, v in terms.items()}}
    return {**logs, f"lr/{name}": lr, f"grad_norm/{name}": norm}


def _step(session: _Session, loader: Any, step: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One training step: a micro-batch per accumulation, then each active optimiser's update."""
    start = time.perf_counter()
    batches = [next(loader) for _ in range(session.spec.train.accumulate)]
    session.data_wait += time.perf_counter() - start
    micro = [session.fabric.to_device(batch) for batch in batches]
    logs: dict[str, Any] = {}
    for name in session.optimizers:
        if session.objective.active(name, step):
            logs.update(_update(session, name, micro, step))
    return micro, logs


class _Rate:
    """Steps per second between two logged steps, and the share of that time spent waiting for data."""

    def __init__(self, step: int) -> None:
        self.time, self.step = time.perf_counter(), step

    def since_last(self, step: int, waited: float) -> tuple[float, float]:
        now = time.perf_counter()
        elapsed = max(now - self.time, 1e-9)
        rate = (step - self.step) / elapsed
        self.time, self.step = now, step
        return rate, waited / elapsed


def _log(session: _Session, monitor: Monitor, rate: _Rate, done: int, logs: dict[str, Any], batch: Any) -> None:
    """Scalars every ``log_every`` steps (and at the end), image grids every ``image_every``."""
    cfg = session.spec.train
    if done % cfg.log_every == 0 or done == cfg.max_steps:
        _check_finite(session, done)
        logs = _mean_over_processes(session.fabric, {key: float(value) for key, value in logs.items()})
        steps_per_s, waiting = rate.since_last(done, session.data_wait)
        session.data_wait = 0.0
        logs["throughput/steps_per_s"] = steps_per_s
        logs["throughput/data_wait_share"] = waiting
        logs["throughput/examples_per_s"] = steps_per_s * cfg.batch_size * cfg.accumulate * session.fabric.world_size
        monitor.scalars(done, logs)
    if cfg.image_every and done % cfg.image_every == 0:
        with torch.no_grad(), gathered(*session.originals.values()):
            for tag, images in session.objective.images(batch).items():
                monitor.images(done, tag, images)


def _after_step(session: _Session, checkpoints: Checkpoints, run: RunDir, done: int, stop: _StopFlag) -> None:
    """At the end, :meth:`Objective.finish`; a checkpoint when due, at the end or on a signal
    (then :class:`Interrupted`)."""
    cfg = session.spec.train
    [stopping] = _agree(session.fabric, stop.signum is not None)
    saving = stopping or done % cfg.checkpoint_every == 0 or done == cfg.max_steps
    if saving:
        _check_finite(session, done)
    extra = _finish(session, run.root) if done == cfg.max_steps else None
    if saving:
        session.last = _save(session, checkpoints, done, extra)
    if stopping:
        cause = signal.Signals(stop.signum).name if stop.signum else "a signal to another process"
        raise Interrupted(
            f"stopped by {cause} at step {done}; checkpoint {str(session.last)!r} written; continue with --resume"
        )


def train(
    spec: TrainingTaskSpec,
    ctx: RunContext,
    build: Callable[[TrainingTaskSpec, Dataset], Objective],
    reads: Sequence[Path] = (),
) -> Path:
    """Run ``spec``'s training to ``train.max_steps``; return the last checkpoint's path.

    ``build`` makes the task's objective from the spec and its dataset; ``reads`` are the
    checkpoints of other runs the task uses (e.g. a frozen first stage), recorded in the run's
    environment stamp. Raises :class:`UserError` for input that cannot work (before writing
    anything), :class:`Interrupted` after a signal, :class:`TrainingFailed` on a non-finite loss.
    """
    spec = spec.model_copy(update={"runtime": resolve_runtime(spec.runtime)})
    fabric = make_fabric(spec.runtime)
    fabric.launch()
    run, resume_from, init_reads = _checked_run(fabric, spec, ctx, spec.model_dump(mode="json"))
    session = _set_up(fabric, spec, build, init_reads)
    _restore(session, resume_from)
    loader, monitor = _open(session, ctx, run, [*init_reads, *reads])
    checkpoints = Checkpoints(run.checkpoints, spec.train.keep_checkpoints)
    rate = _Rate(session.start)
    try:
        with _StopFlag() as stop:
            for step in range(session.start, spec.train.max_steps):
                micro, logs = _step(session, loader, step)
                monitor.advance()
                _log(session, monitor, rate, step + 1, logs, micro[0])
                _after_step(session, checkpoints, run, step + 1, stop)
    finally:
        monitor.close()
    return session.last
