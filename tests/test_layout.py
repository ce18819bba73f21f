"""`layout`: the contract, the original model's token sequence, clear errors for bad layouts,
the encoder's arithmetic, and the empty layout as the "no condition" output."""

import pytest
import torch
from pydantic import ValidationError
from torch.nn import functional as F

from core.testing import ConditionerContract
from plugins.layout import Layout, layout_tokens
from tasks.ldm.generation import batched

TINY = {"num_classes": 10, "max_objects": 3, "width": 16, "layers": 1, "heads": 2}
ORIGINAL = Layout.Params(num_classes=340)  # max_objects 30, vocab_size 8192: the released model's tokens
NONE, CROP = 8191, [0, 8099]


def random_layouts(batch_size, generator, max_objects=3, num_classes=10):
    """(B, max_objects, 5) float64 layouts of 0 to max_objects boxes, empty rows with class -1."""
    boxes = torch.zeros(batch_size, max_objects, 5, dtype=torch.float64)
    boxes[..., 0] = -1
    for b in range(batch_size):
        for i in range(int(torch.randint(max_objects + 1, (1,), generator=generator))):
            xs = torch.rand(2, generator=generator, dtype=torch.float64).sort().values
            ys = torch.rand(2, generator=generator, dtype=torch.float64).sort().values
            label = torch.randint(num_classes, (1,), generator=generator)
            boxes[b, i] = torch.tensor([float(label), xs[0], ys[0], xs[1], ys[1]], dtype=torch.float64)
    return boxes


class TestLayout(ConditionerContract):
    component = Layout
    params = TINY

    def example(self, batch_size, generator):
        return random_layouts(batch_size, generator)


class TestLayoutFromJsonLists(TestLayout):
    """The same, given as a `sample` spec's JSON gives it: a list of B lists of [class, x0, y0, x1, y1]."""

    params = {**TINY, "qkv_bias": True}

    def example(self, batch_size, generator):
        return [[row for row in layout.tolist() if row[0] != -1] for layout in random_layouts(batch_size, generator)]


def tiny(**params):
    return Layout(Layout.Params(**{**TINY, **params})).eval()


def test_worked_example_b4_gives_the_original_tokens():
    """Class 5 with the box (0.1, 0.2)-(0.5, 0.6) under the released model's settings.

    The expected list comes from running the original builder (taming-transformers'
    ObjectsBoundingBoxConditionalBuilder, commit 3ba01b2, with no_tokens 8192, no_max_objects
    30, encode_crop) on that box as (x0, y0, w, h), as recorded in the research: the grid has
    int(sqrt(8192)) = 90 points a side; top-left round(0.2 * 89) * 90 + round(0.1 * 89) =
    18 * 90 + 9 = 1629; bottom-right 53 * 90 + 44 = 4814, where 0.5 * 89 = 44.5 rounds half
    to even; 29 empty slots of 8191; then the whole-image crop's corners 0 and 89 * 90 + 89.
    """
    assert layout_tokens([[5, 0.1, 0.2, 0.5, 0.6]], ORIGINAL) == [5, 1629, 4814] + [NONE] * 87 + CROP


def test_two_objects_keep_their_order():
    # The whole image: corners (0, 0) -> 0 and (1, 1) -> 89 * 90 + 89 = 8099.
    tokens = layout_tokens([[5, 0.1, 0.2, 0.5, 0.6], [37, 0.0, 0.0, 1.0, 1.0]], ORIGINAL)
    assert tokens == [5, 1629, 4814, 37, 0, 8099] + [NONE] * 84 + CROP
    swapped = layout_tokens([[37, 0.0, 0.0, 1.0, 1.0], [5, 0.1, 0.2, 0.5, 0.6]], ORIGINAL)
    assert swapped[:6] == [37, 0, 8099, 5, 1629, 4814]


def test_exact_halves_round_to_even():
    # x0 * 89 = 1.5 -> 2, y0 * 89 = 0.5 -> 0, x1 * 89 = 44.5 -> 44, y1 * 89 = 45.5 -> 46 (all exact in floats).
    tokens = layout_tokens([[2, 1.5 / 89, 0.5 / 89, 0.5, 45.5 / 89]], ORIGINAL)
    assert tokens[:3] == [2, 0 * 90 + 2, 46 * 90 + 44] == [2, 2, 4184]


