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

import torch
from torch import Tensor
from tqdm import tqdm

from core import UserError
from core.masks import MASKED_IMAGE, binarise, masked_input
from tasks.engine.fabric import make_fabric
from tasks.images import make_grid, read_image, read_mask, save_png
from tasks.ldm import views
from tasks.ldm.generation import Init, Pipeline, check_conditions, load_pipeline
from tasks.ldm.specs import SampleSpec
from tasks.runs.context import RunContext
from tasks.runs.oneshot import OneShotRun
from tasks.runs.rundir import atomic_write


def _examples(spec: SampleSpec) -> list[dict[str, Any]]:
    """The examples of ``data`` that ``data_indices`` names (none without them)."""
    if spec.data_indices is None:
        return []
    dataset = spec.data.build()
    outside = [i for i in spec.data_indices if i >= len(dataset)]
    if outside:
        raise UserError(
            f"data_indices: {outside} are outside data ({spec.data.name}), which has {len(dataset)} "
            f"examples; use 0 to {len(dataset) - 1}"
        )
    return [dataset[i] for i in spec.data_indices]


def _from_data(spec: SampleSpec, examples: list[dict[str, Any]], fields: list[str]) -> list[dict[str, list[Any]]]:
    """The ``fields`` of the examples, by field; a :class:`UserError` if the data does not give one."""
    missing = sorted(set(fields) - spec.data.cls.example_shape(spec.data.params).fields)
    if missing:
        raise UserError(
            f"data: {spec.data.name} does not give {missing}, which the model's conditioners read; "
            "choose data that does (e.g. set lowres_factor for low-res images)"
        )
    return {field: [example[field] for example in examples] for field in fields}


def _described(spec: SampleSpec, i: int, field: str, value: Any) -> Any:
    """A condition as the manifest records it: plain values as they are, tensors as their example's field."""
    return value if isinstance(value, (int, float, str)) else f"{spec.data.name}[{spec.data_indices[i]}].{field}"


def _conditions(spec: SampleSpec, pipe: Pipeline, examples: list[dict[str, Any]]) -> tuple[dict, list[dict], int]:
    """Each image's condition (every entry ``repeat`` times), as the model takes it and as the
    manifest describes it, and the number of images; a :class:`UserError` if they do not fit."""
    derived = {MASKED_IMAGE} if spec.init is not None and spec.init.masks is not None else set()
    if examples:
        fields = {m.reads(m.params) for m in pipe.ldm.conditioners}
        known = spec.data.cls.example_shape(spec.data.params).fields
        given = _from_data(spec, examples, sorted(fields - (derived - known)))
        entries = len(examples)
        described = [
            {"data_index": spec.data_indices[i], **{k: _described(spec, i, k, v[i]) for k, v in given.items()}}
            for i in range(entries)
        ]
    else:
        given = spec.conditions
        entries = len(next(iter(given.values()), []))
        described = [{key: values[i] for key, values in given.items()} for i in range(entries)]
    conditions = {key: [value for value in values for _ in range(spec.repeat)] for key, values in given.items()}
    described = [entry for entry in described for _ in range(spec.repeat)]
    from_files = len(spec.init.images) if spec.init and spec.init.images != "data" else None
    unconditional = spec.num_images or entries or from_files
    count = check_conditions(pipe.ldm, conditions, unconditional and unconditional * spec.repeat, derived=derived)
    return conditions, described, count


def _init_images(spec: SampleSpec, pipe: Pipeline, examples: list[dict[str, Any]]) -> tuple[list, list[str]]:
    """The init images of the entries (C, H, W) and how the manifest names them."""
    if spec.init.images == "data":
        names = [_described(spec, i, "image", None) for i in range(len(examples))]
        return [example["image"] for example in examples], names
    channels = pipe.space.shape.image_channels
    images = [read_image(p, channels, pipe.image_size, f"init.images.{k}") for k, p in enumerate(spec.init.images)]
    return images, [str(p) for p in spec.init.images]


def _entry_masks(spec: SampleSpec, pipe: Pipeline, examples: list[dict[str, Any]]) -> tuple[list, list[Any]]:
    """The masks of the entries read from files or the examples, and their names (none when drawn per image)."""
    masks = spec.init.masks
    if masks is None or masks.generate is not None:
        return [], []
    if masks.files is not None:
        read = [read_mask(p, pipe.image_size, f"init.masks.files.{k}") for k, p in enumerate(masks.files)]
        return read, [str(p) for p in masks.files]
    if masks.field not in examples[0]:
        raise UserError(f"init.masks.field: data ({spec.data.name}) gives no {masks.field!r}; name a field it gives")
    read = [binarise(example[masks.field].float().reshape(1, *example[masks.field].shape[-2:])) for example in examples]
    return read, [_described(spec, i, masks.field, None) for i in range(len(examples))]


