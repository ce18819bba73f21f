"""``clip_text``: CLIP's frozen text transformer, its last hidden states the cross-attention
context (Stable Diffusion v1's conditioner: CLIP ViT-L/14's text tower, 77 tokens of 768).

Weights come from a local folder in the transformers layout (``config.json`` +
``model.safetensors``: a diffusers pipeline's ``text_encoder/``, or a Hugging Face CLIP model
folder), or, with no ``path``, from elsewhere later (a Stable Diffusion v1 checkpoint imported
through :meth:`ClipTextEncoder.original_names`, a run's checkpoint). The tokenizer is CLIP's BPE
from a folder's ``vocab.json`` + ``merges.txt``. Nothing is downloaded; a missing folder or file
is a one-sentence error naming it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, PositiveFloat, PositiveInt, model_validator
from torch import Tensor

from core import Conditioner, Conditioning, ConditioningShape, DiffusersModel
from core.original import Pair
from plugins.bpe import END, START, check_folder, clip_tokenizer, encode, pad_token, tokenizer_files
from plugins.caption_cache import CaptionCache, CaptionParams
from plugins.clip import ClipText, ClipTextConfig, check_weights, clip_pairs
from plugins.wordpiece import check_texts

ARCHITECTURE = {
    "vocab_size": "vocab_size",
    "width": "hidden_size",
    "layers": "num_hidden_layers",
    "heads": "num_attention_heads",
    "mlp_width": "intermediate_size",
    "max_positions": "max_position_embeddings",
    "activation": "hidden_act",
    "norm_eps": "layer_norm_eps",
}
"""Our architecture fields and the ``CLIPTextConfig`` fields they are."""

SD_PREFIX = "transformer.text_model"
"""Where Stable Diffusion v1 keeps the text tower, under its ``cond_stage_model.``."""


def model_config(folder: Path) -> ClipTextConfig:
    """The text config of the model folder ``folder``; a ValueError naming a missing folder or file."""
    if not folder.is_dir():
        raise ValueError(
            f"{str(folder)!r} is not a folder; give a local folder holding a CLIP text encoder's config.json "
            "and model.safetensors (nothing is downloaded)"
        )
    for name in ("config.json", "model.safetensors"):
        if not (folder / name).is_file():
            raise ValueError(
                f"{str(folder)!r} has no {name}; give the folder of a CLIP text encoder in the transformers "
                "layout (config.json and model.safetensors: a diffusers pipeline's text_encoder/)"
            )
    return ClipTextConfig.read(folder / "config.json")


class ClipTextEncoder(Conditioner):
    """Captions (a list of B strings) -> CLIP's last hidden states (B, max_length, width), every
    position attending causally over the start token, the caption, the end token and the padding."""

    trainable_by_default: ClassVar[bool] = False

    class Params(CaptionParams):
        path: Path | None = Field(
            None,
            description=(
                "A local folder holding a CLIP text encoder's config.json and model.safetensors (transformers "
                "layout: a diffusers pipeline's text_encoder/ or a Hugging Face CLIP model folder); its "
                "config.json sets the architecture and the weights load at construction. None: the weights "
                "come from elsewhere (an imported Stable Diffusion v1 checkpoint, a run's checkpoint)."
            ),
        )
        tokenizer: Path | None = Field(
            None,
            description=(
                "A local folder holding CLIP's vocab.json and merges.txt (a diffusers pipeline's tokenizer/); "
                "its special_tokens_map.json or tokenizer_config.json may name the padding token. None: path."
            ),
        )
        vocab_size: PositiveInt = Field(49408, description="Token embeddings; from path's config.json if given.")
        width: PositiveInt = Field(768, description="Hidden size, the context width; from path's config.json if given.")
        layers: PositiveInt = Field(12, description="Transformer layers; from path's config.json if given.")
        heads: PositiveInt = Field(12, description="Attention heads (divide width); from path's config.json if given.")
        mlp_width: PositiveInt = Field(3072, description="Feed-forward hidden size; from path's config.json if given.")
        max_positions: PositiveInt = Field(77, description="Learned positions; from path's config.json if given.")
        activation: Literal["quick_gelu", "gelu"] = Field(
            "quick_gelu", description="Feed-forward activation (OpenAI's CLIP: quick_gelu); from path's config.json."
        )
        norm_eps: PositiveFloat = Field(1e-5, description="LayerNorm epsilon; from path's config.json if given.")
        max_length: int = Field(
            77, ge=2, description="Tokens per caption with the start and end tokens (at most max_positions)."
        )

        @model_validator(mode="before")
        @classmethod
        def _architecture_from_path(cls, data: Any) -> Any:
            if not isinstance(data, dict) or data.get("path") is None:
                return data
            config = model_config(Path(data["path"]))
            return {**{ours: getattr(config, theirs) for ours, theirs in ARCHITECTURE.items()}, **data}

        @model_validator(mode="after")
        def _complete(self) -> ClipTextEncoder.Params:
            if self.width % self.heads:
                raise ValueError(f"heads {self.heads} do not divide width {self.width}; use a divisor of it")
            if self.max_length > self.max_positions:
                raise ValueError(
                    f"max_length {self.max_length} exceeds the model's {self.max_positions} positions; "
                    f"use at most {self.max_positions}"
                )
            if self.path is not None:
                self._agrees_with(model_config(self.path))
                check_weights(self.path / "model.safetensors", self.clip_config())
            folder = self.tokenizer or self.path
            if folder is None:
                raise ValueError(
                    "give path (a CLIP text encoder's folder) or tokenizer (a folder holding vocab.json and merges.txt)"
                )
            try:
                check_folder(folder, self.vocab_size)
            except ValueError as exc:
                raise ValueError(f"tokenizer: {exc}") from None
            return self

        def _agrees_with(self, config: ClipTextConfig) -> None:
            for ours, theirs in ARCHITECTURE.items():
                given, found = getattr(self, ours), getattr(config, theirs)
                if given != found:
                    raise ValueError(
                        f"{ours} {given!r} disagrees with {self.path / 'config.json'}'s {theirs} {found!r}; "
                        f"leave {ours} out or set it to {found!r}"
                    )

        def clip_config(self) -> ClipTextConfig:
            """The text tower these fields describe."""
            return ClipTextConfig(**{theirs: getattr(self, ours) for ours, theirs in ARCHITECTURE.items()})

    def __init__(self, params: ClipTextEncoder.Params) -> None:
        super().__init__(params)
        self.clip = ClipText(params.clip_config())
        if params.path is not None:
            self.clip.load_safetensors(params.path / "model.safetensors")
        self.tokenizer = clip_tokenizer(params.tokenizer or params.path, params.max_length)
        self.requires_grad_(False).eval()
        self._cache = CaptionCache(params.cache_size)
        self.register_load_state_dict_post_hook(lambda module, _: module._cache.clear())

    @classmethod
    def reads(cls, params: ClipTextEncoder.Params) -> str:
        return params.field

    @classmethod
    def produces(cls, params: ClipTextEncoder.Params) -> ConditioningShape:
        return ConditioningShape(context=params.width)

    def original_names(self) -> list[Pair]:
        """Our tensors with Stable Diffusion v1's names for them, less its ``cond_stage_model.``:
        ``transformer.text_model.`` then transformers' ``CLIPTextModel`` names."""
        return clip_pairs(self.params.layers, ours="clip", theirs=SD_PREFIX)

    def diffusers_model(self) -> DiffusersModel:
        """transformers' ``CLIPTextModel`` (a diffusers pipeline's ``text_encoder``), with the
        tokenizer's files for the pipeline's ``tokenizer/`` (padding to ``max_length``, the
        ``model_max_length`` Stable Diffusion's pipelines pad to)."""
        p = self.params
        folder = p.tokenizer or p.path
        ids = {name: self.tokenizer.token_to_id(token) for name, token in (("bos", START), ("eos", END))}
        config = {
            "architectures": ["CLIPTextModel"],
            "model_type": "clip_text_model",
            **{theirs: getattr(p, ours) for ours, theirs in ARCHITECTURE.items()},
            "bos_token_id": ids["bos"],
            "eos_token_id": ids["eos"],
        }
        special = {"bos_token": START, "eos_token": END, "unk_token": END, "pad_token": pad_token(folder)}
        tokenizer = {"tokenizer_class": "CLIPTokenizer", "model_max_length": p.max_length, **special}
        files: dict[str, Path | str] = {f"tokenizer/{name}": text for name, text in tokenizer_files(folder).items()}
        files["tokenizer/tokenizer_config.json"] = json.dumps(tokenizer, indent=2) + "\n"
        pairs = clip_pairs(p.layers, ours="clip", theirs="text_model")
        return DiffusersModel("CLIPTextModel", config, pairs, library="transformers", files=files)

    @classmethod
    def from_diffusers(cls, class_name: str, config: dict[str, Any], folder: Path) -> dict[str, Any] | None:
        """A pipeline's ``text_encoder`` folder holding transformers' ``CLIPTextModel``, its
        tokenizer in the ``tokenizer`` folder beside it (the weights load from ``folder``)."""
        if class_name != "CLIPTextModel":
            return None
        tokenizer = folder.parent / "tokenizer"
        settings = tokenizer / "tokenizer_config.json"
        length = json.loads(settings.read_text()).get("model_max_length", 77) if settings.is_file() else 77
        positions = config.get("max_position_embeddings", 77)
        return {"path": str(folder), "tokenizer": str(tokenizer), "max_length": min(int(length), int(positions))}

    def token_ids(self, captions: Sequence[str]) -> Tensor:
        """Token ids (B, max_length) of ``captions``: start, tokens, end, padding."""
        return encode(self.tokenizer, captions, self.clip.tokens.weight.device, "clip_text")

    def forward(self, y: Sequence[str]) -> Conditioning:
        """Captions (a list of B strings) -> context (B, max_length, width)."""
        if self.params.cache_size == 0 or any(p.requires_grad for p in self.parameters()):
            return Conditioning(context=self.clip(self.token_ids(y)))
        return Conditioning(context=self._cached(y))

    def _cached(self, captions: Sequence[str]) -> Tensor:
        """The frozen encoder's states for ``captions``, encoding only those not seen lately."""
        check_texts(captions, "clip_text")
        return self._cache.states(captions, lambda c: self.clip(self.token_ids(c)), self.clip.tokens.weight)

    def unconditional(self, cond: Conditioning) -> Conditioning:
        """The empty caption's states, repeated over the batch of ``cond`` (as Stable Diffusion's
        pipelines do: an output of the encoder, so guidance contrasts with what it says for nothing)."""
        return Conditioning(context=self([""]).context.to(cond.context.dtype).expand(cond.batch_size, -1, -1))
