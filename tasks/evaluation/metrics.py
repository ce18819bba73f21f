"""Image quality measures, per image, for images in [-1, 1]."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F


def psnr(x: Tensor, y: Tensor, mask: Tensor | None = None) -> Tensor:
    """Peak signal-to-noise ratio in dB of each image pair (B, C, H, W) -> (B,); the peak-to-peak
    range is 2. With ``mask`` (B, 1, H, W) of 0 and 1, over the pixels where it is 1 only."""
    error = (x - y).pow(2)
    if mask is None:
        mse = error.flatten(1).mean(1)
    else:
        weights = mask.expand_as(error)
        mse = (error * weights).flatten(1).sum(1) / weights.flatten(1).sum(1).clamp_min(1)
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-12))


def pooled_psnr(x: Tensor, y: Tensor, mask: Tensor) -> float:
    """PSNR in dB (peak-to-peak range 2) of the squared error of images (B, C, H, W) averaged
    over every pixel where ``mask`` (B, 1, H, W) is 1, in every image at once."""
    weights = mask.expand_as(x)
    mse = ((x - y).pow(2) * weights).sum() / weights.sum().clamp_min(1)
    return (10 * torch.log10(4.0 / mse.clamp_min(1e-12))).item()


def ssim(x: Tensor, y: Tensor, mask: Tensor | None = None, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Structural similarity of each image pair (B, C, H, W) -> (B,), on images mapped to [0, 1].

    A Gaussian window (shrunk to the image for small images, kept odd), constants
    (0.01)^2 and (0.03)^2, averaged over channels and valid positions (Wang et al., 2004);
    with ``mask`` (B, 1, H, W) of 0 and 1, over the valid positions whose window centre it marks.
    """
    x, y = (x.float() + 1) / 2, (y.float() + 1) / 2
    size = min(window, x.shape[-1], x.shape[-2])
    size -= 1 - size % 2
    axis = torch.arange(size, dtype=torch.float32, device=x.device) - (size - 1) / 2
    kernel = torch.exp(-axis.pow(2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    kernel = (kernel[:, None] * kernel[None, :]).expand(x.shape[1], 1, size, size)

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(t, kernel, groups=x.shape[1])

    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    score = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    if mask is None:
        return score.flatten(1).mean(1)
    r = size // 2
    weights = mask[..., r : mask.shape[-2] - r, r : mask.shape[-1] - r].float().expand_as(score)
    return (score * weights).flatten(1).sum(1) / weights.flatten(1).sum(1).clamp_min(1)


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """The Frechet distance between Gaussians fitted to two feature sets (N, D) and (M, D):
    |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)), in float64 (FID's formula).

    tr((S_a S_b)^(1/2)) is the sum of the square roots of the eigenvalues of the symmetric
    S_a^(1/2) S_b S_a^(1/2), which stays exact where S_a is singular (fewer samples than D).
    """
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    values, vectors = torch.linalg.eigh(cov_a)
    root_a = vectors @ torch.diag(values.clamp_min(0).sqrt()) @ vectors.T
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp_min(0).sqrt().sum()
    return ((mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * cross).item()
