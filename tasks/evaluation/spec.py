"""The spec of the ``evaluate`` task (light: importing it loads none of the evaluation code)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt

from tasks.ldm.specs import SamplingSpec
from tasks.runs.spec import RunRef, TaskSpec


class EvaluateSpec(TaskSpec):
    """Measure the run ``model`` (a ``train_ldm`` or ``train_autoencoder`` run)."""

    task: Literal["evaluate"]
    model: RunRef = Field(description='The run to measure, e.g. {"run": "quickstart-ldm"} (EMA weights by default).')
    sampling: SamplingSpec | None = Field(
        None, description="Sampler, steps, spacing and guidance; by default the run's own."
    )
    per_class: PositiveInt = Field(100, description="Samples of each class for a class-conditional model.")
    num_images: PositiveInt = Field(
        500,
        description=(
            "Samples of an unconditional model, or validation examples whose conditions a data-conditioned model "
            "samples from."
        ),
    )
    batch_size: PositiveInt = Field(100, description="Images sampled at once.")
