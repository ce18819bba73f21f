"""Our own components pass the same contract tests a plugin author runs."""

import pytest
import torch

from core.testing import ConditionerContract, FirstStageContract
from plugins.autoencoder import Autoencoder
from plugins.class_label import ClassLabel
from plugins.identity import IdentityFirstStage
from plugins.kl import KL


class TestClassLabelContext(ConditionerContract):
    component = ClassLabel
    params = {"num_classes": 10, "dim": 8}

    def example(self, batch_size, generator):
        return torch.randint(0, 10, (batch_size,), generator=generator)


class TestClassLabelVector(TestClassLabelContext):
    params = {"num_classes": 10, "dim": 8, "output": "vector"}


class TestIdentity(FirstStageContract):
    component = IdentityFirstStage
    params = {"channels": 3}


def test_class_label_null_is_the_extra_learned_class():
    module = ClassLabel(ClassLabel.Params(num_classes=4, dim=6))
    null = module.unconditional(module(torch.tensor([0, 3])))
    assert torch.equal(null.context[0, 0], module.embedding.weight[4])
    assert torch.equal(null.context[1, 0], module.embedding.weight[4])
    null.context.sum().backward()
    assert module.embedding.weight.grad[4].abs().sum() > 0, "the null class must be trainable"
    assert module.embedding.weight.grad[:4].abs().sum() == 0


def test_class_label_refuses_labels_outside_its_classes():
    module = ClassLabel(ClassLabel.Params(num_classes=4, dim=6))
    with pytest.raises(ValueError, match=r"got class 4, outside \[0, 4\)"):
        module(torch.tensor([1, 4]))


def test_contract_catches_a_conditioner_that_breaks_its_declaration():
    class Lying(ClassLabel):
        @classmethod
        def produces(cls, params):
            from core import ConditioningShape
            return ConditioningShape(context=params.dim + 1)

    class Contract(TestClassLabelContext):
        component = Lying

    with pytest.raises(AssertionError, match="produces\\(\\) declares"):
        Contract().test_output_parts_and_widths_as_declared()
    with pytest.raises(AssertionError):
        Contract().check_all()


def test_component_refuses_params_of_another_class():
    with pytest.raises(TypeError, match="built from ClassLabel.Params"):
        ClassLabel({"num_classes": 3})


class TestAutoencoderKL(FirstStageContract):
    component = Autoencoder
    params = {"in_channels": 3, "ch": 8, "ch_mult": [1, 2, 2], "num_res_blocks": 1, "z_channels": 3, "norm_groups": 4,
              "regularizer": {"name": "kl", "params": {"sample": False}}}


class TestAutoencoderVQ(FirstStageContract):
    component = Autoencoder
    params = {"in_channels": 3, "ch": 8, "ch_mult": [1, 2, 2], "num_res_blocks": 1, "z_channels": 3, "norm_groups": 4,
              "regularizer": {"name": "vq", "params": {"codebook_size": 16}}}


class TestAutoencoderAttention(FirstStageContract):
    component = Autoencoder
    params = {"in_channels": 3, "ch": 8, "ch_mult": [1, 2], "num_res_blocks": 1, "z_channels": 3, "norm_groups": 4,
              "attention_levels": [0, 1], "regularizer": {"name": "kl", "params": {"sample": False}}}

    def test_attention_is_where_the_params_say(self):
        model = self.build()
        blocks = sum(type(m).__name__ == "Attention" for m in model.modules())
        assert blocks == 2 * 1 + 2 * 2 + 2, "encoder 1 per level, decoder 2 per level, one in each middle"
        without = Autoencoder(Autoencoder.Params.model_validate({**self.params, "attention_levels": [], "mid_attention": False},
                                                               context=self.context()))
        assert not any(type(m).__name__ == "Attention" for m in without.modules())


def test_attention_levels_must_exist():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"attention_levels \[2\] do not exist: ch_mult \[1, 2\] has levels 0 to 1"):
        TestAutoencoderAttention.component.Params.model_validate(
            {**TestAutoencoderAttention.params, "attention_levels": [2]}, context=TestAutoencoderAttention().context())


@pytest.mark.parametrize("levels", [1, 2, 3, 4])
def test_encode_decode_shapes_for_f_1_2_4_8(levels):
    class Contract(FirstStageContract):
        component = Autoencoder
        params = {"in_channels": 3, "ch": 4, "ch_mult": [1] * levels, "num_res_blocks": 1, "z_channels": 2,
                  "norm_groups": 2, "regularizer": {"name": "kl", "params": {"sample": False}}}

    assert Autoencoder.latent_shape(Contract().validated_params()).factor == 2 ** (levels - 1)
    Contract().test_shapes_as_declared()


def test_kl_penalty_is_summed_over_latent_elements_and_averaged_over_the_batch():
    kl = KL(KL.Params(weight=0.5, sample=False), latent_channels=2)
    moments = torch.zeros(2, 4, 3, 3)  # mean 0, log-variance 0: KL 0
    moments[0, 0, 0, 0] = 2.0  # one mean of 2 in the first example: KL 0.5 * 4 = 2
    z, terms = kl(moments)
    assert torch.equal(z, moments[:, :2])
    assert terms["kl"].item() == pytest.approx(1.0) and terms["loss"].item() == pytest.approx(0.5)
