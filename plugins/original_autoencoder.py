"""The names the original CompVis code gives the ``autoencoder``'s weights (``AutoencoderKL`` /
``VQModel``: ``encoder.*``, ``decoder.*``, ``quant_conv``, ``post_quant_conv``,
``quantize.embedding.weight``), for :meth:`Autoencoder.original_names`.

Ours and the original differ in names and in one layout: our attention has one fused
``qkv`` convolution where the original has ``q``, ``k`` and ``v``, so a fused weight is the
three stacked along the output channels. The original's decoder lists its levels by
resolution (``up.0`` is the full-resolution one, run last); ours runs in order.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from core.original import Pair, module_pairs

_RESBLOCK = (("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("out_norm", "norm2"), ("out_layers.2", "conv2"))
_SUBS = {"attn": (("norm", "norm"), ("qkv", ("q", "k", "v")), ("out", "proj_out")), "conv": (("", ""),)}


def _module(ours: str, theirs: str, kind: str, skip: bool) -> Iterator[Pair]:
    subs = (*_RESBLOCK, *((("skip", "nin_shortcut"),) if skip else ())) if kind == "res" else _SUBS[kind]
    return module_pairs(ours, theirs, subs)


def _encoder(p: Any) -> Iterator[tuple[str, str, str, bool]]:
    """(our prefix, original prefix, kind, has a 1x1 skip) of each encoder module, in order."""
    widths = [p.ch * m for m in p.ch_mult]
    yield "0", "conv_in", "conv", False
    index, c = 1, widths[0]
    for level, width in enumerate(widths):
        for j in range(p.num_res_blocks):
            yield str(index), f"down.{level}.block.{j}", "res", c != width
            index, c = index + 1, width
            if level in p.attention_levels:
                yield str(index), f"down.{level}.attn.{j}", "attn", False
                index += 1
        if level < len(widths) - 1:
            conv = str(index) if p.downsample_pad == "both" else f"{index}.1"
            yield conv, f"down.{level}.downsample.conv", "conv", False
            index += 1
    yield from _middle(p, index, c)
    index += 3 if p.mid_attention else 2
    yield f"{index}.0", "norm_out", "conv", False
    yield f"{index}.2", "conv_out", "conv", False


def _middle(p: Any, index: int, c: int) -> Iterator[tuple[str, str, str, bool]]:
    yield str(index), "mid.block_1", "res", False
    if p.mid_attention:
        index += 1
        yield str(index), "mid.attn_1", "attn", False
    yield str(index + 1), "mid.block_2", "res", False


def _decoder(p: Any) -> Iterator[tuple[str, str, str, bool]]:
    widths = [p.ch * m for m in p.ch_mult]
    c = widths[-1]
    yield "0", "conv_in", "conv", False
    yield from _middle(p, 1, c)
    index = 4 if p.mid_attention else 3
    for level, width in reversed(list(enumerate(widths))):
        for j in range(p.num_res_blocks + 1):
            yield str(index), f"up.{level}.block.{j}", "res", c != width
            index, c = index + 1, width
            if level in p.attention_levels:
                yield str(index), f"up.{level}.attn.{j}", "attn", False
                index += 1
        if level > 0:
            yield f"{index}.conv", f"up.{level}.upsample.conv", "conv", False
            index += 1
    yield f"{index}.0", "norm_out", "conv", False
    yield f"{index}.2", "conv_out", "conv", False


def autoencoder_pairs(params: Any) -> list[Pair]:
    """Every weight of an ``autoencoder`` built with ``params`` (its ``Params``) that the
    original has, with its original names; our regulariser's bookkeeping buffers (VQ code use)
    have none."""
    pairs: list[Pair] = []
    for part, walk in (("encoder", _encoder), ("decoder", _decoder)):
        for ours, theirs, kind, skip in walk(params):
            pairs += _module(f"{part}.{ours}", f"{part}.{theirs}", kind, skip)
    if params.quant_conv:
        pairs += module_pairs("", "", (("quant_conv", "quant_conv"), ("post_quant_conv", "post_quant_conv")))
    if params.regularizer.name == "vq":
        pairs.append(Pair("regularizer.codebook", ("quantize.embedding.weight",)))
    return pairs
