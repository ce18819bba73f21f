"""Latent statistics: the per-channel mean and std of a first stage's latents over a dataset.

(:class:`tasks.autoencoder.latent_space.LatentSpace` is where they are applied.)

Diffusion is trained on latents normalised by these (the paper scales by one factor
estimated on one batch; we use every example, on every process, per channel).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from lightning_fabric import Fabric
from torch import Tensor

from core import Dataset, FirstStage


def image_batches(dataset: Dataset, batch_size: int, fabric: Fabric) -> Iterator[Tensor]:
    """This process's share of ``dataset``'s images, in order, on the device, ``batch_size`` at a time."""
    mine = list(range(fabric.global_rank, len(dataset), fabric.world_size))
    for start in range(0, len(mine), batch_size):
        yield torch.stack([dataset[i]["image"] for i in mine[start : start + batch_size]]).to(fabric.device)


@torch.no_grad()
def latent_statistics(fabric: Fabric, model: FirstStage, dataset: Dataset, batch_size: int) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std (c,) of ``model.encode`` over every example of ``dataset``.

    Each process encodes its share; sums are accumulated in float64 and added across processes.
    """
    count = torch.zeros((), dtype=torch.float64, device=fabric.device)
    total = sumsq = torch.zeros((), dtype=torch.float64, device=fabric.device)
    for x in image_batches(dataset, batch_size, fabric):
        z = model.encode(x).double().transpose(0, 1).flatten(1)  # (c, B h w)
        total, sumsq = total + z.sum(1), sumsq + z.pow(2).sum(1)
        count += z.shape[1]
    total, sumsq, count = (fabric.all_reduce(t, reduce_op="sum") for t in (total, sumsq, count))
    mean = total / count
    return mean.float().cpu(), (sumsq / count - mean.pow(2)).clamp_min(0).sqrt().float().cpu()
