"""The specs of the first-stage tasks: ``train_autoencoder`` and ``latent_stats``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from pydantic import Field, PositiveInt, model_validator
from torch import nn

from core import DatasetSpec, FirstStageSpec, SpecModel
from tasks.autoencoder.losses import AdversarialLoss, PerceptualLoss, PixelLoss
from tasks.engine.specs import TrainingTaskSpec
from tasks.runs.spec import RunRef, TaskSpec


class AutoencoderLoss(SpecModel):
    """The first stage's loss terms; ``null`` turns the perceptual or adversarial term off."""

    pixel: PixelLoss = PixelLoss()
    perceptual: PerceptualLoss | None = PerceptualLoss()
    adversarial: AdversarialLoss | None = None


class TrainAutoencoderSpec(TrainingTaskSpec):
    """Train a first stage (e.g. ``autoencoder`` with a ``kl`` or ``vq`` regulariser) on ``data``."""

    task: Literal["train_autoencoder"]
    model: FirstStageSpec
    loss: AutoencoderLoss = AutoencoderLoss()

    def trained_components(self) -> dict[str, Callable[[], nn.Module]]:
        """The first stage, saved as ``first_stage``."""
        return {"first_stage": self.model.build}

    @model_validator(mode="after")
    def _model_fits_data(self) -> TrainAutoencoderSpec:
        latent = self.model.cls.latent_shape(self.model.params)
        example = self.data.cls.example_shape(self.data.params)
        if latent.image_channels != example.image_channels:
            raise ValueError(
                f"model takes {latent.image_channels}-channel images but data ({self.data.name}) gives "
                f"{example.image_channels}-channel ones; set the model's in_channels or the data's channels to match"
            )
        if example.image_size and any(side % latent.factor for side in example.image_size):
            raise ValueError(
                f"data ({self.data.name}) gives {example.image_size[0]}x{example.image_size[1]} images, not divisible "
                f"by the model's downsampling factor f={latent.factor}; use an image size that is a multiple of "
                f"{latent.factor}"
            )
        adversarial = self.loss.adversarial
        if self.runtime.strategy == "fsdp" and adversarial is not None and adversarial.adaptive:
            raise ValueError(
                "loss.adversarial.adaptive: the adaptive weight differentiates through the decoder's last layer, "
                "which fsdp shards; set adaptive to false or runtime.strategy to ddp"
            )
        return self


class LatentStatsSpec(TaskSpec):
    """Per-channel mean and std of a trained first stage's latents over ``data``.

    Its run is a latent space of its own: ``{"run": "<this run>"}`` as a ``train_ldm``'s
    ``first_stage`` is the first stage of run ``first_stage`` normalised by these statistics.
    """

    task: Literal["latent_stats"]
    first_stage: RunRef = Field(
        description='The train_autoencoder or import_checkpoint run, e.g. {"run": "digits-autoencoder"}.'
    )
    data: DatasetSpec
    batch_size: PositiveInt = 64
