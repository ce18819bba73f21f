"""diffusers' folders as files: a model folder is its ``config.json`` (with ``_class_name``)
and ``diffusion_pytorch_model.safetensors``; a pipeline folder holds model folders and a
``model_index.json`` naming each one's library and class; a scheduler folder holds
``scheduler_config.json``. Written and read here without importing diffusers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file
from torch import Tensor

from core import DiffusersModel, UserError
from tasks.interchange.tensor_files import SafetensorsFile

WEIGHTS = "diffusion_pytorch_model.safetensors"
WEIGHTS_OF = {"diffusers": WEIGHTS, "transformers": "model.safetensors"}
CONFIG = "config.json"
PIPELINE = "model_index.json"
SCHEDULER = "scheduler_config.json"
FORMAT_VERSION = "0.30.0"
"""The diffusers version our folders state: the oldest whose classes read every key we write."""
_SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear", "cosine": "squaredcos_cap_v2"}
_PREDICTIONS = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}


def read_json(path: Path, field: str) -> dict[str, Any]:
    """The JSON object in ``path``; a :class:`UserError` naming ``field`` if the file is missing,
    is not valid JSON, or holds no object."""
    try:
        found = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{field}: {path} is missing; give a folder that save_pretrained wrote") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{field}: {path} is not valid JSON ({exc})") from None
    if not isinstance(found, dict):
        raise UserError(f"{field}: {path} holds no JSON object; give a folder that save_pretrained wrote")
    return found


def write_model(folder: Path, model: DiffusersModel, state: dict[str, Tensor], dtype: torch.dtype) -> None:
    """Write ``model``'s folder (its config and ``state``, under its library's names, in
    ``dtype``) and the ``files`` it brings, relative to the pipeline folder above it."""
    folder.mkdir(parents=True)
    # A transformers model names its class in the config's "architectures" instead.
    stamp = {"_class_name": model.class_name, "_diffusers_version": FORMAT_VERSION}
    config = {**(stamp if model.library == "diffusers" else {}), **model.config}
    (folder / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    tensors = {key: value.detach().to(dtype).contiguous() for key, value in state.items()}
    save_file(tensors, str(folder / WEIGHTS_OF[model.library]), metadata={"format": "pt"})
    for relative, content in model.files.items():
        target = folder.parent / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content.read_bytes() if isinstance(content, Path) else content.encode())


def read_model(folder: Path, field: str) -> tuple[str, dict[str, Any], Mapping[str, Tensor]]:
    """(class name, config, tensors) of the diffusers model folder ``folder``; a
    :class:`UserError` naming ``field`` if it is not one."""
    config_file, weights = folder / CONFIG, folder / WEIGHTS
    if not config_file.is_file() or not weights.is_file():
        missing = CONFIG if not config_file.is_file() else WEIGHTS
        raise UserError(
            f"{field}: {str(folder)!r} is not a diffusers model folder (no {missing}); give a folder that "
            f"save_pretrained wrote ({CONFIG} and {WEIGHTS}), or a pipeline folder with {PIPELINE}"
        )
    config = read_json(config_file, field)
    if not isinstance(config.get("_class_name"), str):
        raise UserError(f"{field}: {config_file} names no _class_name; give a folder that save_pretrained wrote")
    return config["_class_name"], config, load_weights(weights, field)


def load_weights(path: Path, field: str) -> Mapping[str, Tensor]:
    """The tensors of the safetensors file ``path``, read on access; a :class:`UserError`
    naming ``field`` if it is not one."""
    try:
        return SafetensorsFile(path)
    except (SafetensorError, OSError) as exc:
        raise UserError(f"{field}: {path} is not a readable safetensors file ({exc})") from None


def write_pipeline(
    folder: Path, class_name: str, parts: dict[str, tuple[str, str]], extra: dict[str, Any] | None = None
) -> None:
    """``model_index.json`` of a pipeline ``class_name`` whose ``parts`` map each folder name
    to its (library, class); ``extra``: the pipeline's other settings and absent parts."""
    index = {"_class_name": class_name, "_diffusers_version": FORMAT_VERSION}
    index |= {name: [library, cls] for name, (library, cls) in parts.items()} | (extra or {})
    (folder / PIPELINE).write_text(json.dumps(index, indent=2) + "\n")


def read_pipeline(folder: Path, field: str) -> dict[str, tuple[str, str]]:
    """Each part of the pipeline folder ``folder``: its folder name -> (library, class);
    parts set to null (a pipeline's absent safety checker) are left out."""
    index = read_json(folder / PIPELINE, field)
    return {
        name: (value[0], value[1])
        for name, value in index.items()
        if not name.startswith("_") and isinstance(value, list) and len(value) == 2 and value[1] is not None
    }


def scheduler_config(diffusion: Any, prediction: str) -> dict[str, Any]:
    """A ``DDIMScheduler`` config for our diffusion spec and prediction, with the original
    code's DDIM spacing (``leading`` with ``steps_offset`` 1; ours: ``ldm``)."""
    return {
        "_class_name": "DDIMScheduler",
        "_diffusers_version": FORMAT_VERSION,
        "num_train_timesteps": diffusion.timesteps,
        "beta_start": diffusion.beta_start,
        "beta_end": diffusion.beta_end,
        "beta_schedule": _SCHEDULES[diffusion.schedule],
        "prediction_type": _PREDICTIONS[prediction],
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
        "timestep_spacing": "leading",
    }


def diffusion_from_scheduler(config: dict[str, Any], field: str) -> tuple[dict[str, Any], str]:
    """(our diffusion spec's values, our prediction) for a diffusers scheduler config."""
    schedules = {value: key for key, value in _SCHEDULES.items()}
    predictions = {value: key for key, value in _PREDICTIONS.items()}
    schedule = config.get("beta_schedule", "linear")
    prediction = config.get("prediction_type", "epsilon")
    if schedule not in schedules or prediction not in predictions:
        bad = f"beta_schedule {schedule!r}" if schedule not in schedules else f"prediction_type {prediction!r}"
        raise UserError(
            f"{field}: its scheduler's {bad} is not one this code has ({', '.join(schedules)}; "
            f"{', '.join(predictions)})"
        )
    diffusion = {
        "schedule": schedules[schedule],
        "timesteps": int(config.get("num_train_timesteps", 1000)),
        "beta_start": float(config.get("beta_start", 0.0001)),
        "beta_end": float(config.get("beta_end", 0.02)),
    }
    return diffusion, predictions[prediction]
