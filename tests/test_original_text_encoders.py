"""`text_bert` and `layout` with the original code's options compute what its x-transformers
encoder (the `BERTEmbedder` of text2img256, txt2img-1p4B and layout2img) computes.

The fixture numbers were measured by running the original code (CompVis/latent-diffusion
a506df5, ``ldm/modules/x_transformer.py``: ``TransformerWrapper(num_tokens, max_seq_len,
attn_layers=Encoder(dim, depth))`` called with ``return_embeddings=True``, as ``BERTEmbedder``
calls it) on the weights :func:`original_state` makes and the token ids below: width 32, 2
layers, 8 heads of 64 (x-transformers' default: wider than the width, as in the released
text models), 12 tokens, a vocabulary of 40 (``text_bert``) and of 290 (``layout``).
"""

import pytest
import torch

from core import original
from plugins.layout import Layout
from plugins.text_bert import TextBert
from tests.original_fixtures import fingerprint, seeded_state

ORIGINAL_OPTIONS = {"heads": 8, "head_width": 64, "qkv_bias": False}
TEXT = {"vocab_size": 40, "max_length": 12, "width": 32, "layers": 2, "padding_mask": False, "null": "empty_caption"}
LAYOUT = {"num_classes": 18, "max_objects": 3, "vocab_size": 290, "width": 32, "layers": 2}
CAPTIONS = ["a red circle", "a green square and a blue triangle"]


def build(kind: str) -> torch.nn.Module:
    if kind == "text_bert":
        return TextBert(TextBert.Params(**TEXT, **ORIGINAL_OPTIONS)).eval()
    return Layout(Layout.Params(**LAYOUT, **ORIGINAL_OPTIONS)).eval()


def original_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return seeded_state({key: tensor.shape for key, tensor in original.to_original(model).items()})


def token_ids(model: torch.nn.Module) -> torch.Tensor:
    if isinstance(model, TextBert):
        model.fit(CAPTIONS)
        return model.token_ids(CAPTIONS)[0]
    return model.token_ids([[[4, 0.1, 0.2, 0.5, 0.6]], [[17, 0.0, 0.5, 0.5, 1.0], [2, 0.25, 0.25, 0.75, 0.75]]])


ORIGINAL = {
    "text_bert": [
        -12.663467893260531,
        632.9127345859306,
        1.3573434352874756,
        0.8614722490310669,
        -1.225526213645935,
        1.4250938892364502,
    ],
    "layout": [
        -9.714428682345897,
        563.2083616410382,
        0.16048508882522583,
        0.8427634835243225,
        -1.141870379447937,
        1.7296974658966064,
    ],
}
ORIGINAL_IDS = {
    "text_bert": [[2, 4, 36, 34, 3, 0, 0, 0, 0, 0, 0, 0], [2, 4, 35, 37, 32, 4, 33, 38, 3, 0, 0, 0]],
    "layout": [[4, 53, 178, 289, 289, 289, 289, 289, 289, 0, 288], [17, 136, 280, 2, 72, 216, 289, 289, 289, 0, 288]],
}


@pytest.mark.parametrize("kind", ["text_bert", "layout"])
def test_context_equals_the_original_codes(kind):
    model = build(kind)
    ids = token_ids(model)
    assert ids.tolist() == ORIGINAL_IDS[kind]
    model.load_state_dict({**model.state_dict(), **original.from_original(model, original_state(model))})
    with torch.no_grad():
        context = model(CAPTIONS).context if kind == "text_bert" else model.encode(ids)
    torch.testing.assert_close(fingerprint(context), ORIGINAL[kind], rtol=1e-5, atol=1e-5)


def test_the_empty_caption_is_text_berts_original_no_condition():
    model = build("text_bert")
    cond = model(CAPTIONS)
    torch.testing.assert_close(model.unconditional(cond).context[1], model([""]).context[0])
    assert "null" not in model.state_dict()


def test_runs_saved_before_text_bert_had_its_own_blocks_still_load():
    """A state dict in torch's nn.TransformerEncoder names (what text_bert saved before) loads
    and gives what that encoder gives."""
    params = TextBert.Params(vocab_size=40, max_length=12, width=32, layers=2, heads=4)
    model = TextBert(params).eval()
    torch_encoder = torch.nn.TransformerEncoder(
        torch.nn.TransformerEncoderLayer(32, 4, 128, 0.0, activation="gelu", batch_first=True, norm_first=True),
        2,
        enable_nested_tensor=False,
    ).eval()
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("encoder.")}
    state.update({f"encoder.{k}": v for k, v in torch_encoder.state_dict().items()})
    model.load_state_dict(state)
    ids, mask = model.token_ids(CAPTIONS)
    with torch.no_grad():
        expected = model.norm(torch_encoder(model.tokens(ids) + model.positions, src_key_padding_mask=~mask))
        torch.testing.assert_close(model(CAPTIONS).context, expected, rtol=1e-5, atol=1e-5)
