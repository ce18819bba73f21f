"""Training checkpoints as single safetensors files: nothing is ever unpickled from disk.

One file holds everything a resume needs: raw and EMA weights of every model, optimiser
states, the RNG state of every process, the step and the data position. Tensors are
stored under ``model/<name>/<key>``, ``ema/<name>/<key>``, ``optim/<name>/<index>/<key>``
and ``rng/<rank>/...``; everything else is JSON in the file's metadata, beside
``format_version``.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from core import UserError
from tasks.runs.rundir import atomic_write, sweep_partial

FORMAT_VERSION = 1
UPDATES_KEY = "__ema_updates__"
"""The entry of an EMA's state that counts its updates (not a weight: readers of weights skip it)."""
_STEP_FILE = re.compile(r"^step-(\d{8})\.safetensors$")
LATEST = "latest"


@dataclass
class TrainingState:
    """Everything a checkpoint holds; ``rng`` has one entry per process, by rank."""

    step: int
    data_position: int
    models: dict[str, dict[str, Tensor]]
    ema: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    optimizers: dict[str, dict[str, Any]] = field(default_factory=dict)
    rng: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Tensor] = field(default_factory=dict)


def capture_rng() -> dict[str, Any]:
    """This process's RNG states: torch (CPU and every CUDA device), Python's and NumPy's."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Set this process's RNG states from :func:`capture_rng`'s output."""
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def _encode(state: TrainingState) -> tuple[dict[str, Tensor], dict[str, str]]:
    tensors: dict[str, Tensor] = {}
    meta: dict[str, Any] = {"format_version": FORMAT_VERSION, "step": state.step, "data_position": state.data_position}
    for prefix, groups in (("model", state.models), ("ema", state.ema)):
        for name, weights in groups.items():
            tensors.update({f"{prefix}/{name}/{key}": value for key, value in weights.items()})
    for name, optimizer in state.optimizers.items():
        scalars = {}
        for index, entries in optimizer["state"].items():
            for key, value in entries.items():
                if isinstance(value, Tensor):
                    tensors[f"optim/{name}/{index}/{key}"] = value
                else:
                    scalars[f"{index}/{key}"] = value
        meta[f"optim.{name}"] = {"param_groups": optimizer["param_groups"], "scalars": scalars}
    for rank, rng in enumerate(state.rng):
        tensors[f"rng/{rank}/torch"] = rng["torch"]
        tensors.update({f"rng/{rank}/cuda/{i}": s for i, s in enumerate(rng["cuda"])})
        kind, keys, pos, has_gauss, cached = rng["numpy"]
        tensors[f"rng/{rank}/numpy"] = torch.from_numpy(keys.astype(np.int64))
        version, internal, gauss = rng["python"]
        meta[f"rng.{rank}"] = {
            "numpy": [kind, int(pos), int(has_gauss), float(cached)],
            "python": [version, list(internal), gauss],
            "cuda": len(rng["cuda"]),
        }
    tensors.update({f"extra/{key}": value for key, value in state.extra.items()})
    # safetensors refuses tensors that share memory (tied weights); store each one whole.
    seen: set[int] = set()
    for key, value in tensors.items():
        value = value.detach().cpu().contiguous()
        tensors[key] = value.clone() if value.data_ptr() in seen and value.numel() else value
        seen.add(value.data_ptr())
    return tensors, {key: json.dumps(value) for key, value in meta.items()}


def _decode(tensors: dict[str, Tensor], raw_meta: dict[str, str]) -> TrainingState:
    meta = {key: json.loads(value) for key, value in raw_meta.items()}
    grouped: dict[str, dict[str, dict[str, Tensor]]] = {"model": {}, "ema": {}, "optim": {}, "extra": {}}
    for key, value in tensors.items():
        head, _, rest = key.partition("/")
        if head in ("model", "ema", "optim"):
            name, _, inner = rest.partition("/")
            grouped[head].setdefault(name, {})[inner] = value
        elif head == "extra":
            grouped["extra"][rest] = value
    optimizers = {}
    for key, value in meta.items():
        if key.startswith("optim."):
            name = key.removeprefix("optim.")
            entries: dict[int, dict[str, Any]] = {}
            for inner, tensor in grouped["optim"].get(name, {}).items():
                index, _, item = inner.partition("/")
                entries.setdefault(int(index), {})[item] = tensor
            for inner, scalar in value["scalars"].items():
                index, _, item = inner.partition("/")
                entries.setdefault(int(index), {})[item] = scalar
            optimizers[name] = {"state": entries, "param_groups": value["param_groups"]}
    rng = []
    for rank in range(sum(key.startswith("rng.") for key in meta)):
        info = meta[f"rng.{rank}"]
        kind, pos, has_gauss, cached = info["numpy"]
        version, internal, gauss = info["python"]
        rng.append(
            {
                "torch": tensors[f"rng/{rank}/torch"],
                "cuda": [tensors[f"rng/{rank}/cuda/{i}"] for i in range(info["cuda"])],
                "python": (version, tuple(internal), gauss),
                "numpy": (kind, tensors[f"rng/{rank}/numpy"].numpy().astype(np.uint32), pos, has_gauss, cached),
            }
        )
    return TrainingState(
        step=meta["step"],
        data_position=meta["data_position"],
        models=grouped["model"],
        ema=grouped["ema"],
        optimizers=optimizers,
        rng=rng,
        extra=grouped["extra"],
    )


