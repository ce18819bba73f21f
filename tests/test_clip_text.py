"""`clip_text`: on the same folder and token ids it gives transformers' `CLIPTextModel`'s last
hidden states, its tokenizer gives `CLIPTokenizer`'s ids, Stable Diffusion v1's names load into
it, and bad folders are one-sentence errors."""

import json
import random
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import save_file
from tokenizers import Regex, normalizers, pre_tokenizers
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from core import original
from core.testing import ConditionerContract
from plugins.bpe import END, START, WORDS
from plugins.clip_text import ClipTextEncoder

CORPUS = [
    "a photograph of an astronaut riding a horse on the moon",
    "the quick brown fox jumps over the lazy dog",
    "it's a beautiful day, we're going to the beach and they'll come too",
    "a painting of a cat in the style of van gogh, trending on artstation, 4k",
    "a red circle and a blue square next to a green triangle",
    "café crème brûlée, naïve façade",
]
TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}


def learn_merges(texts: list[str], count: int) -> list[tuple[str, str]]:
    """``count`` BPE merges learnt on ``texts`` split as CLIP splits them: the most frequent
    adjacent pair first, ties by the pair's order (the ``tokenizers`` trainer breaks them in
    hash order, which would change the vocabulary from run to run)."""
    normalizer = normalizers.Sequence([normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    splitter = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(WORDS), "removed", invert=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    words = Counter(w for text in texts for w, _ in splitter.pre_tokenize_str(normalizer.normalize_str(text)))
    symbols = {word: [*word[:-1], word[-1] + "</w>"] for word in words}
    merges = []
    for _ in range(count):
        pairs = Counter()
        for word, n in words.items():
            for pair in zip(symbols[word], symbols[word][1:], strict=False):
                pairs[pair] += n
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        for word, parts in symbols.items():
            merged, i = [], 0
            while i < len(parts):
                take = parts[i : i + 2] == list(best)
                merged.append(parts[i] + parts[i + 1] if take else parts[i])
                i += 2 if take else 1
            symbols[word] = merged
    return merges


def write_tokenizer(folder: Path) -> Path:
    """A small CLIP-style vocabulary and merges (every byte alone and with "</w>", the merges
    learnt on CORPUS, then the special tokens) written as CLIP's tokenizer folder."""
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    merges = learn_merges(CORPUS, 150)
    tokens = [*alphabet, *(a + "</w>" for a in alphabet), *(a + b for a, b in merges), START, END]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(dict.fromkeys(tokens))}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return folder


TOKENIZER = write_tokenizer(Path(tempfile.mkdtemp(prefix="clip-tokenizer-")))
VOCAB = json.loads((TOKENIZER / "vocab.json").read_text())


def clip_model(hidden_act: str = "quick_gelu", seed: int = 0) -> CLIPTextModel:
    """A tiny random CLIPTextModel with every tensor perturbed (LayerNorms start at exactly 1 / 0)."""
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=len(VOCAB), hidden_act=hidden_act, bos_token_id=VOCAB[START], eos_token_id=VOCAB[END], **TINY
    )
    model = CLIPTextModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def write_clip(folder: Path, hidden_act: str = "quick_gelu") -> CLIPTextModel:
    """A tiny CLIPTextModel saved by transformers into ``folder``, with the tokenizer's files."""
    model = clip_model(hidden_act)
    model.save_pretrained(folder)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(TOKENIZER / name, folder / name)
    return model


MODEL = Path(tempfile.mkdtemp(prefix="clip-text-"))
write_clip(MODEL)


class TestClipTextFromAFolder(ConditionerContract):
    component = ClipTextEncoder
    params = {"path": str(MODEL), "max_length": 16}

    def example(self, batch_size, generator):
        picks = torch.randint(len(CORPUS), (batch_size,), generator=generator).tolist()
        return [CORPUS[i] for i in picks]


