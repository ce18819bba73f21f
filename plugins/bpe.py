"""CLIP's byte-level BPE tokenizer (the ``tokenizers`` library), read from a folder's ``vocab.json``
and ``merges.txt`` and built as transformers' ``CLIPTokenizer`` builds it, and the fixed-length
``<|startoftext|> tokens <|endoftext|> pad...`` encoding Stable Diffusion feeds CLIP's text tower.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import AddedToken, Regex, Tokenizer, models, normalizers, pre_tokenizers, processors
from torch import Tensor

from plugins.wordpiece import check_texts

START, END = "<|startoftext|>", "<|endoftext|>"
"""CLIP's special tokens; the end token is also the unknown token and, unless the folder says
otherwise, the padding (openai/clip-vit-large-patch14, Stable Diffusion v1's, pads with it)."""

WORDS = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
"""CLIP's word pattern: contractions, runs of letters, single digits, runs of other symbols."""

FILES = ("vocab.json", "merges.txt")


def _json(path: Path) -> dict:
    """The JSON object in ``path``; empty if there is no such file."""
    if not path.is_file():
        return {}
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    if not isinstance(found, dict):
        raise ValueError(f"{path} is not a JSON object")
    return found


def vocabulary(folder: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's vocabulary and merges from ``folder``: its ``vocab.json`` and ``merges.txt``, else
    its ``tokenizer.json`` (all a folder saved by transformers 5 holds); a ValueError naming
    what is missing or unreadable."""
    if not folder.is_dir():
        raise ValueError(f"{str(folder)!r} is not a folder; give a folder holding CLIP's vocab.json and merges.txt")
    if all((folder / name).is_file() for name in FILES):
        vocab = _json(folder / "vocab.json")
        _, merges = models.BPE.read_file(str(folder / "vocab.json"), str(folder / "merges.txt"))
        where = folder / "vocab.json"
    elif (folder / "tokenizer.json").is_file():
        model = _json(folder / "tokenizer.json").get("model", {})
        if model.get("type") != "BPE":
            raise ValueError(f"{folder / 'tokenizer.json'} holds no BPE model; give CLIP's tokenizer")
        vocab, where = model.get("vocab", {}), folder / "tokenizer.json"
        merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]
    else:
        missing = next(name for name in FILES if not (folder / name).is_file())
        raise ValueError(
            f"{str(folder)!r} has no {missing} (nor a tokenizer.json); give a folder holding CLIP's vocab.json and "
            "merges.txt (a diffusers pipeline's tokenizer/ folder)"
        )
    if not all(isinstance(i, int) for i in vocab.values()):
        raise ValueError(f"{where} holds no vocabulary of token ids")
    return vocab, merges


def tokenizer_files(folder: Path) -> dict[str, str]:
    """``vocab.json`` and ``merges.txt`` of ``folder``'s tokenizer, as texts (however it stores them)."""
    vocab, merges = vocabulary(folder)
    return {
        "vocab.json": json.dumps(vocab, ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
    }


def _setting(folder: Path, name: str) -> str | None:
    """A token setting as transformers reads it from the folder: ``special_tokens_map.json``'s
    overrides ``tokenizer_config.json``'s unless the latter lists ``added_tokens_decoder``
    (a folder saved by transformers 4.34 or later); a value is a string or an AddedToken's dict."""
    config = _json(folder / "tokenizer_config.json")
    sources = [config] if "added_tokens_decoder" in config else [_json(folder / "special_tokens_map.json"), config]
    for source in sources:
        value = source.get(name)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            return value
    return None


def pad_token(folder: Path) -> str:
    """The padding token the folder's tokenizer files name, else ``<|endoftext|>``."""
    return _setting(folder, "pad_token") or END


def _known(folder: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The folder's vocabulary and merges; a ValueError unless it holds the special and padding tokens."""
    vocab, merges = vocabulary(folder)
    for token in (START, END, pad_token(folder)):
        if token not in vocab:
            raise ValueError(f"the vocabulary in {folder} has no {token!r}; give CLIP's tokenizer")
    return vocab, merges


def check_folder(folder: Path, vocab_size: int) -> None:
    """A ValueError in one sentence unless ``folder`` holds a CLIP vocabulary and merges whose
    special and padding tokens are known and whose ids all index an embedding of ``vocab_size``."""
    largest = max(_known(folder)[0].values())
    if largest >= vocab_size:
        raise ValueError(
            f"the vocabulary in {folder} has token id {largest}, beyond vocab_size {vocab_size}; "
            "give the tokenizer of this text encoder"
        )


def clip_tokenizer(folder: Path, max_length: int) -> Tokenizer:
    """CLIP's tokenizer from ``folder``, set to encode one text as ``<|startoftext|> tokens
    <|endoftext|>`` cut to ``max_length`` (the end token kept last) and padded to it with
    :func:`pad_token`; a ValueError as :func:`check_folder` says for a folder it cannot use."""
    vocab, merges = _known(folder)
    tokenizer = Tokenizer(
        models.BPE(vocab, merges, continuing_subword_prefix="", end_of_word_suffix="</w>", unk_token=END)
    )
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(WORDS), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    pad = pad_token(folder)
    # As in transformers, a special token written in a caption is that token, not its characters.
    tokenizer.add_special_tokens([AddedToken(token, special=True) for token in dict.fromkeys((START, END, pad))])
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{START} $A {END}", special_tokens=[(START, vocab[START]), (END, vocab[END])]
    )
    tokenizer.enable_truncation(max_length)
    tokenizer.enable_padding(pad_id=vocab[pad], pad_token=pad, length=max_length)
    return tokenizer


def encode(tokenizer: Tokenizer, texts: Sequence[str], device: torch.device, who: str) -> Tensor:
    """Token ids (B, max_length), int64, of B ``texts`` by a :func:`clip_tokenizer`; a
    ValueError naming ``who`` unless ``texts`` is a list of strings."""
    check_texts(texts, who)
    encoded = tokenizer.encode_batch(list(texts))
    return torch.tensor([e.ids for e in encoded], dtype=torch.long, device=device)
