"""The autoencoder's loss terms against their formulas."""

import pytest
import torch
from safetensors.torch import save_file

from core import UserError
from tasks.autoencoder.losses import (
    _VGG16,
    LPIPS,
    PatchDiscriminator,
    PerceptualLoss,
    adaptive_weight,
    hinge_discriminator_loss,
    laplacian_loss,
)


def test_adaptive_weight_is_the_clamped_gradient_norm_ratio_at_the_last_layer():
    last = torch.nn.Parameter(torch.ones(3))
    a, b = torch.tensor([3.0, 0.0, 4.0]), torch.tensor([0.0, 1.0, 0.0])
    weight = adaptive_weight((last * a).sum(), (last * b).sum(), last, weight=0.5)
    assert weight.item() == pytest.approx(0.5 * 5.0 / (1.0 + 1e-4))
    assert not weight.requires_grad
    tiny = adaptive_weight((last * a).sum(), (last * 0.0).sum(), last, weight=1.0)
    assert tiny.item() == 1e4, "clamped when the generator's gradient vanishes"


def test_hinge_loss():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    assert hinge_discriminator_loss(real, fake).item() == pytest.approx(0.5 * ((0 + 0.5) / 2 + (0 + 1) / 2))


def test_laplacian_loss_is_zero_for_equal_images_and_pixel_l1_for_a_constant_offset():
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert laplacian_loss(x, x, levels=4).item() == 0
    # Only the coarsest level sees a constant offset, and its 4^j weight restores the full-size sum.
    assert laplacian_loss(x, x + 0.1, levels=4).item() == pytest.approx(3 * 16 * 16 * 0.1, rel=1e-4)
    edge = torch.zeros(1, 1, 16, 16)
    edge[..., 8:] = 1
    assert laplacian_loss(edge, torch.zeros_like(edge), levels=3) > 0


def lpips_file(tmp_path, drop=None):
    state, c, i = {}, 3, 0
    for item in _VGG16:
        if item != "M":
            state[f"features.{i}.weight"] = torch.randn(item, c, 3, 3) * 0.1
            state[f"features.{i}.bias"] = torch.zeros(item)
            c, i = item, i + 1
    for k, ch in enumerate((64, 128, 256, 512, 512)):
        state[f"heads.{k}"] = torch.rand(1, ch, 1, 1)
    state.pop(drop, None)
    path = tmp_path / "lpips.safetensors"
    save_file(state, str(path))
    return path


def test_lpips_loads_local_weights_and_measures_distance(tmp_path):
    lpips = LPIPS(lpips_file(tmp_path))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.allclose(lpips(x, x), torch.zeros(2))
    assert (lpips(x, x.flip(-1)) > 0).all()
    assert not any(p.requires_grad for p in lpips.parameters())


def test_lpips_without_its_file_or_with_wrong_keys_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="nowhere.safetensors' does not exist; provide the LPIPS VGG16 weights"):
        LPIPS(tmp_path / "nowhere.safetensors")
    with pytest.raises(UserError, match="missing: heads.4"):
        LPIPS(lpips_file(tmp_path, drop="heads.4"))
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="lpips needs weights_file"):
        PerceptualLoss(kind="lpips")
    with pytest.raises(ValidationError, match="weights_file '/nowhere' does not exist"):
        PerceptualLoss(kind="lpips", weights_file="/nowhere")


def test_patch_discriminator_gives_one_logit_per_patch():
    logits = PatchDiscriminator(3, 8, layers=2)(torch.zeros(2, 3, 32, 32))
    assert logits.shape[:2] == (2, 1) and logits.shape[-1] > 1
