"""The original CompVis code's YAML configs, read as data: which of our components and params
express the model a config describes.

Only the ``model`` section matters; training parts (``lossconfig``, ``scheduler_config``,
``data``, ``lightning``) are ignored. A model ``target`` is matched by name against the ones
known here and never imported. A target we do not know, or an option of a known one that our
components cannot express, is a :class:`ConfigError` naming it.
"""

from __future__ import annotations

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


class ConfigError(ValueError):
    """An original config this code cannot express, in one sentence naming the key and value."""


@dataclass(frozen=True)
class FirstStageConfig:
    """What a config says of a first stage: our ``autoencoder`` spec, and the name prefix of its
    weights in a checkpoint (``first_stage_model.`` inside an LDM's, none in its own)."""

    model: dict[str, Any]
    prefix: str


def read_config(path: Path) -> dict[str, Any]:
    """The YAML file at ``path`` as data; a :class:`ConfigError` (to follow the file's name) if
    it is not a mapping with a ``model``."""
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"is not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(loaded, dict) or not isinstance(loaded.get("model"), dict):
        raise ConfigError("has no 'model' section; give the original config the checkpoint was released with")
    return loaded


def target_of(section: Mapping[str, Any], where: str) -> str:
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
    target = target_of(section, where)
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
    target = target_of(model, "model")
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
    if target_of(config["model"], "model") not in LDM_TARGETS or params.get("scale_by_std"):
        return None
    return float(params.get("scale_factor", 1.0))
