"""The one training loop every training task runs, on Lightning Fabric.

A task describes what it trains as an :class:`Objective` (its models, their optimisers and
their losses); :func:`train` does the rest: processes and devices, the run directory,
seeding, data, gradient accumulation and clipping, learning-rate schedules, EMA, logging,
checkpoints, ``--resume``, ``init_from``, signals and non-finite losses.
"""

from __future__ import annotations

import abc
import json
import math
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning_fabric import Fabric
from pydantic import ValidationError
from torch import Tensor, nn

from core import Dataset, UserError
from tasks.context import RunContext
from tasks.engine.checkpoint import (
    Checkpoints,
    TrainingState,
    capture_rng,
    load_weights,
    read_state,
    read_weights,
    restore_rng,
)
from tasks.engine.data import StepBatches, make_loader
from tasks.engine.ema import Ema
from tasks.engine.monitor import Monitor
from tasks.engine.optim import learning_rate, make_optimizer, set_learning_rate
from tasks.engine.rundir import RunDir, architecture_changes, check_run_dir, environment_stamp, open_run_dir
from tasks.engine.runtime import make_fabric, resolve_runtime
from tasks.engine.specs import OptimizerSpec, TrainingTaskSpec

EXIT_INTERRUPTED = 3
"""The exit code of a run stopped by SIGTERM or SIGINT after writing its checkpoint."""


class Interrupted(Exception):
    """A signal stopped the run at a step boundary, after its checkpoint was written."""


class TrainingFailed(Exception):
    """The run cannot go on (e.g. a non-finite loss); the message names the step and the last good checkpoint."""


