"""Our per-channel latent statistics folded into an autoencoder's weights, for formats that
have one ``scale_factor`` (or ``scaling_factor``) at most: the original code's layout and
diffusers' ``AutoencoderKL`` name the 1x1 convolutions around the latent alike
(``quant_conv``, ``post_quant_conv``), so one fold serves both.
"""

from __future__ import annotations

import torch
from torch import Tensor

from core import NotExpressible


def fold_statistics(state: dict[str, Tensor], mean: Tensor, std: Tensor) -> None:
    """Make a KL autoencoder's latents (z - mean) / std, in ``state`` (its tensors under the
    original's or diffusers' names): its moments (mean, log-variance) out of ``quant_conv`` are
    shifted and scaled, and ``post_quant_conv`` undoes it (both made, as identities, where the
    autoencoder has none)."""
    mean, std = mean.flatten().double(), std.flatten().double()
    z = len(mean)
    weight = state.get("quant_conv.weight", torch.eye(2 * z, dtype=torch.float64)[..., None, None]).double()
    bias = state.get("quant_conv.bias", torch.zeros(2 * z, dtype=torch.float64)).double()
    scale = torch.cat([1 / std, torch.ones(z, dtype=torch.float64)])
    shift = torch.cat([-mean / std, -2 * std.log()])
    state["quant_conv.weight"] = (scale[:, None, None, None] * weight).float()
    state["quant_conv.bias"] = (scale * bias + shift).float()
    post_weight = state.get("post_quant_conv.weight", torch.eye(z, dtype=torch.float64)[..., None, None]).double()
    post_bias = state.get("post_quant_conv.bias", torch.zeros(z, dtype=torch.float64)).double()
    state["post_quant_conv.weight"] = (post_weight * std[None, :, None, None]).float()
    state["post_quant_conv.bias"] = (post_bias + post_weight[..., 0, 0] @ mean).float()


def one_scale(mean: Tensor, std: Tensor, what: str) -> float:
    """The single scale factor (1 / std) that latents with ``mean`` 0 and one ``std`` have;
    :class:`core.NotExpressible` naming ``what`` (a quantised autoencoder, where no fold helps)
    for per-channel statistics."""
    if mean.abs().max() > 1e-6 or (std.max() - std.min()) > 1e-6 * std.max():
        raise NotExpressible(
            f"{what}'s latents are normalised per channel (mean and std), which one scale factor cannot express"
        )
    return float(1 / std.flatten()[0])
