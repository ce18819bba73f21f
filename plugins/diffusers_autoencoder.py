"""The ``autoencoder`` as a diffusers model, both ways: ``AutoencoderKL`` (regulariser ``kl``)
or ``VQModel`` (``vq``), for :meth:`Autoencoder.diffusers_model` and
:meth:`Autoencoder.from_diffusers`.

diffusers' encoder and decoder are the original code's with other names (``down.l.block.j``
is ``down_blocks.l.resnets.j``; the decoder's ``up.l`` is ``up_blocks.(n - 1 - l)``, listed
in the order it runs) and linear maps where the original has 1x1 convolutions in attention,
so the pairs are the original ones renamed. Its GroupNorms have epsilon 1e-6 and its strided
convolutions pad at the bottom and right: an autoencoder with other settings is refused,
naming them.
"""

from __future__ import annotations

import re
from typing import Any

from core import DiffusersModel, NotExpressible
from core.original import Pair
from plugins.original_autoencoder import autoencoder_pairs

KL, VQ = "AutoencoderKL", "VQModel"
_ATTENTION = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def _renamed(name: str, levels: int) -> tuple[str, bool]:
    """The diffusers name of an original first-stage tensor, and whether it is a linear map there."""
    name = name.replace("nin_shortcut", "conv_shortcut").replace("norm_out", "conv_norm_out")
    name = name.replace("mid.block_1", "mid_block.resnets.0").replace("mid.block_2", "mid_block.resnets.1")
    name = name.replace("mid.attn_1", "mid_block.attentions.0")
    name = re.sub(
        r"encoder\.down\.(\d+)\.(block|attn)\.", lambda m: f"encoder.down_blocks.{m[1]}.{_LISTS[m[2]]}.", name
    )
    name = re.sub(r"encoder\.down\.(\d+)\.downsample\.", r"encoder.down_blocks.\1.downsamplers.0.", name)
    name = re.sub(
        r"decoder\.up\.(\d+)\.(block|attn|upsample)\.",
        lambda m: f"decoder.up_blocks.{levels - 1 - int(m[1])}.{_LISTS[m[2]]}.",
        name,
    )
    found = re.match(r"(.*\.attentions\.\d+)\.(norm|q|k|v|proj_out)\.(weight|bias)$", name)
    if found is None:
        return name, False
    return f"{found[1]}.{_ATTENTION[found[2]]}.{found[3]}", found[2] != "norm"


_LISTS = {"block": "resnets", "attn": "attentions", "upsample": "upsamplers.0"}


def _pairs(params: Any) -> list[Pair]:
    pairs = []
    for pair in autoencoder_pairs(params):
        renamed = [_renamed(name, len(params.ch_mult)) for name in pair.originals]
        linear = any(flag for _, flag in renamed) and pair.ours.endswith("weight")
        pairs.append(Pair(pair.ours, tuple(name for name, _ in renamed), ndim=2 if linear else None))
    return pairs


def _refuse(p: Any) -> None:
    for field, value, wanted in (
        ("norm_eps", p.norm_eps, 1e-6),
        ("downsample_pad", p.downsample_pad, "bottom_right"),
    ):
        if value != wanted:
            raise NotExpressible(
                f"autoencoder {field} {value!r}: diffusers' autoencoders have {wanted!r} (train with it to export)"
            )
    if p.regularizer.name not in ("kl", "vq"):
        raise NotExpressible(f"autoencoder regularizer {p.regularizer.name!r}: diffusers has kl and vq autoencoders")
    if p.regularizer.name == "vq" and not p.quant_conv:
        raise NotExpressible(
            "autoencoder quant_conv false: diffusers' VQModel has quant_conv (train with it true to export)"
        )


