"""The ``unet`` as a diffusers model, both ways: ``UNet2DConditionModel`` (spatial transformers
with cross-attention: Stable Diffusion's UNet) or ``UNet2DModel`` (plain self-attention: the
unconditional and concat-conditioned LDMs'), for :meth:`UNet.diffusers_model` and
:meth:`UNet.from_diffusers`.

diffusers groups the path by level (``down_blocks.l``, ``mid_block``, ``up_blocks.i`` with
``up_blocks.0`` the deepest), each level a list of residual blocks (``resnets.j``), of
attention blocks (``attentions.j``) and a resampler; its spatial transformers name their
insides as the original code does. Options diffusers' classes have no place for are refused,
naming them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from core import DiffusersModel, NotExpressible
from core.original import Pair, module_pairs
from plugins.original_unet import attention_pairs

_RES = (
    ("in_layers.0", "norm1"),
    ("in_layers.2", "conv1"),
    ("emb.1", "time_emb_proj"),
    ("out_norm", "norm2"),
    ("out_layers.2", "conv2"),
)
_SHARED = {"flip_sin_to_cos": True, "freq_shift": 0, "act_fn": "silu", "norm_eps": 1e-5, "downsample_padding": 1}
"""What both diffusers UNets must be set to for our arithmetic (sin/cos order of the time
embedding, the residual blocks' epsilon...): written on export, checked on import."""
CROSS, PLAIN = "UNet2DConditionModel", "UNet2DModel"


def _res(ours: str, theirs: str, block: Any) -> Iterator[Pair]:
    skip = (("skip", "conv_shortcut"),) if hasattr(block.skip, "weight") else ()
    return module_pairs(ours, theirs, (*_RES, *skip))


def _self_attention(ours: str, theirs: str) -> Iterator[Pair]:
    yield from module_pairs(ours, theirs, (("norm", "group_norm"), ("out", "to_out.0")))
    for leaf in ("weight", "bias"):
        yield Pair(f"{ours}.qkv.{leaf}", tuple(f"{theirs}.{name}.{leaf}" for name in ("to_q", "to_k", "to_v")))


def _stage(ours: str, theirs: str, stage: Any, j: int) -> list[Pair]:
    """The pairs of one of our stages as the ``j``-th residual and attention block of the
    diffusers level ``theirs``, and its resampler."""
    pairs: list[Pair] = []
    if stage.res is not None:
        pairs += _res(f"{ours}.res", f"{theirs}.resnets.{j}", stage.res)
    if stage.attn is not None:
        mine, attention = f"{ours}.attn", f"{theirs}.attentions.{j}"
        pairs += (
            _self_attention(mine, attention)
            if hasattr(stage.attn, "qkv")
            else attention_pairs(mine, attention, stage.attn)
        )
    if stage.resample is not None:
        kind = "downsamplers" if stage.res is None else "upsamplers"
        conv = "resample" if kind == "downsamplers" else "resample.conv"
        pairs += module_pairs(f"{ours}.{conv}", f"{theirs}.{kind}.0.conv", (("", ""),))
    return pairs


def _pairs(model: Any) -> list[Pair]:
    p = model.params
    pairs = list(module_pairs("", "", (("input", "conv_in"), ("out.0", "conv_norm_out"), ("out.2", "conv_out"))))
    pairs += module_pairs("", "time_embedding", (("time_embed.0", "linear_1"), ("time_embed.2", "linear_2")))
    stages = iter(enumerate(model.down))
    for level in range(len(p.channel_mult)):
        for j in range(p.num_res_blocks + (level < len(p.channel_mult) - 1)):
            i, stage = next(stages)
            pairs += _stage(f"down.{i}", f"down_blocks.{level}", stage, j)
    pairs += _stage("middle.0", "mid_block", model.middle[0], 0)
    pairs += _res("middle.1.res", "mid_block.resnets.1", model.middle[1].res)
    per_level = p.num_res_blocks + 1
    for i, stage in enumerate(model.up):
        pairs += _stage(f"up.{i}", f"up_blocks.{i // per_level}", stage, i % per_level)
    return pairs


def _heads(p: Any, width: int) -> int:
    return max(1, width // p.head_channels) if p.head_channels else p.num_heads


def _refuse_common(p: Any) -> None:
    if p.resblock_updown:
        raise NotExpressible(
            "unet resblock_updown true: diffusers' UNets resample with (de)convolutions (train with it false to export)"
        )
    if p.vector_dim is not None:
        raise NotExpressible(
            f"unet vector_dim {p.vector_dim}: diffusers' UNets take no vector condition (conditioners that give "
            "context or concat only can be exported)"
        )


def _block_types(p: Any, levels: int, attending: str) -> dict[str, list[str]]:
    """Each level's down and up block type (``attending``: the attention blocks' stem)."""

    def kind(level: int, way: str) -> str:
        return f"{attending if level in p.attention_levels else ''}{way}Block2D"

    return {
        "down_block_types": [kind(lv, "Down") for lv in range(levels)],
        "up_block_types": [kind(lv, "Up") for lv in reversed(range(levels))],
    }


def _cross_config(p: Any, widths: list[int]) -> dict[str, Any]:
    if p.context_dim is None:
        raise NotExpressible(
            "unet attention 'transformer' without context_dim: diffusers has no UNet with spatial transformers but "
            "no cross-attention (train with attention 'self', diffusers' UNet2DModel, to export)"
        )
    for field, value, wanted in (
        ("ff_mult", p.ff_mult, 4),
        ("attention_norm_eps", p.attention_norm_eps, 1e-6),
        ("mid_attention", p.mid_attention, True),
    ):
        if value != wanted:
            raise NotExpressible(
                f"unet {field} {value}: diffusers' UNet2DConditionModel has {wanted} (train with it to export)"
            )
    return {
        **_block_types(p, len(widths), "CrossAttn"),
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "cross_attention_dim": p.context_dim,
        "attention_head_dim": [_heads(p, w) for w in widths],
        "transformer_layers_per_block": p.transformer_depth,
        "use_linear_projection": False,
        "only_cross_attention": False,
        "upcast_attention": False,
    }


def _plain_config(p: Any, widths: list[int]) -> dict[str, Any]:
    attending = [widths[lv] for lv in p.attention_levels] + ([widths[-1]] if p.mid_attention else [])
    head_widths = sorted({w // _heads(p, w) for w in attending})
    if len(head_widths) > 1:
        raise NotExpressible(
            f"unet num_heads {p.num_heads} makes heads of {head_widths} channels at different levels: diffusers' "
            "UNet2DModel has one head width (train with head_channels to export)"
        )
    if p.attention_norm_eps != 1e-5:
        raise NotExpressible(f"unet attention_norm_eps {p.attention_norm_eps}: diffusers' UNet2DModel has 1e-5")
    return {
        **_block_types(p, len(widths), "Attn"),
        "mid_block_type": "UNetMidBlock2D",
        "add_attention": p.mid_attention,
        "attention_head_dim": head_widths[0] if head_widths else widths[-1],
        "attn_norm_num_groups": p.norm_groups,
        "time_embedding_type": "positional",
    }


def unet_diffusers_model(model: Any) -> DiffusersModel:
    """``model`` (a ``unet``) as ``UNet2DConditionModel`` or ``UNet2DModel``."""
    p = model.params
    _refuse_common(p)
    widths = [p.model_channels * m for m in p.channel_mult]
    cross = p.attention == "transformer"
    config = {
        "in_channels": p.in_channels,
        "out_channels": p.out_channels,
        "block_out_channels": widths,
        "layers_per_block": p.num_res_blocks,
        "norm_num_groups": p.norm_groups,
        "resnet_time_scale_shift": "scale_shift" if p.scale_shift_norm else "default",
        "dropout": p.dropout,
        "center_input_sample": False,
        **_SHARED,
        **(_cross_config(p, widths) if cross else _plain_config(p, widths)),
    }
    return DiffusersModel(CROSS if cross else PLAIN, config, _pairs(model))


_CROSS_DEFAULTS = {
    "use_linear_projection": False,
    "only_cross_attention": False,
    "dual_cross_attention": False,
    "class_embed_type": None,
    "addition_embed_type": None,
    "encoder_hid_dim": None,
    "time_cond_proj_dim": None,
    "num_attention_heads": None,
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "mid_block_scale_factor": 1,
    "center_input_sample": False,
    "reverse_transformer_layers_per_block": None,
    "attention_type": "default",
}
_PLAIN_DEFAULTS = {
    "class_embed_type": None,
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "downsample_type": "conv",
    "upsample_type": "conv",
    "mid_block_scale_factor": 1,
    "center_input_sample": False,
}


def _check(config: dict[str, Any], wanted: dict[str, Any], class_name: str) -> None:
    for key, value in wanted.items():
        if config.get(key, value) != value:
            raise NotExpressible(f"{class_name} config {key} {config[key]!r}: this code's unet needs {value!r}")


def _levels(config: dict[str, Any], with_attention: str, plain: str, class_name: str) -> list[int]:
    """The levels whose blocks attend; the up path must mirror the down path."""
    down, up = list(config["down_block_types"]), list(config["up_block_types"])
    expected_up = [name.replace("Down", "Up") for name in reversed(down)]
    if any(name not in (with_attention, plain) for name in down) or up != expected_up:
        raise NotExpressible(
            f"{class_name} config down_block_types {down} / up_block_types {up}: this code's unet has "
            f"{with_attention} or {plain} per level, mirrored on the way up"
        )
    return [level for level, name in enumerate(down) if name == with_attention]


def _widths(config: dict[str, Any], class_name: str) -> tuple[int, list[int]]:
    widths = [int(w) for w in config["block_out_channels"]]
    if any(w % widths[0] for w in widths):
        raise NotExpressible(
            f"{class_name} config block_out_channels {widths}: this code's unet needs multiples of the first"
        )
    return widths[0], [w // widths[0] for w in widths]


def _head_params(heads: Any, widths: list[int], levels: list[int], class_name: str) -> dict[str, int]:
    heads = [int(h) for h in heads] if isinstance(heads, list | tuple) else [int(heads)] * len(widths)
    used = sorted(set(levels) | {len(widths) - 1})
    if len({heads[lv] for lv in used}) == 1:
        return {"num_heads": heads[used[0]]}
    head_widths = {widths[lv] // heads[lv] for lv in used}
    if len(head_widths) == 1:
        return {"head_channels": head_widths.pop()}
    raise NotExpressible(
        f"{class_name} config attention_head_dim {heads}: this code's unet needs one head count or one head width"
    )


def unet_params_from_diffusers(class_name: str, config: dict[str, Any]) -> dict[str, Any] | None:
    """Our ``unet`` params for a diffusers ``UNet2DConditionModel`` or ``UNet2DModel`` config."""
    if class_name not in (CROSS, PLAIN):
        return None
    cross = class_name == CROSS
    _check(config, {**_SHARED, **(_CROSS_DEFAULTS if cross else _PLAIN_DEFAULTS)}, class_name)
    pair = ("CrossAttnDownBlock2D", "DownBlock2D") if cross else ("AttnDownBlock2D", "DownBlock2D")
    levels = _levels(config, *pair, class_name)
    base, mult = _widths(config, class_name)
    widths = [base * m for m in mult]
    shift = config.get("resnet_time_scale_shift", "default")
    if shift not in ("default", "scale_shift"):
        raise NotExpressible(f"{class_name} config resnet_time_scale_shift {shift!r} is not 'default' or 'scale_shift'")
    mid = config.get("mid_block_type", "UNetMidBlock2DCrossAttn" if cross else "UNetMidBlock2D")
    if mid != ("UNetMidBlock2DCrossAttn" if cross else "UNetMidBlock2D"):
        raise NotExpressible(f"{class_name} config mid_block_type {mid!r} is not one this code's unet has")
    depth = config.get("transformer_layers_per_block", 1)
    if isinstance(depth, list | tuple):
        if len(set(depth)) != 1:
            raise NotExpressible(f"{class_name} config transformer_layers_per_block {depth}: this code needs one depth")
        depth = depth[0]
    if cross:
        heads = _head_params(config.get("attention_head_dim", 8), widths, levels, class_name)
        attention = {"attention": "transformer", "context_dim": int(config["cross_attention_dim"]), "ff_mult": 4}
        attention |= {"attention_norm_eps": 1e-6, "mid_attention": True, "transformer_depth": int(depth)}
    else:
        head_width = int(config.get("attention_head_dim") or widths[-1])
        heads = {"head_channels": head_width}
        attention = {"attention": "self", "attention_norm_eps": 1e-5}
        attention["mid_attention"] = bool(config.get("add_attention", True))
        groups = config.get("attn_norm_num_groups")
        if groups is None and shift == "scale_shift":
            raise NotExpressible(
                f"{class_name} config attn_norm_num_groups null with scale_shift: its middle attention has no norm"
            )
        if groups is not None and int(groups) != int(config.get("norm_num_groups", 32)):
            raise NotExpressible(
                f"{class_name} config attn_norm_num_groups {groups}: this code's unet needs norm_num_groups there"
            )
    return {
        "in_channels": int(config.get("in_channels", 4)),
        "out_channels": int(config.get("out_channels", 4)),
        "model_channels": base,
        "channel_mult": mult,
        "num_res_blocks": int(config.get("layers_per_block", 2)),
        "attention_levels": levels,
        **attention,
        **heads,
        "dropout": float(config.get("dropout", 0.0)),
        "scale_shift_norm": shift == "scale_shift",
        "norm_groups": int(config.get("norm_num_groups", 32)),
    }
