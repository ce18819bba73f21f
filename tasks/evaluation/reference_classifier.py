"""The judge of class-conditional samples: a small classifier trained on the real training split.

:func:`reference_classifier` trains it once per dataset (deterministically, seeded) and
caches it under ``<runs>/.reference-classifiers/<key>/``, keyed by the dataset's spec (split
aside) and this file's :data:`RECIPE`; the accuracy it reaches on the real validation split is
stored beside the weights, so every report can show how far the judge itself is to be trusted.
Its pooled features are where Frechet distances between image sets are measured.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.nn import functional as F

from core import Dataset, DatasetSpec, UserError
from tasks.runs.rundir import atomic_write

RECIPE = {"version": 1, "width": 16, "epochs": 10, "batch_size": 64, "lr": 2e-3, "shift": 2, "seed": 0}
"""How the classifier is built and trained; part of the cache key, so a change retrains it."""


class Classifier(nn.Module):
    """Three conv stages and a global average pool: features (B, 4w), logits (B, classes)."""

    def __init__(self, channels: int, classes: int, width: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        widths = [channels, width, 2 * width, 4 * width]
        for i, (cin, cout) in enumerate(zip(widths, widths[1:], strict=False)):
            layers += [
                nn.Conv2d(cin, cout, 3, padding=1),
                nn.GroupNorm(8, cout),
                nn.SiLU(),
                nn.Conv2d(cout, cout, 3, padding=1),
                nn.GroupNorm(8, cout),
                nn.SiLU(),
            ]
            if i < 2:
                layers.append(nn.AvgPool2d(2))
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(widths[-1], classes)

    def features(self, x: Tensor) -> Tensor:
        """Pooled features (B, 4w) of images (B, C, H, W) in [-1, 1]."""
        return self.body(x).mean((2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


@dataclass
class ReferenceClassifier:
    """A trained :class:`Classifier` and what it scored on the real validation split."""

    model: Classifier
    classes: int
    val_accuracy: float
    folder: Path

    @torch.no_grad()
    def run(self, images: Tensor, batch_size: int = 256) -> tuple[Tensor, Tensor]:
        """(predicted classes (N,), features (N, D) in float64) of images (N, C, H, W) in [-1, 1]."""
        device = next(self.model.parameters()).device
        predictions, features = [], []
        for chunk in images.split(batch_size):
            f = self.model.features(chunk.to(device))
            predictions.append(self.model.head(f).argmax(1).cpu())
            features.append(f.double().cpu())
        return torch.cat(predictions), torch.cat(features)


def split_of(data: DatasetSpec, split: str) -> Dataset:
    """``data`` built with its ``split`` param set to ``split``."""
    if "split" not in type(data.params).model_fields:
        raise UserError(
            f"data: {data.name} has no train / val split, which the reference classifier needs; "
            "use a dataset with a split param"
        )
    return data.cls(data.params.model_copy(update={"split": split}))


def stacked(dataset: Dataset, field: str) -> Tensor:
    """One field of every example, stacked."""
    values = [dataset[i][field] for i in range(len(dataset))]
    return torch.stack(values) if isinstance(values[0], Tensor) else torch.tensor(values)


def _key(data: DatasetSpec) -> str:
    described = {"data": data.model_dump(mode="json"), "recipe": RECIPE}
    described["data"]["params"].pop("split", None)
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:32]


def _train(images: Tensor, labels: Tensor, classes: int) -> Classifier:
    generator = torch.Generator().manual_seed(RECIPE["seed"])
    torch.manual_seed(RECIPE["seed"])
    model = Classifier(images.shape[1], classes, RECIPE["width"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=RECIPE["lr"])
    steps = RECIPE["epochs"] * max(1, len(images) // RECIPE["batch_size"])
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, RECIPE["lr"], total_steps=steps)
    shift = RECIPE["shift"]
    padded = F.pad(images, (shift,) * 4, mode="replicate")
    size = images.shape[-2:]
    for _ in range(steps):
        pick = torch.randint(len(images), (RECIPE["batch_size"],), generator=generator)
        dy, dx = torch.randint(2 * shift + 1, (2,), generator=generator).tolist()
        # Shifted by a few pixels: generated samples are not centred exactly as the data is.
        x = padded[pick, :, dy : dy + size[0], dx : dx + size[1]]
        loss = F.cross_entropy(model(x), labels[pick])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.eval().requires_grad_(False)


def reference_classifier(data: DatasetSpec, field: str, runs_dir: Path, out: Any = None) -> ReferenceClassifier:
    """The classifier of ``data``'s ``field`` (class indices), trained on the train split or
    read from the cache; its validation accuracy measured once and stored with it."""
    folder = runs_dir / ".reference-classifiers" / _key(data)
    weights, info_path = folder / "classifier.safetensors", folder / "info.json"
    if weights.is_file() and info_path.is_file():
        info = json.loads(info_path.read_text())
        model = Classifier(info["channels"], info["classes"], RECIPE["width"])
        model.load_state_dict(load_file(str(weights)))
        return ReferenceClassifier(model.eval().requires_grad_(False), info["classes"], info["val_accuracy"], folder)
    train, val = split_of(data, "train"), split_of(data, "val")
    images, labels = stacked(train, "image"), stacked(train, field).long()
    classes = int(labels.max()) + 1
    if out is not None:
        print(f"training the reference classifier of {data.name} on {len(images)} images ({classes} classes)", file=out)
    model = _train(images, labels, classes)
    judge = ReferenceClassifier(model, classes, 0.0, folder)
    predicted, _ = judge.run(stacked(val, "image"))
    judge.val_accuracy = (predicted == stacked(val, field)).double().mean().item()
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(weights, lambda tmp: save_file(model.state_dict(), str(tmp)))
    info = {
        "channels": images.shape[1],
        "classes": classes,
        "val_accuracy": judge.val_accuracy,
        "train_examples": len(images),
        "val_examples": len(val),
        "data": data.model_dump(mode="json"),
        "recipe": RECIPE,
    }
    atomic_write(info_path, json.dumps(info, indent=2).encode())
    return judge
