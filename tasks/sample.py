"""Task ``sample``: images from a trained LDM, each one reproducible alone.

Writes ``images/<index>.png`` (one per image), ``grid.png`` and ``manifest.jsonl`` into its
run directory. Each manifest line holds the image's file, its condition, the run and
checkpoint step it came from, EMA or raw weights, the sampler and its params (eta among
them), steps, timestep spacing, guidance and the image's own seed: a ``sample`` spec with
that condition, ``seed`` set to that seed and one image makes the same image again.
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal

import torch
from pydantic import Field, NonNegativeInt, PositiveInt, model_validator
from tqdm import tqdm

from core import TaskSpec, UserError
from tasks.api import check_conditions, load_pipeline
from tasks.context import RunContext
from tasks.engine.rundir import atomic_write, check_run_dir, environment_stamp, open_run_dir
from tasks.engine.runtime import resolve_runtime
from tasks.engine.specs import RunRef
from tasks.images import make_grid, save_png
from tasks.ldm import SamplingSpec


class SampleSpec(TaskSpec):
    """Sample images from the LDM that run ``model`` trained."""

    task: Literal["sample"]
    model: RunRef = Field(description='The train_ldm run, e.g. {"run": "digits-ldm"} (EMA weights by default).')
    conditions: dict[str, list[Any]] = Field(
        {}, description=('One list per field the conditioners read, one entry per image, e.g. {"label": [0, 1, 2]}.')
    )
    repeat: PositiveInt = Field(1, description="Images per condition entry (the grid puts each entry's on one row).")
    num_images: PositiveInt | None = Field(None, description="How many images, for an unconditional model.")
    data_indices: list[NonNegativeInt] | None = Field(
        None,
        min_length=1,
        description=("Take the conditions from these examples of `data` (maps, low-res images, labels, captions)."),
    )
    sampling: SamplingSpec = Field(default_factory=dict, validate_default=True)
    batch_size: PositiveInt = 16

    @model_validator(mode="after")
    def _one_source_of_conditions(self) -> SampleSpec:
        if (self.data is None) != (self.data_indices is None):
            raise ValueError(
                "data and data_indices go together: give both to take the conditions from examples, or neither"
            )
        if self.data_indices is not None and self.conditions:
            raise ValueError("give the conditions either in conditions or through data and data_indices, not both")
        return self


def conditions_from_data(spec: SampleSpec, fields: list[str]) -> tuple[dict[str, list[Any]], list[dict[str, Any]]]:
    """The conditioners' fields of the examples ``data_indices`` names, and for the manifest each
    image's condition: plain values as they are, tensors as a reference to their example."""
    dataset = spec.data.build()
    outside = [i for i in spec.data_indices if i >= len(dataset)]
    if outside:
        raise UserError(
            f"data_indices: {outside} are outside data ({spec.data.name}), which has {len(dataset)} "
            f"examples; use 0 to {len(dataset) - 1}"
        )
    missing = sorted(set(fields) - spec.data.cls.example_shape(spec.data.params).fields)
    if missing:
        raise UserError(
            f"data: {spec.data.name} does not give {missing}, which the model's conditioners read; "
            "choose data that does (e.g. set lowres_factor for low-res images)"
        )
    examples = [dataset[i] for i in spec.data_indices]
    conditions = {field: [example[field] for example in examples] for field in fields}
    described = [
        {
            "data_index": i,
            **{
                field: example[field]
                if isinstance(example[field], (int, float, str))
                else f"{spec.data.name}[{i}].{field}"
                for field in fields
            },
        }
        for i, example in zip(spec.data_indices, examples, strict=True)
    ]
    return conditions, described


def run(spec: SampleSpec, ctx: RunContext) -> None:
    """Sample, then write the images, the grid and the manifest."""
    runtime = resolve_runtime(spec.runtime)
    spec = spec.model_copy(update={"runtime": runtime})
    pipe = load_pipeline(spec.model, ctx, "model", runtime.accelerator)  # resolved: cpu, cuda or mps
    pipe.check(spec.sampling, "sampling.steps")
    if spec.data_indices is not None:
        given, described = conditions_from_data(spec, sorted({m.reads(m.params) for m in pipe.ldm.conditioners}))
    else:
        given = spec.conditions
        described = [
            {key: values[i] for key, values in given.items()} for i in range(len(next(iter(given.values()), [])))
        ]
    conditions = {key: [value for value in values for _ in range(spec.repeat)] for key, values in given.items()}
    described = [entry for entry in described for _ in range(spec.repeat)]
    count = check_conditions(pipe.ldm, conditions, spec.num_images and spec.num_images * spec.repeat)
    resolved = spec.model_dump(mode="json")
    run_dir = check_run_dir(ctx.runs_dir, spec.name, resolved, resume=False)

    seeds = [spec.seed + i for i in range(count)]
    with tqdm(total=count, desc=spec.name, unit="image", dynamic_ncols=True) as bar:
        images = []
        for start in range(0, count, spec.batch_size):
            chunk = {key: values[start : start + spec.batch_size] for key, values in conditions.items()}
            images.append(pipe.generate(spec.sampling, chunk, seeds[start : start + spec.batch_size], spec.batch_size))
            bar.update(len(images[-1]))
        images = torch.cat(images)

    open_run_dir(run_dir, resolved, environment_stamp(ctx.registry, 1, [str(pipe.checkpoint)]))
    folder = run_dir.root / "images"
    folder.mkdir()
    sampler = spec.sampling.sampler
    spacing = spec.sampling.spacing or sampler.cls.spacing
    lines = []
    for i, (image, seed) in enumerate(zip(images, seeds, strict=True)):
        name = f"images/{i:05d}.png"
        save_png(make_grid(image[None], 1), run_dir.root / name)
        lines.append(
            json.dumps(
                {
                    "file": name,
                    "condition": described[i] if described else {},
                    "run": spec.model.run,
                    "checkpoint": pipe.checkpoint.name,
                    "step": pipe.step,
                    "weights": spec.model.weights,
                    "sampler": sampler.name,
                    "sampler_params": sampler.params.model_dump(mode="json"),
                    "eta": getattr(sampler.params, "eta", None),
                    "steps": spec.sampling.steps,
                    "spacing": spacing,
                    "guidance": spec.sampling.guidance,
                    "seed": seed,
                }
            )
        )
    nrow = spec.repeat if conditions and spec.repeat > 1 else math.ceil(math.sqrt(count))
    save_png(make_grid(images, nrow), run_dir.root / "grid.png")
    atomic_write(run_dir.root / "manifest.jsonl", ("\n".join(lines) + "\n").encode())
    print(f"{count} images, grid and manifest in {run_dir.root}", file=ctx.out)
