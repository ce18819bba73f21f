"""Image-to-image and inpainting from the `sample` task and the Python API, on the stored tiny
runs (tests/fixtures/old_runs: ``old-ldm``, a class-conditional LDM on 8 px grey digits, on
``old-ae``, a KL first stage with f=2). Masks: 1 (white) is where to generate."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from core.masks import RandomMasks, latent_keep_mask, random_mask
from tasks.api import load
from tasks.ldm.generation import LatentStart, generate


def digits(count):
    """``count`` grey 8 px images (1, 8, 8) in [-1, 1], made by code."""
    g = torch.Generator().manual_seed(7)
    return torch.rand(count, 1, 8, 8, generator=g) * 2 - 1


def save(tmp_path, name, image):
    """A PNG of an image (1, H, W) in [-1, 1] (or a mask in [0, 1] with ``mask``)."""
    path = tmp_path / name
    Image.fromarray(((image[0].numpy() + 1) * 127.5).round().astype(np.uint8), mode="L").save(path)
    return path


def save_mask(tmp_path, name, mask):
    path = tmp_path / name
    Image.fromarray((mask[0].numpy() * 255).astype(np.uint8), mode="L").save(path)
    return path


def test_strength_0_gives_the_init_image_through_the_first_stage(old_runs):
    pipe = load("old-ldm", runs_dir=old_runs)
    images = digits(2)
    out = pipe.sample({"label": [1, 2]}, init=images, strength=0.0, steps=4, seed=3)
    with torch.random.fork_rng():
        expected = []
        for i, image in enumerate(images):
            torch.manual_seed(3 + i)  # each init is encoded under its own image's seed
            expected.append(pipe.space.decode(pipe.space.encode(image[None])))
    assert torch.allclose(out, torch.cat(expected), atol=1e-6)


def test_replacement_keeps_the_init_latent_outside_the_hole(old_runs):
    pipe = load("old-ldm", runs_dir=old_runs)
    torch.manual_seed(0)
    init = torch.randn(2, *pipe.latent_shape)
    hole = torch.stack([random_mask((8, 8), torch.Generator().manual_seed(s), "box") for s in (0, 1)])
    keep = latent_keep_mask(hole, 2)
    assert 0 < keep.mean() < 1
    noise = torch.randn(2, *pipe.latent_shape)
    out = generate(
        pipe.ldm,
        pipe.schedule,
        pipe.sampling(steps=5),
        {"label": torch.tensor([3, 4])},
        noise,
        start=LatentStart(init, 1.0, keep),
    )
    assert (out - init).mul(keep).abs().max() <= 1e-6
    assert (out - init).mul(1 - keep).abs().max() > 1e-2, "the hole is generated"


def test_inpainted_images_keep_the_pixels_outside_the_hole(old_runs):
    pipe = load("old-ldm", runs_dir=old_runs)
    images = digits(2)
    masks = torch.stack([random_mask((8, 8), torch.Generator().manual_seed(s), "box") for s in (5, 6)])
    out = pipe.sample({"label": [1, 2]}, init=images, masks=masks, steps=4, seed=0)
    assert torch.equal(out * (1 - masks), images * (1 - masks))
    assert not torch.allclose(out * masks, images * masks)


def sample_spec(name, **extra):
    return {"task": "sample", "name": name, "model": {"run": "old-ldm"}, "sampling": {"steps": 4}, **extra}


def test_each_manifest_line_of_an_inpainting_sample_makes_its_image_again(cli, old_runs, tmp_path):
    files = [str(save(tmp_path, f"init{i}.png", image)) for i, image in enumerate(digits(2))]
    init = {"images": files, "strength": 0.8, "masks": {"generate": {"kind": "mixed"}}}
    spec = sample_spec("inpaint", conditions={"label": [4, 7]}, repeat=2, init=init, seed=11)
    (tmp_path / "s.json").write_text(json.dumps(spec))
    code, _, err = cli(tmp_path / "s.json")
    assert code == 0, err
    lines = [json.loads(line) for line in (old_runs / "inpaint" / "manifest.jsonl").read_text().splitlines()]
    assert [line["seed"] for line in lines] == [11, 12, 13, 14]
    assert [line["init"] for line in lines] == [files[0], files[0], files[1], files[1]]
    assert lines[0]["mask"] == {"generate": RandomMasks().model_dump(mode="json")} and lines[0]["strength"] == 0.8
    line = lines[3]
    again = sample_spec(
        "again",
        conditions={"label": [line["condition"]["label"]]},
        seed=line["seed"],
        init={"images": [line["init"]], "strength": line["strength"], "masks": line["mask"]},
        sampling={
            "sampler": {"name": line["sampler"], "params": line["sampler_params"]},
            "steps": line["steps"],
            "spacing": line["spacing"],
            "guidance": line["guidance"],
        },
    )
    (tmp_path / "again.json").write_text(json.dumps(again))
    code, _, err = cli(tmp_path / "again.json")
    assert code == 0, err
    again = (old_runs / "again" / "images" / "00000.png").read_bytes()
    assert again == (old_runs / "inpaint" / line["file"]).read_bytes()


def test_init_and_masks_from_the_data(cli, old_runs, tmp_path):
    data = json.loads((old_runs / "old-ldm" / "spec.json").read_text())["data"]
    masks = {"files": [str(save_mask(tmp_path, "m.png", random_mask((8, 8), torch.Generator(), "box")))] * 2}
    spec = sample_spec("from-data", data=data, data_indices=[3, 9], init={"images": "data", "masks": masks})
    (tmp_path / "s.json").write_text(json.dumps(spec))
    code, _, err = cli(tmp_path / "s.json")
    assert code == 0, err
    lines = [json.loads(line) for line in (old_runs / "from-data" / "manifest.jsonl").read_text().splitlines()]
    assert [line["init"] for line in lines] == ["digits[3].image", "digits[9].image"]
    assert lines[0]["condition"]["data_index"] == 3 and lines[0]["mask"] == masks["files"][0]


@pytest.mark.parametrize(
    ("init", "message"),
    [
        ({"images": ["big.png"]}, "init.images.0: "),
        ({"images": ["rgb.png"]}, "is a RGB image but the model takes 1-channel ones"),
        ({"images": ["ok.png"], "masks": {"files": ["big.png"]}}, "init.masks.files.0: "),
        ({"images": ["ok.png", "ok.png"]}, "init.images: 2 given for 1 entries"),
        ({"images": ["ok.png"], "strength": 1.5}, "init.strength: Input should be less than or equal to 1"),
        ({"images": "data"}, 'init.images "data" and init.masks.field take the examples of data_indices'),
        ({"images": ["ok.png"], "masks": {"generate": {"coverage": [0.6, 0.2]}}}, "coverage [0.6, 0.2] is not a range"),
    ],
)
def test_bad_init_is_one_clear_error_and_writes_nothing(cli, old_runs, tmp_path, init, message):
    save(tmp_path, "ok.png", digits(1)[0])
    Image.new("L", (16, 8)).save(tmp_path / "big.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "rgb.png")
    (tmp_path / "s.json").write_text(json.dumps(sample_spec("bad", conditions={"label": [1]}, init=init)))
    code, _, err = cli(tmp_path / "s.json")
    assert code == 2, err
    assert message in err and err.count("\n") == 1, err
    assert not (old_runs / "bad").exists()


def test_resampling_without_replacement_is_one_clear_error_and_writes_nothing(cli, old_runs, tmp_path):
    save(tmp_path, "ok.png", digits(1)[0])
    spec = sample_spec("bad", conditions={"label": [1]}, init={"images": [str(tmp_path / "ok.png")]})
    spec["sampling"]["resample"] = 2
    (tmp_path / "s.json").write_text(json.dumps(spec))
    code, _, err = cli(tmp_path / "s.json")
    assert code == 2, err
    assert "sampling.resample: 2 applies to inpainting by replacement" in err and err.count("\n") == 1, err
    assert not (old_runs / "bad").exists()


def test_resampled_inpainting_keeps_the_kept_pixels_and_changes_the_hole(old_runs):
    pipe = load("old-ldm", runs_dir=old_runs)
    images = digits(2)
    masks = torch.stack([random_mask((8, 8), torch.Generator().manual_seed(s), "box") for s in (5, 6)])
    once = pipe.sample({"label": [1, 2]}, init=images, masks=masks, steps=4, seed=0)
    again = pipe.sample({"label": [1, 2]}, init=images, masks=masks, steps=4, seed=0, resample=3)
    assert torch.equal(again * (1 - masks), images * (1 - masks))
    assert (again - once).mul(masks).abs().max() > 1e-2
