"""Which known layout a checkpoint file's tensor names look like, so that a file that does not
fit its config is refused naming what it seems to be (an SDXL or SD 2 file, a diffusers
model's weights, a bare CLIP...) instead of only listing missing names."""

from __future__ import annotations

from collections.abc import Iterable

LAYOUTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("an SDXL checkpoint", ("conditioner.embedders.",)),
    ("a Stable Diffusion 2 checkpoint (OpenCLIP text encoder)", ("cond_stage_model.model.",)),
    ("a diffusers autoencoder's weights", ("encoder.down_blocks.", "decoder.up_blocks.")),
    ("a diffusers UNet's weights", ("down_blocks.", "up_blocks.", "mid_block.")),
    ("a transformers CLIP text encoder's weights", ("text_model.",)),
    ("an original LDM checkpoint (Stable Diffusion v1, the paper's models)", ("model.diffusion_model.",)),
    ("an original first stage checkpoint", ("encoder.down.", "decoder.up.")),
)
"""Each layout and the name prefixes only it has, the most telling first (an SDXL file also
holds names an SD v1 file has)."""


def nearest_layout(keys: Iterable[str]) -> tuple[str, int]:
    """The first layout of :data:`LAYOUTS` some of ``keys`` have the marks of, and how many do."""
    keys = list(keys)
    for name, prefixes in LAYOUTS:
        count = sum(key.startswith(prefixes) for key in keys)
        if count:
            return name, count
    return "no layout this code knows", 0
