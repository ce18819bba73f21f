"""Task ``export_checkpoint``: a run's models as a diffusers folder or in the original code's layout.

Everything is converted in memory first, so a model the format cannot express is refused,
naming the param, before anything is written. An LDM's latent statistics (our per-channel
mean and std) are folded into a KL autoencoder's ``quant_conv`` and ``post_quant_conv``
(:mod:`tasks.interchange.folding`), so the exported autoencoder's latents are the ones the
UNet was trained on and the scale factor is 1: other tools then sample exactly as ours do.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import save_file
from torch import Tensor, nn

from core import DiffusersModel, NotExpressible, UserError
from core.original import to_pairs
from tasks.interchange import diffusers_files as files
from tasks.interchange.folding import fold_statistics, one_scale
from tasks.interchange.original_yaml import first_stage_section, ldm_config
from tasks.interchange.spec import ExportCheckpointSpec
from tasks.ldm.generation import Pipeline, load_pipeline
from tasks.runs.context import RunContext
from tasks.runs.oneshot import OneShotRun
from tasks.runs.trained import holding, load_trained, run_spec

DTYPES = {"float32": torch.float32, "float16": torch.float16}
FORMATS = {"diffusers": "a diffusers folder", "original": "the original code's layout"}


@dataclass
class Export:
    """What a diffusers folder holds: each part's model and tensors, the scheduler's config,
    the pipeline class (none when no diffusers pipeline holds every part) and why not."""

    parts: dict[str, tuple[DiffusersModel, dict[str, Tensor]]] = field(default_factory=dict)
    scheduler: dict | None = None
    pipeline: str | None = None
    notes: list[str] = field(default_factory=list)


def _refused(spec: ExportCheckpointSpec, what: str, exc: NotExpressible) -> UserError:
    return UserError(f"model.run {spec.model.run!r} cannot leave as {FORMATS[spec.format]}: its {what}: {exc}")


def _paired(module: nn.Module, pairs: list, what: str, spec: ExportCheckpointSpec) -> dict[str, Tensor]:
    """The tensors ``pairs`` name, refused if they leave out a parameter of the module (buffers
    they leave out are training bookkeeping, such as a VQ codebook's use counts)."""
    left = sorted({name for name, _ in module.named_parameters()} - {pair.ours for pair in pairs})
    if left:
        raise _refused(spec, what, NotExpressible(f"tensors {left[:3]} have no place there"))
    return to_pairs(module, pairs)


def _form(module: nn.Module, what: str, spec: ExportCheckpointSpec) -> DiffusersModel:
    try:
        return module.diffusers_model()
    except NotExpressible as exc:
        raise _refused(spec, what, exc) from None


def _name(module: nn.Module, kind: str, ctx: RunContext) -> str:
    return next(entry.name for entry in ctx.registry.entries(kind) if entry.cls is type(module))


def _latents(state: dict[str, Tensor], space: Any, kl: bool, spec: ExportCheckpointSpec) -> float:
    """Fold the latent statistics into a KL autoencoder's ``state``; the scale factor left
    (another first stage's latents, quantised, take the statistics as one scale or not at all)."""
    if kl:
        fold_statistics(state, space.mean, space.std)
        return 1.0
    try:
        return one_scale(space.mean, space.std, "first stage")
    except NotExpressible as exc:
        raise _refused(spec, "first stage", exc) from None


def _vae(pipe: Pipeline, spec: ExportCheckpointSpec) -> tuple[DiffusersModel, dict[str, Tensor]]:
    """The first stage's diffusers part, its latents normalised as the UNet sees them."""
    form = _form(pipe.space.first_stage, "first stage", spec)
    state = _paired(pipe.space.first_stage, form.pairs, "first stage", spec)
    scale = _latents(state, pipe.space, form.class_name == "AutoencoderKL", spec)
    config = {**form.config, "scaling_factor": scale, "sample_size": pipe.image_size[0]}
    if form.class_name == "AutoencoderKL":
        config |= {"use_quant_conv": True, "use_post_quant_conv": True}
    return replace(form, config=config), state


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


def _diffusers_ldm(pipe: Pipeline, ldm_spec: Any, spec: ExportCheckpointSpec) -> Export:
    denoiser, export = pipe.ldm.denoiser, Export()
    unet = _form(denoiser, "denoiser", spec)
    side = pipe.latent_shape[1] if pipe.latent_shape[1] == pipe.latent_shape[2] else list(pipe.latent_shape[1:])
    unet = replace(unet, config={**unet.config, "sample_size": side})
    vae, vae_state = _vae(pipe, spec)
    export.parts["vae" if vae.class_name == "AutoencoderKL" else "vqvae"] = (vae, vae_state)
    export.parts["unet"] = (unet, _paired(denoiser, unet.pairs, "denoiser", spec))
    classes = []
    for conditioner in pipe.ldm.conditioners:
        try:
            form = conditioner.diffusers_model()
        except NotExpressible as exc:
            export.notes.append(f"conditioner {type(conditioner).__name__} not exported: {exc}")
            classes.append(type(conditioner).__name__)
            continue
        export.parts["text_encoder"] = (form, _paired(conditioner, form.pairs, "conditioner", spec))
        classes.append(form.class_name)
    export.scheduler = files.scheduler_config(ldm_spec.diffusion, denoiser.params.prediction)
    _pipeline(export, unet.class_name, vae.class_name, classes)
    return export


def _diffusers_first_stage(trained: Any, spec: ExportCheckpointSpec) -> Export:
    channels = trained.spec.model.cls.latent_shape(trained.spec.model.params).channels
    mean = trained.extra.get("latent_mean", torch.zeros(channels))
    std = trained.extra.get("latent_std", torch.ones(channels))
    form = _form(trained.module, "first stage", spec)
    # Kept as trained (latents not normalised): the per-channel statistics go in the config.
    config = {**form.config, "scaling_factor": float(1 / std.mean())}
    if form.class_name == "AutoencoderKL":
        config |= {"latents_mean": mean.tolist(), "latents_std": std.tolist()}
    state = _paired(trained.module, form.pairs, "first stage", spec)
    return Export(parts={"": (replace(form, config=config), state)})


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
    extra: dict[str, Any] = {}
    if export.pipeline == "StableDiffusionPipeline":
        parts["tokenizer"] = ("transformers", "CLIPTokenizer")
        extra = {"safety_checker": [None, None], "feature_extractor": [None, None], "requires_safety_checker": False}
    files.write_pipeline(folder, export.pipeline, parts, extra)


def _original(module: nn.Module, prefix: str, what: str, spec: ExportCheckpointSpec) -> dict[str, Tensor]:
    return {prefix + key: value for key, value in _paired(module, module.original_names(), what, spec).items()}


def _original_ldm(pipe: Pipeline, ldm_spec: Any, spec: ExportCheckpointSpec, ctx: RunContext) -> tuple[dict, dict]:
    """(tensors under the original's names, its YAML as data) of an LDM run."""
    first, denoiser = pipe.space.first_stage, pipe.ldm.denoiser
    folded = _original(first, "", "first stage", spec)
    kl = getattr(getattr(first.params, "regularizer", None), "name", None) == "kl"
    scale = _latents(folded, pipe.space, kl, spec)
    state = {f"first_stage_model.{key}": value for key, value in folded.items()}
    state |= _original(denoiser, "model.diffusion_model.", "denoiser", spec)
    for conditioner in pipe.ldm.conditioners:
        state |= _original(conditioner, "cond_stage_model.", "conditioner", spec)
    parts = {
        "first_stage": (_name(first, "first_stage", ctx), first.params),
        "denoiser": (_name(denoiser, "denoiser", ctx), denoiser.params),
        "conditioners": [(_name(c, "conditioner", ctx), c.params) for c in pipe.ldm.conditioners],
    }
    try:
        config = ldm_config(parts, ldm_spec.diffusion, (pipe.latent_shape[1], pipe.image_size[0]), scale)
    except NotExpressible as exc:
        raise _refused(spec, "model", exc) from None
    return state, config


def _original_first_stage(trained: Any, spec: ExportCheckpointSpec) -> tuple[dict, dict]:
    module = trained.module
    side = trained.spec.image_size()[0] if trained.spec.image_size() else 256
    try:
        section = first_stage_section(trained.spec.model.name, module.params, side)
    except NotExpressible as exc:
        raise _refused(spec, "first stage", exc) from None
    return _original(module, "", "first stage", spec), {"model": section}


def _convert(spec: ExportCheckpointSpec, ctx: RunContext) -> tuple[Any, list[Path]]:
    """What the run becomes in the spec's format, and the checkpoints it was read from."""
    source = run_spec(spec.model, ctx, "model")
    held = getattr(source, "trained_components", dict)()
    if "ldm" in held:
        pipe, ldm_spec = load_pipeline(spec.model, ctx, "model"), holding(spec.model, ctx, "model", "ldm")
        if spec.format == "diffusers":
            return _diffusers_ldm(pipe, ldm_spec, spec), list(pipe.reads)
        return _original_ldm(pipe, ldm_spec, spec, ctx), list(pipe.reads)
    if "first_stage" in held:
        trained = load_trained(spec.model, ctx, "model", None, "first_stage")
        convert = _diffusers_first_stage if spec.format == "diffusers" else _original_first_stage
        return convert(trained, spec), [trained.checkpoint]
    raise UserError(f"model.run: {spec.model.run!r} is a {source.task} run, which holds no model to export")


def run(spec: ExportCheckpointSpec, ctx: RunContext) -> None:
    """Convert the run's models (refusing what the format cannot express), then write them."""
    checked = OneShotRun.check(spec, ctx)
    spec = checked.spec
    made, reads = _convert(spec, ctx)
    root = checked.open(ctx, reads)
    dtype = DTYPES[spec.dtype]
    if spec.format == "diffusers":
        partial = root / "diffusers.partial"
        _write_diffusers(made, partial, dtype)
        shutil.move(partial, root / "diffusers")
        summary = {"folder": str(root / "diffusers"), "pipeline": made.pipeline, "parts": sorted(made.parts)}
        print(json.dumps({**summary, "notes": made.notes}), file=ctx.out)
        return
    state, config = made
    tensors = {key: value.detach().to(dtype).contiguous() for key, value in state.items()}
    save_file(tensors, str(root / "model.safetensors.partial"), metadata={"format": "pt"})
    (root / "model.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (root / "model.safetensors.partial").rename(root / "model.safetensors")
    print(json.dumps({"checkpoint": str(root / "model.safetensors"), "config": str(root / "model.yaml")}), file=ctx.out)
