"""Our own components pass the same contract tests a plugin author runs."""

import pytest
import torch
from pydantic import ValidationError

from core.testing import ConditionerContract, FirstStageContract
from plugins.autoencoder import Autoencoder
from plugins.class_label import ClassLabel
from plugins.identity import IdentityFirstStage
from plugins.kl import KL
from plugins.low_res import LowRes
from plugins.semantic_map import SemanticMap


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

    with pytest.raises(AssertionError, match="declares a context of width 9 but gave one shaped"):
        Contract().test_output_parts_and_widths_as_declared()
    with pytest.raises(AssertionError):
        Contract().check_all()


def test_component_refuses_params_of_another_class():
    with pytest.raises(TypeError, match="built from ClassLabel.Params"):
        ClassLabel({"num_classes": 3})


class TestAutoencoderKL(FirstStageContract):
    component = Autoencoder
    params = {
        "in_channels": 3,
        "ch": 8,
        "ch_mult": [1, 2, 2],
        "num_res_blocks": 1,
        "z_channels": 3,
        "norm_groups": 4,
        "regularizer": {"name": "kl", "params": {"sample": False}},
    }


class TestAutoencoderVQ(FirstStageContract):
    component = Autoencoder
    params = {**TestAutoencoderKL.params, "regularizer": {"name": "vq", "params": {"codebook_size": 16}}}


class TestAutoencoderAttention(FirstStageContract):
    component = Autoencoder
    params = {
        "in_channels": 3,
        "ch": 8,
        "ch_mult": [1, 2],
        "num_res_blocks": 1,
        "z_channels": 3,
        "norm_groups": 4,
        "attention_levels": [0, 1],
        "regularizer": {"name": "kl", "params": {"sample": False}},
    }

    def test_attention_is_where_the_params_say(self):
        model = self.build()
        blocks = sum(type(m).__name__ == "Attention" for m in model.modules())
        assert blocks == 2 * 1 + 2 * 2 + 2, "encoder 1 per level, decoder 2 per level, one in each middle"
        without = Autoencoder(
            Autoencoder.Params.model_validate(
                {**self.params, "attention_levels": [], "mid_attention": False}, context=self.context()
            )
        )
        assert not any(type(m).__name__ == "Attention" for m in without.modules())


def test_attention_levels_must_exist():
    with pytest.raises(
        ValidationError, match=r"attention_levels \[2\] do not exist: ch_mult \[1, 2\] has levels 0 to 1"
    ):
        TestAutoencoderAttention.component.Params.model_validate(
            {**TestAutoencoderAttention.params, "attention_levels": [2]}, context=TestAutoencoderAttention().context()
        )


@pytest.mark.parametrize("levels", [1, 2, 3, 4])
def test_encode_decode_shapes_for_f_1_2_4_8(levels):
    class Contract(FirstStageContract):
        component = Autoencoder
        params = {
            "in_channels": 3,
            "ch": 4,
            "ch_mult": [1] * levels,
            "num_res_blocks": 1,
            "z_channels": 2,
            "norm_groups": 2,
            "regularizer": {"name": "kl", "params": {"sample": False}},
        }

    assert Autoencoder.latent_shape(Contract().validated_params()).factor == 2 ** (levels - 1)
    Contract().test_shapes_as_declared()


def test_kl_penalty_is_summed_over_latent_elements_and_averaged_over_the_batch():
    kl = KL(KL.Params(weight=0.5, sample=False), latent_channels=2)
    moments = torch.zeros(2, 4, 3, 3)  # mean 0, log-variance 0: KL 0
    moments[0, 0, 0, 0] = 2.0  # one mean of 2 in the first example: KL 0.5 * 4 = 2
    z, terms = kl(moments)
    assert torch.equal(z, moments[:, :2])
    assert terms["kl"].item() == pytest.approx(1.0) and terms["loss"].item() == pytest.approx(0.5)


class TestSemanticMapConv(ConditionerContract):
    component = SemanticMap
    params = {"num_classes": 4, "channels": 8, "factor": 4}

    def example(self, batch_size, generator):
        return torch.randint(0, 4, (batch_size, 16, 16), generator=generator)


class TestSemanticMapInterpolateWithTokens(TestSemanticMapConv):
    params = {"num_classes": 4, "channels": 8, "factor": 2, "method": "interpolate", "context_dim": 6}


class TestLowRes(ConditionerContract):
    component = LowRes
    params = {"image_channels": 3, "lowres_factor": 4, "factor": 2, "vector_dim": 8}

    def example(self, batch_size, generator):
        return torch.rand(batch_size, 3, 4, 4, generator=generator) * 2 - 1


def test_semantic_map_output_is_at_the_latent_size_and_refuses_bad_maps():
    module = SemanticMap(SemanticMap.Params(num_classes=4, channels=8, factor=4, context_dim=6))
    cond = module(torch.randint(0, 4, (2, 32, 32)))
    assert cond.concat.shape == (2, 8, 8, 8) and cond.context.shape == (2, 64, 6)
    with pytest.raises(ValueError, match=r"semantic_map got class 4, outside \[0, 4\)"):
        module(torch.full((1, 32, 32), 4))
    with pytest.raises(ValidationError, match="factor 6 is not a power of 2; use 4 or 8"):
        SemanticMap.Params(num_classes=4, factor=6)


def test_low_res_is_brought_to_the_latent_size_and_noised_only_in_training():
    module = LowRes(LowRes.Params(image_channels=3, lowres_factor=4, factor=2, max_noise=0.5, vector_dim=8))
    low = torch.rand(2, 3, 4, 4) * 2 - 1
    module.eval()
    clean = module(low)
    assert clean.concat.shape == (2, 3, 8, 8)
    upsampled = torch.nn.functional.interpolate(low, size=(8, 8), mode="bicubic", align_corners=False)
    assert torch.allclose(clean.concat, upsampled), "eval with sample_noise 0 adds no noise"
    assert torch.equal(module(low[:1]).concat, clean.concat[:1]), "a batch equals its items one by one"
    module.train()
    torch.manual_seed(0)
    noisy = module(low)
    assert not torch.allclose(noisy.concat, upsampled) and not torch.allclose(noisy.vector, clean.vector)
