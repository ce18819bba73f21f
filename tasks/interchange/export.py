"""Task ``export_checkpoint``: a run's models as a diffusers folder or in the original code's layout.

Everything is converted in memory first, so a model that no diffusers class can express is
refused, naming the param, before anything is written. An LDM's latent statistics (our
per-channel mean and std) are folded into an ``AutoencoderKL``'s ``quant_conv`` and
``post_quant_conv``, so the exported autoencoder's latents are the ones the UNet was trained
on and ``scaling_factor`` is 1: diffusers' pipelines then sample exactly as ours do.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from core import DiffusersModel, NotExpressible, UserError
from core.original import to_pairs
from tasks.interchange import diffusers_files as files
from tasks.interchange.spec import ExportCheckpointSpec
from tasks.ldm.generation import load_pipeline
from tasks.runs.context import RunContext
from tasks.runs.oneshot import OneShotRun
from tasks.runs.trained import holding, load_trained, run_spec

DTYPES = {"float32": torch.float32, "float16": torch.float16}


@dataclass
class Export:
    """What goes in the folder: each part's model and tensors, the scheduler's config, the
    pipeline class (none when no diffusers pipeline holds every part) and why not."""

    parts: dict[str, tuple[DiffusersModel, dict[str, Tensor]]] = field(default_factory=dict)
    scheduler: dict | None = None
    pipeline: str | None = None
    notes: list[str] = field(default_factory=list)


def _form(module: nn.Module, what: str, spec: ExportCheckpointSpec) -> DiffusersModel:
    try:
        return module.diffusers_model()
    except NotExpressible as exc:
        raise UserError(f"model.run {spec.model.run!r} cannot leave as a diffusers folder: its {what}: {exc}") from None


def _fold_statistics(form: DiffusersModel, state: dict[str, Tensor], mean: Tensor, std: Tensor) -> DiffusersModel:
    """Make an ``AutoencoderKL``'s latents (z - mean) / std: its moments (mean, log-variance)
    through quant_conv are shifted and scaled, and post_quant_conv undoes it."""
    z = len(mean)
    mean, std = mean.double(), std.double()
    eye = torch.eye(2 * z, dtype=torch.float64)[..., None, None]
    weight = state.get("quant_conv.weight", eye).double()
    bias = state.get("quant_conv.bias", torch.zeros(2 * z, dtype=torch.float64)).double()
    scale = torch.cat([1 / std, torch.ones(z, dtype=torch.float64)])
    shift = torch.cat([-mean / std, -2 * std.log()])
    state["quant_conv.weight"] = (scale[:, None, None, None] * weight).float()
    state["quant_conv.bias"] = (scale * bias + shift).float()
    post_weight = state.get("post_quant_conv.weight", torch.eye(z, dtype=torch.float64)[..., None, None]).double()
    post_bias = state.get("post_quant_conv.bias", torch.zeros(z, dtype=torch.float64)).double()
    state["post_quant_conv.weight"] = (post_weight * std[None, :, None, None]).float()
    state["post_quant_conv.bias"] = (post_bias + post_weight[..., 0, 0] @ mean).float()
    config = {**form.config, "use_quant_conv": True, "use_post_quant_conv": True, "scaling_factor": 1.0}
    return replace(form, config=config)


def _first_stage(first_stage: nn.Module, mean: Tensor, std: Tensor, side: int, spec: ExportCheckpointSpec):
    """The first stage's part, its latents normalised by ``mean`` and ``std``."""
    form = _form(first_stage, "first stage", spec)
    state = to_pairs(first_stage, form.pairs)
    if form.class_name == "AutoencoderKL":
        form = _fold_statistics(form, state, mean.flatten(), std.flatten())
    elif mean.abs().max() > 1e-6 or (std.max() - std.min()) > 1e-6 * std.max():
        raise UserError(
            f"model.run {spec.model.run!r} cannot leave as a diffusers folder: its {form.class_name}'s latents are "
            "normalised per channel (mean and std), which diffusers' one scaling_factor cannot express"
        )
    else:
        form = replace(form, config={**form.config, "scaling_factor": float(1 / std.flatten()[0])})
    return replace(form, config={**form.config, "sample_size": side}), state


def _pipeline(export: Export, unet: str, vae: str, conditioners: list[str]) -> None:
    """Name the diffusers pipeline that holds every part, if one does."""
    if not conditioners and unet == "UNet2DModel" and vae == "VQModel":
        export.pipeline = "LDMPipeline"
    elif conditioners == ["CLIPTextModel"] and unet == "UNet2DConditionModel" and vae == "AutoencoderKL":
        export.pipeline = "StableDiffusionPipeline"
    else:
        export.notes.append(
            f"no diffusers pipeline holds a {unet} with a {vae} and conditioners {conditioners or 'none'}: the "
            "models are written without model_index.json"
        )


