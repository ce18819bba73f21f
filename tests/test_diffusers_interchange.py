"""diffusers folders in and out: a random-weight diffusers pipeline saved with `save_pretrained`
is imported by `import_checkpoint` and samples what diffusers' own pipeline samples from the
same noise; `export_checkpoint` of a run writes a folder whose models diffusers'
`from_pretrained` loads and which give our run's outputs; what cannot go is refused in one
sentence, exit 2, nothing written."""

import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, LDMPipeline, UNet2DModel, VQModel
from safetensors import safe_open
from safetensors.torch import save_file

from tasks.api import load
from tests.test_import_ldm import write as write_original_ldm

SCHEDULE = {"beta_schedule": "scaled_linear", "beta_start": 0.0015, "beta_end": 0.0195}


def randomized(module, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in module.parameters():
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
    return module.eval()


def scheduler():
    return DDIMScheduler(**SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def ldm_pipeline():
    """An unconditional LDM as diffusers holds it: UNet2DModel on a VQModel's 8 px latents."""
    unet = UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        attention_head_dim=8,
    )
    vqvae = VQModel(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=3,
        num_vq_embeddings=32,
        norm_num_groups=4,
        sample_size=16,
        scaling_factor=0.5,
    )
    return LDMPipeline(vqvae=randomized(vqvae, 1), unet=randomized(unet, 2), scheduler=scheduler())


def spec(task, name, **fields):
    return {"spec_version": 1, "task": task, "name": name, "runtime": {"accelerator": "cpu"}, **fields}


def write(tmp_path, filename, value):
    (tmp_path / filename).write_text(json.dumps(value))
    return filename


@pytest.fixture
def imported_ldm(cli, tmp_path):
    """The diffusers LDM pipeline, saved, and imported here as run ``ldm``."""
    pipe = ldm_pipeline()
    pipe.save_pretrained(tmp_path / "ldm-pipeline")
    code, _, err = cli(write(tmp_path, "import.json", spec("import_checkpoint", "ldm", checkpoint="ldm-pipeline")))
    assert code == 0, err
    return pipe


def test_an_imported_ldm_pipeline_samples_what_diffusers_samples(imported_ldm, tmp_path):
    ours = load("ldm", runs_dir=tmp_path / "runs")
    assert ours.image_size == (16, 16) and ours.ldm.prediction == "eps"
    torch.testing.assert_close(ours.space.std.flatten(), torch.full((3,), 2.0))
    images = ours.sample({}, num_images=1, sampler="ddim", steps=10, seed=4)
    generator = torch.Generator().manual_seed(4)
    theirs = imported_ldm(batch_size=1, generator=generator, num_inference_steps=10, output_type="np")
    expected = torch.from_numpy(np.asarray(theirs.images)).permute(0, 3, 1, 2)
    assert ((images + 1) / 2).clamp(0, 1).sub(expected).abs().max() < 1e-3


def test_an_exported_run_loads_in_diffusers_with_the_same_outputs(cli, imported_ldm, tmp_path):
    code, out, err = cli(write(tmp_path, "export.json", spec("export_checkpoint", "out", model={"run": "ldm"})))
    assert code == 0, err
    assert json.loads(out.splitlines()[-1])["pipeline"] == "LDMPipeline"
    folder = tmp_path / "runs" / "out" / "diffusers"
    again = LDMPipeline.from_pretrained(folder)
    ours = load("ldm", runs_dir=tmp_path / "runs")
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3, 700])
    with torch.no_grad():
        from core import Conditioning

        eps = ours.ldm.denoiser(x, t, Conditioning())
        assert (again.unet(x, t).sample - eps).abs().max() <= 1e-4 * eps.abs().max()
        raw = x * ours.space.std + ours.space.mean
        images = ours.space.first_stage.decode(raw)
        assert (again.vqvae.decode(raw).sample - images).abs().max() <= 1e-4 * images.abs().max()
    assert again.vqvae.config.scaling_factor == 0.5


def test_an_export_of_what_diffusers_cannot_express_is_refused_and_writes_nothing(cli, old_runs, tmp_path):
    """The stored tiny runs' UNet has its own attention norm epsilon."""
    code, _, err = cli(write(tmp_path, "export.json", spec("export_checkpoint", "out", model={"run": "old-ldm"})))
    assert code == 2
    assert (
        "model.run 'old-ldm' cannot leave as a diffusers folder: its denoiser: unet attention_norm_eps 1e-05: "
        "diffusers' UNet2DConditionModel has 1e-06 (train with it to export)" in err
    )
    assert not (tmp_path / "runs" / "out").exists()


def test_a_folder_that_is_no_diffusers_model_is_one_sentence(cli, tmp_path):
    (tmp_path / "empty").mkdir()
    code, _, err = cli(write(tmp_path, "import.json", spec("import_checkpoint", "x", checkpoint="empty")))
    assert code == 2 and "is not a diffusers model folder (no config.json)" in err
    (tmp_path / "empty" / "config.json").write_text("not json")
    (tmp_path / "empty" / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    code, _, err = cli("import.json")
    assert code == 2 and "empty/config.json is not valid JSON" in err and "Traceback" not in err
    assert not (tmp_path / "runs" / "x").exists()


def test_an_autoencoder_folder_alone_is_a_latent_space_and_leaves_again(cli, tmp_path):
    vae = randomized(
        AutoencoderKL(
            block_out_channels=(8, 16),
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            latent_channels=4,
            norm_num_groups=4,
            scaling_factor=0.25,
        ),
        3,
    )
    vae.save_pretrained(tmp_path / "vae")
    code, out, err = cli(write(tmp_path, "import.json", spec("import_checkpoint", "vae", checkpoint="vae")))
    assert code == 0, err
    assert json.loads(out.splitlines()[-1])["scale_factor"] == pytest.approx(0.25)
    export = spec("export_checkpoint", "half", model={"run": "vae"}, dtype="float16")
    code, _, err = cli(write(tmp_path, "export.json", export))
    assert code == 0, err
    folder = tmp_path / "runs" / "half" / "diffusers"
    with safe_open(str(folder / "diffusion_pytorch_model.safetensors"), "pt") as handle:
        assert {handle.get_slice(key).get_dtype() for key in handle.keys()} == {"F16"}
    again = AutoencoderKL.from_pretrained(folder, torch_dtype=torch.float32).eval()
    assert again.config.scaling_factor == pytest.approx(0.25) and again.config.latents_std == [4.0] * 4
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = vae.decode(z).sample
        assert (again.decode(z).sample - expected).abs().max() <= 2e-3 * expected.abs().max()  # float16 weights


def test_a_file_of_another_layout_is_named(cli, tmp_path):
    """An SDXL file given with an SD v1-style config: refused, saying what it looks like."""
    write_original_ldm(tmp_path)
    save_file(
        {"conditioner.embedders.0.weight": torch.zeros(2), "model.diffusion_model.x": torch.zeros(2)},
        str(tmp_path / "xl.safetensors"),
    )
    fields = {"checkpoint": "xl.safetensors", "original_config": "config.yaml"}
    code, _, err = cli(write(tmp_path, "xl.json", spec("import_checkpoint", "xl", **fields)))
    assert code == 2
    assert "has no tensors under 'first_stage_model.' (its names look like an SDXL checkpoint)" in err
