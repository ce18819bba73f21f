"""The original CompVis code's YAML configs, read as data: which of our components and params
express the model a config describes.

Only the ``model`` section matters; training parts (``lossconfig``, ``scheduler_config``,
``data``, ``lightning``) are ignored. A model ``target`` is matched by name against the ones
known here and never imported. A target we do not know, or an option of a known one that our
components cannot express, is a :class:`ConfigError` naming it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

FIRST_STAGE_TARGETS = {
    "ldm.models.autoencoder.AutoencoderKL": "kl",
    "ldm.models.autoencoder.VQModel": "vq",
    "ldm.models.autoencoder.VQModelInterface": "vq",
}
LDM_TARGETS = ("ldm.models.diffusion.ddpm.LatentDiffusion",)
UNET_TARGET = "ldm.modules.diffusionmodules.openaimodel.UNetModel"
_UNET_FIXED = {"dims": 2, "conv_resample": True, "use_new_attention_order": False, "num_classes": None}
"""UNet options every released model has as here; another value is refused, naming it."""


class ConfigError(ValueError):
    """An original config this code cannot express, in one sentence naming the key and value."""


@dataclass(frozen=True)
class FirstStageConfig:
    """What a config says of a first stage: our ``autoencoder`` spec, and the name prefix of its
    weights in a checkpoint (``first_stage_model.`` inside an LDM's, none in its own)."""

    model: dict[str, Any]
    prefix: str


def read_config(path: Path) -> dict[str, Any]:
    """The YAML file at ``path`` as data; a :class:`ConfigError` if it is not a mapping with a ``model``."""
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(loaded, dict) or not isinstance(loaded.get("model"), dict):
        raise ConfigError(f"{path} has no 'model' section; give the original config the checkpoint was released with")
    return loaded


def _target(section: Mapping[str, Any], where: str) -> str:
    target = section.get("target")
    if not isinstance(target, str):
        raise ConfigError(f"{where}.target is missing; an original config names each model's class there")
    return target


def _attention_levels(dd: Mapping[str, Any], levels: int, where: str) -> list[int]:
    # The original lists attention by feature-map size at the config's resolution.
    resolution = int(dd.get("resolution", 256))
    sizes = {resolution // 2**level: level for level in range(levels)}
    unknown = [size for size in dd.get("attn_resolutions", []) if size not in sizes]
    if unknown:
        raise ConfigError(
            f"{where}.attn_resolutions {unknown} match no level's size ({sorted(sizes, reverse=True)} at resolution "
            f"{resolution})"
        )
    return sorted(sizes[size] for size in dd.get("attn_resolutions", []))


def first_stage_model(section: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Our ``autoencoder`` spec (name and params) for the original first stage ``section``."""
    target = _target(section, where)
    if target not in FIRST_STAGE_TARGETS:
        known = ", ".join(FIRST_STAGE_TARGETS)
        raise ConfigError(f"{where}.target {target!r} is not a first stage this code can import ({known})")
    params = section.get("params", {})
    dd = params.get("ddconfig", {})
    kind = FIRST_STAGE_TARGETS[target]
    z = int(dd["z_channels"])
    if int(params.get("embed_dim", z)) != z:
        raise ConfigError(
            f"{where}.params.embed_dim {params['embed_dim']} differs from ddconfig.z_channels {z}; our autoencoder "
            "needs them equal (every released first stage has them so)"
        )
    if dd.get("attn_type", "vanilla") not in ("vanilla", "none"):
        raise ConfigError(f"{where}.params.ddconfig.attn_type {dd['attn_type']!r} is not 'vanilla' or 'none'")
    if dd.get("in_channels", 3) != dd.get("out_ch", 3):
        raise ConfigError(f"{where}.params.ddconfig: in_channels and out_ch differ; our autoencoder needs them equal")
    regularizer = (
        {"name": "kl"} if kind == "kl" else {"name": "vq", "params": {"codebook_size": int(params["n_embed"])}}
    )
    ch_mult = [int(m) for m in dd["ch_mult"]]
    return {
        "name": "autoencoder",
        "params": {
            "in_channels": int(dd.get("in_channels", 3)),
            "ch": int(dd["ch"]),
            "ch_mult": ch_mult,
            "num_res_blocks": int(dd["num_res_blocks"]),
            "attention_levels": _attention_levels(dd, len(ch_mult), f"{where}.params.ddconfig"),
            "mid_attention": dd.get("attn_type", "vanilla") == "vanilla",
            "z_channels": z,
            "norm_groups": 32,
            "dropout": float(dd.get("dropout", 0.0)),
            "norm_eps": 1e-6,
            "downsample_pad": "bottom_right",
            "quant_conv": True,
            "regularizer": regularizer,
        },
    }


def first_stage_config(config: Mapping[str, Any]) -> FirstStageConfig:
    """The first stage of an original config: the model itself, or an LDM's ``first_stage_config``."""
    model = config["model"]
    target = _target(model, "model")
    if target in LDM_TARGETS:
        section = model.get("params", {}).get("first_stage_config")
        if not isinstance(section, dict):
            raise ConfigError("model.params.first_stage_config is missing; an LDM config names its first stage there")
        return FirstStageConfig(first_stage_model(section, "model.params.first_stage_config"), "first_stage_model.")
    return FirstStageConfig(first_stage_model(model, "model"), "")


def scale_factor(config: Mapping[str, Any]) -> float | None:
    """The latent scale an LDM config gives (the original multiplies latents by it); ``None`` if
    it gives none (a first stage's config, or an LDM that estimates it: ``scale_by_std``)."""
    params = config["model"].get("params", {})
    if _target(config["model"], "model") not in LDM_TARGETS or params.get("scale_by_std"):
        return None
    return float(params.get("scale_factor", 1.0))


def _unet_levels(params: Mapping[str, Any], where: str) -> list[int]:
    # Attention is asked by downsampling factor (1, 2, 4...); a factor no level has is
    # skipped, as the original skips it (its semantic-synthesis models attend in the middle only).
    levels = len(params["channel_mult"])
    return sorted(
        {int(math.log2(ds)) for ds in params.get("attention_resolutions", []) if ds in (2**i for i in range(levels))}
    )


def unet_model(section: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Our ``unet`` spec (name and params) for the original ``UNetModel`` ``section``."""
    target = _target(section, where)
    if target != UNET_TARGET:
        raise ConfigError(f"{where}.target {target!r} is not a denoiser this code can import ({UNET_TARGET})")
    params = section.get("params", {})
    for key, value in _UNET_FIXED.items():
        if params.get(key, value) != value:
            raise ConfigError(f"{where}.params.{key} is {params[key]!r}; this code imports UNets with {key} {value!r}")
    transformer = bool(params.get("use_spatial_transformer", False))
    heads = params.get("num_head_channels", -1)
    return {
        "name": "unet",
        "params": {
            "in_channels": int(params["in_channels"]),
            "out_channels": int(params["out_channels"]),
            "context_dim": int(params["context_dim"]) if transformer else None,
            "model_channels": int(params["model_channels"]),
            "channel_mult": [int(m) for m in params["channel_mult"]],
            "num_res_blocks": int(params["num_res_blocks"]),
            "attention_levels": _unet_levels(params, where),
            "mid_attention": True,
            "attention": "transformer" if transformer else "self",
            "attention_norm_eps": 1e-6 if transformer else 1e-5,
            **({"head_channels": int(heads)} if heads != -1 else {"num_heads": int(params.get("num_heads", -1))}),
            "transformer_depth": int(params.get("transformer_depth", 1)),
            "dropout": float(params.get("dropout", 0.0)),
            "scale_shift_norm": bool(params.get("use_scale_shift_norm", False)),
            "resblock_updown": bool(params.get("resblock_updown", False)),
            "norm_groups": 32,
            "gradient_checkpointing": bool(params.get("use_checkpoint", False)),
        },
    }
