"""Deterministic, sharded, resumable batches.

Micro-batch k of a run (counting every micro-batch of every step) is fixed by the seed
alone: the examples are visited in one random order per epoch, the k-th global batch of
``batch_size x world_size`` examples is cut from it, and process r takes the r-th slice.
So N processes with batch b see exactly the examples one process with batch N x b sees, and
a resumed run continues at micro-batch k with nothing replayed or skipped.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader

from core import Dataset, UserError
from core.data import EpochIndex


class StepBatches:
    """An endless batch sampler: the example indices of micro-batches ``start``, ``start + 1``, ..."""

    def __init__(self, size: int, batch_size: int, world_size: int, rank: int, seed: int, start: int = 0) -> None:
        self.size, self.batch_size, self.world_size, self.rank = size, batch_size, world_size, rank
        self.seed, self.start = seed, start
        self.per_epoch = size // (batch_size * world_size)
        if self.per_epoch == 0:
            raise UserError(
                f"train.batch_size: {batch_size} per process x {world_size} process(es) is more than the "
                f"{size} examples of the dataset; use a batch size of at most {size // world_size}"
            )
        self._epoch, self._order = -1, torch.empty(0, dtype=torch.long)

    def indices(self, k: int) -> list[EpochIndex]:
        """The indices this process reads for micro-batch ``k``, each with its epoch."""
        epoch, j = divmod(k, self.per_epoch)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._order = epoch, torch.randperm(self.size, generator=generator)
        first = (j * self.world_size + self.rank) * self.batch_size
        return [EpochIndex(i, epoch) for i in self._order[first : first + self.batch_size].tolist()]

    def __iter__(self) -> Iterator[list[int]]:
        k = self.start
        while True:
            yield self.indices(k)
            k += 1


def _seed_worker(worker_id: int) -> None:
    # The loader seeded this worker's torch RNG from its private generator; derive the rest.
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def make_loader(dataset: Dataset, batches: StepBatches, num_workers: int, seed: int, pin: bool = False) -> DataLoader:
    """A loader over ``batches``; its workers are seeded from ``seed``, the process rank and their id.

    The loader draws its own seeds from a private generator, so creating it (as a resume
    does) leaves the global RNG untouched. ``pin``: batches in page-locked memory, which a
    CUDA device copies from without the host waiting.
    """
    worker_seed = seed * 1_000_003 + batches.rank * 1_009
    return DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=num_workers,
        worker_init_fn=_seed_worker,
        generator=torch.Generator().manual_seed(worker_seed),
        persistent_workers=num_workers > 0,
        pin_memory=pin,
    )
