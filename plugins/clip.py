"""CLIP's text transformer (the text tower of OpenAI's CLIP: Stable Diffusion v1's text encoder)
as a plain torch module, its config read from a transformers ``config.json``, and the pairing of
its tensors with the names transformers' ``CLIPTextModel`` gives them, so a local
``model.safetensors`` loads into it.

Only the last hidden states are computed (Stable Diffusion's context); the pooled end-of-text
state and the projection into the joint image-text space are not built.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, PositiveFloat, PositiveInt, ValidationError, model_validator
from safetensors import safe_open
from torch import Tensor, nn

from core.original import Pair, from_original, module_pairs
from plugins.weight_files import header_shapes, shape_problems

TEXT_PREFIX = "text_model."
"""Where the text tower's entries are in a Hugging Face checkpoint (a ``CLIPModel``'s, or a
``CLIPTextModel``'s saved by transformers 4); transformers 5 saves a ``CLIPTextModel`` without it."""

TEXT_PARTS = ("embeddings.", "encoder.", "final_layer_norm.")
IGNORED = "embeddings.position_ids"
"""A constant index buffer older checkpoints carry."""


class ClipTextConfig(BaseModel):
    """The fields of a transformers ``CLIPTextConfig`` this module reads (others are ignored).

    The defaults are transformers' (CLIP ViT-B's text tower), because a ``config.json`` written
    by transformers 4 leaves out the fields at their default."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    model_type: Literal["clip_text_model"] = "clip_text_model"
    vocab_size: PositiveInt = 49408
    hidden_size: PositiveInt = 512
    intermediate_size: PositiveInt = 2048
    num_hidden_layers: PositiveInt = 12
    num_attention_heads: PositiveInt = 8
    max_position_embeddings: PositiveInt = 77
    hidden_act: Literal["quick_gelu", "gelu"] = "quick_gelu"
    layer_norm_eps: PositiveFloat = 1e-5

    @model_validator(mode="after")
    def _heads_divide(self) -> ClipTextConfig:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"num_attention_heads {self.num_attention_heads} does not divide hidden_size {self.hidden_size}"
            )
        return self

    @classmethod
    def read(cls, path: Path) -> ClipTextConfig:
        """The text config at ``path`` (a ``CLIPTextModel``'s, or a ``CLIPModel``'s ``text_config``);
        a ValueError in one sentence if it is unreadable or not a CLIP text tower we can build."""
        try:
            document = json.loads(path.read_text())
            return cls.model_validate(document.get("text_config", document))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
            raise ValueError(f"cannot read {path} as a JSON config: {exc}") from None
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(map(str, first["loc"])) or "the document"
            raise ValueError(f"{path} is not a CLIP text config this encoder builds: {where}: {first['msg']}") from None


class _Attention(nn.Module):
    """Causal multi-head self-attention; q, k and v in one projection (rows: q, then k, then v)."""

    def __init__(self, c: ClipTextConfig) -> None:
        super().__init__()
        self.heads = c.num_attention_heads
        self.qkv = nn.Linear(c.hidden_size, 3 * c.hidden_size)
        self.out = nn.Linear(c.hidden_size, c.hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.qkv(x).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(attended.transpose(1, 2).flatten(2))


def quick_gelu(x: Tensor) -> Tensor:
    """OpenAI CLIP's sigmoid approximation of GELU, which its released weights were trained with."""
    return x * torch.sigmoid(1.702 * x)


