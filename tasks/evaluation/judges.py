"""The measures the ``evaluate`` task reports, one function per kind of model.

Each takes images in [-1, 1] (N, C, H, W) and the real data they should resemble, and returns
named numbers (plain floats, for ``eval.json``) plus tables by class where there are classes.
"""

from __future__ import annotations

import torch
from lightning_fabric import Fabric
from torch import Tensor, nn
from torch.nn import functional as F

from core import Dataset
from tasks.autoencoder.statistics import image_batches
from tasks.evaluation.metrics import frechet_distance, pooled_psnr, psnr, ssim
from tasks.evaluation.reference_classifier import ReferenceClassifier, stacked


@torch.no_grad()
def reconstruction(fabric: Fabric, model: nn.Module, dataset: Dataset, batch_size: int) -> dict[str, float]:
    """A first stage's mean PSNR and SSIM of reconstructions over ``dataset`` (shared among
    the processes), and for a VQ first stage its codebook usage and perplexity."""
    sums = torch.zeros(3, dtype=torch.float64, device=fabric.device)  # psnr, ssim, images
    histogram = None
    for x in image_batches(dataset, batch_size, fabric):
        reconstructed = model(x)[0]
        sums += torch.stack(
            [psnr(x, reconstructed).sum(), ssim(x, reconstructed).sum(), torch.tensor(float(len(x)), device=x.device)]
        ).double()
        codes = model.code_histogram(x)
        histogram = codes if histogram is None or codes is None else histogram + codes
    sums = fabric.all_reduce(sums, reduce_op="sum")
    report = {"examples": int(sums[2]), "psnr": (sums[0] / sums[2]).item(), "ssim": (sums[1] / sums[2]).item()}
    if histogram is not None:
        histogram = fabric.all_reduce(histogram.double(), reduce_op="sum")
        p = histogram / histogram.sum()
        report["codebook_usage"] = (histogram > 0).double().mean().item()
        report["codebook_perplexity"] = torch.exp(-(p * torch.log(p + 1e-12)).sum()).item()
    return report


def _distances(judge: ReferenceClassifier, generated: Tensor, train: Dataset, val: Dataset) -> dict[str, float]:
    """The Frechet distance of features ``generated`` to the real validation split's, beside
    real training vs validation (the floor), and their ratio."""
    _, real_val = judge.run(stacked(val, "image"))
    _, real_train = judge.run(stacked(train, "image"))
    distance, floor = frechet_distance(generated, real_val), frechet_distance(real_train, real_val)
    return {
        "frechet_distance": distance,
        "frechet_real_train_vs_val": floor,
        "frechet_ratio": distance / floor,
        "images": len(generated),
        "real_val_images": len(real_val),
    }


