"""An inpainting LDM end to end on the stored tiny first stage (tests/fixtures/old_runs/old-ae,
KL f=2, 8 px grey digits): train it on ``masked`` digits, evaluate inside the hole beside a
model of the same config without the mask conditioning (filled by replacement), sample from
files and from the data, and make a manifest line's image again."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core import UserError
from core.masks import masked_input, random_mask
from tasks.api import load
from tasks.ldm import generation
from tasks.ldm.generation import Pipeline

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "old_runs" / "old-ae"
MASKED = {
    "name": "masked",
    "params": {"data": {"name": "digits", "params": {"size": 8, "channels": 1}}, "masks": {"kind": "box"}},
}
INPAINTING = {"name": "inpainting", "params": {"image_channels": 1, "latent_channels": 2, "factor": 2}}


def ldm_spec(name, conditioners):
    return {
        "task": "train_ldm",
        "name": name,
        "seed": 0,
        "runtime": {"accelerator": "cpu"},
        "data": MASKED,
        "first_stage": {"run": "old-ae"},
        "denoiser": {
            "name": "unet",
            "params": {
                "model_channels": 4,
                "channel_mult": [1, 1],
                "num_res_blocks": 1,
                "norm_groups": 2,
                "attention_levels": [],
            },
        },
        "conditioners": conditioners,
        "sampling": {"steps": 4},
        "train": {"max_steps": 4, "batch_size": 8, "checkpoint_every": 4, "optimizer": {"lr": 0.002}},
    }


def run(cli, tmp_path, spec):
    path = tmp_path / f"{spec['name']}.json"
    path.write_text(json.dumps(spec))
    code, out, err = cli(path)
    assert code == 0, err
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A runs folder with old-ae, an inpainting LDM and the same LDM without the mask conditioning."""
    root = tmp_path_factory.mktemp("inpainting")
    shutil.copytree(FIXTURE, root / "runs" / "old-ae")
    return root


def ensure(cli, trained, name, conditioners):
    """Train run ``name`` in ``trained`` unless an earlier test did."""
    if not (trained / "runs" / name).exists():
        run(cli, trained, ldm_spec(name, conditioners))


def test_training_fills_the_unet_input_with_the_masked_latent_and_mask(cli, trained, monkeypatch):
    monkeypatch.chdir(trained)
    ensure(cli, trained, "inpaint-ldm", [INPAINTING])
    spec = json.loads((trained / "runs" / "inpaint-ldm" / "spec.json").read_text())
    assert spec["denoiser"]["params"]["in_channels"] == 2 + 2 + 1
    assert spec["conditioners"][0]["trainable"] is None


def test_evaluate_judges_inside_the_hole_for_the_model_and_for_replacement(cli, trained, monkeypatch):
    monkeypatch.chdir(trained)
    ensure(cli, trained, "inpaint-ldm", [INPAINTING])
    ensure(cli, trained, "plain-ldm", [])
    reports = {}
    for model in ("inpaint-ldm", "plain-ldm"):
        spec = {"task": "evaluate", "name": f"eval-{model}", "model": {"run": model}, "num_images": 6}
        run(cli, trained, {**spec, "runtime": {"accelerator": "cpu"}})
        reports[model] = json.loads((trained / "runs" / f"eval-{model}" / "eval.json").read_text())["metrics"]
    assert reports["inpaint-ldm"]["method"] == "inpainting model"
    assert reports["plain-ldm"]["method"] == "replacement"
    for metrics in reports.values():
        assert metrics["images"] == 6 and 0.1 < metrics["hole_fraction"] < 0.6
        assert metrics["mean_fill_hole_psnr"] == reports["inpaint-ldm"]["mean_fill_hole_psnr"], "the same holes"
        assert np.isfinite(metrics["hole_psnr"]) and -1 <= metrics["hole_ssim"] <= 1
        assert metrics["hole_psnr_gain_over_mean_fill"] == pytest.approx(
            metrics["hole_psnr"] - metrics["mean_fill_hole_psnr"], abs=1e-5
        )


def test_evaluate_starts_replacement_from_the_masked_image_never_the_truth(cli, trained, monkeypatch):
    # A start encoded from the whole image would carry the hole's content into the kept latent
    # cells (the encoder sees past a cell), which the hole's PSNR would then reward.
    monkeypatch.chdir(trained)
    ensure(cli, trained, "plain-ldm", [])
    seen = []
    generate = Pipeline.generate

    def spy(self, sampling, conditions, seeds, batch_size=16, progress=None, init=None):
        seen.append(init)
        return generate(self, sampling, conditions, seeds, batch_size, progress, init)

    monkeypatch.setattr(Pipeline, "generate", spy)
    spec = {"task": "evaluate", "name": "eval-start", "model": {"run": "plain-ldm"}, "num_images": 6}
    run(cli, trained, {**spec, "runtime": {"accelerator": "cpu"}})
    (init,) = seen
    hole = init.masks.expand_as(init.images) == 1
    assert hole.any() and torch.all(init.images[hole] == -1)
    assert (init.images[~hole] > -1).any(), "the kept pixels are the image's"