def test_far_corner_is_found_as_the_original_finds_it():
    """The original keeps (x0, y0, width, height) and takes x0 + (x1 - x0) for the far corner.
    Here that is 89 * 0.99438... = 88.50000000000001 -> 89, where x1 itself gives 88.4999... -> 88."""
    x0, x1 = 0.2827568384975971, 0.9943820224719101
    assert round(x1 * 89) == 88 and round((x0 + (x1 - x0)) * 89) == 89
    assert layout_tokens([[1, x0, 0.0, x1, 0.5]], ORIGINAL)[:3] == [1, 25, 44 * 90 + 89]


def test_empty_layout_is_every_slot_empty_then_the_crop():
    assert layout_tokens([], ORIGINAL) == [NONE] * 90 + CROP
    assert layout_tokens([[-1, 0, 0, 0, 0]] * 30, ORIGINAL) == [NONE] * 90 + CROP


def test_tensor_and_json_lists_give_the_same_tokens():
    module = tiny()
    boxes = torch.tensor([[[3, 0.1, 0.2, 0.5, 0.6], [-1, 0, 0, 0, 0], [7, 0.0, 0.5, 0.25, 1.0]]], dtype=torch.float64)
    lists = [[[3, 0.1, 0.2, 0.5, 0.6], [7, 0.0, 0.5, 0.25, 1.0]]]
    expected = [3, 1629, 4814, 7, 44 * 90, 89 * 90 + 22, NONE, NONE, NONE, *CROP]  # 0.25 * 89 = 22.25 -> 22
    assert module.token_ids(boxes).tolist() == [expected]
    assert module.token_ids(lists).tolist() == [expected]
    assert module.token_ids(list(boxes)).tolist() == [expected]
    spec_values = batched([lists[0], []], torch.device("cpu"))  # what a sample spec's conditions become
    assert module.token_ids(spec_values).tolist() == [expected, [NONE] * 9 + CROP]


BAD = [
    (
        [[3, 0.1, 0.2, 1.5, 0.6]],
        r"object 0 has box \(0\.1, 0\.2, 1\.5, 0\.6\) outside \[0, 1\]; give \(x0, y0, x1, y1\)",
    ),
    ([[3, -0.1, 0.2, 0.5, 0.6]], r"object 0 has box \(-0\.1, 0\.2, 0\.5, 0\.6\) outside \[0, 1\]"),
    ([[3, 0.1, 0.2, 0.5, float("nan")]], r"object 0 has box \(0\.1, 0\.2, 0\.5, nan\) outside \[0, 1\]"),
    ([[3, 0.5, 0.2, 0.5, 0.6]], r"object 0 has box \(0\.5, 0\.2, 0\.5, 0\.6\) with no area; give its top-left"),
    ([[3, 0.1, 0.6, 0.5, 0.2]], r"object 0 has box \(0\.1, 0\.6, 0\.5, 0\.2\) with no area"),
    (
        [[1, 0, 0, 1, 1], [10, 0.1, 0.2, 0.5, 0.6]],
        r"object 1 has class 10, outside \[0, 10\); give a class index below",
    ),
    ([[-2, 0.1, 0.2, 0.5, 0.6]], r"object 0 has class -2, outside \[0, 10\)"),
    ([[2.5, 0.1, 0.2, 0.5, 0.6]], r"object 0 has class 2\.5, outside \[0, 10\)"),
    (
        [[1, 0.1, 0.2, 0.5, 0.6]] * 4,
        r"the layout has 4 objects but max_objects is 3; give at most 3 or raise max_objects",
    ),
    ([[1, 0.1, 0.2]], r"object 0 is \[1, 0\.1, 0\.2\]; give each object as \[class, x0, y0, x1, y1\]"),
    ([["cat", 0.1, 0.2, 0.5, 0.6]], r"object 0 is \['cat', 0\.1, 0\.2, 0\.5, 0\.6\]; give each object as"),
]


