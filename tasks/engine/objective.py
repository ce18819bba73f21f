"""What a training task trains, described for the engine: its models, optimisers and losses."""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any

import torch
from lightning_fabric import Fabric
from torch import Tensor, nn

from core import Dataset
from tasks.engine.specs import OptimizerSpec


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

    def setup(self, fabric: Fabric) -> None:  # noqa: B027 (an optional hook: nothing to move by default)
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