class TestClipTextUntrained(TestClipTextFromAFolder):
    params = {
        "tokenizer": str(TOKENIZER),
        "vocab_size": len(VOCAB),
        "width": 32,
        "layers": 2,
        "heads": 4,
        "mlp_width": 64,
        "max_positions": 20,
        "max_length": 12,
    }


@pytest.mark.parametrize("hidden_act", ["quick_gelu", "gelu"])
def test_it_gives_transformers_last_hidden_states(tmp_path, hidden_act):
    reference = write_clip(tmp_path, hidden_act)
    encoder = ClipTextEncoder(ClipTextEncoder.Params(path=tmp_path))
    assert encoder.params.activation == hidden_act and encoder.params.width == 32
    captions = ["a red circle", "", "the quick brown fox jumps over the lazy dog " * 12]
    ids = encoder.token_ids(captions)
    assert ids.shape == (3, 77) and (ids[:2, -1] == VOCAB[END]).all()  # padded with <|endoftext|>
    generator = torch.Generator().manual_seed(0)
    random_ids = torch.randint(len(VOCAB), (2, 77), generator=generator)
    with torch.no_grad():
        for batch in (ids, random_ids, random_ids[:, :9]):
            expected = reference(batch).last_hidden_state
            assert torch.allclose(encoder.clip(batch), expected, atol=1e-5, rtol=0)
        assert torch.allclose(encoder(captions).context, reference(ids).last_hidden_state, atol=1e-5, rtol=0)


def test_a_full_clip_models_folder_loads_its_text_tower(tmp_path):
    reference = clip_model()
    state = {f"text_model.{key}": value.contiguous() for key, value in reference.state_dict().items()}
    state["text_model.embeddings.position_ids"] = torch.arange(77)[None]  # what older checkpoints carry
    state["vision_model.embeddings.class_embedding"] = torch.zeros(8)
    state["text_projection.weight"] = torch.zeros(16, 32)
    save_file(state, tmp_path / "model.safetensors")
    text_config = {**reference.config.to_dict(), "model_type": "clip_text_model"}
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip", "text_config": text_config}))
    encoder = ClipTextEncoder(ClipTextEncoder.Params(path=tmp_path, tokenizer=TOKENIZER))
    ids = encoder.token_ids(["a blue square"])
    with torch.no_grad():
        assert torch.allclose(encoder.clip(ids), reference(ids).last_hidden_state, atol=1e-5, rtol=0)


def test_stable_diffusion_names_pair_every_tensor_and_load():
    reference = clip_model()
    theirs = {f"transformer.text_model.{key}": value for key, value in reference.state_dict().items()}
    params = TestClipTextUntrained.params | {"max_positions": 77}
    encoder = ClipTextEncoder(ClipTextEncoder.Params(**params))
    names = [name for pair in encoder.original_names() for name in pair.originals]
    assert len(names) == len(set(names)) == len(theirs) and set(names) == set(theirs)
    assert {pair.ours for pair in encoder.original_names()} == set(encoder.state_dict())
    encoder.load_state_dict(original.from_original(encoder, theirs))
    ids = encoder.token_ids(CORPUS[:2])
    with torch.no_grad():
        assert torch.allclose(encoder(CORPUS[:2]).context, reference(ids).last_hidden_state, atol=1e-5, rtol=0)
    back = original.to_original(encoder)
    assert all(torch.equal(back[key], value) for key, value in theirs.items())


