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
  (``Dataset.caption_matches``: ``shapes`` can); layouts of boxes by whether each asked
  object shows in its box (``Dataset.boxes_found``: ``shapes`` can);
- inpainting (validation examples with a ``mask`` field, as the ``masked`` dataset gives):
  the holes filled by the model's ``inpainting`` conditioner, or by replacement for a model
  without one, judged by PSNR and SSIM inside the hole beside a mean-colour fill;

Writes ``eval.json`` in its own run directory, a table on the terminal and TensorBoard scalars
with a grid of samples.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from lightning_fabric import Fabric
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from core import UserError
from core.masks import MASKED_IMAGE, binarise, masked_input
from tasks.engine.fabric import make_fabric
from tasks.evaluation import judges
from tasks.evaluation.reference_classifier import reference_classifier, split_of
from tasks.evaluation.spec import EvaluateSpec
from tasks.images import make_grid, save_png
from tasks.ldm import views
from tasks.ldm.generation import Pipeline, load_pipeline
from tasks.ldm.specs import SamplingSpec
from tasks.runs.context import RunContext
from tasks.runs.oneshot import OneShotRun
from tasks.runs.rundir import RunDir, atomic_write
from tasks.runs.trained import holding, load_trained, run_spec


def _sample(
    pipe: Pipeline, sampling: SamplingSpec, conditions: dict[str, list[Any]], count: int, seed: int, batch_size: int
) -> Tensor:
    with tqdm(total=count, desc="sampling", unit="image", dynamic_ncols=True) as bar:
        return pipe.generate(sampling, conditions, [seed + i for i in range(count)], batch_size, bar.update)


def _class_field(example: dict[str, Any], fields: list[str]) -> str | None:
    ints = [key for key in fields if isinstance(example.get(key), int)]
    return ints[0] if ints else None


def _measure_ldm(
    spec: EvaluateSpec, ctx: RunContext, pipe: Pipeline, sampling: SamplingSpec, data: Any
) -> tuple[dict[str, float], dict[str, list[float]], Tensor]:
    """(metrics, tables, a grid of samples: showing what each was asked for where it has a picture)."""
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
    layouts = [key for key in fields if _is_layout(example[key])]
    if layouts and val.boxes_found(example["image"][None], example[layouts[0]][None]) is None:
        raise UserError(
            f"model.run: {spec.model.run!r} is conditioned on layouts ({layouts}) and {data.name} cannot read "
            "objects back from pixels; no measure applies (use the sample task and look at the grid)"
        )
    if "mask" in example:
        return _measure_inpainting(spec, pipe, sampling, val, fields)
    label = _class_field(example, fields)
    if fields and label is not None and len(fields) == 1:
        judge = reference_classifier(data, label, ctx.runs_dir, ctx.out)
        labels = torch.arange(judge.classes).repeat_interleave(spec.per_class)
        images = _sample(pipe, sampling, {label: labels.tolist()}, len(labels), spec.seed, spec.batch_size)
        metrics, tables = judges.classes(judge, images, labels, train, val, label)
        shown = min(10, spec.per_class)  # the first ten of each class, a row each
        return metrics, tables, make_grid(images.unflatten(0, (-1, spec.per_class))[:, :shown].flatten(0, 1), shown)
    if not fields:
        images = _sample(pipe, sampling, {}, spec.num_images, spec.seed, spec.batch_size)
        label = _class_field(example, sorted(example))
        if label is None:
            return {"images": len(images)}, {}, make_grid(images[:100], 10)
        judge = reference_classifier(data, label, ctx.runs_dir, ctx.out)
        return judges.distribution(judge, images, train, val), {}, make_grid(images[:100], 10)
    return _measure_from_data(spec, pipe, sampling, val, fields)


def _is_layout(value: Any) -> bool:
    """Whether a field's value is a layout of boxes: rows (class, x0, y0, x1, y1)."""
    return isinstance(value, Tensor) and value.ndim == 2 and value.shape[-1] == 5 and value.is_floating_point()


