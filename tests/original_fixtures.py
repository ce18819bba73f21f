"""What the tests comparing our components with the original CompVis code share: seeded
weights under the original's names, and a short fingerprint of an output.

The fixture numbers in those tests were measured by running the original code on exactly
these weights and inputs (the tests' docstrings say which modules, at which commits).
"""

import torch


def seeded_state(shapes: dict[str, torch.Size], seed: int = 0) -> dict[str, torch.Tensor]:
    """Weights of the given shapes drawn in sorted name order: norm scales 1 + 0.1 N(0, 1),
    other 1-d tensors 0.1 N(0, 1), the rest N(0, 1) / sqrt(fan-in)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key in sorted(shapes):
        shape = shapes[key]
        noise = torch.randn(shape, generator=generator)
        if len(shape) == 1:
            state[key] = (1 + 0.1 * noise) if "norm" in key and key.endswith("weight") else 0.1 * noise
        else:
            state[key] = noise / shape[1:].numel() ** 0.5
    return state


def fingerprint(tensor: torch.Tensor) -> list[float]:
    """The sum, the sum of absolute values and the first four values, in float64."""
    flat = tensor.double().flatten()
    return [flat.sum().item(), flat.abs().sum().item(), *flat[:4].tolist()]
