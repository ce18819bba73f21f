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
from typing import Any

from tqdm import tqdm

from core import UserError
from tasks.images import make_grid, save_png
from tasks.ldm.generation import Pipeline, check_conditions, load_pipeline
from tasks.ldm.specs import SampleSpec
from tasks.runs.context import RunContext
from tasks.runs.oneshot import OneShotRun
from tasks.runs.rundir import atomic_write


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


def _conditions(spec: SampleSpec, pipe: Pipeline) -> tuple[dict[str, list[Any]], list[dict[str, Any]], int]:
    """Each image's condition (every entry ``repeat`` times), as the model takes it and as the
    manifest describes it, and the number of images; a :class:`UserError` if they do not fit."""
    if spec.data_indices is not None:
        given, described = conditions_from_data(spec, sorted({m.reads(m.params) for m in pipe.ldm.conditioners}))
    else:
        given = spec.conditions
        entries = len(next(iter(given.values()), []))
        described = [{key: values[i] for key, values in given.items()} for i in range(entries)]
    conditions = {key: [value for value in values for _ in range(spec.repeat)] for key, values in given.items()}
    described = [entry for entry in described for _ in range(spec.repeat)]
    count = check_conditions(pipe.ldm, conditions, spec.num_images and spec.num_images * spec.repeat)
    return conditions, described, count


def run(spec: SampleSpec, ctx: RunContext) -> None:
    """Sample, then write the images, the grid and the manifest."""
    checked = OneShotRun.check(spec, ctx)
    spec = checked.spec
    pipe = load_pipeline(spec.model, ctx, "model", spec.runtime.accelerator)  # resolved: cpu, cuda or mps
    pipe.check(spec.sampling)
    conditions, described, count = _conditions(spec, pipe)
    seeds = [spec.seed + i for i in range(count)]
    with tqdm(total=count, desc=spec.name, unit="image", dynamic_ncols=True) as bar:
        images = pipe.generate(spec.sampling, conditions, seeds, spec.batch_size, bar.update)

    root = checked.open(ctx, pipe.reads)
    (root / "images").mkdir()
    made = {"run": spec.model.run, "checkpoint": pipe.checkpoint.name, "step": pipe.step, "weights": pipe.weights}
    eta = getattr(spec.sampling.sampler.params, "eta", None)
    lines = []
    for i, (image, seed) in enumerate(zip(images, seeds, strict=True)):
        name = f"images/{i:05d}.png"
        save_png(make_grid(image[None], 1), root / name)
        condition = described[i] if described else {}
        line = {"file": name, "condition": condition, **made, **spec.sampling.record(), "eta": eta, "seed": seed}
        lines.append(json.dumps(line))
    nrow = spec.repeat if conditions and spec.repeat > 1 else math.ceil(math.sqrt(count))
    save_png(make_grid(images, nrow), root / "grid.png")
    atomic_write(root / "manifest.jsonl", ("\n".join(lines) + "\n").encode())
    print(f"{count} images, grid and manifest in {root}", file=ctx.out)