def _measure_from_data(
    spec: EvaluateSpec, pipe: Pipeline, sampling: SamplingSpec, val: Any, fields: list[str]
) -> tuple[dict[str, float], dict[str, list[float]], Tensor]:
    """Samples from the first ``num_images`` validation examples' conditions, each judged by what
    it was asked: (metrics, tables, a grid of samples beside their conditions)."""
    count = min(spec.num_images, len(val))
    examples = [val[i] for i in range(count)]
    conditions = {key: [e[key] for e in examples] for key in fields}
    images = _sample(pipe, sampling, conditions, count, spec.seed, spec.batch_size)
    truth = torch.stack([e["image"] for e in examples])
    metrics: dict[str, float] = {}
    tables: dict[str, list[float]] = {}
    if "lowres" in fields:
        metrics.update(judges.super_resolution(images, truth, torch.stack(conditions["lowres"])))
    shown = views.pairs(
        images[:50], [{key: values[i] for key, values in conditions.items()} for i in range(min(50, count))]
    )
    for key in fields:
        values = conditions[key]
        if isinstance(values[0], str):
            found, table = judges.captions(val, images, truth, values)
        elif isinstance(values[0], Tensor) and values[0].ndim == 2 and not values[0].is_floating_point():
            found, table = judges.layout(images, torch.stack(values), truth)
        elif _is_layout(values[0]):
            found, table = judges.boxes(val, images, truth, torch.stack(values)), {}
        else:
            continue
        metrics.update(found)
        tables.update(table)
    return metrics, tables, shown


def _measure_inpainting(
    spec: EvaluateSpec, pipe: Pipeline, sampling: SamplingSpec, val: Any, fields: list[str]
) -> tuple[dict[str, float], dict[str, list[float]], Tensor]:
    """Fill the holes of the first ``num_images`` validation examples (their ``mask`` field):
    from the model's own view of them where it reads ``masked_image`` (an inpainting model),
    else by replacement; the kept pixels are the truth's either way (see
    :meth:`Pipeline.generate`). Every method starts from the masked image, never the truth:
    a replacement start encoded from the whole image carries the hole's content into the kept
    latent cells through the encoder's receptive field (1.2 dB of hole PSNR on shapes).
    (metrics, no tables, a grid of results beside their masked inputs)."""
    count = min(spec.num_images, len(val))
    examples = [val[i] for i in range(count)]
    conditions = {key: [e[key] for e in examples] for key in fields}
    truth = torch.stack([e["image"] for e in examples])
    masks = torch.stack([binarise(e["mask"].float()) for e in examples])
    shown = masked_input(truth, masks)
    init = pipe.init(shown[:, :-1], 1.0, masks, count, "data.image")
    pipe.check_inpainting(sampling, init)
    seeds = [spec.seed + i for i in range(count)]
    with tqdm(total=count, desc="inpainting", unit="image", dynamic_ncols=True) as bar:
        images = pipe.generate(sampling, conditions, seeds, spec.batch_size, bar.update, init)
    metrics: dict[str, Any] = {"method": "inpainting model" if pipe.inpaints else "replacement"}
    metrics.update(judges.inpainting(images, truth, masks))
    return metrics, {}, views.pairs(images[:50], [{MASKED_IMAGE: m} for m in shown[:50]])


def _first_stage_report(spec: EvaluateSpec, ctx: RunContext, data: Any) -> tuple[dict[str, Any], list, None]:
    """(report, checkpoints read, no grid) of a run holding a first stage: its reconstructions of
    ``data``'s validation split."""
    first = load_trained(spec.model, ctx, "model", None, "first_stage")
    fabric = make_fabric(spec.runtime)
    fabric.launch()
    model = fabric.to_device(first.module)
    metrics = judges.reconstruction(fabric, model, split_of(data, "val"), spec.batch_size)
    report = {"checkpoint": first.checkpoint.name, "split": "val", "metrics": metrics, "tables": {}}
    return report, [first.checkpoint], None


