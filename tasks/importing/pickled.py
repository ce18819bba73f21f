"""Reading tensors out of pickled PyTorch checkpoints (``.ckpt``, ``.pt``, ``.pth``) without
running anything the file names.

A pickle can name any importable function and have it called while loading. Here every file
goes through ``torch.load(weights_only=True)``, PyTorch's unpickler that rebuilds tensors and
plain containers only (memory-mapped where the format allows). Lightning checkpoints, the
original CompVis releases among them, also hold a few library objects (callback states keyed
by their class, configs); the names in :data:`STAND_INS` are unpickled as :class:`Inert`,
which keeps nothing and runs nothing, and no module is imported for them. A file naming
anything else is refused, naming it.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from tasks.interchange.tensor_files import SafetensorsFile

STAND_INS = (
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
    "pytorch_lightning.callbacks.early_stopping.EarlyStopping",
    "pytorch_lightning.callbacks.lr_monitor.LearningRateMonitor",
    "pytorch_lightning.callbacks.progress.TQDMProgressBar",
    "pytorch_lightning.utilities.parsing.AttributeDict",
    "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint",
    "lightning.pytorch.utilities.parsing.AttributeDict",
    "omegaconf.dictconfig.DictConfig",
    "omegaconf.listconfig.ListConfig",
    "omegaconf.base.ContainerMetadata",
    "omegaconf.base.Metadata",
    "omegaconf.nodes.AnyNode",
    "pathlib.PosixPath",
    "pathlib.WindowsPath",
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
    "numpy.dtype",
    "typing.Any",
    "builtins.getattr",
)
"""What Lightning and the libraries around it put in checkpoints beside the weights: read as
:class:`Inert` stand-ins. ``builtins.getattr`` among them: pickles reach some classes through it,
and here it returns a stand-in too."""
_UNSUPPORTED = re.compile(r"GLOBAL ([\w.]+)")


class Inert:
    """What a stand-in name becomes: built, called or given state, it does nothing."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Inert:
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> Inert:
        return Inert()


def _load(path: Path) -> Any:
    with torch.serialization.safe_globals([(Inert, name) for name in STAND_INS]):
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap can only be used with files saved with" not in str(exc):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)  # the legacy format


def read_checkpoint(path: Path) -> Mapping[str, torch.Tensor]:
    """Every tensor of a checkpoint file by name: a ``.safetensors`` file's (read on access), or a pickled
    checkpoint's ``state_dict`` (Lightning's) or its top-level dict of tensors.

    Raises ``ValueError`` (one sentence naming the file) for a file that is not a checkpoint,
    names something outside the stand-ins, or holds no tensors.
    """
    if path.suffix == ".safetensors":
        try:
            return SafetensorsFile(path)
        except SafetensorError as exc:
            raise ValueError(f"{path} is not a safetensors file ({exc})") from None
    try:
        loaded = _load(path)
    except pickle.UnpicklingError as exc:
        named = _UNSUPPORTED.search(str(exc))
        if named:
            raise ValueError(
                f"{path} holds an object of {named.group(1)}, which loading would have to import; only tensors, "
                "plain containers and Lightning's known checkpoint entries are read (convert it to .safetensors "
                "where you trust it)"
            ) from None
        raise ValueError(f"{path} is not a PyTorch checkpoint (nothing in it unpickles as one)") from None
    except (RuntimeError, EOFError) as exc:
        raise ValueError(f"{path} is not a PyTorch checkpoint ({str(exc).splitlines()[0]})") from None
    state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else None
    tensors = {key: value for key, value in (state or {}).items() if isinstance(value, torch.Tensor)}
    if not tensors:
        raise ValueError(f"{path} holds no tensors under 'state_dict' or at its top level")
    return tensors
