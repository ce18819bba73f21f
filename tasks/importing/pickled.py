"""Reading tensors out of pickled PyTorch checkpoints (``.ckpt``, ``.pt``, ``.pth``) without
running anything the file names.

A pickle can name any importable function and have it called while loading. Lightning
checkpoints (the original CompVis releases among them) hold, beside their ``state_dict``,
objects of classes from the libraries that wrote them (callbacks, paths, numpy scalars), so
``torch.load(weights_only=True)`` refuses many of them. Here the unpickler resolves only the
names needed to rebuild tensors and plain containers, from modules already loaded; every other
name becomes :class:`Inert`, whose instances keep nothing and run nothing. Nothing named in
the file is ever imported or called.
"""

from __future__ import annotations

import collections
import pickle
import types
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("torch", "Size"): torch.Size,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
}
_DTYPES = {name for name in dir(torch) if isinstance(getattr(torch, name), torch.dtype)}


class Inert:
    """What a name outside the allow-list becomes: built, called or given state, it does nothing."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Inert:
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> Inert:
        return Inert()


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[module, name]
        if module == "torch" and name in _DTYPES:
            return getattr(torch, name)
        return Inert


def _load(file: Any, **kwargs: Any) -> Any:
    # torch reads the header records of its legacy (non-zip) format with pickle_module.load.
    return _Unpickler(file, **kwargs).load()


_RESTRICTED = types.SimpleNamespace(Unpickler=_Unpickler, load=_load, __name__="restricted_pickle")


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint file by name: a ``.safetensors`` file's, or a pickled
    checkpoint's ``state_dict`` (Lightning's) or its top-level dict of tensors.

    Raises ``ValueError`` (one sentence naming the file) for a file that holds neither.
    """
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_RESTRICTED)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        raise ValueError(f"{path} is not a PyTorch checkpoint ({exc})") from None
    state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else None
    tensors = {key: value for key, value in (state or {}).items() if isinstance(value, torch.Tensor)}
    if not tensors:
        raise ValueError(f"{path} holds no tensors under 'state_dict' or at its top level")
    return tensors