def _ldm_report(
    spec: EvaluateSpec, ctx: RunContext, trained: Any, data: Any, fabric: Fabric
) -> tuple[dict[str, Any], list, Tensor]:
    """(report, checkpoints read, grid of samples) of a run holding an LDM, measured on
    ``data``; the samples shared among ``fabric``'s processes."""
    pipe = load_pipeline(spec.model, ctx, "model", fabric=fabric)
    sampling = spec.sampling or trained.sampling
    pipe.check(sampling)
    metrics, tables, grid = _measure_ldm(spec, ctx, pipe, sampling, data)
    report = {"checkpoint": pipe.checkpoint.name, "step": pipe.step, **sampling.record(pipe.device), "seed": spec.seed}
    report.update(metrics=metrics, tables=tables)
    return report, list(pipe.reads), grid


def _write(run_dir: RunDir, report: dict[str, Any], grid: Tensor | None, out: Any) -> None:
    """``eval.json``, TensorBoard scalars and grid, and the table on the terminal."""
    root, metrics, step = run_dir.root, report["metrics"], report.get("step", 0)
    atomic_write(root / "eval.json", json.dumps(report, indent=2).encode())
    with SummaryWriter(str(run_dir.tensorboard)) as writer:
        for key, value in metrics.items():
            if isinstance(value, (int, float)):
                writer.add_scalar(f"eval/{key}", value, step)
        if grid is not None:
            save_png(grid, root / "grid.png")
            writer.add_image("eval/samples", grid, step)
    width = max(map(len, metrics))
    lines = [
        f"{key:<{width}}  {value:.4g}" if isinstance(value, float) else f"{key:<{width}}  {value}"
        for key, value in metrics.items()
    ]
    lines += [f"{key}: " + " ".join(f"{v:.3f}" for v in values) for key, values in report["tables"].items()]
    title = f"evaluate {report['run']!r} ({report['checkpoint']})"
    print("\n".join([title, *lines, f"written: {root / 'eval.json'}"]), file=out)


def run(spec: EvaluateSpec, ctx: RunContext) -> None:
    """Measure, then write ``eval.json``, the table and TensorBoard. An LDM's samples are shared
    among ``runtime.devices`` processes; each then holds them all and measures them, and the
    first writes."""
    checked = OneShotRun.check(spec, ctx)
    spec = checked.spec
    torch.manual_seed(spec.seed)  # a first stage may sample its posterior: the same figures every time
    trained = run_spec(spec.model, ctx, "model")
    holds = trained.trained_components() if hasattr(trained, "trained_components") else {}
    processes = spec.runtime.devices * spec.runtime.num_nodes
    if "ldm" not in holds:
        holding(spec.model, ctx, "model", "first_stage")  # refuses a run that holds neither
        if processes > 1:
            raise UserError(
                f"runtime.devices: a first stage is evaluated in one process but {spec.runtime.devices} device(s) x "
                f"{spec.runtime.num_nodes} node(s) were asked for; set devices and num_nodes to 1"
            )
    data = spec.data or trained.data
    if data is None:
        raise UserError(
            f"data: {spec.model.run!r} ({trained.task}) was trained on no dataset of ours; give data, the examples "
            "to measure it on (their validation split)"
        )
    if "ldm" in holds:
        fabric = make_fabric(spec.runtime)
        fabric.launch()
        measured, reads, grid = _ldm_report(spec, ctx, trained, data, fabric)
        if not fabric.is_global_zero:
            return
    else:
        measured, reads, grid = _first_stage_report(spec, ctx, data)
    report = {"run": spec.model.run, "weights": spec.model.weights, **measured}
    checked.open(ctx, reads)
    _write(checked.dir, report, grid, ctx.out)