def _init(spec: SampleSpec, pipe: Pipeline, examples: list[dict[str, Any]], seeds: list[int]) -> tuple:
    """:class:`Init` for every image (entries ``repeat`` times, drawn masks per image seed) and
    what each manifest line records of it."""
    if spec.init is None:
        return None, [{} for _ in seeds]
    images, names = _init_images(spec, pipe, examples)
    masks, mask_names = _entry_masks(spec, pipe, examples)
    for what, found in (("init.images", names), ("init.masks.files", mask_names)):
        if found and len(found) * spec.repeat != len(seeds):
            raise UserError(f"{what}: {len(found)} given for {len(seeds) // spec.repeat} entries; give one per entry")
    repeat = [i // spec.repeat for i in range(len(seeds))]
    record = [{"init": names[k], "strength": spec.init.strength} for k in repeat]
    if spec.init.masks is not None and spec.init.masks.generate is not None:
        drawn = spec.init.masks.generate
        stack = torch.stack([drawn.draw(pipe.image_size, seed) for seed in seeds])
        for entry in record:
            entry["mask"] = {"generate": drawn.model_dump(mode="json")}
    elif masks:
        stack = torch.stack([masks[k] for k in repeat])
        for entry, k in zip(record, repeat, strict=True):
            entry["mask"] = mask_names[k]
    else:
        stack = None
    start = pipe.init(torch.stack([images[k] for k in repeat]), spec.init.strength, stack, len(seeds))
    return start, record


def _grid(spec: SampleSpec, images: Tensor, conditions: dict[str, list[Any]], init: Init | None) -> Tensor:
    """The grid: each entry's images on a row after what it was asked for (its data condition,
    its init image, masked where it has a mask), captions under the row; a square grid of an
    unconditional model's images."""
    rows = []
    for i in range(0, len(images), spec.repeat):
        row = {key: values[i] for key, values in conditions.items()}
        if init is not None:
            image = init.images[i]
            row["init"] = image if init.masks is None else masked_input(image[None], init.masks[i : i + 1])[0]
        rows.append(row)
    if views.shows_something(rows, tuple(images.shape[-2:]), images.shape[1]):
        return views.grid(images, spec.repeat, rows)
    nrow = spec.repeat if conditions and spec.repeat > 1 else math.ceil(math.sqrt(len(images)))
    return make_grid(images, nrow)


def run(spec: SampleSpec, ctx: RunContext) -> None:
    """Sample, then write the images, the grid and the manifest."""
    checked = OneShotRun.check(spec, ctx)
    spec = checked.spec
    fabric = make_fabric(spec.runtime)
    fabric.launch()
    pipe = load_pipeline(spec.model, ctx, "model", fabric=fabric)
    pipe.check(spec.sampling)
    examples = _examples(spec)
    conditions, described, count = _conditions(spec, pipe, examples)
    seeds = [spec.seed + i for i in range(count)]
    init, started = _init(spec, pipe, examples, seeds)
    pipe.check_inpainting(spec.sampling, init)
    mine = math.ceil(count / fabric.world_size)  # what this process makes (rank 0's progress shows)
    with tqdm(total=mine, desc=spec.name, unit="image", dynamic_ncols=True, disable=not fabric.is_global_zero) as bar:
        images = pipe.generate(spec.sampling, conditions, seeds, spec.batch_size, bar.update, init)
    if not fabric.is_global_zero:
        return

    root = checked.open(ctx, pipe.reads, fabric.world_size)
    (root / "images").mkdir()
    made = {"run": spec.model.run, "checkpoint": pipe.checkpoint.name, "step": pipe.step, "weights": pipe.weights}
    eta = getattr(spec.sampling.sampler.params, "eta", None)
    settings = spec.sampling.record(pipe.device)
    lines = []
    for i, (image, seed) in enumerate(zip(images, seeds, strict=True)):
        name = f"images/{i:05d}.png"
        save_png(make_grid(image[None], 1), root / name)
        condition = described[i] if described else {}
        line = {
            "file": name,
            "condition": condition,
            **started[i],
            **made,
            **settings,
            "eta": eta,
        }
        lines.append(json.dumps({**line, "seed": seed}))
    save_png(_grid(spec, images, conditions, init), root / "grid.png")
    atomic_write(root / "manifest.jsonl", ("\n".join(lines) + "\n").encode())
    print(f"{count} images, grid and manifest in {root}", file=ctx.out)