def autoencoder_diffusers_model(params: Any) -> DiffusersModel:
    """An ``autoencoder`` built with ``params`` as ``AutoencoderKL`` or ``VQModel`` (the latent
    scale is the run's, not the model's: the caller sets ``scaling_factor``)."""
    p = params
    _refuse(p)
    levels = range(len(p.ch_mult))
    config = {
        "in_channels": p.in_channels,
        "out_channels": p.in_channels,
        "down_block_types": [f"{'Attn' if lv in p.attention_levels else ''}DownEncoderBlock2D" for lv in levels],
        "up_block_types": [f"{'Attn' if lv in p.attention_levels else ''}UpDecoderBlock2D" for lv in reversed(levels)],
        "block_out_channels": [p.ch * m for m in p.ch_mult],
        "layers_per_block": p.num_res_blocks,
        "act_fn": "silu",
        "latent_channels": p.z_channels,
        "norm_num_groups": p.norm_groups,
        "mid_block_add_attention": p.mid_attention,
    }
    if p.regularizer.name == "kl":
        config |= {"use_quant_conv": p.quant_conv, "use_post_quant_conv": p.quant_conv}
        return DiffusersModel(KL, config, _pairs(p))
    codes = p.regularizer.params.codebook_size
    config |= {"num_vq_embeddings": codes, "vq_embed_dim": p.z_channels, "norm_type": "group"}
    return DiffusersModel(VQ, config, _pairs(p))


def _levels(config: dict[str, Any], class_name: str) -> list[int]:
    down, up = list(config["down_block_types"]), list(config["up_block_types"])
    plain = ("DownEncoderBlock2D", "AttnDownEncoderBlock2D")
    if any(name not in plain for name in down) or up != [n.replace("DownEncoder", "UpDecoder") for n in reversed(down)]:
        raise NotExpressible(
            f"{class_name} config down_block_types {down} / up_block_types {up}: this code's autoencoder has "
            "(Attn)DownEncoderBlock2D per level, mirrored by (Attn)UpDecoderBlock2D"
        )
    return [level for level, name in enumerate(down) if name.startswith("Attn")]


def autoencoder_params_from_diffusers(class_name: str, config: dict[str, Any]) -> dict[str, Any] | None:
    """Our ``autoencoder`` params for a diffusers ``AutoencoderKL`` or ``VQModel`` config."""
    if class_name not in (KL, VQ):
        return None
    if config.get("in_channels", 3) != config.get("out_channels", 3):
        raise NotExpressible(f"{class_name} config: in_channels and out_channels differ; this code needs them equal")
    if config.get("act_fn", "silu") != "silu" or config.get("norm_type", "group") != "group":
        raise NotExpressible(f"{class_name} config act_fn / norm_type: this code's autoencoder has silu and group")
    widths = [int(w) for w in config["block_out_channels"]]
    if any(w % widths[0] for w in widths):
        raise NotExpressible(f"{class_name} config block_out_channels {widths}: this code needs multiples of the first")
    z = int(config.get("latent_channels", 4))
    if class_name == KL:
        if config.get("use_quant_conv", True) != config.get("use_post_quant_conv", True):
            raise NotExpressible(f"{class_name} config: use_quant_conv and use_post_quant_conv differ")
        regularizer, quant = {"name": "kl"}, bool(config.get("use_quant_conv", True))
    else:
        if int(config.get("vq_embed_dim") or z) != z:
            raise NotExpressible(
                f"{class_name} config vq_embed_dim {config['vq_embed_dim']}: this code needs latent_channels there"
            )
        regularizer = {"name": "vq", "params": {"codebook_size": int(config.get("num_vq_embeddings", 256))}}
        quant = True
    return {
        "in_channels": int(config.get("in_channels", 3)),
        "ch": widths[0],
        "ch_mult": [w // widths[0] for w in widths],
        "num_res_blocks": int(config.get("layers_per_block", 1)),
        "attention_levels": _levels(config, class_name),
        "mid_attention": bool(config.get("mid_block_add_attention", True)),
        "z_channels": z,
        "norm_groups": int(config.get("norm_num_groups", 32)),
        "norm_eps": 1e-6,
        "downsample_pad": "bottom_right",
        "quant_conv": quant,
        "regularizer": regularizer,
    }
