"""A BERT encoder whose parameter names match the Hugging Face ``BertModel`` checkpoints, so a
local ``config.json`` + ``model.safetensors`` (e.g. all-MiniLM-L6-v2) loads into it directly.

Only what the text conditioner needs: embeddings (words, absolute positions, token type 0) and
the post-norm encoder layers; the pooler is not built.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from pydantic import BaseModel, ConfigDict, PositiveFloat, PositiveInt, ValidationError, model_validator
from safetensors import safe_open
from torch import Tensor, nn

from plugins.weight_files import header_shapes, shape_problems

IGNORED_KEYS = ("embeddings.position_ids", "pooler.")
"""Checkpoint entries this encoder does not use: a constant index buffer and the pooler."""


class BertConfig(BaseModel):
    """The fields of a Hugging Face BERT ``config.json`` this encoder reads (others are ignored)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    model_type: Literal["bert"] = "bert"
    vocab_size: PositiveInt
    hidden_size: PositiveInt
    num_hidden_layers: PositiveInt
    num_attention_heads: PositiveInt
    intermediate_size: PositiveInt
    max_position_embeddings: PositiveInt
    type_vocab_size: PositiveInt = 2
    layer_norm_eps: PositiveFloat = 1e-12
    hidden_act: Literal["gelu"] = "gelu"
    position_embedding_type: Literal["absolute"] = "absolute"

    @model_validator(mode="after")
    def _heads_divide(self) -> BertConfig:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"num_attention_heads {self.num_attention_heads} does not divide hidden_size {self.hidden_size}"
            )
        return self

    @classmethod
    def read(cls, path: Path) -> BertConfig:
        """The config at ``path``; a ValueError in one sentence if it is unreadable or not a BERT we can build."""
        try:
            return cls.model_validate(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read {path}: {exc}") from None
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(map(str, first["loc"])) or "the document"
            raise ValueError(f"{path} is not a BERT config this encoder builds: {where}: {first['msg']}") from None


class _Embeddings(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size, padding_idx=0)
        self.position_embeddings = nn.Embedding(c.max_position_embeddings, c.hidden_size)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, ids: Tensor) -> Tensor:
        positions = self.position_embeddings.weight[: ids.shape[1]]
        return self.LayerNorm(self.word_embeddings(ids) + positions + self.token_type_embeddings.weight[0])


class _SelfAttention(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.heads = c.num_attention_heads
        self.query, self.key, self.value = (nn.Linear(c.hidden_size, c.hidden_size) for _ in range(3))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        q, k, v = (
            rearrange(layer(x), "b m (h d) -> b h m d", h=self.heads) for layer in (self.query, self.key, self.value)
        )
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=rearrange(mask, "b m -> b 1 1 m"))
        return rearrange(out, "b h m d -> b m (h d)")


class _Residual(nn.Module):
    """dense -> (dropout, none in eval) -> add the input -> LayerNorm: BERT's post-norm residual."""

    def __init__(self, width_in: int, c: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(width_in, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, h: Tensor, x: Tensor) -> Tensor:
        return self.LayerNorm(self.dense(h) + x)


class _Attention(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.self = _SelfAttention(c)
        self.output = _Residual(c.hidden_size, c)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return self.output(self.self(x, mask), x)


class _Intermediate(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.intermediate_size)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.dense(x))


class _Layer(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.attention = _Attention(c)
        self.intermediate = _Intermediate(c)
        self.output = _Residual(c.intermediate_size, c)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = self.attention(x, mask)
        return self.output(self.intermediate(x), x)


class _Encoder(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(_Layer(c) for _ in range(c.num_hidden_layers))


class Bert(nn.Module):
    """token ids (B, M) and mask (B, M), true at real tokens -> last hidden states (B, M, hidden_size).

    Padded positions attend to the real tokens only; their own states are computed but mean nothing.
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = _Embeddings(config)
        self.encoder = _Encoder(config)

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        x = self.embeddings(ids)
        for layer in self.encoder.layer:
            x = layer(x, mask)
        return x

    def load_safetensors(self, path: Path) -> None:
        """Copy the weights in ``path`` into this encoder; a ValueError as :func:`check_weights` says."""
        own = self.state_dict()
        check_weights(path, {key: tuple(value.shape) for key, value in own.items()})
        with safe_open(str(path), framework="pt") as file, torch.no_grad():
            for key in own:
                own[key].copy_(file.get_tensor(key))


def expected_shapes(config: BertConfig) -> dict[str, tuple[int, ...]]:
    """The entry names and shapes a checkpoint for ``config`` holds (built on the meta device: no memory)."""
    with torch.device("meta"):
        return {key: tuple(value.shape) for key, value in Bert(config).state_dict().items()}


def check_weights(path: Path, expected: dict[str, tuple[int, ...]]) -> None:
    """A ValueError naming ``path`` unless it is safetensors holding exactly ``expected``
    (besides :data:`IGNORED_KEYS`), listing the missing, unexpected and wrong-shaped entries.
    Reads the file's header only."""
    found = {key: shape for key, shape in header_shapes(path).items() if not key.startswith(IGNORED_KEYS)}
    problems = shape_problems(found, expected)
    if problems:
        raise ValueError(
            f"{path} does not fit its config.json ({problems}); give the folder that holds both files of one BERT model"
        )
