"""Task ``import_checkpoint``: weights released with the original CompVis code become a run.

The checkpoint's tensors are read without unpickling anything but tensors
(:mod:`tasks.importing.pickled`), renamed with each component's ``original_names()`` and
checked both ways: every tensor a model needs must be in its part of the checkpoint
(``first_stage_model.``, ``model.diffusion_model.`` or its EMA ``model_ema.``,
``cond_stage_model.``), and every tensor of that part must be used, so a checkpoint and a
config that disagree are refused, naming the first tensors that differ; an LDM's stored
noise schedule must be the config's. The run holds our usual checkpoint: the first stage,
an LDM's denoiser and conditioners, and the latent statistics the original scale factor
stands for (mean 0, std 1 / scale_factor).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from core import UserError, original
from tasks.importing import diffusers_folder
from tasks.importing.layouts import nearest_layout
from tasks.importing.original_config import first_stage_config, read_config, scale_factor
from tasks.importing.pickled import read_checkpoint
from tasks.importing.spec import ImportCheckpointSpec, resolve_import
from tasks.interchange.diffusers_files import read_model
from tasks.interchange.tensor_files import Renamed
from tasks.runs.checkpoint import Checkpoints, TrainingState
from tasks.runs.context import RunContext
from tasks.runs.oneshot import OneShotRun

UNUSED = ("loss.", "transformer.to_logits.", "transformer.text_model.embeddings.position_ids")
"""Tensors of an original checkpoint's parts that no forward pass uses: a first stage's
training losses (LPIPS, discriminator), the BERT encoder's unused output projection and the
position indices Stable Diffusion's files keep beside CLIP's weights."""


def _part(tensors: Mapping[str, Tensor], prefix: str, spec: ImportCheckpointSpec) -> Mapping[str, Tensor]:
    """The tensors under ``prefix``, without it (a view: none is read yet), less :data:`UNUSED`."""
    names = {key.removeprefix(prefix): key for key in tensors if key.startswith(prefix)}
    if not names:
        raise UserError(
            f"checkpoint: {spec.checkpoint} has no tensors under {prefix!r} (its names look like "
            f"{nearest_layout(tensors)[0]}); give the checkpoint released with {spec.original_config}"
        )
    return Renamed(tensors, {name: key for name, key in names.items() if not name.startswith(UNUSED)})


def _some(keys: list[str], prefix: str) -> str:
    """The first three of ``keys`` with their prefix, and how many there are in all."""
    shown = ", ".join(prefix + key for key in keys[:3])
    return f"{len(keys)}: {shown}{', ...' if len(keys) > 3 else ''}"


def _converted(
    model: nn.Module, part: Mapping[str, Tensor], prefix: str, spec: ImportCheckpointSpec, pairs: list | None = None
) -> dict:
    """``model``'s state dict from ``part`` (the other code's names, through ``pairs``: by
    default its original names), refused unless every tensor of ``part`` is used and none is
    missing."""
    pairs = model.original_names() if pairs is None else pairs
    source = spec.original_config or "the config.json beside them"
    used = [name for pair in pairs for name in pair.originals]
    missing, unused = [key for key in used if key not in part], sorted(set(part) - set(used))
    if missing or unused:
        what = f"lacks tensors {source} calls for ({_some(missing, prefix)})" if missing else ""
        extra = f"holds tensors {source} does not call for ({_some(unused, prefix)})" if unused else ""
        raise UserError(
            f"checkpoint: {spec.checkpoint} {' and '.join(filter(None, [what, extra]))}; its names look like "
            f"{nearest_layout(prefix + key for key in part)[0]}: give the config released with this checkpoint"
        )
    try:
        return original.from_pairs(model, pairs, part)
    except ValueError as exc:
        raise UserError(f"checkpoint: {spec.checkpoint}: {exc}; give the config released with it") from None


def _ema_part(names: list[str], tensors: Mapping[str, Tensor], spec: ImportCheckpointSpec) -> Mapping[str, Tensor]:
    # The original's EMA buffer of a UNet weight is its name under the diffusion wrapper with
    # every dot removed; built forwards from the names, since removing dots cannot be undone.
    keys = {name: "model_ema." + f"diffusion_model.{name}".replace(".", "") for name in names}
    if len(set(keys.values())) != len(keys):
        raise UserError(f"checkpoint: {spec.checkpoint}: two UNet weights share an EMA name; import weights 'raw'")
    if not any(key.startswith("model_ema.") for key in tensors):
        raise UserError(
            f"checkpoint: {spec.checkpoint} has no EMA weights (model_ema.*; the model was trained without EMA); "
            "set weights to 'raw'"
        )
    missing = [key for key in keys.values() if key not in tensors]
    if missing:
        raise UserError(
            f"checkpoint: {spec.checkpoint} has no {missing[0]}, the EMA of a UNet weight; set weights 'raw'"
        )
    return Renamed(tensors, keys)


def _check_schedule(spec: ImportCheckpointSpec, tensors: Mapping[str, Tensor]) -> None:
    stored = tensors.get("betas")
    if stored is None:
        return
    ours = spec.diffusion.noise_schedule().betas.float()
    if stored.shape != ours.shape or not torch.allclose(stored.float(), ours, rtol=1e-4, atol=1e-7):
        d = spec.diffusion
        raise UserError(
            f"checkpoint: {spec.checkpoint} was trained with another noise schedule than {spec.original_config} gives "
            f"({d.schedule}, {d.timesteps} steps, beta {d.beta_start} to {d.beta_end}); give the config released "
            "with this checkpoint"
        )


def _ldm_weights(spec: ImportCheckpointSpec, tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The ``ldm`` model's state dict (denoiser, then each conditioner) from the checkpoint."""
    ldm = spec.build()
    if spec.weights == "ema":
        names = [name for pair in ldm.denoiser.original_names() for name in pair.originals]
        unet, prefix = _ema_part(names, tensors, spec), "model_ema."
    else:
        unet, prefix = _part(tensors, "model.diffusion_model.", spec), "model.diffusion_model."
    state = {f"denoiser.{key}": value for key, value in _converted(ldm.denoiser, unet, prefix, spec).items()}
    for i, module in enumerate(ldm.conditioners):
        weights = module.state_dict()
        if module.original_names():
            weights = _converted(module, _part(tensors, "cond_stage_model.", spec), "cond_stage_model.", spec)
        state.update({f"conditioners.{i}.{key}": value for key, value in weights.items()})
    return state


