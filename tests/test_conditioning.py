import pytest
import torch

from core import Conditioning, ConditioningShape


def test_combine_joins_contexts_on_tokens_concat_on_channels_vectors_on_width():
    a = Conditioning(context=torch.ones(2, 1, 8), vector=torch.ones(2, 4))
    b = Conditioning(context=torch.zeros(2, 5, 8), concat=torch.ones(2, 3, 4, 4), vector=torch.ones(2, 6))
    c = Conditioning.combine([a, b])
    assert c.context.shape == (2, 6, 8)
    assert torch.equal(c.context[:, 0], torch.ones(2, 8)) and torch.equal(c.context[:, 1:], torch.zeros(2, 5, 8))
    assert c.concat.shape == (2, 3, 4, 4)
    assert c.vector.shape == (2, 10)
    assert c.shape == ConditioningShape(context=8, concat=3, vector=10)
    assert c.shape == ConditioningShape.combine([a.shape, b.shape])


def test_shapes_with_different_context_widths_do_not_combine_and_the_message_names_both():
    with pytest.raises(ValueError, match=r"label gives 8, caption gives 16"):
        ConditioningShape.combine([ConditioningShape(context=8), ConditioningShape(context=16)], ["label", "caption"])


def test_parts_must_have_their_rank_and_one_batch_size():
    with pytest.raises(ValueError, match="context must be a tensor of rank 3"):
        Conditioning(context=torch.ones(2, 8))
    with pytest.raises(ValueError, match="batch size"):
        Conditioning(context=torch.ones(2, 1, 8), vector=torch.ones(3, 4))
    with pytest.raises(ValueError, match="positive int"):
        ConditioningShape(context=0)


def test_cat_stacks_batches_and_where_mixes_per_sample():
    cond = Conditioning(context=torch.ones(2, 1, 4), vector=torch.ones(2, 3))
    null = Conditioning(context=torch.zeros(2, 1, 4), vector=torch.zeros(2, 3))
    both = Conditioning.cat([cond, null])
    assert both.batch_size == 4 and torch.equal(both.context[2:], null.context)
    mixed = cond.where(torch.tensor([True, False]), null)
    assert torch.equal(mixed.context[0], cond.context[0]) and torch.equal(mixed.context[1], null.context[1])
    assert torch.equal(mixed.vector[1], torch.zeros(3))
    with pytest.raises(ValueError, match="different parts"):
        Conditioning.cat([cond, Conditioning(context=torch.ones(2, 1, 4))])


def test_empty_conditioning_has_no_batch_size_and_no_parts():
    assert Conditioning().batch_size is None
    assert Conditioning().shape.parts == ()
    assert Conditioning.combine([]).shape == ConditioningShape()