class _Layer(nn.Module):
    """x + attention(LayerNorm(x)), then x + fc2(act(fc1(LayerNorm(x))))."""

    def __init__(self, c: ClipTextConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.attention = _Attention(c)
        self.norm2 = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.fc1 = nn.Linear(c.hidden_size, c.intermediate_size)
        self.fc2 = nn.Linear(c.intermediate_size, c.hidden_size)
        self.act = quick_gelu if c.hidden_act == "quick_gelu" else F.gelu

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class ClipText(nn.Module):
    """Token ids (B, L), L <= max_position_embeddings -> last hidden states (B, L, hidden_size)
    after the final LayerNorm, as transformers' ``CLIPTextModel(ids).last_hidden_state``.

    Each position attends to itself and those before it, padding included (no padding mask:
    Stable Diffusion v1 was trained on the states this gives)."""

    def __init__(self, config: ClipTextConfig) -> None:
        super().__init__()
        self.config = config
        self.tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.positions = nn.Parameter(torch.empty(config.max_position_embeddings, config.hidden_size))
        self.layers = nn.ModuleList(_Layer(config) for _ in range(config.num_hidden_layers))
        self.final_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        # CLIP's initialisation of the embeddings (an untrained tower is for tests and fine-tuning only).
        nn.init.normal_(self.tokens.weight, std=0.02)
        nn.init.normal_(self.positions, std=0.01)

    def forward(self, ids: Tensor) -> Tensor:
        x = self.tokens(ids) + self.positions[: ids.shape[1]]
        for layer in self.layers:
            x = layer(x)
        return self.final_norm(x)

    def original_names(self) -> list[Pair]:
        """This module's tensors paired with a transformers 5 ``CLIPTextModel``'s names (no prefix)."""
        return clip_pairs(self.config.num_hidden_layers)

    def load_safetensors(self, path: Path) -> None:
        """Copy the text tower in the transformers checkpoint ``path`` into this module; a
        ValueError as :func:`check_weights` says."""
        prefix = check_weights(path, self.config)
        with safe_open(str(path), framework="pt") as file:
            state = {name: file.get_tensor(prefix + name) for name in expected_shapes(self.config)}
        self.load_state_dict(from_original(self, state))


def _join(*parts: str) -> str:
    return ".".join(part for part in parts if part)


def clip_pairs(layers: int, ours: str = "", theirs: str = "") -> list[Pair]:
    """The pairs of a :class:`ClipText` of ``layers`` layers at our prefix ``ours`` with the
    transformers names under ``theirs`` (``""``: a transformers 5 ``CLIPTextModel``;
    ``"text_model"``: a ``CLIPModel`` or a transformers 4 checkpoint; ``"transformer.text_model"``:
    Stable Diffusion v1's ``cond_stage_model``). Our fused qkv is their q, k and v stacked."""
    pairs = [
        Pair(_join(ours, "tokens.weight"), (_join(theirs, "embeddings.token_embedding.weight"),)),
        Pair(_join(ours, "positions"), (_join(theirs, "embeddings.position_embedding.weight"),)),
        *module_pairs(_join(ours, "final_norm"), _join(theirs, "final_layer_norm"), (("", ""),)),
    ]
    qkv = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
    for i in range(layers):
        subs = (
            ("norm1", "layer_norm1"),
            ("attention.qkv", qkv),
            ("attention.out", "self_attn.out_proj"),
            ("norm2", "layer_norm2"),
            ("fc1", "mlp.fc1"),
            ("fc2", "mlp.fc2"),
        )
        pairs += module_pairs(_join(ours, f"layers.{i}"), _join(theirs, f"encoder.layers.{i}"), subs)
    return pairs


def expected_shapes(config: ClipTextConfig) -> dict[str, tuple[int, ...]]:
    """Each transformers name (no prefix) of a text tower of ``config`` with its shape (built on
    the meta device: no memory)."""
    with torch.device("meta"):
        ours = ClipText(config).state_dict()
    shapes = {}
    for pair in clip_pairs(config.num_hidden_layers):
        first, *rest = ours[pair.ours].shape
        shapes.update({name: (first // len(pair.originals), *rest) for name in pair.originals})
    return shapes


def check_weights(path: Path, config: ClipTextConfig) -> str:
    """The prefix under which the safetensors file ``path`` holds exactly the text tower ``config``
    describes (``"text_model."`` or ``""``); else a ValueError naming ``path`` and the first missing,
    unexpected and wrong-shaped entries. Other towers and projections are ignored; reads the
    file's header only."""
    shapes = header_shapes(path)
    prefix = TEXT_PREFIX if any(key.startswith(TEXT_PREFIX) for key in shapes) else ""
    found = {
        key[len(prefix) :]: shape
        for key, shape in shapes.items()
        if key.startswith(prefix) and key[len(prefix) :].startswith(TEXT_PARTS) and key != prefix + IGNORED
    }
    problems = shape_problems(found, expected_shapes(config), prefix)
    if problems:
        raise ValueError(
            f"{path} does not hold the CLIP text tower its config.json describes ({problems}); "
            "give the folder that holds both files of one CLIP text encoder"
        )
    return prefix