def _scale(spec: ImportCheckpointSpec, config: dict, tensors: Mapping[str, Tensor]) -> float:
    if spec.scale_factor is not None:
        return spec.scale_factor
    given = scale_factor(config)
    if given is not None:
        return given
    stored = tensors.get("scale_factor")
    return float(stored) if stored is not None else 1.0


def _read(path: Path) -> Mapping[str, Tensor]:
    try:
        return read_checkpoint(path)
    except ValueError as exc:
        raise UserError(f"checkpoint: {exc}") from None


def _from_file(spec: ImportCheckpointSpec) -> tuple[dict[str, dict[str, Tensor]], Tensor, Tensor]:
    """The models and the latent (mean, std) of an original checkpoint file."""
    config = read_config(spec.original_config)
    first = first_stage_config(config)
    tensors = _read(spec.checkpoint)
    models = {"first_stage": _converted(spec.model.build(), _part(tensors, first.prefix, spec), first.prefix, spec)}
    if spec.denoiser is not None:
        _check_schedule(spec, tensors)
        models["ldm"] = _ldm_weights(spec, tensors)
    channels = spec.model.cls.latent_shape(spec.model.params).channels
    return models, torch.zeros(channels), torch.full((channels,), 1.0 / _scale(spec, config, tensors))


def _from_diffusers(module: nn.Module, folder: Path, spec: ImportCheckpointSpec) -> dict[str, Tensor]:
    """``module``'s state dict from the diffusers part ``folder``; a model of another library
    (transformers' text encoder), which loaded its folder itself when built, as built."""
    form = module.diffusers_model()
    if form.library != "diffusers":
        return module.state_dict()
    tensors = read_model(folder, "checkpoint")[2]
    return _converted(module, tensors, f"{folder.name}/", spec, form.pairs)


def _from_folder(spec: ImportCheckpointSpec) -> tuple[dict[str, dict[str, Tensor]], Tensor, Tensor]:
    """The models and the latent (mean, std) of a diffusers folder."""
    parts = diffusers_folder.parts_of(spec.checkpoint)
    models = {"first_stage": _from_diffusers(spec.model.build(), parts.first_stage, spec)}
    if spec.denoiser is not None:
        ldm = spec.build()
        state = {f"denoiser.{k}": v for k, v in _from_diffusers(ldm.denoiser, parts.unet, spec).items()}
        for i, module in enumerate(ldm.conditioners):
            weights = _from_diffusers(module, parts.text_encoder, spec)
            state.update({f"conditioners.{i}.{key}": value for key, value in weights.items()})
        models["ldm"] = state
    channels = spec.model.cls.latent_shape(spec.model.params).channels
    mean, std = diffusers_folder.latent_statistics(parts.first_stage, channels, spec.scale_factor)
    return models, mean, std


def run(spec: ImportCheckpointSpec, ctx: RunContext) -> None:
    """Fill the models from the config; read, convert and check the weights; then write the run."""
    checked = OneShotRun.check(resolve_import(spec, ctx), ctx)
    spec = checked.spec
    models, mean, std = _from_folder(spec) if spec.checkpoint.is_dir() else _from_file(spec)
    extra = {"latent_mean": mean, "latent_std": std}
    root = checked.open(ctx, [spec.checkpoint])
    Checkpoints(root / "checkpoints", keep=1).save(TrainingState(step=0, data_position=0, models=models, extra=extra))
    summary = {name: len(weights) for name, weights in models.items()}
    scale = 1.0 / float(std.mean())
    print(json.dumps({"tensors": summary, "scale_factor": scale, "weights": spec.weights}), file=ctx.out)
