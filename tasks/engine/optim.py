"""Optimisers and learning-rate schedules built from :class:`OptimizerSpec`.

The learning rate is a pure function of the step, set before every optimiser step, so a
resumed run needs no scheduler state and can never step a schedule twice.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tasks.engine.specs import OptimizerSpec


def make_optimizer(spec: OptimizerSpec, model: nn.Module) -> torch.optim.Optimizer:
    """The optimiser ``spec`` names over ``model``'s trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    if spec.name == "adamw":
        # The fused kernel (CPU since torch 2.4) is 2.7x faster than the per-tensor loop on a
        # 10 M-parameter UNet (16 against 43 ms a step on one core), with the same update.
        fused = tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 4)
        return torch.optim.AdamW(
            params, lr=spec.lr, betas=spec.betas, weight_decay=spec.weight_decay, fused=fused or None
        )
    return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)


def learning_rate(spec: OptimizerSpec, step: int, max_steps: int) -> float:
    """The learning rate of optimiser step ``step`` (0-based) of ``max_steps``.

    Linear warm-up over ``warmup_steps`` from lr / warmup_steps to lr, then constant, or a
    cosine from lr down to ``min_lr`` at ``max_steps``.
    """
    if step < spec.warmup_steps:
        return spec.lr * (step + 1) / spec.warmup_steps
    if spec.schedule == "constant":
        return spec.lr
    span = max(1, max_steps - spec.warmup_steps)
    progress = min(1.0, (step - spec.warmup_steps) / span)
    return spec.min_lr + 0.5 * (spec.lr - spec.min_lr) * (1.0 + math.cos(math.pi * progress))


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set ``lr`` on every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr
