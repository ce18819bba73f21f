"""ldm-plugin-example: a one-hot class conditioner, shipped as a third party would ship it."""

import torch
from pydantic import Field, PositiveInt
from torch import nn

import core

core.require_plugin_api("1.0")


class OneHot(core.Conditioner):
    """One-hot class vector through a linear layer, as a one-token cross-attention context."""

    class Params(core.Params):
        num_classes: PositiveInt = Field(description="Number of classes.")
        dim: PositiveInt = Field(64, description="Context width.")

    def __init__(self, params):
        super().__init__(params)
        self.proj = nn.Linear(params.num_classes, params.dim)
        self.null = nn.Parameter(torch.zeros(1, 1, params.dim))  # learned "no class" token

    @classmethod
    def reads(cls, params):
        return "label"

    @classmethod
    def produces(cls, params):
        return core.ConditioningShape(context=params.dim)

    def forward(self, y):
        onehot = nn.functional.one_hot(y.long(), self.params.num_classes).to(self.proj.weight.dtype)
        return core.Conditioning(context=self.proj(onehot)[:, None, :])

    def unconditional(self, cond):
        return core.Conditioning(context=self.null.expand_as(cond.context))


@core.hookimpl
def ldm_register(registry):
    registry.add("onehot", OneHot)
