"""ldm-plugin-wrong: a conditioner that declares a 16-wide vector but returns an 8-wide one.

Wrong on purpose, as a plugin author's slip would be: the declaration (what builders size the
denoiser from) and the forward pass disagree, and a run must say so instead of crashing
inside the denoiser.
"""

import torch
from torch import nn

import core

core.require_plugin_api("1.0")

DECLARED = 16
RETURNED = 8


class WrongVector(core.Conditioner):
    """Class label (0-9) -> a vector of width 8, while produces() declares width 16."""

    class Params(core.Params):
        """No params: both widths are fixed, and disagree on purpose."""

    def __init__(self, params):
        super().__init__(params)
        self.embedding = nn.Embedding(10, RETURNED)

    @classmethod
    def reads(cls, params):
        return "label"

    @classmethod
    def produces(cls, params):
        return core.ConditioningShape(vector=DECLARED)

    def forward(self, y):
        return core.Conditioning(vector=self.embedding(torch.as_tensor(y, device=self.embedding.weight.device).long()))

    def unconditional(self, cond):
        return core.Conditioning(vector=torch.zeros_like(cond.vector))


@core.hookimpl
def ldm_register(registry):
    registry.add("wrong_vector", WrongVector)
