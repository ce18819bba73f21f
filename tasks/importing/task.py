"""Task ``import_checkpoint``: weights released with the original CompVis code become a run.

The checkpoint's tensors are read without unpickling anything but tensors
(:mod:`tasks.importing.pickled`), renamed with the component's ``original_names()`` and
checked both ways: every tensor the model needs must be in the checkpoint, and every tensor
of the checkpoint's part must be used (a checkpoint and a config that disagree are refused,
naming the first tensors that differ). The run holds our usual checkpoint: the weights (as
raw and as EMA weights: first stages have no EMA) and the latent statistics the original
scale factor stands for (mean 0, std 1 / scale_factor).
"""

from __future__ import annotations

import json

import torch
from torch import Tensor

from core import UserError, original
from tasks.importing.original_config import first_stage_config, read_config, scale_factor
from tasks.importing.pickled import read_checkpoint
from tasks.importing.spec import ImportCheckpointSpec, resolve_import
from tasks.runs.checkpoint import Checkpoints, TrainingState
from tasks.runs.context import RunContext
from tasks.runs.oneshot import OneShotRun

TRAINING_ONLY = ("loss.",)
"""Parts of an original first stage's checkpoint that only its training used (LPIPS, discriminator)."""


def _part(tensors: dict[str, Tensor], prefix: str, spec: ImportCheckpointSpec) -> dict[str, Tensor]:
    part = {key.removeprefix(prefix): value for key, value in tensors.items() if key.startswith(prefix)}
    if not part:
        raise UserError(
            f"checkpoint: {spec.checkpoint} has no tensors under {prefix!r}; give the checkpoint released with "
            f"{spec.original_config}"
        )
    return {key: value for key, value in part.items() if not key.startswith(TRAINING_ONLY)}


def _converted(model: torch.nn.Module, part: dict[str, Tensor], prefix: str, spec: ImportCheckpointSpec):
    try:
        weights = original.from_original(model, part)
    except KeyError as exc:
        raise UserError(
            f"checkpoint: {spec.checkpoint} has no {prefix}{exc.args[0]}, which {spec.original_config} calls for; "
            "give the config released with this checkpoint"
        ) from None
    except ValueError as exc:
        raise UserError(f"checkpoint: {spec.checkpoint}: {exc}; give the config released with it") from None
    used = {name for pair in model.original_names() for name in pair.originals}
    unused = sorted(set(part) - used)
    if unused:
        raise UserError(
            f"checkpoint: {spec.checkpoint} holds tensors {spec.original_config} does not call for "
            f"({', '.join(prefix + key for key in unused[:3])}{', ...' if len(unused) > 3 else ''}); give the config "
            "released with this checkpoint"
        )
    return weights


def _scale(spec: ImportCheckpointSpec, config: dict, tensors: dict[str, Tensor]) -> float:
    if spec.scale_factor is not None:
        return spec.scale_factor
    given = scale_factor(config)
    if given is not None:
        return given
    stored = tensors.get("scale_factor")
    return float(stored) if stored is not None else 1.0


def run(spec: ImportCheckpointSpec, ctx: RunContext) -> None:
    """Fill the model from the config; read, convert and check the weights; then write the run."""
    checked = OneShotRun.check(resolve_import(spec, ctx), ctx)
    spec = checked.spec
    config = read_config(spec.original_config)
    first = first_stage_config(config)
    try:
        tensors = read_checkpoint(spec.checkpoint)
    except ValueError as exc:
        raise UserError(f"checkpoint: {exc}") from None
    model = spec.model.build()
    weights = _converted(model, _part(tensors, first.prefix, spec), first.prefix, spec)
    model.load_state_dict(weights)
    channels = spec.model.cls.latent_shape(spec.model.params).channels
    scale = _scale(spec, config, tensors)
    extra = {"latent_mean": torch.zeros(channels), "latent_std": torch.full((channels,), 1.0 / scale)}
    root = checked.open(ctx, [spec.checkpoint])
    state = TrainingState(step=0, data_position=0, models={"first_stage": weights}, extra=extra)
    Checkpoints(root / "checkpoints", keep=1).save(state)
    summary = {"first_stage": spec.model.name, "tensors": len(weights), "scale_factor": scale}
    print(json.dumps(summary), file=ctx.out)
