"""The ``train`` part of a training task's spec: optimiser, schedule, EMA, checkpoints."""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from typing import Literal

from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
from torch import nn

from core import DatasetSpec, SpecModel
from tasks.runs.spec import RunRef, TaskSpec


class OptimizerSpec(SpecModel):
    """An optimiser and its learning-rate schedule (linear warm-up, then constant or cosine)."""

    name: Literal["adamw", "sgd"] = "adamw"
    lr: PositiveFloat = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: NonNegativeFloat = 0.0
    momentum: NonNegativeFloat = Field(0.0, description="SGD only.")
    warmup_steps: NonNegativeInt = Field(0, description="Steps of linear warm-up from 0 to lr.")
    schedule: Literal["constant", "cosine"] = "constant"
    min_lr: NonNegativeFloat = Field(0.0, description="Where the cosine schedule ends at max_steps.")


class EmaSpec(SpecModel):
    """An exponential moving average of the weights, used for sampling and saved beside them."""

    decay: float = Field(0.9999, gt=0.0, lt=1.0)
    warmup: bool = Field(
        True, description="Use min(decay, (1 + n) / (10 + n)) after n updates, as the paper's code does."
    )


class TrainSpec(SpecModel):
    """How long and how to train; ``batch_size`` is per process."""

    max_steps: PositiveInt
    batch_size: PositiveInt = Field(description="Examples per process per micro-batch.")
    accumulate: PositiveInt = Field(1, description="Micro-batches per optimiser step.")
    grad_clip: PositiveFloat | None = Field(None, description="Clip each model's gradient norm to this.")
    optimizer: OptimizerSpec = OptimizerSpec()
    ema: EmaSpec | None = EmaSpec()
    log_every: PositiveInt = 10
    checkpoint_every: PositiveInt = 1000
    keep_checkpoints: PositiveInt = Field(3, description="How many of the newest checkpoints to keep.")
    image_every: PositiveInt | None = Field(None, description="Log image grids every this many steps.")
    num_workers: NonNegativeInt = 0
    init_from: RunRef | None = Field(None, description="Start from another run's weights with fresh optimiser state.")


class TrainingTaskSpec(TaskSpec):
    """A task that trains: it needs data and a ``train`` part, and says what it trains."""

    data: DatasetSpec
    train: TrainSpec

    @abc.abstractmethod
    def trained_components(self) -> Mapping[str, Callable[[], nn.Module]]:
        """The models this task trains, by the name their weights are saved under, each as a
        function building it fresh from this spec (how a run's weights are loaded again)."""
