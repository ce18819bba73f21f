"""Lightning Fabric for a resolved ``runtime`` (see :func:`tasks.runs.runtime.resolve_runtime`)."""

from __future__ import annotations

import torch
from lightning_fabric import Fabric

from tasks.runs.spec import RuntimeSpec


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
        # Fabric has no name for its single-device strategy; "auto" picks it for one process.
        strategy="auto" if runtime.strategy == "single_device" else runtime.strategy,
        precision=runtime.precision,
    )
