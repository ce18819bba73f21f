"""Task ``train_autoencoder``: train a first stage to reconstruct the dataset's images.

The first stage's loss is the pixel term, a perceptual term, the regulariser's penalty
and, once switched on, an adversarial term from a patch discriminator that trains with its
own optimiser (see :mod:`tasks.autoencoder.losses` for each term and its reduction).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from lightning_fabric import Fabric
from torch import Tensor, nn

from core import Dataset
from tasks.autoencoder.losses import (
    LPIPS,
    PatchDiscriminator,
    adaptive_weight,
    hinge_discriminator_loss,
    laplacian_loss,
    per_example_sum,
)
from tasks.autoencoder.spec import TrainAutoencoderSpec
from tasks.autoencoder.statistics import latent_statistics
from tasks.engine.objective import Objective
from tasks.engine.specs import OptimizerSpec
from tasks.engine.trainer import train
from tasks.evaluation import judges
from tasks.runs.context import RunContext
from tasks.runs.rundir import atomic_write


class AutoencoderObjective(Objective):
    """The first stage (and, with an adversarial term, its discriminator), each with an optimiser."""

    def __init__(self, spec: TrainAutoencoderSpec, dataset: Dataset) -> None:
        super().__init__()
        self.spec = spec
        self.dataset = dataset
        self.terms = spec.loss
        self.nets["first_stage"] = spec.model.build()
        adversarial = self.terms.adversarial
        if adversarial is not None:
            channels = spec.model.cls.latent_shape(spec.model.params).image_channels
            self.nets["discriminator"] = PatchDiscriminator(channels, adversarial.channels, adversarial.layers)
        perceptual = self.terms.perceptual
        self.lpips = LPIPS(perceptual.weights_file) if perceptual and perceptual.kind == "lpips" else None
        # The first stage's reconstructions of this step's micro-batches, in order, for the
        # discriminator's turn (which comes next), so it need not run the autoencoder again.
        self._fakes: list[Tensor] = []

    def optimizers(self) -> dict[str, OptimizerSpec]:
        found = {"first_stage": self.spec.train.optimizer}
        if self.terms.adversarial is not None:
            found["discriminator"] = self.terms.adversarial.optimizer
        return found

    def active(self, name: str, step: int) -> bool:
        return name != "discriminator" or step >= self.terms.adversarial.start

    def setup(self, fabric: Fabric) -> None:
        if self.lpips is not None:
            fabric.to_device(self.lpips)

    def reconstruction_loss(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The weighted pixel and perceptual terms (the "nll" of the paper's code) and each term alone."""
        pixel = self.terms.pixel
        error = (y - x).abs() if pixel.kind == "l1" else (y - x).pow(2)
        terms = {"pixel": per_example_sum(error)}
        total = pixel.weight * terms["pixel"]
        perceptual = self.terms.perceptual
        if perceptual is not None:
            if self.lpips is not None:
                terms["perceptual"] = self.lpips(x, y).mean()
            else:
                terms["perceptual"] = laplacian_loss(x, y, perceptual.levels)
            total = total + perceptual.weight * terms["perceptual"]
        return total, terms

    def loss(self, name: str, batch: dict[str, Any], step: int) -> tuple[Tensor, dict[str, Tensor]]:
        x = batch["image"]
        adversarial = self.terms.adversarial
        if name == "discriminator":
            fake = self._fakes.pop(0)
            hinge = hinge_discriminator_loss(self.nets["discriminator"](x), self.nets["discriminator"](fake))
            return hinge, {"hinge": hinge.detach()}
        reconstruction, regularizer = self.nets["first_stage"](x)
        nll, terms = self.reconstruction_loss(x, reconstruction)
        total = nll + regularizer.get("loss", torch.zeros((), device=x.device))
        logs = {**terms, **{k: v for k, v in regularizer.items() if k != "loss"}}
        if adversarial is not None and step >= adversarial.start:
            self._fakes.append(reconstruction.detach())
            generator = -self.nets["discriminator"](reconstruction).mean()
            last = self.nets["first_stage"].decoder_last_layer()
            weight = (
                adaptive_weight(nll, generator, last, adversarial.weight)
                if adversarial.adaptive and last is not None
                else torch.tensor(adversarial.weight)
            )
            total = total + weight * generator
            logs.update(generator=generator, adaptive_weight=weight)
        return total, {k: v.detach() for k, v in logs.items()}

    def images(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        x = batch["image"][:8]
        reconstruction, _ = self.nets["first_stage"](x)
        return {"reconstructions": torch.cat([x, reconstruction])}

    def finish(self, fabric: Fabric, models: dict[str, nn.Module], run_dir: Path) -> dict[str, Tensor]:
        """Latent statistics over the training set (stored with the weights) and validation
        metrics (written to ``validation.json``)."""
        model = models["first_stage"]
        batch = self.spec.train.batch_size
        mean, std = latent_statistics(fabric, model, self.dataset, batch)

        data, split = self.spec.data, "val"
        if "split" in type(data.params).model_fields:
            held_out = data.cls(data.params.model_copy(update={"split": "val"}))
        else:
            held_out, split = self.dataset, "train"
        report: dict[str, Any] = {
            "split": split,
            **judges.reconstruction(fabric, model, held_out, batch),
            "latent_mean": mean.tolist(),
            "latent_std": std.tolist(),
        }
        if fabric.is_global_zero:
            atomic_write(run_dir / "validation.json", json.dumps(report, indent=2).encode())
        return {"latent_mean": mean, "latent_std": std}


def run(spec: TrainAutoencoderSpec, ctx: RunContext) -> None:
    """Train to ``train.max_steps``."""
    train(spec, ctx, AutoencoderObjective)
