"""A safetensors file as a mapping whose tensors are read when asked for, so that converting a
checkpoint holds its tensors one at a time rather than all at once (a Stable Diffusion file
is 2-4 GB)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

from safetensors import safe_open
from torch import Tensor


class SafetensorsFile(Mapping[str, Tensor]):
    """The tensors of the safetensors file ``path`` by name, each read from the file on access.
    Opening reads the header only; a file that is not safetensors raises ``SafetensorError``."""

    def __init__(self, path: Path) -> None:
        self._file = safe_open(str(path), framework="pt")
        self._names = set(self._file.keys())

    def __getitem__(self, name: str) -> Tensor:
        if name not in self._names:
            raise KeyError(name)
        return self._file.get_tensor(name)

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._names))

    def __len__(self) -> int:
        return len(self._names)


class Renamed(Mapping[str, Tensor]):
    """A view of ``source`` under other names: ``names`` maps each new name to the source's
    (nothing is read until asked for)."""

    def __init__(self, source: Mapping[str, Tensor], names: dict[str, str]) -> None:
        self._source, self._names = source, names

    def __getitem__(self, name: str) -> Tensor:
        return self._source[self._names[name]]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)
