"""The vq regulariser against hand-computed cases."""

import math

import pytest
import torch

from plugins.vq import VQ


def make(**params):
    vq = VQ(VQ.Params(codebook_size=2, **{"init_from_data": False, **params}), latent_channels=2)
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    return vq


def latent(*vectors):
    """Vectors (c = 2) laid out as a (1, 2, 1, n) latent."""
    return torch.tensor(vectors).T.reshape(1, 2, 1, len(vectors))


def test_losses_perplexity_and_usage_match_their_formulas():
    vq = make(beta=0.25, weight=2.0, restart_dead=False).eval()
    z = latent([0.1, 0.2], [0.9, 1.2])
    out, terms = vq(z)
    assert torch.equal(vq.assign(z), torch.tensor([[[0, 1]]]))
    squared = (0.1**2 + 0.2**2 + 0.1**2 + 0.2**2) / 4  # mean over 4 latent elements
    assert terms["commitment"].item() == pytest.approx(squared)
    assert terms["codebook"].item() == pytest.approx(squared)
    assert terms["loss"].item() == pytest.approx(2.0 * (squared + 0.25 * squared))
    assert terms["perplexity"].item() == pytest.approx(2.0) and terms["usage"].item() == 1.0
    assert torch.allclose(out, latent([0.0, 0.0], [1.0, 1.0]))
    one_code, terms = vq(latent([0.1, 0.0], [0.0, 0.1]))
    assert terms["perplexity"].item() == pytest.approx(1.0) and terms["usage"].item() == 0.5


def test_gradients_pass_straight_through_and_train_the_codebook():
    vq = make(restart_dead=False)
    z = latent([0.1, 0.2], [0.9, 1.2]).requires_grad_()
    out, terms = vq(z)
    out.sum().backward(retain_graph=True)
    assert torch.equal(z.grad, torch.ones_like(z))
    z.grad = None
    terms["loss"].backward()
    # d/dq of mean((sg[z] - q)^2) for code 0 (matched by (0.1, 0.2)) is -2 (z - q) / 4
    assert torch.allclose(vq.codebook.grad[0], torch.tensor([-0.05, -0.1]))


def test_ema_codebook_moves_towards_its_assigned_vectors():
    vq = make(ema=True, ema_decay=0.5, restart_dead=False).train()
    vq.cluster_size.fill_(1.0)
    vq.embed_sum.copy_(vq.codebook)
    _, terms = vq(latent([0.2, 0.2], [0.4, 0.4], [1.0, 3.0]))
    assert "codebook" not in terms, "with EMA updates the codebook gets no gradient term"
    # code 0: cluster 0.5 * 1 + 0.5 * 2 = 1.5, sum 0.5 * 0 + 0.5 * (0.6, 0.6) = (0.3, 0.3) -> about (0.2, 0.2)
    assert torch.allclose(vq.codebook[0], torch.tensor([0.2, 0.2]), atol=1e-4)
    # code 1: cluster 1.0, sum 0.5 * (1, 1) + 0.5 * (1, 3) = (1, 2)
    assert torch.allclose(vq.codebook[1], torch.tensor([1.0, 2.0]), atol=1e-4)


def test_dead_codes_restart_on_encoder_outputs():
    vq = make(dead_below=0.5, ema_decay=0.5).train()
    vq.usage.copy_(torch.tensor([1.0, 0.2]))  # code 1 has hardly been used
    z = latent([0.1, 0.1], [0.2, 0.2])
    vq(z)
    assert any(torch.allclose(vq.codebook[1], torch.tensor(v)) for v in ([0.1, 0.1], [0.2, 0.2]))
    assert vq.usage[1] == 1.0
    assert math.isclose(vq.usage[0].item(), 0.5 * 1.0 + 0.5 * 2)


def test_diffusion_sees_the_continuous_latent_and_decoding_quantises():
    vq = make()
    z = latent([0.1, 0.2], [0.9, 1.2])
    assert torch.equal(vq.latent(z), z)
    assert torch.equal(vq.quantize(z), latent([0.0, 0.0], [1.0, 1.0]))


def test_the_first_training_batch_places_every_code_on_an_encoder_output():
    vq = VQ(VQ.Params(codebook_size=8, init_from_data=True), latent_channels=2).train()
    z = torch.randn(1, 2, 4, 4)
    vq(z)
    vectors = z.permute(0, 2, 3, 1).reshape(-1, 2)
    assert all((vectors == code).all(1).any() for code in vq.codebook), "each code is one of the batch's vectors"
    assert bool(vq.initialized)
    before = vq.codebook.detach().clone()
    vq.eval()(torch.randn(1, 2, 4, 4))
    assert torch.equal(vq.codebook, before), "evaluation never moves codes"
