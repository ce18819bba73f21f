"""A component as a model of the diffusers library: its class, its ``config.json`` and the
pairing of our tensors with its names (what :meth:`core.Component.diffusers_model` gives and
:meth:`core.Component.from_diffusers` reads back). Nothing here imports diffusers: a folder is
written and read as JSON and safetensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import UserError
from core.original import Pair


class NotExpressible(UserError):
    """A component whose params no diffusers class can express, in one sentence naming the
    param (or the config key, when reading a diffusers model) that prevents it."""


@dataclass(frozen=True)
class DiffusersModel:
    """A model of a diffusers pipeline: ``class_name`` (e.g. ``"UNet2DConditionModel"``) of
    ``library`` (``"diffusers"``; ``"transformers"`` for a text encoder, whose weights file is
    ``model.safetensors``), the ``config`` its ``config.json`` holds (without ``_class_name``),
    ``pairs`` naming, for each of our tensors, the library's tensors it is made of (see
    :mod:`core.original`), and ``files`` the pipeline needs beside it, by their path in the
    pipeline folder (a text encoder's tokenizer: ``tokenizer/vocab.json``...), each a file to
    copy or a text to write."""

    class_name: str
    config: dict[str, Any]
    pairs: list[Pair] = field(default_factory=list)
    library: str = "diffusers"
    files: dict[str, Path | str] = field(default_factory=dict)
