"""The names the original CompVis code gives the ``unet``'s weights (its ``UNetModel``, under
``model.diffusion_model.`` in an LDM checkpoint), for :meth:`UNet.original_names`.

Where the layouts differ: our cross-attention fuses the key and value projections the
original keeps apart (``to_k``, ``to_v``); our plain self-attention is a linear map with
q, k and v each over all heads, where the original's legacy block is a 1-d convolution whose
rows run head by head; the original numbers its blocks along its path (``input_blocks.n``,
``middle_block``, ``output_blocks.n``), each a list of a residual block, an attention block
and a resampler.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch import nn

from core.original import Pair, module_pairs
from plugins.blocks import ResBlock

_RESBLOCK = (
    ("in_layers.0", "in_layers.0"),
    ("in_layers.2", "in_layers.2"),
    ("emb.1", "emb_layers.1"),
    ("out_norm", "out_layers.0"),
    ("out_layers.2", "out_layers.3"),
)


def _res(ours: str, theirs: str, block: ResBlock) -> Iterator[Pair]:
    skip = (("skip", "skip_connection"),) if isinstance(block.skip, nn.Conv2d) else ()
    return module_pairs(ours, theirs, (*_RESBLOCK, *skip))


def attention_pairs(ours: str, theirs: str, block: nn.Module) -> Iterator[Pair]:
    """A spatial transformer's pairs, or a plain self-attention block's (the one with a fused ``qkv``)."""
    if hasattr(block, "qkv"):
        # Its qkv and proj_out are 1-d convolutions: (C_out, C_in, 1) where ours are linear maps.
        yield from module_pairs(ours, theirs, (("norm", "norm"),))
        yield Pair(f"{ours}.out.weight", (f"{theirs}.proj_out.weight",), ndim=3)
        yield Pair(f"{ours}.out.bias", (f"{theirs}.proj_out.bias",))
        yield Pair(f"{ours}.qkv.weight", (f"{theirs}.qkv.weight",), heads=block.heads, ndim=3)
        yield Pair(f"{ours}.qkv.bias", (f"{theirs}.qkv.bias",), heads=block.heads)
        return
    yield from module_pairs(ours, theirs, (("norm", "norm"), ("proj_in", "proj_in"), ("proj_out", "proj_out")))
    for k, layer in enumerate(block.blocks):
        mine, original = f"{ours}.blocks.{k}", f"{theirs}.transformer_blocks.{k}"
        norms = ("norm1", "norm2", "norm3") if layer.cross else ("norm1", "norm3")
        subs = [(name, name) for name in norms] + [("ff_in", "ff.net.0.proj"), ("ff_out.1", "ff.net.2")]
        yield from module_pairs(mine, original, subs)
        for attn in ("attn1", "attn2") if layer.cross else ("attn1",):
            yield from module_pairs(mine, original, ((f"{attn}.out", f"{attn}.to_out.0"),))
            yield from module_pairs(
                mine, original, ((f"{attn}.q", f"{attn}.to_q"), (f"{attn}.kv", (f"{attn}.to_k", f"{attn}.to_v"))), False
            )


def _stage(ours: str, theirs: str, stage: Any, start: int = 0) -> list[Pair]:
    """A stage of ours as modules ``start``, ``start + 1``... of the original's list at
    ``theirs``: residual block, attention, resampler, those the stage has."""
    pairs, index = [], start
    for name, module in (("res", stage.res), ("attn", stage.attn), ("resample", stage.resample)):
        if module is None:
            continue
        mine, original = f"{ours}.{name}", f"{theirs}.{index}"
        if isinstance(module, ResBlock):
            pairs += _res(mine, original, module)
        elif name == "attn":
            pairs += attention_pairs(mine, original, module)
        elif isinstance(module, nn.Conv2d):  # the down path's strided convolution
            pairs += module_pairs(mine, f"{original}.op", (("", ""),))
        else:  # Upsample
            pairs += module_pairs(mine, original, (("conv", "conv"),))
        index += 1
    return pairs


def unet_pairs(model: Any) -> list[Pair]:
    """Every weight of ``model`` that the original has, with its original names (our vector
    condition's projection has none)."""
    pairs = list(module_pairs("", "", (("time_embed.0", "time_embed.0"), ("time_embed.2", "time_embed.2"))))
    pairs += module_pairs("input", "input_blocks.0.0", (("", ""),))
    for i, stage in enumerate(model.down):
        pairs += _stage(f"down.{i}", f"input_blocks.{i + 1}", stage)
    start = 0
    for i, stage in enumerate(model.middle):  # one list in the original: res, attention, res
        pairs += _stage(f"middle.{i}", "middle_block", stage, start)
        start += sum(module is not None for module in (stage.res, stage.attn))
    for i, stage in enumerate(model.up):
        pairs += _stage(f"up.{i}", f"output_blocks.{i}", stage)
    pairs += module_pairs("out", "out", (("0", "0"), ("2", "2")))
    return pairs
