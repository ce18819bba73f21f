"""``import_checkpoint`` of a diffusers folder: a pipeline folder (``model_index.json`` with
``vae`` or ``vqvae``, ``unet``, ``scheduler`` and optionally ``text_encoder``), or one
autoencoder's folder.

Each part's class is matched against the installed components' ``from_diffusers`` (so a
plugin can read a class of its own); the scheduler's config gives the noise schedule and what
the UNet predicts; the autoencoder's ``scaling_factor`` (and ``shift_factor``, or per-channel
``latents_mean`` / ``latents_std``) gives the latent statistics.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from core import NotExpressible, UserError
from tasks.interchange import diffusers_files as files
from tasks.runs.context import RunContext

FIRST_STAGES = ("vae", "vqvae")
KNOWN = {*FIRST_STAGES, "unet", "scheduler", "text_encoder", "tokenizer", "safety_checker", "feature_extractor"}
"""The pipeline parts read here (a safety checker and its feature extractor are left out)."""


@dataclass(frozen=True)
class Parts:
    """The folders of a diffusers checkpoint: the first stage's, and an LDM's UNet, scheduler
    and text encoder (``None`` where absent)."""

    first_stage: Path
    unet: Path | None = None
    scheduler: Path | None = None
    text_encoder: Path | None = None


def parts_of(folder: Path) -> Parts:
    """The parts of the diffusers folder ``folder`` (a :class:`UserError` if it is none, or
    holds parts this code cannot place)."""
    if (folder / files.PIPELINE).is_file():
        index = files.read_pipeline(folder, "checkpoint")
        unknown = sorted(set(index) - KNOWN)
        if unknown:
            pipeline = files.read_json(folder / files.PIPELINE, "checkpoint").get("_class_name")
            raise UserError(
                f"checkpoint: {folder} is a {pipeline} "
                f"with parts {unknown} this code cannot import; it imports vae or vqvae, unet, scheduler, text_encoder"
            )
        first = [name for name in FIRST_STAGES if name in index]
        if not first or "unet" not in index or "scheduler" not in index:
            raise UserError(f"checkpoint: {folder} lacks a vae (or vqvae), a unet or a scheduler; give an LDM pipeline")
        encoder = folder / "text_encoder" if "text_encoder" in index else None
        return Parts(folder / first[0], folder / "unet", folder / "scheduler", encoder)
    files.read_model(folder, "checkpoint")  # refuses a folder that is no model, naming what it lacks
    return Parts(folder)


def expressing(ctx: RunContext, kind: str, folder: Path) -> dict[str, Any]:
    """The spec (name and params) of the installed ``kind`` component that reads the model in ``folder``."""
    config = files.read_json(folder / files.CONFIG, "checkpoint")
    class_name = config.get("_class_name") or (config.get("architectures") or [None])[0]
    for entry in ctx.registry.entries(kind):
        try:
            params = entry.cls.from_diffusers(class_name, config, folder)
        except NotExpressible as exc:
            raise UserError(f"checkpoint: {folder}: {exc}") from None
        if params is not None:
            return {"name": entry.name, "params": params}
    raise UserError(f"checkpoint: {folder} holds a {class_name}, which no installed {kind.replace('_', ' ')} reads")


def diffusion(folder: Path) -> tuple[dict[str, Any], str]:
    """(our diffusion spec's values, the UNet's prediction) from the scheduler's config."""
    config = files.read_json(folder / files.SCHEDULER, "checkpoint")
    for key in ("trained_betas", "rescale_betas_zero_snr"):
        if config.get(key):
            raise UserError(f"checkpoint: {folder / files.SCHEDULER} sets {key}, which this code does not express")
    return files.diffusion_from_scheduler(config, f"checkpoint: {folder}")


def latent_statistics(folder: Path, channels: int, scale: float | None) -> tuple[Tensor, Tensor]:
    """(mean, std) of the latents, per channel, that the first stage's config states (a given
    ``scale`` overrides its scaling_factor)."""
    config = files.read_json(folder / files.CONFIG, "checkpoint")
    if config.get("latents_mean") is not None and config.get("latents_std") is not None and scale is None:
        return torch.tensor(config["latents_mean"]).float(), torch.tensor(config["latents_std"]).float()
    factor = scale if scale is not None else float(config.get("scaling_factor") or 1.0)
    shift = float(config.get("shift_factor") or 0.0)
    return torch.full((channels,), shift), torch.full((channels,), 1.0 / factor)
