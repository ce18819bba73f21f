"""The original CompVis LDM configs (``LatentDiffusion``), read as data: our ``unet``, the
conditioners its ``cond_stage_config`` names, the diffusion process and the image size.

Training-only parts (``scheduler_config``, ``loss_type``, ``monitor``...) are ignored; a
denoiser or conditioner target we do not know, or an option our components cannot express,
is a :class:`ConfigError` naming it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tasks.importing.original_config import ConfigError, target_of

UNET_TARGET = "ldm.modules.diffusionmodules.openaimodel.UNetModel"
_UNET_FIXED = {
    "dims": 2,
    "conv_resample": True,
    "use_new_attention_order": False,
    "num_classes": None,
    "use_linear_in_transformer": False,
}
"""UNet options every released model has as here; another value is refused, naming it."""
_ENCODERS = "ldm.modules.encoders.modules."
_IMAGENET_WITH_NULL = 1001
"""cin256-v2's class embedding: the 1000 ImageNet classes, then class 1000, which its sampling
notebook gives as the unconditional class."""


@dataclass(frozen=True)
class LdmConfig:
    """What an LDM config says, as our specs: the denoiser, the conditioners (uses, with the
    original name prefix of each one's weights), the diffusion process and the image side."""

    denoiser: dict[str, Any]
    conditioners: list[dict[str, Any]]
    diffusion: dict[str, Any]
    image_size: int


def _unet_levels(params: Mapping[str, Any]) -> list[int]:
    # Attention is asked by downsampling factor (1, 2, 4...); a factor no level has is
    # skipped, as the original skips it (its semantic-synthesis models attend in the middle only).
    factors = {2**level: level for level in range(len(params["channel_mult"]))}
    return sorted({factors[ds] for ds in params.get("attention_resolutions", []) if ds in factors})


def unet_model(section: Mapping[str, Any], where: str, prediction: str = "eps") -> dict[str, Any]:
    """Our ``unet`` spec (name and params) for the original ``UNetModel`` ``section``."""
    target = target_of(section, where)
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
            "attention_levels": _unet_levels(params),
            "mid_attention": True,
            "attention": "transformer" if transformer else "self",
            "attention_norm_eps": 1e-6 if transformer else 1e-5,
            **({"head_channels": int(heads)} if heads != -1 else {"num_heads": int(params.get("num_heads", -1))}),
            "transformer_depth": int(params.get("transformer_depth", 1)),
            "dropout": float(params.get("dropout", 0.0)),
            "scale_shift_norm": bool(params.get("use_scale_shift_norm", False)),
            "resblock_updown": bool(params.get("resblock_updown", False)),
            "norm_groups": 32,
            "prediction": prediction,
            "gradient_checkpointing": bool(params.get("use_checkpoint", False)),
        },
    }