def test_sampling_from_files_shows_the_model_the_masked_image_and_keeps_the_rest(cli, trained, monkeypatch, tmp_path):
    monkeypatch.chdir(trained)
    ensure(cli, trained, "inpaint-ldm", [INPAINTING])
    pipe = load("inpaint-ldm", runs_dir=trained / "runs")
    assert pipe.inpaints
    images = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(3)) * 2 - 1
    masks = torch.stack([random_mask((8, 8), torch.Generator().manual_seed(s), "box") for s in (1, 2)])
    out = pipe.sample(init=images, masks=masks, seed=5, steps=4)
    assert torch.equal(out * (1 - masks), images * (1 - masks))
    shown = masked_input(images, masks)
    direct = pipe.generate(pipe.sampling(steps=4), {"masked_image": list(shown)}, [5, 6])
    assert torch.equal(out * masks, direct * masks), "the same as giving the masked image as the condition"


def test_hold_kept_holds_an_inpainting_models_kept_cells_and_lets_it_resample(cli, trained, monkeypatch):
    monkeypatch.chdir(trained)
    ensure(cli, trained, "inpaint-ldm", [INPAINTING])
    ensure(cli, trained, "plain-ldm", [])
    pipe = load("inpaint-ldm", runs_dir=trained / "runs")
    images = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(3)) * 2 - 1
    masks = torch.stack([random_mask((8, 8), torch.Generator().manual_seed(s), "box") for s in (1, 2)])
    seen = []
    original = generation.generate

    def spy(ldm, schedule, sampling, conditions, noise, generator=None, start=None):
        out = original(ldm, schedule, sampling, conditions, noise, generator, start)
        seen.append((start, out))
        return out

    monkeypatch.setattr(generation, "generate", spy)
    free = pipe.sample(init=images, masks=masks, seed=5, steps=4)
    held = pipe.sample(init=images, masks=masks, seed=5, steps=4, hold_kept=True)
    (no_start, _), (start, latents) = seen
    assert no_start is None and 0 < start.keep.mean() < 1
    assert (latents - start.latents).mul(start.keep).abs().max() <= 1e-6
    assert (latents - start.latents).mul(1 - start.keep).abs().max() > 1e-2, "the hole is generated"
    assert torch.equal(held * (1 - masks), images * (1 - masks)) and not torch.equal(held, free)
    plain = load("plain-ldm", runs_dir=trained / "runs")
    with pytest.raises(UserError, match="sampling.hold_kept: true holds the kept cells of a model that reads"):
        plain.sample(init=images, masks=masks, steps=4, hold_kept=True)
    with pytest.raises(UserError, match="sampling.hold_kept"):
        pipe.sample({"masked_image": list(masked_input(images, masks))}, steps=4, hold_kept=True)
    with pytest.raises(UserError, match="sampling.resample: 3 applies to inpainting by replacement"):
        pipe.sample(init=images, masks=masks, steps=4, resample=3)
    resampled = pipe.sample(init=images, masks=masks, seed=5, steps=4, hold_kept=True, resample=2)
    assert torch.equal(resampled * (1 - masks), held * (1 - masks)) and not torch.equal(resampled, held)


def manifest(run_dir):
    return [json.loads(line) for line in (run_dir / "manifest.jsonl").read_text().splitlines()]


def save(path, array):
    Image.fromarray(array.astype(np.uint8), mode="L").save(path)
    return str(path)


def test_a_manifest_line_of_an_inpainting_model_makes_its_image_again(cli, trained, monkeypatch, tmp_path):
    monkeypatch.chdir(trained)
    ensure(cli, trained, "inpaint-ldm", [INPAINTING])
    image = save(tmp_path / "i.png", np.arange(64).reshape(8, 8) * 4)
    mask = save(tmp_path / "m.png", (random_mask((8, 8), torch.Generator().manual_seed(4), "box")[0] * 255).numpy())
    spec = {
        "task": "sample",
        "name": "inpaint-files",
        "model": {"run": "inpaint-ldm"},
        "init": {"images": [image, image], "masks": {"files": [mask, mask]}},
        "seed": 9,
        "sampling": {"steps": 4},
    }
    run(cli, trained, spec)
    lines = manifest(trained / "runs" / "inpaint-files")
    assert [line["mask"] for line in lines] == [mask, mask] and lines[1]["seed"] == 10
    again = {**spec, "name": "again", "seed": 10, "init": {"images": [image], "masks": {"files": [mask]}}}
    run(cli, trained, again)
    made = (trained / "runs" / "again" / "images" / "00000.png").read_bytes()
    assert made == (trained / "runs" / "inpaint-files" / lines[1]["file"]).read_bytes()

    from_data = {**spec, "name": "inpaint-data", "data": MASKED, "data_indices": [2, 5]}
    del from_data["init"]
    run(cli, trained, from_data)
    lines = manifest(trained / "runs" / "inpaint-data")
    assert lines[0]["condition"] == {"data_index": 2, "masked_image": "masked[2].masked_image"}
