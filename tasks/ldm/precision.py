"""The arithmetic sampling runs the denoiser in: float32, or bf16 / fp16 autocast, and
optionally compiled. The latents and the sampler's own steps stay float32 either way: only
the network's convolutions and matmuls drop precision, and its output is cast back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from core import Conditioning, UserError

Precision = Literal["auto", "fp32", "bf16", "fp16"]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(requested: Precision, device: torch.device, field: str = "sampling.precision") -> str:
    """``requested`` on ``device`` as ``"fp32"``, ``"bf16"`` or ``"fp16"`` (``"auto"``: bf16 on a
    GPU that has it, else fp16 there; fp32 on the CPU and elsewhere); a :class:`UserError`
    naming ``field`` for a precision the device cannot run."""
    cuda = device.type == "cuda"
    if requested == "auto":
        return ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "fp32"
    if requested == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise UserError(f"{field}: bf16 is not supported by {torch.cuda.get_device_name(device)}; use fp16 or fp32")
    if requested == "fp16" and device.type == "cpu":
        raise UserError(f"{field}: fp16 autocast does not run on the CPU here; use bf16 or fp32")
    return requested


def network(denoiser: nn.Module, precision: str, compile: bool) -> Callable[[Tensor, Tensor, Conditioning], Tensor]:
    """``denoiser`` as sampling calls it: compiled if asked, under autocast for bf16 / fp16,
    its output float32 (``precision`` resolved by :func:`resolve_precision`)."""
    run = torch.compile(denoiser) if compile else denoiser
    if precision == "fp32":
        return run

    def autocast(x: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        with torch.autocast(x.device.type, dtype=DTYPES[precision]):
            return run(x, t, cond).float()

    return autocast