def _bert(params: Mapping[str, Any], key: str) -> dict[str, Any]:
    width, layers = int(params["n_embed"]), int(params["n_layer"])
    # x-transformers' defaults, which BERTEmbedder keeps: 8 heads of 64, whatever the width.
    shared = {"width": width, "layers": layers, "heads": 8, "head_width": 64, "qkv_bias": False}
    if params.get("use_tokenizer", True):
        return {
            "name": "text_bert",
            "params": {
                "tokenizer": "bert-uncased",
                "vocab_size": int(params.get("vocab_size", 30522)),
                "max_length": int(params.get("max_seq_len", 77)),
                **shared,
                "padding_mask": False,
                "null": "empty_caption",
                "field": key,
            },
        }
    length = int(params.get("max_seq_len", 77))
    if (length - 2) % 3:
        raise ConfigError(
            f"a BERTEmbedder without tokenizer of max_seq_len {length} is not a layout (3 per object + 2)"
        )
    vocab = int(params.get("vocab_size", 30522))
    # The layout model's classes: OpenImages' 340, times the 16 combinations of its 4 flags.
    return {
        "name": "layout",
        "params": {"num_classes": 5440, "max_objects": (length - 2) // 3, "vocab_size": vocab, **shared},
    }


def _clip(cond: Mapping[str, Any], tokenizer: str | None, where: str) -> dict[str, Any]:
    """Stable Diffusion v1's FrozenCLIPEmbedder: CLIP ViT-L/14's text tower (our clip_text's
    defaults), 77 tokens, its tokenizer from the folder the import names."""
    version = cond.get("version", "openai/clip-vit-large-patch14")
    if version != "openai/clip-vit-large-patch14" or int(cond.get("max_length", 77)) != 77:
        raise ConfigError(f"{where}.params: this code imports FrozenCLIPEmbedder with CLIP ViT-L/14 and 77 tokens")
    if tokenizer is None:
        raise ConfigError(
            f"{where} is a FrozenCLIPEmbedder, whose tokenizer the checkpoint does not hold: give tokenizer, a folder "
            "with CLIP ViT-L/14's vocab.json and merges.txt"
        )
    return {"name": "clip_text", "params": {"tokenizer": tokenizer, "max_length": 77}}


def _conditioner(
    model: Mapping[str, Any], first_stage: dict[str, Any], factor: int, tokenizer: str | None
) -> dict[str, Any] | None:
    """Our conditioner spec for the config's ``cond_stage_config`` (none for an unconditional model)."""
    params = model.get("params", {})
    section = params.get("cond_stage_config")
    where = "model.params.cond_stage_config"
    if section == "__is_unconditional__" or section is None:
        return None
    key = params.get("cond_stage_key", "image")
    if section == "__is_first_stage__":
        fs = first_stage["params"]
        channels = {"image_channels": fs["in_channels"], "latent_channels": fs["z_channels"], "factor": factor}
        return {"name": "inpainting", "params": channels}
    target, cond = target_of(section, where), section.get("params", {})
    if target == _ENCODERS + "ClassEmbedder":
        rows = int(cond.get("n_classes", 1000))
        null = rows == _IMAGENET_WITH_NULL
        spec = {"num_classes": rows - null, "null_class": null, "dim": int(cond["embed_dim"]), "field": "label"}
        return {"name": "class_label", "params": spec}
    if target == _ENCODERS + "BERTEmbedder":
        return _bert(cond, key)
    if target == _ENCODERS + "FrozenCLIPEmbedder":
        return _clip(cond, tokenizer, where)
    if target == _ENCODERS + "SpatialRescaler":
        if cond.get("method", "bilinear") != "bilinear" or float(cond.get("multiplier", 0.5)) != 0.5:
            raise ConfigError(
                f"{where}.params: this code imports SpatialRescalers with method bilinear, multiplier 0.5"
            )
        if 2 ** int(cond.get("n_stages", 1)) != factor:
            raise ConfigError(
                f"{where}.params.n_stages halves {cond.get('n_stages', 1)} times, not to the latent's size"
            )
        spec = {"num_classes": int(cond["in_channels"]), "channels": int(cond["out_channels"]), "factor": factor}
        return {"name": "semantic_map", "params": {**spec, "method": "bilinear", "bias": bool(cond.get("bias", False))}}
    if target == "torch.nn.Identity":
        shape = {"image_channels": first_stage["params"]["in_channels"], "lowres_factor": factor, "factor": factor}
        return {"name": "low_res", "params": {**shape, "max_noise": 0.0, "vector_dim": None}}
    raise ConfigError(f"{where}.target {target!r} is not a conditioner this code can import")


_CONCAT = ("inpainting", "semantic_map", "low_res")


def _check_conditioning_key(params: Mapping[str, Any], conditioner: dict[str, Any] | None) -> None:
    if conditioner is None:
        return
    key = params.get("conditioning_key") or ("concat" if params.get("concat_mode", True) else "crossattn")
    wanted = "concat" if conditioner["name"] in _CONCAT else "crossattn"
    if key != wanted:
        raise ConfigError(
            f"model.params.conditioning_key is {key!r} but its {conditioner['name']} condition is {wanted}; this code "
            "imports the released models' pairings only"
        )


def ldm_config(config: Mapping[str, Any], first_stage: dict[str, Any], tokenizer: str | None = None) -> LdmConfig:
    """Our specs for the LDM config ``config`` whose first stage is ``first_stage`` (our spec);
    ``tokenizer``: the folder of a CLIP text encoder's tokenizer, which a checkpoint does not hold."""
    model = config["model"]
    params = model.get("params", {})
    prediction = {"eps": "eps", "x0": "x0"}.get(params.get("parameterization", "eps"))
    if prediction is None:
        raise ConfigError(f"model.params.parameterization {params['parameterization']!r} is not eps or x0")
    factor = 2 ** (len(first_stage["params"]["ch_mult"]) - 1)
    conditioner = _conditioner(model, first_stage, factor, tokenizer)
    _check_conditioning_key(params, conditioner)
    unet = unet_model(params.get("unet_config", {}), "model.params.unet_config", prediction)
    diffusion = {
        "schedule": {"linear": "scaled_linear", "cosine": "cosine"}[params.get("beta_schedule", "linear")],
        "timesteps": int(params.get("timesteps", 1000)),
        "beta_start": float(params.get("linear_start", 1e-4)),
        "beta_end": float(params.get("linear_end", 2e-2)),
        "loss": params.get("loss_type", "l2"),
    }
    side = int(params["unet_config"]["params"]["image_size"]) * factor
    return LdmConfig(unet, [conditioner] if conditioner else [], diffusion, side)