def classes(
    judge: ReferenceClassifier, images: Tensor, labels: Tensor, train: Dataset, val: Dataset, field: str
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Class-conditional samples judged by the reference classifier: the accuracy of its
    predictions against the labels asked for (its own validation accuracy beside), and the
    Frechet distances of :func:`distribution`."""
    predicted, generated = judge.run(images)
    correct = (predicted == labels).double()
    per_class = [correct[labels == c].mean().item() for c in range(judge.classes) if (labels == c).any()]
    metrics = {
        "class_accuracy": correct.mean().item(),
        "classifier_val_accuracy": judge.val_accuracy,
        **_distances(judge, generated, train, val),
    }
    return metrics, {f"accuracy by {field}": per_class}


def distribution(judge: ReferenceClassifier, images: Tensor, train: Dataset, val: Dataset) -> dict[str, float]:
    """Unconditional samples: the Frechet distance in the reference classifier's features to
    the real validation split, beside real training vs validation (the floor), and their ratio."""
    return _distances(judge, judge.run(images)[1], train, val)


def super_resolution(images: Tensor, truth: Tensor, lowres: Tensor) -> dict[str, float]:
    """Samples from low-res inputs against the full-resolution truth, beside bicubic
    upsampling of the same inputs (the baseline to beat)."""
    bicubic = F.interpolate(lowres, size=truth.shape[-2:], mode="bicubic", align_corners=False).clamp(-1, 1)
    ours, base = psnr(images, truth), psnr(bicubic, truth)
    return {
        "psnr": ours.mean().item(),
        "ssim": ssim(images, truth).mean().item(),
        "bicubic_psnr": base.mean().item(),
        "bicubic_ssim": ssim(bicubic, truth).mean().item(),
        "psnr_gain_over_bicubic": (ours - base).mean().item(),
        "images": len(images),
    }


def layout(images: Tensor, maps: Tensor, real: Tensor) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Samples from maps (N, H, W), class 0 the background: the IoU between each sample's
    foreground and the map's, averaged, and by the classes the maps hold.

    A pixel is foreground where it is further from the background colour (the mean of the
    real images ``real`` where their map is 0) than half the real foreground's mean distance.
    The same rule applied to the real images is reported as the judge's own IoU.
    """
    background = real.permute(1, 0, 2, 3)[:, maps == 0].mean(1)
    distance = (real - background[None, :, None, None]).norm(dim=1)
    threshold = distance[maps > 0].mean() / 2

    def iou(x: Tensor) -> Tensor:
        found = (x - background[None, :, None, None]).norm(dim=1) > threshold
        wanted = maps > 0
        return (found & wanted).flatten(1).sum(1) / (found | wanted).flatten(1).sum(1).clamp_min(1)

    scores = iou(images)
    by_class = [
        scores[(maps == c).flatten(1).any(1)].mean().item() for c in range(1, int(maps.max()) + 1) if (maps == c).any()
    ]
    return (
        {"foreground_iou": scores.mean().item(), "judge_iou_on_real": iou(real).mean().item(), "images": len(images)},
        {"foreground iou by map class (1..)": by_class},
    )


def captions(
    data: Dataset, images: Tensor, real: Tensor, texts: list[str]
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Samples from captions, read back by the dataset (:meth:`core.Dataset.caption_matches`):
    the fraction that show exactly what their caption says, overall and by the dataset's
    groups, beside the same reading of the real images (the judge's own accuracy)."""
    matches, groups = data.caption_matches(images, texts)
    on_real, _ = data.caption_matches(real, texts)
    metrics = {
        "caption_match": matches.double().mean().item(),
        "judge_match_on_real": on_real.double().mean().item(),
        "images": len(images),
    }
    for group in sorted(set(groups)):
        chosen = torch.tensor([g == group for g in groups])
        metrics[f"caption_match {group}"] = matches[chosen].double().mean().item()
        metrics[f"judge_match_on_real {group}"] = on_real[chosen].double().mean().item()
    return metrics, {}


def mean_fill(images: Tensor, masks: Tensor) -> Tensor:
    """Images (N, C, H, W) with each hole (masks (N, 1, H, W), 1: hole) filled by the mean
    colour of the image's kept pixels: the floor an inpainting model must clear."""
    keep = 1 - masks
    colour = (images * keep).sum((2, 3), keepdim=True) / keep.sum((2, 3), keepdim=True).clamp_min(1)
    return images * keep + colour * masks


def inpainting(images: Tensor, truth: Tensor, masks: Tensor) -> dict[str, float]:
    """Inpainted images against the truth inside the hole only (masks (N, 1, H, W), 1: hole):
    PSNR of the squared error pooled over every hole pixel of every image (a per-image mean
    would be ruled by the images whose hole a plain fill gets exactly right, on data with flat
    backgrounds), and the mean per-image SSIM there; beside a mean-colour fill of the same holes
    (the floor)."""
    filled = mean_fill(truth, masks)
    ours, floor = pooled_psnr(images, truth, masks), pooled_psnr(filled, truth, masks)
    return {
        "hole_psnr": ours,
        "hole_ssim": ssim(images, truth, masks).mean().item(),
        "mean_fill_hole_psnr": floor,
        "mean_fill_hole_ssim": ssim(filled, truth, masks).mean().item(),
        "hole_psnr_gain_over_mean_fill": ours - floor,
        "hole_fraction": masks.mean().item(),
        "images": len(images),
    }


def boxes(data: Dataset, images: Tensor, real: Tensor, layouts: Tensor) -> dict[str, float]:
    """Samples from layouts (N, M, 5), read back by the dataset (:meth:`core.Dataset.boxes_found`):
    the fraction of asked objects shown in their box with the right class, beside the same
    reading of the real images (the judge's own ceiling)."""
    asked = layouts[..., 0] >= 0
    found, on_real = data.boxes_found(images, layouts), data.boxes_found(real, layouts)
    return {
        "objects_found": found[asked].double().mean().item(),
        "judge_objects_found_on_real": on_real[asked].double().mean().item(),
        "objects": int(asked.sum()),
        "images": len(images),
    }
