"""The original CompVis code's YAML config for a run of ours: the inverse of
:mod:`tasks.importing.original_config` and :mod:`tasks.importing.original_ldm`, so that what
``export_checkpoint`` writes in the original layout reads back here, in the original code and
in the tools that read Stable Diffusion v1 files (diffusers' ``from_single_file``, A1111,
ComfyUI).

Only what the original code can express is written: an option it has no place for is a
:class:`core.NotExpressible` naming it.
"""

from __future__ import annotations

from typing import Any

from core import NotExpressible
from tasks.importing.original_config import FIRST_STAGE_TARGETS, LDM_TARGETS
from tasks.importing.original_ldm import UNET_TARGET

_ENCODERS = "ldm.modules.encoders.modules."


def _require(what: str, checks: list[tuple[str, Any, Any]]) -> None:
    for field, value, wanted in checks:
        if value != wanted:
            raise NotExpressible(
                f"{what} {field} {value!r}: the original code has {wanted!r} (train with it to export)"
            )


def first_stage_section(name: str, p: Any, side: int) -> dict[str, Any]:
    """The ``first_stage_config`` of our first stage ``name`` (an ``autoencoder``) with params
    ``p``, for images of ``side`` px."""
    if name != "autoencoder":
        raise NotExpressible(f"first stage {name!r}: the original code has the autoencoder only")
    _require(
        "autoencoder",
        [
            ("norm_eps", p.norm_eps, 1e-6),
            ("downsample_pad", p.downsample_pad, "bottom_right"),
            ("norm_groups", p.norm_groups, 32),
        ],
    )
    kl = p.regularizer.name == "kl"
    targets = {kind: target for target, kind in FIRST_STAGE_TARGETS.items()}
    dd = {
        "double_z": kl,
        "z_channels": p.z_channels,
        "resolution": side,
        "in_channels": p.in_channels,
        "out_ch": p.in_channels,
        "ch": p.ch,
        "ch_mult": list(p.ch_mult),
        "num_res_blocks": p.num_res_blocks,
        "attn_resolutions": [side // 2**level for level in p.attention_levels],
        "dropout": p.dropout,
        "attn_type": "vanilla" if p.mid_attention else "none",
    }
    params = {"embed_dim": p.z_channels, "ddconfig": dd, "lossconfig": {"target": "torch.nn.Identity"}}
    if not kl:
        params["n_embed"] = p.regularizer.params.codebook_size
    return {"target": targets["kl" if kl else "vq"], "params": params}


def _heads(p: Any) -> dict[str, int]:
    """``num_heads`` when every attending level has as many heads (what Stable Diffusion v1's
    files state, and all diffusers' single-file reader takes without linear projections), else
    ``num_head_channels``."""
    if not p.head_channels:
        return {"num_heads": p.num_heads}
    levels = {*p.attention_levels, len(p.channel_mult) - 1}
    heads = {p.model_channels * p.channel_mult[level] // p.head_channels for level in levels}
    return {"num_heads": heads.pop()} if len(heads) == 1 else {"num_head_channels": p.head_channels}


def unet_section(name: str, p: Any, latent_side: int) -> dict[str, Any]:
    """The ``unet_config`` of our denoiser ``name`` (a ``unet``) with params ``p``."""
    if name != "unet":
        raise NotExpressible(f"denoiser {name!r}: the original code has the unet only")
    transformer = p.attention == "transformer"
    _require(
        "unet",
        [
            ("attention_norm_eps", p.attention_norm_eps, 1e-6 if transformer else 1e-5),
            ("norm_groups", p.norm_groups, 32),
            ("ff_mult", p.ff_mult, 4),
            ("mid_attention", p.mid_attention, True),
            ("vector_dim", p.vector_dim, None),
        ],
    )
    heads = _heads(p)
    params = {
        "image_size": latent_side,
        "in_channels": p.in_channels,
        "out_channels": p.out_channels,
        "model_channels": p.model_channels,
        "attention_resolutions": [2**level for level in p.attention_levels],
        "num_res_blocks": p.num_res_blocks,
        "channel_mult": list(p.channel_mult),
        **heads,
        "use_scale_shift_norm": p.scale_shift_norm,
        "resblock_updown": p.resblock_updown,
        "dropout": p.dropout,
        "use_spatial_transformer": transformer,
    }
    if transformer:
        params |= {"transformer_depth": p.transformer_depth, "context_dim": p.context_dim, "legacy": False}
    return {"target": UNET_TARGET, "params": params}


def conditioner_section(name: str, p: Any) -> tuple[dict[str, Any] | str, str, str]:
    """(``cond_stage_config``, ``cond_stage_key``, ``conditioning_key``) of our conditioner
    ``name`` with params ``p``."""
    if name == "clip_text":
        _require("clip_text", [(k, getattr(p, k), v) for k, v in _VIT_L.items()])
        return {"target": _ENCODERS + "FrozenCLIPEmbedder"}, p.field, "crossattn"
    if name == "class_label" and p.output == "context":
        rows = p.num_classes + p.null_class
        section = {"target": _ENCODERS + "ClassEmbedder", "params": {"embed_dim": p.dim, "n_classes": rows}}
        return section, p.field, "crossattn"
    if name == "inpainting":
        return "__is_first_stage__", "masked_image", "concat"
    if name == "low_res" and p.vector_dim is None and p.max_noise == 0:
        return {"target": "torch.nn.Identity"}, "lowres", "concat"
    raise NotExpressible(
        f"conditioner {name!r}: this code writes the original's FrozenCLIPEmbedder (clip_text), ClassEmbedder "
        "(class_label as context), inpainting and plain low_res conditions"
    )


_VIT_L = {"vocab_size": 49408, "width": 768, "layers": 12, "heads": 12, "mlp_width": 3072, "max_length": 77}
"""What the original's FrozenCLIPEmbedder is (CLIP ViT-L/14's text tower, 77 tokens)."""


def ldm_config(parts: dict[str, Any], diffusion: Any, sides: tuple[int, int], scale: float) -> dict[str, Any]:
    """The whole YAML (as data) of an LDM: ``parts`` holds (name, params) of its
    ``first_stage``, ``denoiser`` and each of its ``conditioners``; ``diffusion`` its diffusion
    spec; ``sides`` its (latent, image) side; ``scale`` the latents' scale factor."""
    latent_side, image_side = sides
    denoiser_name, denoiser = parts["denoiser"]
    prediction = denoiser.prediction
    if diffusion.schedule not in ("scaled_linear", "cosine") or prediction not in ("eps", "x0"):
        bad = f"schedule {diffusion.schedule!r}" if prediction in ("eps", "x0") else f"prediction {prediction!r}"
        raise NotExpressible(f"diffusion {bad}: the original code has scaled_linear or cosine, eps or x0")
    conditioners = parts["conditioners"]
    if len(conditioners) > 1:
        raise NotExpressible(f"{len(conditioners)} conditioners: the original code has one cond_stage")
    cond, key, conditioning = (
        conditioner_section(*conditioners[0]) if conditioners else ("__is_unconditional__", "image", None)
    )
    first = first_stage_section(*parts["first_stage"], image_side)
    params = {
        "linear_start": diffusion.beta_start,
        "linear_end": diffusion.beta_end,
        "timesteps": diffusion.timesteps,
        "beta_schedule": "linear" if diffusion.schedule == "scaled_linear" else "cosine",
        "parameterization": prediction,
        "first_stage_key": "image",
        "cond_stage_key": key,
        "image_size": latent_side,
        "channels": first["params"]["embed_dim"],
        "cond_stage_trainable": False,
        "conditioning_key": conditioning,
        "scale_factor": scale,
        "use_ema": False,
        "unet_config": unet_section(denoiser_name, denoiser, latent_side),
        "first_stage_config": first,
        "cond_stage_config": cond,
    }
    return {"model": {"target": LDM_TARGETS[0], "params": params}}
