"""The latent cache: a dataset encoded once by a frozen first stage, reused across runs.

It stores the first stage's moments (for a KL posterior its mean and log-variance, so each
epoch still draws a fresh latent) for every example, in one memory-mapped ``.npy`` file
under ``<runs dir>/.latent-cache/<key>/``. The key hashes the first stage's weights and the
dataset's spec, so a changed first stage or dataset gets a cache of its own, and any run
with the same pair reuses it. The file is written beside its final name and renamed into
place, so a killed run never leaves a cache that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning_fabric import Fabric
from torch import nn

from core import Dataset, FirstStage

CACHE_DIR = ".latent-cache"


def cache_key(first_stage: nn.Module, data_spec: dict[str, Any]) -> str:
    """A hash of the first stage's weights (names, shapes, bytes) and the dataset's spec."""
    digest = hashlib.sha256(json.dumps(data_spec, sort_keys=True).encode())
    for name, tensor in sorted(first_stage.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:32]


@torch.no_grad()
def build_cache(fabric: Fabric, first_stage: FirstStage, dataset: Dataset, data_spec: dict[str, Any],
                runs_dir: Path, batch_size: int = 64) -> tuple[Path, bool]:
    """The cache file for this first stage and dataset: (path, whether it was reused).

    Rank 0 encodes every example when no cache exists; other processes wait for it.
    """
    folder = runs_dir / CACHE_DIR / cache_key(first_stage, data_spec)
    path = folder / "moments.npy"
    reused = path.is_file()
    if fabric.is_global_zero and not reused:
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / f"moments.npy.partial-{os.getpid()}"
        store = None
        for start in range(0, len(dataset), batch_size):
            images = torch.stack([dataset[i]["image"] for i in range(start, min(start + batch_size, len(dataset)))])
            moments = first_stage.moments(images.to(fabric.device)).float().cpu().numpy()
            if store is None:
                store = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32,
                                                  shape=(len(dataset), *moments.shape[1:]))
            store[start:start + len(moments)] = moments
        store.flush()
        del store
        with open(partial, "rb+") as handle:
            os.fsync(handle.fileno())
        (folder / "data.json").write_text(json.dumps(data_spec, indent=2, sort_keys=True))
        os.replace(partial, path)
    fabric.barrier()
    return path, reused


class CachedLatents(torch.utils.data.Dataset):
    """``dataset`` with each example's ``image`` replaced by its cached ``moments`` (m, h, w).

    The other fields (label, caption, segmentation...) still come from ``dataset``.
    """

    def __init__(self, dataset: Dataset, path: Path) -> None:
        self.dataset = dataset
        self.path = path
        self._moments: np.ndarray | None = None  # opened lazily: each data worker maps the file itself

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self._moments is None:
            self._moments = np.load(self.path, mmap_mode="r")
        example = {key: value for key, value in self.dataset[index].items() if key != "image"}
        example["moments"] = torch.from_numpy(np.array(self._moments[index]))
        return example
