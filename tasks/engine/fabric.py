"""Lightning Fabric for a resolved ``runtime`` (see :func:`tasks.runs.runtime.resolve_runtime`)."""

from __future__ import annotations

import torch
from lightning_fabric import Fabric
from lightning_fabric.strategies import ModelParallelStrategy, Strategy
from torch import nn
from torch.distributed.device_mesh import DeviceMesh

from tasks.engine.sharding import shard
from tasks.runs.spec import RuntimeSpec


def _strategy(runtime: RuntimeSpec) -> str | Strategy:
    if runtime.strategy == "single_device":
        return "auto"  # Fabric has no name for its single-device strategy; "auto" picks it for one process.
    if runtime.strategy != "fsdp":
        return runtime.strategy

    def parallelize(module: nn.Module, mesh: DeviceMesh) -> nn.Module:
        return shard(module, mesh["data_parallel"], sharded_compute_dtype(runtime))

    return ModelParallelStrategy(
        parallelize,
        data_parallel_size=runtime.devices * runtime.num_nodes,
        tensor_parallel_size=1,
        save_distributed_checkpoint=False,
    )


def sharded_compute_dtype(runtime: RuntimeSpec) -> torch.dtype | None:
    """FSDP2's own mixed precision on GPUs (bf16 compute, float32 weights and reductions), else none."""
    return torch.bfloat16 if runtime.accelerator == "cuda" and runtime.precision == "bf16-mixed" else None


def make_fabric(runtime: RuntimeSpec) -> Fabric:
    """A Fabric for an already resolved ``runtime`` (see :func:`resolve_runtime`); not launched
    yet. On CUDA, this process's TF32 and cuDNN autotuning follow ``runtime``."""
    if runtime.accelerator == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = runtime.tf32
        torch.backends.cudnn.allow_tf32 = runtime.tf32
        torch.backends.cudnn.benchmark = runtime.cudnn_benchmark
    return Fabric(
        accelerator=runtime.accelerator,
        devices=runtime.devices,
        num_nodes=runtime.num_nodes,
        strategy=_strategy(runtime),
        precision=runtime.precision,
    )


def data_parallel_mesh(fabric: Fabric) -> DeviceMesh | None:
    """The mesh sharded models live on, or ``None`` when the strategy does not shard."""
    strategy = fabric.strategy
    return strategy.device_mesh["data_parallel"] if isinstance(strategy, ModelParallelStrategy) else None
