"""Sharded training (``runtime.strategy: "fsdp"``): PyTorch's FSDP2 over the data-parallel
processes, with checkpoints that stay whole.

The policy shards each trained model in place, with no model-specific code: every child of
the model that holds trainable weights (a UNet, each trainable conditioner, an encoder) is
one unit, and within it every block of its module lists (a UNet's levels, a transformer's
layers) is a unit of its own. The model itself is not sharded, so any of its methods may call
its units; weights held by no unit (frozen ones, such as a pretrained text encoder or the
first stage an LDM encodes with) stay whole on every process. Gathering functions turn
sharded weights and optimiser state into the full, single-process form our checkpoints
store, and back, so checkpoints of sharded and unsharded runs load into each other.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from core import UserError

_CONTAINERS = (nn.ModuleList, nn.ModuleDict, nn.Sequential)
_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def _trainable(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def _members(module: nn.Module, prefix: str) -> Iterator[tuple[str, nn.Module]]:
    """The children of ``module`` with trainable weights, the members of containers in their place."""
    for name, child in module.named_children():
        if isinstance(child, _CONTAINERS):
            yield from _members(child, f"{prefix}{name}.")
        elif _trainable(child):
            yield f"{prefix}{name}", child


def _blocks(module: nn.Module, prefix: str) -> Iterator[tuple[str, nn.Module]]:
    """The members with trainable weights of the outermost module lists inside ``module``."""
    for name, child in module.named_children():
        if isinstance(child, _CONTAINERS):
            yield from _members(child, f"{prefix}{name}.")
        else:
            yield from _blocks(child, f"{prefix}{name}.")


def units(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of what the policy shards, blocks before the unit that holds them."""
    found: list[tuple[str, nn.Module]] = []
    for name, unit in _members(model, ""):
        found += [*_blocks(unit, f"{name}."), (name, unit)]
    return found


def check_shardable(model: nn.Module, name: str) -> None:
    """A :class:`UserError` if the policy cannot shard ``model`` (trained as ``name``) usefully."""
    own = [n for n, p in model.named_parameters(recurse=False) if p.requires_grad]
    if own:
        raise UserError(
            f"runtime.strategy: 'fsdp' cannot shard the {name!r} model ({type(model).__name__}): it holds trainable "
            f"weights of its own ({', '.join(own)}) outside any submodule; use 'ddp'"
        )
    found = [unit for unit, _ in units(model)]
    if len(found) < 2:
        raise UserError(
            f"runtime.strategy: 'fsdp' finds one piece to shard in the {name!r} model ({type(model).__name__}): "
            f"{', '.join(found)}; every process would gather all of it for every layer, which saves no memory "
            "over ddp; use 'ddp' for a model this small"
        )


def shard(
    model: nn.Module, mesh: DeviceMesh, mixed: torch.dtype | None = None, like: nn.Module | None = None
) -> nn.Module:
    """Shard ``model`` in place over ``mesh`` by the policy (see :func:`units`), or as the
    policy shards ``like`` (a frozen copy such as an EMA shards as the model it follows); with
    ``mixed``, compute in that dtype while the weights and gradient reductions stay float32."""
    policy = MixedPrecisionPolicy(param_dtype=mixed, reduce_dtype=torch.float32) if mixed else MixedPrecisionPolicy()
    for name, _ in units(like if like is not None else model):
        fully_shard(model.get_submodule(name), mesh=mesh, mp_policy=policy)  # moves only its shards
    # Then what stays whole: Fabric leaves placing a sharded model to its policy.
    return model.to(mesh.device_type)


def is_sharded(model: nn.Module) -> bool:
    """Whether any weight of ``model`` is sharded."""
    return any(isinstance(p, DTensor) for p in model.parameters())


@contextmanager
def gathered(*models: nn.Module) -> Iterator[None]:
    """Every sharded unit of ``models`` whole for the block, so that any method may run on each
    process without collectives of its own (processes may run different amounts of work)."""
    sharded = [m for model in models for m in model.modules() if isinstance(m, FSDPModule)]
    # FSDP2 keeps an outermost unit whole from its forward to its backward (so that methods
    # such as a conditioner's "no condition" output may read its weights); units inside
    # another reshard after their forward. Both are restored as they were.
    nested = {id(inner) for unit in sharded for inner in unit.modules() if inner is not unit}
    for unit in sharded:
        unit.unshard()
        unit.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for unit in sharded:
            unit.reshard()
            unit.set_reshard_after_forward(id(unit) in nested, recurse=False)


def whole(tensor: Tensor) -> Tensor:
    """``tensor`` itself, or the whole tensor a sharded one stands for (a collective)."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def full_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """``model``'s state dict with whole tensors (a collective when it is sharded, whose result
    only rank 0 holds: the others get an empty dict)."""
    if not is_sharded(model):
        return model.state_dict()
    return get_model_state_dict(model, options=_FULL)


def load_full_state_dict(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Load whole tensors into ``model``, sharded or not (every process passes the same ``state``)."""
    if not is_sharded(model):
        model.load_state_dict(state, strict=True)
        return
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=True))


def _names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The name of each parameter of ``optimizer``, in its state dict's index order."""
    names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` as one process holding the whole model would give it (parameters
    by index; a collective when ``model`` is sharded, whose result only rank 0 holds: the others
    get an empty dict)."""
    if not is_sharded(model):
        return optimizer.state_dict()
    optimizer = getattr(optimizer, "optimizer", optimizer)  # Fabric's wrapper holds the optimiser
    full = get_optimizer_state_dict(model, optimizer, options=_FULL)
    if not full:
        return full
    index = {name: i for i, name in enumerate(_names(model, optimizer))}
    groups = [{**group, "params": [index[n] for n in group["params"]]} for group in full["param_groups"]]
    return {"state": {index[n]: value for n, value in full["state"].items()}, "param_groups": groups}


def load_full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load what :func:`full_optimizer_state` (or a single process's optimiser) gave."""
    per_parameter = (v for values in state["state"].values() for v in values.values())
    if not is_sharded(model) or not any(isinstance(v, Tensor) and v.dim() > 0 for v in per_parameter):
        # Nothing to shard (plain SGD keeps no tensors), and torch's sharded loader needs one.
        optimizer.load_state_dict(state)
        return
    optimizer = getattr(optimizer, "optimizer", optimizer)
    names = _names(model, optimizer)
    full = {
        "state": {names[int(i)]: value for i, value in state["state"].items()},
        "param_groups": [
            {**group, "params": [names[int(i)] for i in group["params"]]} for group in state["param_groups"]
        ],
    }
    set_optimizer_state_dict(model, optimizer, full, options=StateDictOptions(full_state_dict=True))
