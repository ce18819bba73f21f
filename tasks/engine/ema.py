"""An exponential moving average of a model's weights (decay with warm-up)."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from tasks.engine.sharding import full_state_dict, load_full_state_dict
from tasks.engine.specs import EmaSpec
from tasks.runs.checkpoint import UPDATES_KEY


class Ema:
    """A frozen copy of ``model`` whose floating weights follow it as

    ``ema <- decay_n * ema + (1 - decay_n) * weight`` after the n-th update, where ``decay_n``
    is ``min(decay, (1 + n) / (10 + n))`` with warm-up (early weights are forgotten fast) and
    ``decay`` without. Buffers that are not floating (counters) are copied; parameters frozen
    when the average is made are kept as they were.

    The model's tensors are paired with the average's at the first update with that model and
    reused after (one fused lerp over all of them: walking two state dicts per step cost a tiny
    model a tenth of its step), so the model must keep its tensors and write them in place, as
    optimisers and ``load_state_dict`` do.
    """

    def __init__(self, model: nn.Module, spec: EmaSpec) -> None:
        self.spec = spec
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        # Frozen weights (e.g. a pretrained text encoder) never move, so averaging them is
        # wasted work: they keep the copy taken here.
        self.frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
        self.updates = 0
        self._source: nn.Module | None = None
        self._pairs: tuple[list[Tensor], list[Tensor], list[tuple[Tensor, Tensor]]] = ([], [], [])

    def decay(self) -> float:
        """The decay the next update will use."""
        if not self.spec.warmup:
            return self.spec.decay
        return min(self.spec.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``'s current weights."""
        if self._source is not model:
            self._pairs, self._source = self._pair(model), model
        shadows, values, others = self._pairs
        if shadows:
            cast = [v if v.dtype == s.dtype else v.to(s.dtype) for s, v in zip(shadows, values, strict=True)]
            torch._foreach_lerp_(shadows, cast, 1.0 - self.decay())
        for shadow, value in others:
            shadow.copy_(value)
        self.updates += 1

    def _pair(self, model: nn.Module) -> tuple[list[Tensor], list[Tensor], list[tuple[Tensor, Tensor]]]:
        """(floating shadows, the model's tensors they follow, (shadow, tensor) pairs copied as they are)."""
        current = model.state_dict(keep_vars=True)
        shadows, values, others = [], [], []
        for key, shadow in self.model.state_dict(keep_vars=True).items():
            if key in self.frozen:
                continue
            if shadow.is_floating_point():
                shadows.append(shadow)
                values.append(current[key])
            else:
                others.append((shadow, current[key]))
        return shadows, values, others

    def state_dict(self) -> dict[str, Tensor]:
        """The averaged weights (whole, if sharded: a collective), plus the update count under :data:`UPDATES_KEY`."""
        return {**full_state_dict(self.model), UPDATES_KEY: torch.tensor(self.updates)}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore what :meth:`state_dict` returned."""
        state = dict(state)
        self.updates = int(state.pop(UPDATES_KEY))
        load_full_state_dict(self.model, state)