class Objective(abc.ABC):
    """What a training task trains, as the engine needs it.

    ``nets`` holds the trainable models by name; each has one optimiser (see
    :meth:`optimizers`) and its weights are saved under that name. The engine replaces each
    entry by its Fabric-wrapped version before training: losses must call ``self.nets[name]``.
    """

    def __init__(self) -> None:
        self.nets: dict[str, nn.Module] = {}

    @abc.abstractmethod
    def optimizers(self) -> dict[str, OptimizerSpec]:
        """The optimiser of each model in ``nets``, in the order they are updated each step."""

    @abc.abstractmethod
    def loss(self, name: str, batch: dict[str, Any], step: int) -> tuple[Tensor, dict[str, Tensor]]:
        """The scalar loss that optimiser ``name`` minimises on one micro-batch at ``step``
        (0-based), and named scalar terms to log."""

    def active(self, name: str, step: int) -> bool:
        """Whether optimiser ``name`` trains at ``step`` (e.g. a discriminator only after its start)."""
        return True

    def setup(self, fabric: Fabric) -> None:
        """Move whatever is not in ``nets`` (frozen models, constants) to ``fabric.device``."""

    def training_data(self, fabric: Fabric, dataset: Dataset) -> torch.utils.data.Dataset:
        """What the loader draws batches from, called once on every process after :meth:`setup`
        (e.g. the dataset encoded once into a latent cache). By default the dataset itself."""
        return dataset

    def images(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Image batches (B, C, H, W) in [-1, 1] to log as grids, by name (e.g. reconstructions)."""
        return {}

    def finish(self, fabric: Fabric, models: dict[str, nn.Module], run_dir: Path) -> dict[str, Tensor]:
        """Called once when training reaches ``max_steps``, on every process (collectives are fine).

        ``models`` are the weights used downstream (the EMA where one is kept), in eval mode,
        under ``torch.no_grad``. Rank 0 may write reports into ``run_dir``. The tensors
        returned are stored in the final checkpoint under ``extra/`` (e.g. latent statistics).
        The training RNG state is restored afterwards, so this never changes a resumed run.
        """
        return {}


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
    return dict(zip(keys, total.tolist()))


def _backward(
    fabric: Fabric, objective: Objective, name: str, micro: list[dict[str, Any]], step: int
) -> tuple[float, dict[str, float]]:
    """Accumulate the gradients of optimiser ``name``'s loss over the micro-batches.

    Processes synchronise gradients only on the last micro-batch. Returns the loss and its
    terms, averaged over the micro-batches.
    """
    total, terms = 0.0, {}
    for i, batch in enumerate(micro):
        with fabric.no_backward_sync(objective.nets[name], enabled=i < len(micro) - 1):
            loss, parts = objective.loss(name, batch, step)
            fabric.backward(loss / len(micro))
        total += loss.item() / len(micro)
        for key, value in parts.items():
            terms[key] = terms.get(key, 0.0) + float(value) / len(micro)
    return total, terms


def _finish(
    fabric: Fabric, objective: Objective, originals: dict[str, nn.Module], emas: dict[str, Ema], run_dir: Path
) -> dict[str, Tensor]:
    """Run :meth:`Objective.finish` on the downstream weights, leaving the training state as it was."""
    rng = capture_rng()
    models = {name: emas[name].model if name in emas else module for name, module in originals.items()}
    modes = {name: module.training for name, module in models.items()}
    try:
        with torch.no_grad():
            return objective.finish(fabric, {name: module.eval() for name, module in models.items()}, run_dir)
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


def train(
    spec: TrainingTaskSpec,
    ctx: RunContext,
    build: Callable[[TrainingTaskSpec, Dataset], Objective],
    reads: Sequence[Path] = (),
) -> Path:
    """Run ``spec``'s training to ``train.max_steps``; return the last checkpoint's path.

    ``reads`` are the checkpoints of other runs the task uses (e.g. a frozen first stage),
    recorded in the run's environment stamp.

    Raises :class:`UserError` for input that cannot work (before writing anything),
    :class:`Interrupted` after a signal, :class:`TrainingFailed` on a non-finite loss.
    """
    runtime = resolve_runtime(spec.runtime)
    spec = spec.model_copy(update={"runtime": runtime})
    resolved = spec.model_dump(mode="json")
    fabric = make_fabric(runtime)
    fabric.launch()

    verdict: tuple[str, Any] = ("ok", None)
    if fabric.is_global_zero:
        try:
            verdict = ("ok", _prepare_run(spec, ctx, resolved))
        except UserError as exc:
            verdict = ("error", str(exc))
    verdict = fabric.broadcast(verdict, src=0)
    if verdict[0] == "error":
        raise UserError(verdict[1])
    run, resume_from, init_reads = verdict[1]

    cfg = spec.train
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
    for path in init_reads:
        theirs = path.parent.parent / "spec.json"
        differs = architecture_changes(json.loads(theirs.read_text()), resolved) if theirs.is_file() else []
        for name, module in originals.items():
            load_weights(module, read_weights(path, name, cfg.init_from.weights), f"{path} ({name})", differs)
    if runtime.memory_format == "channels_last":
        # Convolutions follow their weights' layout, so the activations go channels-last with them.
        for module in originals.values():
            module.to(memory_format=torch.channels_last)
    emas = {name: Ema(module, cfg.ema) for name, module in originals.items()} if cfg.ema else {}
    specs = objective.optimizers()
    optimizers = {}
    for name, opt_spec in specs.items():
        module, optimizers[name] = fabric.setup(originals[name], make_optimizer(opt_spec, originals[name]))
        objective.nets[name] = module
    for ema in emas.values():
        fabric.to_device(ema.model)
    objective.setup(fabric)

    start, position = 0, 0
    if resume_from is not None:
        state = read_state(resume_from)
        for name, module in originals.items():
            load_weights(module, state.models[name], f"{resume_from} ({name})")
            if name in emas:
                emas[name].load_state_dict(state.ema[name])
        for name, optimizer in optimizers.items():
            optimizer.load_state_dict(state.optimizers[name])
            _state_in_parameter_layout(optimizer)
        restore_rng(state.rng[fabric.global_rank])
        start, position = state.step, state.data_position
    else:
        fabric.seed_everything(spec.seed * 7919 + 101 + fabric.global_rank, verbose=False)

    checkpoints = Checkpoints(run.checkpoints, cfg.keep_checkpoints)
    batches = StepBatches(
        len(dataset), cfg.batch_size, fabric.world_size, fabric.global_rank, spec.seed, start=position
    )
    # Every check that can refuse the run has passed: only now is anything written.
    if fabric.is_global_zero:
        read = [str(p) for p in (*init_reads, *reads)]
        open_run_dir(run, resolved, environment_stamp(ctx.registry, fabric.world_size, read))
    fabric.barrier()
    loader = iter(make_loader(objective.training_data(fabric, dataset), batches, cfg.num_workers, spec.seed))
    monitor = Monitor(run, resolved, start, cfg.max_steps, enabled=fabric.is_global_zero)
    fp16 = runtime.precision == "16-mixed"
    last = resume_from

    def save(step: int, extra: dict[str, Tensor] | None = None) -> Path:
        rngs = [capture_rng()]
        if fabric.world_size > 1:
            rngs = [None] * fabric.world_size
            torch.distributed.all_gather_object(rngs, capture_rng())
        path = checkpoints.path_for(step)
        if fabric.is_global_zero:
            checkpoints.save(
                TrainingState(
                    step=step,
                    data_position=step * cfg.accumulate,
                    models={n: m.state_dict() for n, m in originals.items()},
                    ema={n: e.state_dict() for n, e in emas.items()},
                    optimizers={n: o.state_dict() for n, o in optimizers.items()},
                    rng=rngs,
                    extra=extra or {},
                )
            )
        fabric.barrier()
        return path

    try:
        with _StopFlag() as stop:
            tick, ticked = time.perf_counter(), start
            for step in range(start, cfg.max_steps):
                micro = [fabric.to_device(next(loader)) for _ in range(cfg.accumulate)]
                logs: dict[str, float] = {}
                for name, optimizer in optimizers.items():
                    if not objective.active(name, step):
                        continue
                    lr = learning_rate(specs[name], step, cfg.max_steps)
                    set_learning_rate(optimizer, lr)
                    for other in optimizers.values():
                        other.zero_grad(set_to_none=True)
                    loss_total, terms = _backward(fabric, objective, name, micro, step)
                    # An infinite max_norm measures the norm for logging and leaves the gradients as they are.
                    norm = fabric.clip_gradients(
                        objective.nets[name], optimizer, max_norm=cfg.grad_clip or math.inf, error_if_nonfinite=False
                    )
                    bad_loss, bad_norm = _agree(
                        fabric, not math.isfinite(loss_total), not fp16 and not torch.isfinite(norm)
                    )
                    if bad_loss or bad_norm:
                        what = "loss" if bad_loss else "gradient norm"
                        kept = f"the last good checkpoint is {str(last)!r}" if last else "no checkpoint was written yet"
                        raise TrainingFailed(
                            f"the {what} of {name!r} is not finite at step {step + 1} (terms: "
                            f"{', '.join(f'{k}={v:.4g}' for k, v in terms.items())}); stopped before updating "
                            f"the weights; {kept}; lower the learning rate or check the data"
                        )
                    optimizer.step()
                    if name in emas:
                        emas[name].update(originals[name])
                    logs[f"loss/{name}"] = loss_total
                    logs.update({f"loss/{name}/{k}": v for k, v in terms.items()})
                    logs[f"lr/{name}"] = lr
                    logs[f"grad_norm/{name}"] = float(norm)
                done = step + 1
                monitor.advance()
                if done % cfg.log_every == 0 or done == cfg.max_steps:
                    now = time.perf_counter()
                    rate = (done - ticked) / max(now - tick, 1e-9)
                    tick, ticked = now, done
                    logs = _mean_over_processes(fabric, logs)
                    logs["throughput/steps_per_s"] = rate
                    logs["throughput/examples_per_s"] = rate * cfg.batch_size * cfg.accumulate * fabric.world_size
                    monitor.scalars(done, logs)
                if cfg.image_every and done % cfg.image_every == 0:
                    with torch.no_grad():
                        for tag, images in objective.images(micro[0]).items():
                            monitor.images(done, tag, images)
                extra = _finish(fabric, objective, originals, emas, run.root) if done == cfg.max_steps else None
                [stopping] = _agree(fabric, stop.signum is not None)
                if stopping or done % cfg.checkpoint_every == 0 or done == cfg.max_steps:
                    last = save(done, extra)
                if stopping:
                    cause = signal.Signals(stop.signum).name if stop.signum else "a signal to another process"
                    raise Interrupted(
                        f"stopped by {cause} at step {done}; checkpoint {str(last)!r} written; continue with --resume"
                    )
    finally:
        monitor.close()
    return last
