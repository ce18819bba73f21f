"""Task ``train_autoencoder``: train a first stage to reconstruct the dataset's images.

The loss is the pixel reconstruction term plus the regulariser's penalty. Reduction, as in
the paper's code (which its KL weight of 1e-6 assumes): the pixel term is summed over
channels and pixels and averaged over the batch.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import model_validator
from torch import Tensor

from core import FirstStageSpec, SpecModel
from tasks.context import RunContext
from tasks.engine import Objective, OptimizerSpec, TrainingTaskSpec, train


class AutoencoderLoss(SpecModel):
    """The reconstruction loss."""

    pixel: Literal["l1", "l2"] = "l1"


class TrainAutoencoderSpec(TrainingTaskSpec):
    """Train a first stage (e.g. ``autoencoder`` with a ``kl`` regulariser) on ``data``."""

    task: Literal["train_autoencoder"]
    model: FirstStageSpec
    loss: AutoencoderLoss = AutoencoderLoss()

    @model_validator(mode="after")
    def _model_fits_data(self) -> TrainAutoencoderSpec:
        latent = self.model.cls.latent_shape(self.model.params)
        example = self.data.cls.example_shape(self.data.params)
        if latent.image_channels != example.image_channels:
            raise ValueError(
                f"model takes {latent.image_channels}-channel images but data ({self.data.name}) gives "
                f"{example.image_channels}-channel ones; set the model's in_channels or the data's channels to match")
        if example.image_size and any(side % latent.factor for side in example.image_size):
            raise ValueError(
                f"data ({self.data.name}) gives {example.image_size[0]}x{example.image_size[1]} images, not divisible "
                f"by the model's downsampling factor f={latent.factor}; use an image size that is a multiple of {latent.factor}")
        return self


class AutoencoderObjective(Objective):
    """Reconstruction plus regularisation, one optimiser."""

    def __init__(self, spec: TrainAutoencoderSpec) -> None:
        super().__init__()
        self.spec = spec
        self.nets["first_stage"] = spec.model.build()

    def optimizers(self) -> dict[str, OptimizerSpec]:
        return {"first_stage": self.spec.train.optimizer}

    def loss(self, name: str, batch: dict[str, Any], step: int) -> tuple[Tensor, dict[str, Tensor]]:
        x = batch["image"]
        reconstruction, terms = self.nets[name](x)
        error = (reconstruction - x).abs() if self.spec.loss.pixel == "l1" else (reconstruction - x).pow(2)
        pixel = error.flatten(1).sum(1).mean()
        penalty = terms.get("loss", torch.zeros((), device=x.device))
        logs = {"pixel": pixel.detach(), **{k: v.detach() for k, v in terms.items() if k != "loss"}}
        return pixel + penalty, logs

    def images(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        x = batch["image"][:8]
        reconstruction, _ = self.nets["first_stage"](x)
        return {"reconstructions": torch.cat([x, reconstruction])}


def run(spec: TrainAutoencoderSpec, ctx: RunContext) -> None:
    """Train to ``train.max_steps``."""
    train(spec, ctx, lambda spec, dataset: AutoencoderObjective(spec))
