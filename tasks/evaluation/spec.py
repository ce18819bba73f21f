"""The spec of the ``evaluate`` task (light: importing it loads none of the evaluation code)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt

from core import DatasetSpec
from tasks.ldm.specs import SamplingSpec
from tasks.runs.spec import RunRef, TaskSpec


class EvaluateSpec(TaskSpec):
    """Measure the run ``model`` (a run holding an LDM or a first stage: ``train_ldm``,
    ``train_autoencoder`` or ``import_checkpoint``)."""

    task: Literal["evaluate"]
    data: DatasetSpec | None = Field(
        None,
        description=(
            "The examples to measure on (their validation split); none: the run's training data. An imported run "
            "has none, so give it."
        ),
    )
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
