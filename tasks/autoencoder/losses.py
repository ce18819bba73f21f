"""The autoencoder's loss terms: pixel, perceptual (Laplacian pyramid or LPIPS) and adversarial.

Reduction, for every reconstruction term: summed over channels and pixels, averaged over
the batch, as in the paper's code (which its KL weight of 1e-6 assumes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveInt, model_validator
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn
from torch.nn import functional as F

from core import SpecModel, UserError
from tasks.engine.specs import OptimizerSpec
from tasks.runs.checkpoint import load_weights


def per_example_sum(error: Tensor) -> Tensor:
    """(B, ...) -> scalar: summed over everything but the batch, averaged over the batch."""
    return error.flatten(1).sum(1).mean()


class PixelLoss(SpecModel):
    """|x - x^|^1 or ^2 per element."""

    kind: Literal["l1", "l2"] = "l1"
    weight: NonNegativeFloat = 1.0


class PerceptualLoss(SpecModel):
    """A term that compares images as a viewer would.

    ``laplacian`` needs no weights: L1 between Laplacian pyramids, level j weighted by 4^j
    so each level counts as much as the full-resolution one. ``lpips`` compares VGG16
    features calibrated by learned linear heads, as LPIPS does; its weights come from
    ``weights_file`` (safetensors), never from the network.
    """

    kind: Literal["laplacian", "lpips"] = "laplacian"
    weight: NonNegativeFloat = 1.0
    levels: PositiveInt = Field(4, description="laplacian: pyramid levels.")
    weights_file: Path | None = Field(None, description="lpips: a local safetensors file of VGG16 + LPIPS heads.")

    @model_validator(mode="after")
    def _lpips_has_weights(self) -> PerceptualLoss:
        if self.kind == "lpips" and self.weights_file is None:
            raise ValueError(
                "lpips needs weights_file, a local safetensors file with the VGG16 features and "
                "LPIPS heads (see tasks/ae_losses.py for the key names); or use kind 'laplacian'"
            )
        if self.kind == "lpips" and not self.weights_file.is_file():
            raise ValueError(
                f"weights_file {str(self.weights_file)!r} does not exist; provide the LPIPS VGG16 "
                "weights as a local safetensors file, or use kind 'laplacian' (no weights)"
            )
        return self


class AdversarialLoss(SpecModel):
    """A patch discriminator with hinge loss, switched on at ``start``.

    With ``adaptive`` the generator term is weighted by
    ``||grad nll|| / (||grad g|| + 1e-4)`` at the decoder's last layer, clamped to [0, 1e4],
    times ``weight``, as in the paper's code.
    """

    weight: NonNegativeFloat = 0.5
    start: NonNegativeInt = Field(50001, description="The step from which the discriminator trains and is used.")
    adaptive: bool = True
    layers: PositiveInt = Field(3, description="Strided layers of the patch discriminator.")
    channels: PositiveInt = Field(64, description="Channels of its first layer (doubled each layer, up to 8x).")
    optimizer: OptimizerSpec = OptimizerSpec(lr=4.5e-6, betas=(0.5, 0.9))


def _gaussian_down(x: Tensor) -> Tensor:
    kernel = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], device=x.device, dtype=x.dtype)
    kernel = (kernel[:, None] * kernel[None, :]) / 256.0
    weight = kernel.expand(x.shape[1], 1, 5, 5)
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), weight, groups=x.shape[1])[..., ::2, ::2]


def laplacian_loss(x: Tensor, y: Tensor, levels: int) -> Tensor:
    """Sum over pyramid levels j of 4^j x (per-example sum of |L_j(x) - L_j(y)|), batch mean."""
    total = x.new_zeros(())
    for j in range(levels):
        if min(x.shape[-2:]) <= 2 or j == levels - 1:  # reflect padding needs more than 2 pixels
            return total + 4**j * per_example_sum((x - y).abs())
        x_down, y_down = _gaussian_down(x), _gaussian_down(y)
        band_x = x - F.interpolate(x_down, size=x.shape[-2:], mode="bilinear", align_corners=False)
        band_y = y - F.interpolate(y_down, size=y.shape[-2:], mode="bilinear", align_corners=False)
        total = total + 4**j * per_example_sum((band_x - band_y).abs())
        x, y = x_down, y_down
    return total


# VGG16's convolutions (channels out; "M" = max-pool) and the layers LPIPS reads (relu1_2 ... relu5_3).
_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
_TAPS = (1, 3, 6, 9, 12)  # indices of the convolutions after which LPIPS reads features
_TAP_CHANNELS = (64, 128, 256, 512, 512)


class LPIPS(nn.Module):
    """LPIPS with a VGG16 backbone, loaded from a local safetensors file; frozen.

    File keys: ``features.<i>.weight`` / ``.bias`` for the i-th convolution (0-12) of VGG16
    and ``heads.<k>.weight`` (1, C_k, 1, 1) for the five linear heads.
    """

    def __init__(self, weights_file: Path) -> None:
        super().__init__()
        convs, c = [], 3
        for item in _VGG16:
            if item != "M":
                convs.append(nn.Conv2d(c, item, 3, padding=1))
                c = item
        self.features = nn.ModuleList(convs)
        self.heads = nn.ParameterList([nn.Parameter(torch.zeros(1, ch, 1, 1)) for ch in _TAP_CHANNELS])
        if not Path(weights_file).is_file():
            raise UserError(
                f"loss.perceptual.weights_file: {str(weights_file)!r} does not exist; provide the "
                "LPIPS VGG16 weights as a local safetensors file, or use kind 'laplacian' (no weights)"
            )
        try:
            weights = load_file(str(weights_file))
        except SafetensorError as exc:
            raise UserError(
                f"loss.perceptual.weights_file: {str(weights_file)!r} is not a safetensors file "
                f"({exc}); convert the LPIPS VGG16 weights to safetensors"
            ) from None
        load_weights(self, weights, f"loss.perceptual.weights_file {str(weights_file)!r}")
        self.requires_grad_(False).eval()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))

    def _taps(self, x: Tensor) -> list[Tensor]:
        x, found, pools = (x - self.shift) / self.scale, [], {2, 4, 7, 10}
        for i, conv in enumerate(self.features):
            if i in pools:
                x = F.max_pool2d(x, 2)
            x = F.relu(conv(x))
            if i in _TAPS:
                found.append(x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return found

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> per-example distance (B,)."""
        total = x.new_zeros(x.shape[0])
        for head, a, b in zip(self.heads, self._taps(x), self._taps(y), strict=True):
            total = total + (head * (a - b).pow(2)).sum(1).mean((1, 2))
        return total


