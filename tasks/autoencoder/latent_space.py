"""A latent space: a frozen first stage and the per-channel statistics of its latents.

This is the one place that knows how latents are normalised: diffusion runs on
``(z - mean) / std`` and decoding takes ``z * std + mean`` back to the first stage's latent.
A latent space comes from a run: a ``train_autoencoder`` run (the statistics it stored with
its final weights), an ``import_checkpoint`` run (the original's scale factor as statistics)
or a ``latent_stats`` run (that run's first stage, with the statistics it estimated).
"""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file
from torch import Tensor, nn

from core import FirstStage, LatentShape, UserError
from tasks.autoencoder.spec import LatentStatsSpec
from tasks.runs.context import RunContext
from tasks.runs.spec import RunRef, TaskSpec
from tasks.runs.trained import Trained, holding, load_trained, run_spec

STATS_FILE = "latent_stats.safetensors"
"""What a ``latent_stats`` run writes: ``mean`` and ``std`` (c,)."""


class LatentSpace(nn.Module):
    """A frozen first stage with its latents' per-channel ``mean`` and ``std`` (c,).

    ``shape`` is what the first stage declares; ``sources`` the files it was loaded from (the
    checkpoint, and a statistics file), for the environment stamp of a run that reads it.
    Moves between devices as one module.
    """

    def __init__(
        self, first_stage: FirstStage, mean: Tensor, std: Tensor, shape: LatentShape, sources: tuple[Path, ...] = ()
    ) -> None:
        super().__init__()
        self.first_stage = first_stage
        self.register_buffer("mean", mean.float().reshape(1, -1, 1, 1))
        self.register_buffer("std", std.float().clamp_min(1e-6).reshape(1, -1, 1, 1))
        self.shape = shape
        self.sources = sources

    def moments(self, images: Tensor) -> Tensor:
        """The first stage's moments (B, m, h, w) of images (B, C, H, W) in [-1, 1] (what the cache stores)."""
        return self.first_stage.moments(images)

    def from_moments(self, moments: Tensor) -> Tensor:
        """Normalised latents (B, c, h, w) from moments (a fresh draw where the posterior is a distribution)."""
        return (self.first_stage.latent_from_moments(moments) - self.mean) / self.std

    def encode(self, images: Tensor) -> Tensor:
        """Normalised latents (B, c, h, w) of images (B, C, H, W) in [-1, 1]."""
        return self.from_moments(self.moments(images))

    def decode(self, latents: Tensor) -> Tensor:
        """Images (B, C, H, W) in [-1, 1] from normalised latents (B, c, h, w)."""
        return self.first_stage.decode(latents * self.std + self.mean).clamp(-1, 1)


def _latent_space_spec(ref: RunRef, ctx: RunContext, field: str) -> TaskSpec:
    """A ``latent_stats`` run's spec, or that of a run holding a first stage (its spec's ``model``)."""
    spec = run_spec(ref, ctx, field)
    if isinstance(spec, LatentStatsSpec):
        return spec
    return holding(ref, ctx, field, "first_stage")


def latent_shape_of(ref: RunRef, ctx: RunContext, field: str) -> LatentShape:
    """What the first stage of a latent-space run declares, from its spec alone (no weights)."""
    spec = _latent_space_spec(ref, ctx, field)
    if isinstance(spec, LatentStatsSpec):
        return latent_shape_of(spec.first_stage, ctx, f"{field} (its first_stage)")
    return spec.model.cls.latent_shape(spec.model.params)


def _first_stage(ref: RunRef, ctx: RunContext, field: str) -> Trained:
    return load_trained(ref, ctx, field, None, "first_stage")


def load_latent_space(ref: RunRef, ctx: RunContext, field: str) -> LatentSpace:
    """The latent space of run ``ref.run``; ``field`` names the spec field holding the reference.

    A :class:`UserError` if the run holds no first stage or no statistics (a training stopped
    before ``max_steps``: finish it, or estimate them with a ``latent_stats`` run).
    """
    spec = _latent_space_spec(ref, ctx, field)
    if isinstance(spec, LatentStatsSpec):
        trained = _first_stage(spec.first_stage, ctx, f"{field} (its first_stage)")
        stats_file = ctx.runs_dir / ref.run / STATS_FILE
        stats = load_file(str(stats_file))
        mean, std, sources = stats["mean"], stats["std"], (trained.checkpoint, stats_file)
    else:
        trained = _first_stage(ref, ctx, field)
        if "latent_mean" not in trained.extra or "latent_std" not in trained.extra:
            raise UserError(
                f"{field}.run: {ref.run!r} stored no latent statistics with its last checkpoint (it stopped before "
                "max_steps?); finish its training, or estimate them with a latent_stats run and name that run"
            )
        mean, std, sources = trained.extra["latent_mean"], trained.extra["latent_std"], (trained.checkpoint,)
    shape = trained.spec.model.cls.latent_shape(trained.spec.model.params)
    return LatentSpace(trained.module, mean, std, shape, sources).requires_grad_(False).eval()
