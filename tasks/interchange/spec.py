"""The spec of the ``export_checkpoint`` task (light: reading it loads no weights)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tasks.runs.spec import RunRef, TaskSpec


class ExportCheckpointSpec(TaskSpec):
    """A run's models in another tool's format, written into this run's folder.

    ``diffusers``: a folder per model (``unet``, ``vae`` or ``vqvae``, ``scheduler``, and a
    CLIP text encoder with its tokenizer), with ``model_index.json`` when a diffusers pipeline
    holds them all (``StableDiffusionPipeline``, ``LDMPipeline``), so ``from_pretrained`` of the
    folder loads it. ``original``: one ``model.safetensors`` under the original code's names
    and the ``model.yaml`` that describes it, as Stable Diffusion v1 files are released.
    """

    task: Literal["export_checkpoint"]
    model: RunRef = Field(
        description='The run to export: one holding an LDM or a first stage, e.g. {"run": "shapes-text2img-ldm"}.'
    )
    format: Literal["diffusers", "original"] = Field(
        "diffusers", description="A diffusers folder, or the original code's layout (a single file and its YAML)."
    )
    dtype: Literal["float32", "float16"] = Field("float32", description="The stored tensors' type.")
