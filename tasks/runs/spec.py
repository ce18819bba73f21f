"""The fixed top-level fields of every task spec, where a task runs, and a run referred to by name.

These are the task layer's own types: plugin authors never need them (``core`` keeps only
what components need), and every task spec derives from :class:`TaskSpec`.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, PositiveInt, field_validator
from pydantic_core import PydanticCustomError

from core import DatasetSpec, SpecModel

SPEC_VERSION = 1
"""The version of the task-spec format this code reads and writes."""

_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _safe_run_name(name: str) -> str:
    if not _RUN_NAME.match(name):
        raise PydanticCustomError(
            "run_name",
            "run name {name} cannot be a run directory (it would write outside the runs directory "
            "or is not a plain name); use up to 128 letters, digits, '.', '_' and '-', starting "
            "with a letter or digit",
            {"name": repr(name)},
        )
    return name


RunName = Annotated[str, AfterValidator(_safe_run_name)]


class RuntimeSpec(SpecModel):
    """Where and how a task runs: Lightning Fabric's settings."""

    accelerator: Literal["auto", "cpu", "cuda", "gpu", "mps"] = "auto"
    devices: PositiveInt = 1
    num_nodes: PositiveInt = 1
    strategy: Literal["auto", "single_device", "ddp", "fsdp"] = "auto"
    precision: Literal["32-true", "bf16-mixed", "16-mixed"] = "32-true"
    memory_format: Literal["auto", "channels_last", "contiguous"] = Field(
        "auto",
        description="How trained models hold their 4-d (convolution) weights; channels_last makes convolutions "
        "faster on CPUs (oneDNN) and on GPUs with tensor cores, and gives the same results up to rounding; auto: "
        "channels_last, except under fsdp, which shards contiguous weights only.",
    )
    compile: bool = Field(
        False,
        description="torch.compile the trained models (checkpoints are the same as eager runs'; compiling takes "
        "minutes, on a CPU more than it saves on short runs).",
    )
    tf32: bool = Field(
        True,
        description="On a CUDA GPU that has them (Ampere and later), TF32 tensor cores for float32 matmuls and "
        "convolutions (32-true, and what bf16-mixed leaves in float32); no effect elsewhere.",
    )
    cudnn_benchmark: bool = Field(
        False,
        description="On a CUDA GPU, let cuDNN time its convolution algorithms and keep the fastest: faster, but "
        "the choice can differ between runs, so a resumed run is no longer equal to the bit.",
    )


class TaskSpec(SpecModel):
    """The fixed top-level fields every task spec has; each task adds its own."""

    spec_version: int = Field(SPEC_VERSION, description="The spec format's version.")
    task: str
    name: RunName = Field(description="The run directory is runs/<name> (or --runs-dir).")
    seed: int = 0
    runtime: RuntimeSpec = RuntimeSpec()
    data: DatasetSpec | None = None

    @field_validator("spec_version")
    @classmethod
    def _readable_version(cls, version: int) -> int:
        if version != SPEC_VERSION:
            newer = "newer than" if version > SPEC_VERSION else "older than"
            raise PydanticCustomError(
                "spec_version",
                f"spec_version {version} is {newer} the version this ldm-framework reads "
                f"({SPEC_VERSION}); write the spec for version {SPEC_VERSION}",
            )
        return version


class RunRef(SpecModel):
    """A trained model referred to by its run: ``{"run": "<name>"}`` (latest checkpoint, EMA weights)."""

    run: RunName
    weights: Literal["ema", "raw"] = Field("ema", description="The EMA weights (if the run kept them) or the raw ones.")