class PatchDiscriminator(nn.Module):
    """A PatchGAN discriminator: (B, C, H, W) -> logits (B, 1, H', W'), one per patch."""

    def __init__(self, in_channels: int, channels: int, layers: int) -> None:
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        c = channels
        for n in range(1, layers + 1):
            out = channels * min(2**n, 8)
            stride = 2 if n < layers else 1
            blocks += [
                nn.Conv2d(c, out, 4, stride=stride, padding=1),
                nn.GroupNorm(min(32, out // 4), out),
                nn.LeakyReLU(0.2),
            ]
            c = out
        blocks.append(nn.Conv2d(c, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def hinge_discriminator_loss(real: Tensor, fake: Tensor) -> Tensor:
    """0.5 x (mean relu(1 - D(x)) + mean relu(1 + D(x^)))."""
    return 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())


def adaptive_weight(nll: Tensor, generator: Tensor, last_layer: Tensor, weight: float) -> Tensor:
    """``||grad nll|| / (||grad g|| + 1e-4)`` at ``last_layer``, clamped to [0, 1e4], times ``weight`` (no gradient)."""
    nll_grad = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(generator, last_layer, retain_graph=True)[0]
    ratio = nll_grad.norm() / (g_grad.norm() + 1e-4)
    return (ratio.clamp(0.0, 1e4) * weight).detach()