def _check_format(path: Path, meta: dict[str, str] | None) -> None:
    found = json.loads((meta or {}).get("format_version", "null"))
    if found != FORMAT_VERSION:
        raise UserError(
            f"checkpoint {str(path)!r} has format version {found}, but this ldm-framework reads "
            f"version {FORMAT_VERSION}; use the ldm-framework that wrote it"
        )


def _unreadable(path: Path, exc: Exception) -> UserError:
    return UserError(
        f"checkpoint {str(path)!r} cannot be read ({exc}); it was damaged after it was written: "
        "delete it to use the checkpoint before it"
    )


def read_state(path: Path) -> TrainingState:
    """The whole training state stored in checkpoint ``path``."""
    try:
        with safe_open(str(path), "pt") as handle:
            meta = handle.metadata()
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise _unreadable(path, exc) from None
    _check_format(path, meta)
    return _decode(tensors, meta)


def read_weights(path: Path, model: str, which: str = "ema") -> dict[str, Tensor]:
    """One model's weights from checkpoint ``path``: ``which`` is "ema" (falling back to raw
    weights when the run kept no EMA) or "raw"."""
    try:
        handle = safe_open(str(path), "pt")
    except (SafetensorError, OSError) as exc:
        raise _unreadable(path, exc) from None
    with handle:
        _check_format(path, handle.metadata())
        keys = list(handle.keys())
        for prefix in [f"ema/{model}/", f"model/{model}/"] if which == "ema" else [f"model/{model}/"]:
            found = {
                key.removeprefix(prefix): handle.get_tensor(key)
                for key in keys
                if key.startswith(prefix) and not key.endswith(f"/{UPDATES_KEY}")
            }
            if found:
                return found
    stored = sorted({key.split("/")[1] for key in keys if key.startswith("model/")})
    raise UserError(f"checkpoint {str(path)!r} holds no model {model!r}; it holds {', '.join(stored) or 'none'}")


class Checkpoints:
    """The ``checkpoints/`` directory of a run: atomic saves, a ``latest`` pointer, the newest K kept."""

    def __init__(self, directory: Path, keep: int) -> None:
        self.directory = directory
        self.keep = keep

    def path_for(self, step: int) -> Path:
        """Where the checkpoint of ``step`` lives."""
        return self.directory / f"step-{step:08d}.safetensors"

    @staticmethod
    def step_of(path: Path) -> int:
        """The training step of checkpoint file ``path``."""
        return int(_STEP_FILE.match(path.name).group(1))

    def steps(self) -> list[int]:
        """The steps that have a complete checkpoint file, oldest first."""
        found = (_STEP_FILE.match(p.name) for p in self.directory.glob("step-*.safetensors"))
        return sorted(int(m.group(1)) for m in found if m)

    def save(self, state: TrainingState) -> Path:
        """Write ``state`` atomically, then point ``latest`` at it, then drop all but the newest K."""
        path = self.path_for(state.step)
        tensors, meta = _encode(state)
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
        atomic_write(self.directory / LATEST, path.name.encode())
        for step in self.steps()[: -self.keep]:
            self.path_for(step).unlink(missing_ok=True)
        return path

    def latest(self) -> Path | None:
        """The newest complete checkpoint (``None`` if there is none); partial writes are removed."""
        sweep_partial(self.directory)
        pointer = self.directory / LATEST
        if pointer.is_file():
            path = self.directory / pointer.read_text().strip()
            if _STEP_FILE.match(path.name) and path.is_file():
                return path
        steps = self.steps()
        return self.path_for(steps[-1]) if steps else None


def _some(keys: list[str], limit: int = 5) -> str:
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_weights(
    module: torch.nn.Module, weights: dict[str, Tensor], source: str, spec_differences: Sequence[str] = ()
) -> None:
    """Load ``weights`` into ``module`` strictly; a :class:`UserError` grouping every mismatch.

    Missing keys, unexpected keys and keys of the wrong shape are listed together, so a
    checkpoint made for another configuration is recognised at once; ``spec_differences``
    (``"field: theirs -> ours"``, when the checkpoint's spec is known) say which.
    """
    own = module.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    # A module's extra state (e.g. a tokenizer as bytes) is its own business, of any length.
    wrong = [
        f"{key} (checkpoint {tuple(weights[key].shape)}, model {tuple(value.shape)})"
        for key, value in own.items()
        if key in weights and not key.endswith("_extra_state") and weights[key].shape != value.shape
    ]
    problems = [
        f"{label}: {_some(keys)}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
        if keys
    ]
    if problems:
        made_for = f" ({_some(list(spec_differences))})" if spec_differences else ""
        raise UserError(
            f"{source} does not fit the model ({'; '.join(problems)}); it was made for "
            f"another configuration{made_for}: use the spec it was trained with"
        )
    module.load_state_dict(weights, strict=True)
