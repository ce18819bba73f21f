"""Task ``evaluate``: how good a trained run is, measured offline, never downloading anything.

What is measured follows from the run:

- a first stage (``train_autoencoder``): PSNR and SSIM of reconstructions of the validation
  split, and codebook usage for VQ;
- an LDM whose conditioners read class indices: ``per_class`` samples of every class, judged
  by a reference classifier trained on the real training split (its validation accuracy
  reported beside), and the Frechet distance in its features to the real validation split,
  beside real training vs validation (the floor);
- an unconditional LDM: that Frechet distance, where the data has class labels to train the
  reference classifier on;
- an LDM conditioned on data (low-res images, maps, captions): samples from the first
  ``num_images`` validation examples' conditions; super-resolution against the truth beside
  bicubic upsampling; maps by the IoU of sample and map foregrounds; captions by whether
  the sample shows what its caption says, where the dataset can read captions from pixels
  (``Dataset.caption_matches``: ``shapes`` can);

Writes ``eval.json`` in its own run directory, a table on the terminal and TensorBoard scalars
with a grid of samples.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import torch
from pydantic import Field, PositiveInt
from torch import Tensor
from tqdm import tqdm

from core import TaskSpec, UserError
from tasks import judges
from tasks.api import Pipeline, load_pipeline
from tasks.context import RunContext
from tasks.engine.rundir import atomic_write, check_run_dir, environment_stamp, open_run_dir
from tasks.engine.runtime import make_fabric, resolve_runtime
from tasks.engine.specs import RunRef
from tasks.images import make_grid, save_png
from tasks.ldm import SamplingSpec
from tasks.reference_classifier import reference_classifier, split_of
from tasks.runs import load_trained, run_spec


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
            "Samples of an unconditional model, or validation examples whose conditions a data-conditioned model samples from."
        ),
    )
    batch_size: PositiveInt = Field(100, description="Images sampled at once.")


def _sample(
    pipe: Pipeline, sampling: SamplingSpec, conditions: dict[str, list[Any]], count: int, seed: int, batch_size: int
) -> Tensor:
    with tqdm(total=count, desc="sampling", unit="image", dynamic_ncols=True) as bar:
        images = []
        for start in range(0, count, batch_size):
            chunk = {key: values[start : start + batch_size] for key, values in conditions.items()}
            seeds = [seed + i for i in range(start, min(count, start + batch_size))]
            images.append(pipe.generate(sampling, chunk, seeds, batch_size))
            bar.update(len(seeds))
    return torch.cat(images)


def _class_field(example: dict[str, Any], fields: list[str]) -> str | None:
    ints = [key for key in fields if isinstance(example.get(key), int)]
    return ints[0] if ints else None


def _measure_ldm(
    spec: EvaluateSpec, ctx: RunContext, pipe: Pipeline, sampling: SamplingSpec, data: Any
) -> tuple[dict[str, float], dict[str, list[float]], Tensor]:
    """(metrics, tables, samples)."""
    fields = sorted({m.reads(m.params) for m in pipe.ldm.conditioners})
    train, val = split_of(data, "train"), split_of(data, "val")
    example = val[0]
    unknown = [key for key in fields if key not in example]
    if unknown:
        raise UserError(f"model.run: {spec.model.run!r} reads {unknown}, which {data.name} does not give")
    texts = [key for key in fields if isinstance(example[key], str)]
    if texts and val.caption_matches(torch.stack([example["image"]]), [example[texts[0]]]) is None:
        raise UserError(
            f"model.run: {spec.model.run!r} is conditioned on text ({texts}) and {data.name} cannot read "
            "its captions back from pixels; no measure applies (use the sample task and look at the grid)"
        )
    label = _class_field(example, fields)
    if fields and label is not None and len(fields) == 1:
        judge = reference_classifier(data, label, ctx.runs_dir, ctx.out)
        labels = torch.arange(judge.classes).repeat_interleave(spec.per_class)
        images = _sample(pipe, sampling, {label: labels.tolist()}, len(labels), spec.seed, spec.batch_size)
        metrics, tables = judges.classes(judge, images, labels, train, val, label)
        return metrics, tables, images
    if not fields:
        images = _sample(pipe, sampling, {}, spec.num_images, spec.seed, spec.batch_size)
        label = _class_field(example, sorted(example))
        if label is None:
            return {"images": len(images)}, {}, images
        judge = reference_classifier(data, label, ctx.runs_dir, ctx.out)
        return judges.distribution(judge, images, train, val), {}, images
    count = min(spec.num_images, len(val))
    examples = [val[i] for i in range(count)]
    conditions = {key: [e[key] for e in examples] for key in fields}
    images = _sample(pipe, sampling, conditions, count, spec.seed, spec.batch_size)
    truth = torch.stack([e["image"] for e in examples])
    metrics: dict[str, float] = {}
    tables: dict[str, list[float]] = {}
    if "lowres" in fields:
        metrics.update(judges.super_resolution(images, truth, torch.stack(conditions["lowres"])))
    for key in texts:
        found, table = judges.captions(val, images, truth, conditions[key])
        metrics.update(found)
        tables.update(table)
    for key in fields:
        maps = conditions[key]
        if isinstance(maps[0], Tensor) and maps[0].ndim == 2 and not maps[0].is_floating_point():
            found, table = judges.layout(images, torch.stack(maps), truth)
            metrics.update(found)
            tables.update(table)
    return metrics, tables, images


def run(spec: EvaluateSpec, ctx: RunContext) -> None:
    """Measure, then write ``eval.json``, the table and TensorBoard."""
    runtime = resolve_runtime(spec.runtime)
    if runtime.devices * runtime.num_nodes > 1:
        raise UserError(
            f"runtime.devices: evaluate runs in one process but {runtime.devices} device(s) x "
            f"{runtime.num_nodes} node(s) were asked for; set devices and num_nodes to 1"
        )
    spec = spec.model_copy(update={"runtime": runtime})
    torch.manual_seed(spec.seed)  # a first stage may sample its posterior: the same figures every time
    trained = run_spec(spec.model, ctx, "model")
    resolved = spec.model_dump(mode="json")
    run_dir = check_run_dir(ctx.runs_dir, spec.name, resolved, resume=False)
    report: dict[str, Any] = {"run": spec.model.run, "weights": spec.model.weights}
    tables: dict[str, list[float]] = {}
    grid = None
    if trained.task == "train_autoencoder":
        first = load_trained(spec.model, ctx, "first_stage", "model")
        fabric = make_fabric(runtime)
        fabric.launch()
        model = fabric.to_device(first.module)
        val = split_of(trained.data, "val")
        metrics = judges.reconstruction(fabric, model, val, spec.batch_size)
        report.update(checkpoint=first.checkpoint.name, split="val")
    elif trained.task == "train_ldm":
        pipe = load_pipeline(spec.model, ctx, "model", runtime.accelerator)
        sampling = spec.sampling or trained.sampling
        pipe.check(sampling, "sampling.steps")
        metrics, tables, images = _measure_ldm(spec, ctx, pipe, sampling, trained.data)
        report.update(
            checkpoint=pipe.checkpoint.name,
            step=pipe.step,
            sampler=sampling.sampler.name,
            sampler_params=sampling.sampler.params.model_dump(mode="json"),
            steps=sampling.steps,
            spacing=sampling.spacing or sampling.sampler.cls.spacing,
            guidance=sampling.guidance,
            seed=spec.seed,
        )
        if "class_accuracy" in metrics:  # the first ten of each class, a row each
            shown = min(10, spec.per_class)
            images = images.unflatten(0, (-1, spec.per_class))[:, :shown].flatten(0, 1)
            grid = make_grid(images, shown)
        else:
            grid = make_grid(images[:100], 10)
    else:
        raise UserError(
            f"model.run: {spec.model.run!r} is a {trained.task} run; evaluate measures "
            "train_ldm and train_autoencoder runs"
        )
    report.update(metrics=metrics, tables=tables)

    open_run_dir(run_dir, resolved, environment_stamp(ctx.registry, 1, [spec.model.run]))
    atomic_write(run_dir.root / "eval.json", json.dumps(report, indent=2).encode())
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(run_dir.tensorboard)) as writer:
        for key, value in metrics.items():
            writer.add_scalar(f"eval/{key}", value, report.get("step", 0))
        if grid is not None:
            save_png(grid, run_dir.root / "grid.png")
            writer.add_image("eval/samples", grid, report.get("step", 0))
    width = max(map(len, metrics))
    lines = [
        f"{key:<{width}}  {value:.4g}" if isinstance(value, float) else f"{key:<{width}}  {value}"
        for key, value in metrics.items()
    ]
    lines += [f"{key}: " + " ".join(f"{v:.3f}" for v in values) for key, values in tables.items()]
    print(
        "\n".join(
            [f"evaluate {spec.model.run!r} ({report['checkpoint']})", *lines, f"written: {run_dir.root / 'eval.json'}"]
        ),
        file=ctx.out,
    )
