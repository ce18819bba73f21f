"""Classifier-free guidance: one batched call for both halves, one call at scale 0 or 1,
concat conditions kept in the unconditional half, negative conditions in its place."""

import pytest
import torch

from core import Conditioning
from core.guidance import guided, unconditional_half


class Recorder:
    """A model whose output depends on x, t and every part of the condition; records its batches."""

    def __init__(self):
        self.batches = []

    def __call__(self, x, t, cond):
        self.batches.append(x.shape[0])
        out = x * (1 + t[:, None, None, None])
        if cond.context is not None:
            out = out + cond.context.sum(dim=(1, 2))[:, None, None, None]
        if cond.concat is not None:
            out = out + cond.concat.mean(dim=1, keepdim=True)
        return out


def conditions(batch=3):
    gen = torch.Generator().manual_seed(0)
    cond = Conditioning(
        context=torch.randn(batch, 1, 4, generator=gen), concat=torch.randn(batch, 2, 4, 4, generator=gen)
    )
    null = Conditioning(context=torch.zeros(batch, 1, 4), concat=torch.zeros(batch, 2, 4, 4))
    return cond, null


def test_guidance_is_uncond_plus_scale_times_the_difference_in_one_batched_call():
    cond, null = conditions()
    x, t = torch.randn(3, 1, 4, 4), torch.tensor([0.1, 0.5, 0.9])
    model = Recorder()
    out = guided(model, cond, null, 7.5)(x, t)
    assert model.batches == [6], "both halves in one call"
    expected = model(x, t, null) + 7.5 * (model(x, t, cond) - model(x, t, null))
    assert torch.allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize("scale,which", [(1.0, "cond"), (0.0, "null")])
def test_scale_one_and_zero_cost_one_pass(scale, which):
    cond, null = conditions()
    x, t = torch.randn(3, 1, 4, 4), torch.rand(3)
    model = Recorder()
    out = guided(model, cond, null, scale)(x, t)
    assert model.batches == [3]
    assert torch.equal(out, model(x, t, cond if which == "cond" else null))


def test_the_unconditional_half_keeps_concat_conditions_unless_told_otherwise():
    cond, null = conditions()
    kept = unconditional_half(cond, null)
    assert torch.equal(kept.concat, cond.concat) and torch.equal(kept.context, null.context)
    assert unconditional_half(cond, null, keep_concat=False) is null
    context_only = Conditioning(context=cond.context)
    assert unconditional_half(context_only, Conditioning(context=null.context)).concat is None


def test_a_negative_condition_replaces_the_unconditional_half():
    cond, null = conditions()
    negative = Conditioning(context=torch.full((3, 1, 4), 0.25), concat=cond.concat)
    x, t = torch.randn(3, 1, 4, 4), torch.rand(3)
    model = Recorder()
    with_negative = guided(model, cond, unconditional_half(cond, negative), 3.0)(x, t)
    with_null = guided(model, cond, unconditional_half(cond, null), 3.0)(x, t)
    # The context sums differ by 4 x 0.25 = 1, pushed away from by (scale - 1) = 2.
    assert torch.allclose(with_null - with_negative, torch.full_like(with_null, 2.0), atol=1e-5)


def test_an_unconditional_model_guides_to_itself():
    x, t = torch.randn(2, 1, 4, 4), torch.rand(2)
    model = Recorder()
    assert torch.allclose(guided(model, Conditioning(), Conditioning(), 5.0)(x, t), model(x, t, Conditioning()))