def _ldm(spec: ExportCheckpointSpec, ctx: RunContext) -> tuple[Export, list[Path]]:
    pipeline = load_pipeline(spec.model, ctx, "model")
    ldm_spec = holding(spec.model, ctx, "model", "ldm")
    denoiser = pipeline.ldm.denoiser
    export = Export()
    unet = _form(denoiser, "denoiser", spec)
    latent_side = pipeline.latent_shape[1] if pipeline.latent_shape[1] == pipeline.latent_shape[2] else None
    unet = replace(unet, config={**unet.config, "sample_size": latent_side or list(pipeline.latent_shape[1:])})
    space = pipeline.space
    vae, vae_state = _first_stage(space.first_stage, space.mean, space.std, pipeline.image_size[0], spec)
    export.parts["vae" if vae.class_name == "AutoencoderKL" else "vqvae"] = (vae, vae_state)
    export.parts["unet"] = (unet, to_pairs(denoiser, unet.pairs))
    classes = []
    for conditioner in pipeline.ldm.conditioners:
        try:
            form = conditioner.diffusers_model()
        except NotExpressible as exc:
            export.notes.append(f"conditioner {type(conditioner).__name__} not exported: {exc}")
            classes.append(type(conditioner).__name__)
            continue
        export.parts["text_encoder"] = (form, to_pairs(conditioner, form.pairs))
        classes.append(form.class_name)
    export.scheduler = files.scheduler_config(ldm_spec.diffusion, denoiser.params.prediction)
    _pipeline(export, unet.class_name, vae.class_name, classes)
    return export, list(pipeline.reads)


def _first_stage_only(spec: ExportCheckpointSpec, ctx: RunContext) -> tuple[Export, list[Path]]:
    trained = load_trained(spec.model, ctx, "model", None, "first_stage")
    channels = trained.spec.model.cls.latent_shape(trained.spec.model.params).channels
    mean = trained.extra.get("latent_mean", torch.zeros(channels))
    std = trained.extra.get("latent_std", torch.ones(channels))
    form = _form(trained.module, "first stage", spec)
    # Kept as trained (latents not normalised): the per-channel statistics go in the config.
    config = {**form.config, "scaling_factor": float(1 / std.mean())}
    if form.class_name == "AutoencoderKL":
        config |= {"latents_mean": mean.tolist(), "latents_std": std.tolist()}
    export = Export(parts={"": (replace(form, config=config), to_pairs(trained.module, form.pairs))})
    return export, [trained.checkpoint]


def _write_diffusers(export: Export, folder: Path, dtype: torch.dtype) -> None:
    for name, (form, state) in export.parts.items():
        files.write_model(folder / name if name else folder, form, state, dtype)
    if export.scheduler is not None:
        (folder / "scheduler").mkdir()
        (folder / "scheduler" / files.SCHEDULER).write_text(json.dumps(export.scheduler, indent=2) + "\n")
    if export.pipeline is None:
        return
    parts = {name: (form.library, form.class_name) for name, (form, _) in export.parts.items()}
    parts["scheduler"] = ("diffusers", "DDIMScheduler")
    if export.pipeline == "StableDiffusionPipeline":
        parts["tokenizer"] = ("transformers", "CLIPTokenizer")
    files.write_pipeline(folder, export.pipeline, parts)
    if export.pipeline == "StableDiffusionPipeline":
        index = json.loads((folder / files.PIPELINE).read_text())
        index |= {"safety_checker": [None, None], "feature_extractor": [None, None], "requires_safety_checker": False}
        (folder / files.PIPELINE).write_text(json.dumps(index, indent=2) + "\n")


def run(spec: ExportCheckpointSpec, ctx: RunContext) -> None:
    """Convert the run's models (refusing what the format cannot express), then write them."""
    checked = OneShotRun.check(spec, ctx)
    spec = checked.spec
    source = run_spec(spec.model, ctx, "model")
    held = getattr(source, "trained_components", dict)()
    if "ldm" not in held and "first_stage" not in held:
        raise UserError(f"model.run: {spec.model.run!r} is a {source.task} run, which holds no model to export")
    export, reads = _ldm(spec, ctx) if "ldm" in held else _first_stage_only(spec, ctx)
    root = checked.open(ctx, reads)
    partial = root / "diffusers.partial"
    _write_diffusers(export, partial, DTYPES[spec.dtype])
    shutil.move(partial, root / "diffusers")
    summary = {"folder": str(root / "diffusers"), "pipeline": export.pipeline, "parts": sorted(export.parts)}
    print(json.dumps({**summary, "notes": export.notes}), file=ctx.out)
