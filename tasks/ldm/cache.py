"""The latent cache: a dataset encoded once by a frozen first stage, reused across runs.

It stores the first stage's moments (for a KL posterior its mean and log-variance, so each
epoch still draws a fresh latent) for every example, in float32 or float16 (half the disk),
in one memory-mapped ``.npy`` file
under ``<runs dir>/.latent-cache/<key>/``, beside the example fields the conditioners read
(numbers and tensors as ``.npy``, strings as JSON), so that training never loads or renders
an image again. The key hashes the first stage's weights, the dataset's spec and those
field names: a changed first stage or dataset gets a cache of its own, and any run with the
same ones reuses it. Everything is written into a temporary folder that is renamed into
place last, so a killed run never leaves a cache that looks complete. Its size is printed
before it is built, and a disk that cannot hold it is refused before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from lightning_fabric import Fabric
from torch import Tensor, nn
from tqdm import tqdm

from core import Dataset, FirstStage, UserError

CACHE_DIR = ".latent-cache"


def cache_key(first_stage: nn.Module, data_spec: dict[str, Any], fields: Sequence[str], dtype: str = "float32") -> str:
    """A hash of the first stage's weights (names, shapes, bytes), the dataset's spec, the
    fields and the stored type (float32 caches keep the keys they had before there was a choice)."""
    described = [data_spec, sorted(fields), *([dtype] if dtype != "float32" else [])]
    digest = hashlib.sha256(json.dumps(described, sort_keys=True).encode())
    for name, tensor in sorted(first_stage.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:32]


def _store_field(values: list[Any], folder: Path, name: str) -> None:
    if all(isinstance(v, str) for v in values):
        (folder / f"{name}.json").write_text(json.dumps(values))
        return
    array = np.stack([v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v) for v in values])
    np.save(folder / f"{name}.npy", array)


def _examples(examples: list[dict[str, Any]]) -> tuple[Tensor, list[dict[str, Any]]]:
    """A loader's batch: the images stacked, and the examples as they are (for their fields)."""
    return torch.stack([example["image"] for example in examples]), examples


def check_room(folder: Path, count: int, shape: Sequence[int], dtype: str, out: TextIO) -> None:
    """Print the size of a cache of ``count`` moments of ``shape`` in ``dtype``; a
    :class:`UserError` if the disk under ``folder`` has not that much free (with 5% to spare)."""
    size = count * int(np.prod(shape)) * np.dtype(dtype).itemsize
    print(f"latent cache: {count} examples x {tuple(shape)} {dtype} = {size / 2**20:.1f} MiB in {folder}", file=out)
    free = shutil.disk_usage(folder.parent).free
    if size * 1.05 > free:
        raise UserError(
            f"latent_cache: the cache needs {size / 2**30:.2f} GiB but {folder.parent} has {free / 2**30:.2f} GiB "
            "free; free some space, set cache_dtype to float16 (half the size), or set latent_cache to false"
        )


@torch.no_grad()
def build_cache(
    fabric: Fabric,
    first_stage: FirstStage,
    dataset: Dataset,
    data_spec: dict[str, Any],
    fields: Sequence[str],
    runs_dir: Path,
    batch_size: int = 64,
    dtype: str = "float32",
    num_workers: int = 0,
    out: TextIO = sys.stderr,
) -> tuple[Path, bool]:
    """The cache folder for this first stage, dataset and fields: (path, whether it was reused).

    Rank 0 encodes every example in batches of ``batch_size`` on the first stage's device when
    no cache exists, its images read by ``num_workers`` loader processes (pinned on CUDA), and
    stores ``dtype`` (its size said on ``out``, the progress on stderr); other processes wait
    for it.
    """
    folder = runs_dir / CACHE_DIR / cache_key(first_stage, data_spec, fields, dtype)
    reused = folder.is_dir()
    if fabric.is_global_zero and not reused:
        folder.parent.mkdir(parents=True, exist_ok=True)
        partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
        store, values = None, {name: [] for name in fields}
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=num_workers,
            collate_fn=_examples,
            pin_memory=fabric.device.type == "cuda",
        )
        start = 0
        for images, examples in tqdm(loader, desc="latent cache", unit="batch", dynamic_ncols=True):
            moments = first_stage.moments(images.to(fabric.device, non_blocking=True)).float().cpu().numpy()
            if store is None:
                shape = (len(dataset), *moments.shape[1:])
                check_room(folder, len(dataset), moments.shape[1:], dtype, out)
                partial.mkdir()
                store = np.lib.format.open_memmap(partial / "moments.npy", mode="w+", dtype=dtype, shape=shape)
            store[start : start + len(moments)] = moments
            start += len(moments)
            for name in fields:
                values[name].extend(example[name] for example in examples)
        store.flush()
        del store
        for name, found in values.items():
            _store_field(found, partial, name)
        (partial / "data.json").write_text(json.dumps(data_spec, indent=2, sort_keys=True))
        for path in partial.iterdir():
            with open(path, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(partial, folder)
    fabric.barrier()
    return folder, reused


class CachedLatents(torch.utils.data.Dataset):
    """Examples from a cache folder: ``moments`` (m, h, w) and the cached fields; no images."""

    def __init__(self, folder: Path, fields: Sequence[str]) -> None:
        self.folder = folder
        self.fields = list(fields)
        self.strings = {
            name: json.loads((folder / f"{name}.json").read_text())
            for name in fields
            if (folder / f"{name}.json").is_file()
        }
        self._arrays: dict[str, np.ndarray] | None = None  # mapped lazily: each data worker maps the files itself
        self._length = len(np.load(folder / "moments.npy", mmap_mode="r"))

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self._arrays is None:
            self._arrays = {
                name: np.load(self.folder / f"{name}.npy", mmap_mode="r")
                for name in ["moments", *self.fields]
                if name not in self.strings
            }
        example: dict[str, Any] = {name: values[index] for name, values in self.strings.items()}
        for name, array in self._arrays.items():
            value = np.array(array[index], dtype=np.float32 if array.dtype == np.float16 else array.dtype)
            example[name] = torch.from_numpy(value) if value.ndim else value.item()
        return example
