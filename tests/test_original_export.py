"""`export_checkpoint` in the original layout (a `.safetensors` under the original's names and
its YAML, as Stable Diffusion v1 files are released): diffusers' `from_single_file` of it, given
the YAML and nothing else (offline), gives our run's UNet and autoencoder outputs, and
`import_checkpoint` of it gives the run back. The run is tests/test_import_ldm.py's imported
class-conditional LDM (KL first stage, spatial transformers)."""

import json

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from core import Conditioning
from tasks.api import load
from tests.test_import_ldm import write as write_original_ldm
from tests.test_original_unet import example_inputs

TOLERANCE = 1e-4


def spec(task, name, **fields):
    return {"spec_version": 1, "task": task, "name": name, "runtime": {"accelerator": "cpu"}, **fields}


@pytest.fixture
def exported(cli, tmp_path):
    """Run ``cin`` imported from an original checkpoint, then exported as ``out``."""
    write_original_ldm(tmp_path)
    assert cli("import.json")[0] == 0
    (tmp_path / "export.json").write_text(
        json.dumps(spec("export_checkpoint", "out", model={"run": "cin"}, format="original"))
    )
    code, out, err = cli("export.json")
    assert code == 0, err
    return tmp_path / "runs" / "out"


def test_diffusers_reads_the_exported_file_with_its_yaml(exported, tmp_path):
    ours = load("cin", runs_dir=tmp_path / "runs")
    file, config = str(exported / "model.safetensors"), str(exported / "model.yaml")
    unet = UNet2DConditionModel.from_single_file(file, original_config=config, local_files_only=True).eval()
    vae = AutoencoderKL.from_single_file(file, original_config=config, local_files_only=True).eval()
    x, t, context = example_inputs()
    images = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        eps = ours.ldm.denoiser(x, t, Conditioning(context=context))
        assert (unet(x, t, encoder_hidden_states=context).sample - eps).abs().max() <= TOLERANCE * eps.abs().max()
        decoded = ours.space.first_stage.decode(x[:1] * ours.space.std + ours.space.mean)
        assert (vae.decode(x[:1]).sample - decoded).abs().max() <= TOLERANCE * decoded.abs().max()
        latent = (ours.space.first_stage.mode(images) - ours.space.mean) / ours.space.std
        assert (vae.encode(images).latent_dist.mode() - latent).abs().max() <= TOLERANCE * latent.abs().max()
    assert vae.config.scaling_factor == 1.0


def test_the_exported_file_imports_back_to_the_same_model(cli, exported, tmp_path):
    (tmp_path / "again.json").write_text(
        json.dumps(
            spec(
                "import_checkpoint",
                "again",
                checkpoint=str(exported / "model.safetensors"),
                original_config=str(exported / "model.yaml"),
            )
        )
    )
    code, out, err = cli("again.json")
    assert code == 0, err
    assert json.loads(out.splitlines()[-1])["weights"] == "raw"  # the YAML says use_ema false
    first, again = load("cin", runs_dir=tmp_path / "runs"), load("again", runs_dir=tmp_path / "runs")
    x, t, context = example_inputs()
    cond = Conditioning(context=context)
    with torch.no_grad():
        torch.testing.assert_close(again.ldm.denoiser(x, t, cond), first.ldm.denoiser(x, t, cond))
        torch.testing.assert_close(again.space.decode(x), first.space.decode(x), rtol=1e-5, atol=1e-5)
        images = first.sample({"label": [3, 7]}, steps=3, guidance=2.0, seed=0)
        torch.testing.assert_close(again.sample({"label": [3, 7]}, steps=3, guidance=2.0, seed=0), images)