def captions(count: int, seed: int = 0) -> list[str]:
    """``count`` varied captions: mixed case, punctuation, digits, contractions, runs of spaces,
    tabs and newlines, accents (composed and not), emoji, special tokens, long ones, empty ones."""
    rng = random.Random(seed)
    words = [w for text in CORPUS for w in text.split()] + ["HeLLo", "WORLD", "Zebra", "x"]
    odd = ["it's", "WE'RE", "they'll", "don't", "I'd", "you've", "I'M", "42", "3.14", "1,000,000", "#hashtag",
           "!!!", "?!", "(parens)", "[x]", "{y}", "a-b_c", "e\u0301te\u0301", "ÉCOLE", "naïve", "Straße", "猫", "🙂",
           "👍🏽", "—", "…", "<|endoftext|>", "<|startoftext|>", "\u00a0nbsp", "@user", "$5", "100%"]  # fmt: skip
    spaces = [" ", " ", " ", "  ", "\t", "\n", " \n\t ", "   "]
    found = ["", " ", "\n\t"]
    while len(found) < count:
        length = rng.choice([1, 2, 5, 10, 20, 60, 120])
        pieces = [rng.choice(odd) if rng.random() < 0.3 else rng.choice(words) for _ in range(length)]
        text = "".join(p + rng.choice(spaces) for p in pieces)
        found.append(text if rng.random() < 0.5 else text.strip())
    return found


def test_its_tokenizer_gives_clip_tokenizers_ids():
    theirs = CLIPTokenizer.from_pretrained(TOKENIZER)
    params = TestClipTextUntrained.params | {"max_positions": 77, "max_length": 77}
    encoder = ClipTextEncoder(ClipTextEncoder.Params(**params))
    texts = captions(200)
    expected = theirs(texts, padding="max_length", max_length=77, truncation=True)["input_ids"]
    assert encoder.token_ids(texts).tolist() == expected
    assert all(row[-1] == VOCAB[END] for row in expected)  # the end token or its padding last
    assert sum(row[-2] != VOCAB[END] for row in expected) > 20  # many were cut


def test_the_padding_token_is_the_folders(tmp_path):
    shutil.copytree(TOKENIZER, tmp_path, dirs_exist_ok=True)
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"pad_token": "!"}))  # as Stable Diffusion 2's
    theirs = CLIPTokenizer.from_pretrained(tmp_path)
    encoder = ClipTextEncoder(ClipTextEncoder.Params(**TestClipTextUntrained.params | {"tokenizer": tmp_path}))
    texts = ["wow!", "a red circle", ""]
    ids = encoder.token_ids(texts)
    assert ids.tolist() == theirs(texts, padding="max_length", max_length=12, truncation=True)["input_ids"]
    assert ids[1, -1] == VOCAB["!"]


def test_bad_folders_are_one_sentence_errors(tmp_path):
    with pytest.raises(ValidationError, match="is not a folder; give a local folder holding a CLIP text encoder"):
        ClipTextEncoder.Params(path=tmp_path / "nowhere")
    no_weights = tmp_path / "no_weights"
    shutil.copytree(MODEL, no_weights)
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(ValidationError, match="has no model.safetensors; give the folder of a CLIP text encoder"):
        ClipTextEncoder.Params(path=no_weights)
    no_merges = tmp_path / "no_merges"
    shutil.copytree(TOKENIZER, no_merges)
    (no_merges / "merges.txt").unlink()
    with pytest.raises(ValidationError, match=r"tokenizer: .* has no merges.txt \(nor a tokenizer.json\); give a"):
        ClipTextEncoder.Params(path=MODEL, tokenizer=no_merges)
    with pytest.raises(ValidationError, match="give path .* or tokenizer"):
        ClipTextEncoder.Params()
    with pytest.raises(ValidationError, match="width 64 disagrees with .*config.json's hidden_size 32"):
        ClipTextEncoder.Params(path=MODEL, width=64)
    with pytest.raises(ValidationError, match="has token id .* beyond vocab_size 100"):
        ClipTextEncoder.Params(tokenizer=TOKENIZER, vocab_size=100)
    wider = tmp_path / "wider"
    shutil.copytree(MODEL, wider)
    config = json.loads((wider / "config.json").read_text())
    (wider / "config.json").write_text(json.dumps({**config, "intermediate_size": 48, "num_hidden_layers": 3}))
    with pytest.raises(ValidationError, match=r"missing: encoder.layers.2.layer_norm1.bias, .*wrong shape: encoder"):
        ClipTextEncoder.Params(path=wider)