@pytest.mark.parametrize(("objects", "message"), BAD)
def test_bad_layouts_are_refused_with_the_value_and_the_fix(objects, message):
    with pytest.raises(ValueError, match=message):
        layout_tokens(objects, tiny().params)
    with pytest.raises(ValueError, match=rf"^example 1: {message}"):
        tiny()([[], objects])


def test_bad_batches_are_refused():
    with pytest.raises(ValueError, match=r"layouts come as boxes of shape \(B, N, 5\), got \(2, 4\)"):
        tiny()(torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"example 0 is 'a cat', not a list of objects"):
        tiny()(["a cat"])


def test_params_refuse_what_cannot_work():
    with pytest.raises(ValidationError, match="3 heads do not divide width 16"):
        Layout.Params(**{**TINY, "heads": 3})
    with pytest.raises(ValidationError, match="vocab_size 8100 is a square, so the 'no object' token 8099 would also"):
        Layout.Params(**TINY, vocab_size=8100)
    with pytest.raises(ValidationError, match="num_classes 63 needs class tokens up to 62, but token 62 means 'no obj"):
        Layout.Params(**{**TINY, "num_classes": 63}, vocab_size=63)
    Layout.Params(**{**TINY, "num_classes": 62}, vocab_size=63)


def test_unconditional_is_the_empty_layouts_encoding():
    module = tiny()
    cond = module(random_layouts(3, torch.Generator().manual_seed(0)).float())
    null = module.unconditional(cond)
    assert null.context.shape == cond.context.shape == (3, 3 * 3 + 2, 16)
    empty = module([[]]).context[0]
    for b in range(3):
        assert torch.equal(null.context[b], empty)
    assert not torch.allclose(null.context, cond.context)
    null.context.sum().backward()
    assert module.tokens.weight.grad[NONE].abs().sum() > 0, "the empty layout's encoding is trained"


def test_encoder_is_the_original_arithmetic():
    """Pre-norm layers as the original's encoder computes them, written out: embeddings plus
    learned positions; per layer x += out(softmax(q k^T / sqrt(d_head)) v) on LayerNorm(x),
    then x += W2 GELU(W1 LayerNorm(x)); a final LayerNorm. No q/k/v bias by default."""
    module = tiny(layers=2).double()
    state = module.state_dict()
    assert not any(key.endswith(("to_q.bias", "to_k.bias", "to_v.bias")) for key in state)
    assert "blocks.0.attention.to_out.bias" in state
    layouts = [[[3, 0.1, 0.2, 0.5, 0.6], [9, 0.0, 0.0, 1.0, 1.0]], []]
    ids = module.token_ids(layouts)
    with torch.no_grad():
        x = state["tokens.weight"][ids] + state["positions"]
        for i in range(2):
            w = {
                key.removeprefix(f"blocks.{i}."): value
                for key, value in state.items()
                if key.startswith(f"blocks.{i}.")
            }
            h = F.layer_norm(x, (16,), w["attention_norm.weight"], w["attention_norm.bias"])
            q, k, v = (h @ w[f"attention.to_{n}.weight"].T for n in "qkv")
            q, k, v = (t.view(2, 11, 2, 8).transpose(1, 2) for t in (q, k, v))
            attention = torch.softmax(q @ k.transpose(-1, -2) / 8**0.5, dim=-1) @ v
            x = (
                x
                + attention.transpose(1, 2).reshape(2, 11, 16) @ w["attention.to_out.weight"].T
                + w["attention.to_out.bias"]
            )
            h = F.layer_norm(x, (16,), w["feed_forward_norm.weight"], w["feed_forward_norm.bias"])
            h = F.gelu(h @ w["feed_forward.0.weight"].T + w["feed_forward.0.bias"])
            x = x + h @ w["feed_forward.2.weight"].T + w["feed_forward.2.bias"]
        expected = F.layer_norm(x, (16,), state["norm.weight"], state["norm.bias"])
        assert torch.allclose(module(layouts).context, expected, atol=1e-12)


def test_original_sizes_are_expressible():
    params = Layout.Params(num_classes=5440, width=512, layers=16, heads=8)
    assert (params.max_objects, params.vocab_size, params.grid, params.no_object) == (30, 8192, 90, 8191)
    assert params.sequence_length == 92 and not params.qkv_bias and params.ff_mult == 4
