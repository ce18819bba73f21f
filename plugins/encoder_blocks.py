"""The pre-norm transformer encoder blocks that ``layout`` and ``text_bert`` encode tokens with,
laid out as the original code's x-transformers encoder (its ``BERTEmbedder``), so that the
released models' weights map onto them one to one (:func:`encoder_pairs`).
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from core.original import Pair, module_pairs


class Attention(nn.Module):
    """Multi-head self-attention with separate query, key and value projections from ``width``
    to ``heads x head_width`` and back (the original: 8 heads of 64 whatever the width)."""

    def __init__(self, width: int, heads: int, head_width: int, qkv_bias: bool, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        inner = heads * head_width
        self.to_q = nn.Linear(width, inner, bias=qkv_bias)
        self.to_k = nn.Linear(width, inner, bias=qkv_bias)
        self.to_v = nn.Linear(width, inner, bias=qkv_bias)
        self.to_out = nn.Linear(inner, width)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x (B, L, width); ``mask`` (B, L) true at the tokens that may be attended to (all if none)."""
        q, k, v = (
            proj(x).unflatten(-1, (self.heads, -1)).transpose(1, 2) for proj in (self.to_q, self.to_k, self.to_v)
        )
        keep = mask[:, None, None, :] if mask is not None else None
        drop = self.dropout if self.training else 0.0
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=drop)
        return self.to_out(attended.transpose(1, 2).flatten(2))


class EncoderBlock(nn.Module):
    """x + attention(LayerNorm(x)), then x + feed-forward(LayerNorm(x)); GELU feed-forward."""

    def __init__(
        self, width: int, heads: int, head_width: int, ff_mult: int, qkv_bias: bool, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(width)
        self.attention = Attention(width, heads, head_width, qkv_bias, dropout)
        self.feed_forward_norm = nn.LayerNorm(width)
        self.feed_forward = nn.Sequential(
            nn.Linear(width, ff_mult * width), nn.GELU(), nn.Linear(ff_mult * width, width)
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x = x + self.dropout(self.attention(self.attention_norm(x), mask))
        return x + self.dropout(self.feed_forward(self.feed_forward_norm(x)))


def encoder_pairs(blocks: str, ours: dict[str, str], layers: int, qkv_bias: bool) -> list[Pair]:
    """The original names of an encoder of ``layers`` :class:`EncoderBlock` under our prefix
    ``blocks``, with ``ours`` giving our names of the token embedding, the positions and the
    final norm (keys ``tokens``, ``positions``, ``norm``); the original's are under
    ``transformer.`` (``token_emb``, ``pos_emb.emb``, ``attn_layers.layers.{2i, 2i + 1}``, ``norm``)."""
    pairs = [
        Pair(f"{ours['tokens']}.weight", ("transformer.token_emb.weight",)),
        Pair(ours["positions"], ("transformer.pos_emb.emb.weight",)),
        *module_pairs(ours["norm"], "transformer.norm", (("", ""),)),
    ]
    for i in range(layers):
        mine, attention = f"{blocks}.{i}", f"transformer.attn_layers.layers.{2 * i}"
        feed = f"transformer.attn_layers.layers.{2 * i + 1}"
        pairs += module_pairs(mine, attention, (("attention_norm", "0"), ("attention.to_out", "1.to_out")))
        projections = (("attention.to_q", "1.to_q"), ("attention.to_k", "1.to_k"), ("attention.to_v", "1.to_v"))
        pairs += module_pairs(mine, attention, projections, bias=qkv_bias)
        pairs += module_pairs(
            mine, feed, (("feed_forward_norm", "0"), ("feed_forward.0", "1.net.0.0"), ("feed_forward.2", "1.net.2"))
        )
    return pairs
