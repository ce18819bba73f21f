"""A spec's ``runtime`` checked against the machine and resolved, never silently changed.

The checks run before Lightning Fabric launches (:mod:`tasks.engine.fabric`), which re-runs
``python -m tasks.run ...`` once per extra process: everything up to here must be free of side
effects.
"""

from __future__ import annotations

import os

import torch

from core import UserError
from tasks.runs.spec import RuntimeSpec


def _refuse(field: str, value: object, why: str, fix: str) -> UserError:
    return UserError(f"runtime.{field}: {value!r} {why}; {fix}")


def _sharing(runtime: RuntimeSpec, accelerator: str) -> tuple[str, str]:
    """The resolved (strategy, memory_format): how processes share the work, and the weights' layout it allows."""
    processes = runtime.devices * runtime.num_nodes
    strategy = runtime.strategy
    if strategy == "auto":
        strategy = "ddp" if processes > 1 else "single_device"
    if strategy == "single_device" and processes > 1:
        raise _refuse(
            "strategy",
            strategy,
            f"runs one process but devices x num_nodes is {processes}",
            'use "ddp" or "auto", or set devices to 1',
        )
    if strategy == "fsdp" and processes == 1:
        raise _refuse(
            "strategy",
            strategy,
            "shards the weights over processes but devices x num_nodes is 1",
            "set devices to 2 or more",
        )
    if strategy == "fsdp" and accelerator not in ("cpu", "cuda"):
        raise _refuse(
            "strategy", strategy, f"cannot run on {accelerator} (no collective backend)", 'use "cpu" or "cuda"'
        )
    if strategy == "fsdp" and runtime.compile:
        raise _refuse("compile", runtime.compile, "is not supported with fsdp yet", "set it to false")
    if strategy == "fsdp" and runtime.memory_format == "channels_last":
        raise _refuse(
            "memory_format",
            runtime.memory_format,
            "cannot be sharded (fsdp shards contiguous weights only)",
            'use "auto"',
        )
    memory_format = runtime.memory_format
    if memory_format == "auto":
        memory_format = "contiguous" if strategy == "fsdp" else "channels_last"
    return strategy, memory_format


def resolve_runtime(runtime: RuntimeSpec) -> RuntimeSpec:
    """``runtime`` with every "auto" replaced by what will run; a :class:`UserError` if it cannot run here."""
    cuda = torch.cuda.device_count()
    mps = hasattr(torch.backends, "mps") and torch.backends.mps.is_available()
    accelerator = runtime.accelerator
    if accelerator == "auto":
        accelerator = "cuda" if cuda else "mps" if mps else "cpu"
    elif accelerator == "gpu":
        accelerator = "cuda" if cuda else "mps" if mps else "gpu"
    if accelerator in ("cuda", "gpu") and not cuda:
        raise _refuse("accelerator", runtime.accelerator, "needs a CUDA GPU and none is visible", 'use "cpu" or "auto"')
    if accelerator == "mps" and not mps:
        raise _refuse(
            "accelerator", runtime.accelerator, "needs Apple's MPS and it is not available", 'use "cpu" or "auto"'
        )
    if accelerator == "cuda" and runtime.devices > cuda:
        raise _refuse("devices", runtime.devices, f"exceeds the {cuda} visible CUDA device(s)", f"use at most {cuda}")
    if accelerator == "mps" and runtime.devices > 1:
        raise _refuse("devices", runtime.devices, "is more than MPS offers", "use 1")

    strategy, memory_format = _sharing(runtime, accelerator)
    if runtime.precision == "16-mixed" and accelerator == "cpu":
        raise _refuse(
            "precision",
            runtime.precision,
            "needs a GPU (CPUs have no float16 autocast)",
            'use "bf16-mixed" or "32-true" on a CPU',
        )
    if runtime.precision == "bf16-mixed" and accelerator == "cuda" and not torch.cuda.is_bf16_supported():
        raise _refuse("precision", runtime.precision, "is not supported by this GPU", 'use "16-mixed" or "32-true"')
    return runtime.model_copy(update={"accelerator": accelerator, "strategy": strategy, "memory_format": memory_format})


def is_rank_zero() -> bool:
    """Whether this process is global rank 0 (by the variables the launcher sets), before Fabric exists."""
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"
