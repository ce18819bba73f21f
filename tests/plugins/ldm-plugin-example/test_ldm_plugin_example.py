import torch
from core.testing import ConditionerContract
from ldm_plugin_example import OneHot


class TestOneHot(ConditionerContract):
    component = OneHot
    params = {"num_classes": 10, "dim": 16}

    def example(self, batch_size, generator):
        return torch.randint(0, 10, (batch_size,), generator=generator)
