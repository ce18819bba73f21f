"""`train_ldm`, the latent cache, the `sample` task and the Python API, on tiny models.

One tiny KL autoencoder (8 px digits, f=2, 2 latent channels) is trained once for the module;
the LDMs on it have about 60k parameters.
"""

import copy
import json

import numpy as np
import pytest
import torch
from PIL import Image

from core import Conditioning, load_registry
from tasks.api import load
from tasks.ldm.model import ConditionerUse, LatentDiffusion
from tasks.run import main
from tests.conftest import TINY_AE, TINY_RUN

UNET = {
    "name": "unet",
    "params": {
        "model_channels": 8,
        "channel_mult": [1, 2],
        "num_res_blocks": 1,
        "attention_levels": [1],
        "norm_groups": 4,
        "num_heads": 2,
    },
}
LDM = {
    "task": "train_ldm",
    "name": "ldm",
    **TINY_RUN,
    "first_stage": {"run": "ae"},
    "denoiser": UNET,
    "conditioners": [{"name": "class_label", "params": {"num_classes": 10, "dim": 16}, "drop_rate": 0.2}],
    "sampling": {"sampler": {"name": "dpmpp_2m"}, "steps": 8},
    "train": {
        "max_steps": 300,
        "batch_size": 32,
        "log_every": 20,
        "checkpoint_every": 300,
        "optimizer": {"lr": 0.002, "warmup_steps": 20},
        "ema": {"decay": 0.99},
    },
}


def run(tmp_path, spec, *extra):
    """Run a spec in process from ``tmp_path``; (exit code, stdout, stderr) as the CLI gives them."""
    path = tmp_path / f"{spec['name']}.json"
    path.write_text(json.dumps(spec))
    return main([str(path), "--runs-dir", str(tmp_path / "runs"), *map(str, extra)])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A runs directory with the tiny autoencoder ("ae") and a class-conditional LDM ("ldm") on it."""
    tmp = tmp_path_factory.mktemp("ldm")
    ae = {
        **copy.deepcopy(TINY_AE),
        "train": {**TINY_AE["train"], "max_steps": 40, "log_every": 10, "checkpoint_every": 40},
    }
    assert run(tmp, ae) == 0
    assert run(tmp, LDM) == 0
    return tmp


def losses(run_dir):
    return [
        row["loss/ldm"]
        for row in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
        if "loss/ldm" in row
    ]


def test_the_loss_falls_clearly_within_a_few_hundred_steps(runs):
    values = losses(runs / "runs" / "ldm")
    assert len(values) == 15
    first, last = np.mean(values[:3]), np.mean(values[-3:])
    assert last < 0.6 * first, values


def test_the_unet_sizes_are_filled_in_and_recorded(runs):
    spec = json.loads((runs / "runs" / "ldm" / "spec.json").read_text())
    params = spec["denoiser"]["params"]
    assert (params["in_channels"], params["out_channels"], params["context_dim"], params["vector_dim"]) == (
        2,
        2,
        16,
        None,
    )
    stamp = json.loads((runs / "runs" / "ldm" / "environment.json").read_text())["starts"][-1]
    assert any("ae" in read and "step-00000040" in read for read in stamp["reads"]), stamp["reads"]


def test_the_latent_cache_is_reused_and_rebuilt_when_the_first_stage_changes(runs, tmp_path, capsys):
    caches = sorted((runs / "runs" / ".latent-cache").iterdir())
    assert len(caches) == 1
    short = {**LDM, "train": {**LDM["train"], "max_steps": 2, "log_every": 1, "checkpoint_every": 2}}
    assert run(runs, {**short, "name": "ldm-again"}) == 0
    assert "latent cache reused" in capsys.readouterr().out
    other_ae = {**copy.deepcopy(TINY_AE), "name": "ae-other", "seed": 1}
    assert run(runs, other_ae) == 0
    assert run(runs, {**short, "name": "ldm-other", "first_stage": {"run": "ae-other"}}) == 0
    assert "latent cache written" in capsys.readouterr().out
    assert len(list((runs / "runs" / ".latent-cache").iterdir())) == 2


def test_the_cache_holds_the_first_stages_moments(runs):
    from core.specs import DatasetSpec
    from tasks.autoencoder.spec import TrainAutoencoderSpec
    from tasks.cli.catalog import context
    from tasks.ldm.cache import cache_key
    from tasks.runs.spec import RunRef
    from tasks.runs.trained import load_trained

    registry = load_registry(env={"LDM_DISABLE_PLUGIN_AUTOLOAD": "1"})
    trained = load_trained(
        RunRef(run="ae"), context(registry, runs / "runs"), "first_stage", TrainAutoencoderSpec, "first_stage"
    )
    data_spec = DatasetSpec.model_validate(LDM["data"], context={"registry": registry})
    # The cache of this first stage and data (the folder names are hashes, in no useful order).
    folder = runs / "runs" / ".latent-cache" / cache_key(trained.module, data_spec.model_dump(mode="json"), ["label"])
    cached = np.load(folder / "moments.npy", mmap_mode="r")
    data = data_spec.build()
    images = torch.stack([data[i]["image"] for i in range(5)])
    assert cached.shape == (len(data), 4, 4, 4), "mean and log-variance of 2 channels at 4x4"
    with torch.no_grad():
        assert np.allclose(cached[:5], trained.module.moments(images).numpy(), atol=1e-5)
    assert np.load(folder / "label.npy").tolist() == [data[i]["label"] for i in range(len(data))], "fields cached too"


@pytest.mark.parametrize(
    "change,message",
    [
        (
            {"in_channels": 3},
            ["denoiser.params.in_channels is 3 but 2 latent channels make 2", "leave these out of the spec"],
        ),
        (
            {"context_dim": 8},
            [
                "denoiser.params.context_dim is 8 but the conditioners' context width make 16",
                "leave these out of the spec",
            ],
        ),
        (
            {"channel_mult": [1, 2, 2, 2]},
            [
                "data (digits) gives 8x8 images",
                "(f=2) and the denoiser (3 downsamplings)",
                "sides must be multiples of 16; use size 16",
            ],
        ),
    ],
)
def test_sizes_that_disagree_are_refused_before_anything_is_written(runs, capsys, change, message):
    spec = {**LDM, "name": "bad", "denoiser": {"name": "unet", "params": {**UNET["params"], **change}}}
    assert run(runs, spec) == 2
    err = capsys.readouterr().err
    assert all(piece in err for piece in message), err
    assert not (runs / "runs" / "bad").exists()


def test_sample_writes_images_grid_and_a_manifest_that_regenerates_any_image(runs, capsys):
    spec = {
        "task": "sample",
        "name": "samples",
        "seed": 100,
        "runtime": {"accelerator": "cpu"},
        "model": {"run": "ldm"},
        "conditions": {"label": [0, 1, 2]},
        "repeat": 2,
        "sampling": {"sampler": {"name": "euler_ancestral"}, "steps": 6, "guidance": 3.0},
    }
    assert run(runs, spec) == 0
    out = runs / "runs" / "samples"
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [m["condition"]["label"] for m in manifest] == [0, 0, 1, 1, 2, 2]
    assert [m["seed"] for m in manifest] == list(range(100, 106))
    assert manifest[3] | {"file": None} == {
        "file": None,
        "condition": {"label": 1},
        "run": "ldm",
        "checkpoint": "step-00000300.safetensors",
        "step": 300,
        "weights": "ema",
        "sampler": "euler_ancestral",
        "sampler_params": {"eta": 1.0},
        "eta": 1.0,
        "steps": 6,
        "spacing": "logsnr",
        "guidance": 3.0,
        "precision": "fp32",
        "compile": False,
        "resample": 1,
        "resample_jump": 1,
        "hold_kept": False,
        "seed": 103,
    }
    assert Image.open(out / "grid.png").size == (2 * 8, 3 * 8)
    again = {**spec, "name": "again", "seed": manifest[3]["seed"], "conditions": {"label": [1]}, "repeat": 1}
    assert run(runs, again) == 0
    first = np.asarray(Image.open(out / manifest[3]["file"]))
    alone = np.asarray(Image.open(runs / "runs" / "again" / "images" / "00000.png"))
    assert np.abs(first.astype(int) - alone.astype(int)).max() <= 1, "the manifest's seed and condition make it again"


def test_the_python_api_gives_the_task_s_images(runs):
    pipe = load("ldm", runs_dir=runs / "runs")
    images = pipe.sample({"label": [0, 0, 1, 1, 2, 2]}, sampler="euler_ancestral", steps=6, guidance=3.0, seed=100)
    assert images.shape == (6, 1, 8, 8)
    task = np.stack([np.asarray(Image.open(runs / "runs" / "samples" / "images" / f"{i:05d}.png")) for i in range(6)])
    mine = np.round((images[:, 0].numpy() + 1) / 2 * 255)
    assert np.abs(mine - task.astype(float)).max() <= 1


def test_bad_sampling_requests_are_one_sentence_errors(runs, capsys):
    base = {"task": "sample", "name": "bad-sample", "runtime": {"accelerator": "cpu"}, "model": {"run": "ldm"}}
    assert run(runs, {**base, "conditions": {"caption": ["a"]}}) == 2
    assert "the model's conditioners read ['label'] but ['caption'] was given" in capsys.readouterr().err
    assert run(runs, {**base, "conditions": {"label": [1]}, "sampling": {"steps": 5000}}) == 2
    assert "5000 is more than the 1000 timesteps" in capsys.readouterr().err
    assert run(runs, {**base, "conditions": {"label": [1, 12]}}) == 2
    assert "conditions.label: class_label got class 12, outside [0, 10)" in capsys.readouterr().err
    assert run(runs, {**base, "conditions": {"label": [1, 2]}, "num_images": 3, "model": {"run": "nope"}}) == 2
    assert "model.run: 'nope' is not a run" in capsys.readouterr().err
    assert not (runs / "runs" / "bad-sample").exists()


@pytest.mark.parametrize("sampler", ["dpmpp_2m_sde", "plms"])
def test_guided_sampling_keeps_every_tensor_on_the_denoisers_device(registry, sampler):
    # Conditioners on the CPU, the UNet and the latents on a meta device, which refuses CPU
    # tensors as CUDA does: context, concat map and vector must all follow the latents.
    from core.diffusion import NoiseSchedule, beta_schedule
    from core.specs import DenoiserSpec
    from tasks.ldm.generation import generate
    from tasks.ldm.specs import SamplingSpec

    def use(name, params):
        return ConditionerUse.model_validate({"name": name, "params": params}, context={"registry": registry})

    uses = [
        use("class_label", {"num_classes": 3, "dim": 8}),
        use("low_res", {"factor": 2, "lowres_factor": 2, "image_channels": 1, "vector_dim": 16}),
    ]
    unet = DenoiserSpec.model_validate(
        {
            "name": "unet",
            "params": {**UNET["params"], "in_channels": 3, "out_channels": 2, "context_dim": 8, "vector_dim": 16},
        },
        context={"registry": registry},
    )
    model = LatentDiffusion(unet.build(), [u.build() for u in uses], uses).eval()
    model.denoiser.to("meta")
    sampling = SamplingSpec.model_validate(
        {"sampler": {"name": sampler}, "steps": 3, "guidance": 2.0}, context={"registry": registry}
    )
    schedule = NoiseSchedule(beta_schedule("scaled_linear", 1000, 0.00085, 0.012))
    batch = {"label": torch.tensor([0, 1]), "lowres": torch.zeros(2, 1, 4, 4)}
    generators = [torch.Generator().manual_seed(i) for i in range(2)]
    out = generate(model, schedule, sampling, batch, torch.empty(2, 2, 4, 4, device="meta"), generators)
    assert out.device.type == "meta" and out.shape == (2, 2, 4, 4)


def test_gradients_reach_trainable_parts_and_not_frozen_conditioners(registry):
    from core.specs import DenoiserSpec

    uses = [
        ConditionerUse.model_validate(
            {"name": "class_label", "params": {"num_classes": 3, "dim": 8}, "trainable": trainable},
            context={"registry": registry},
        )
        for trainable in (True, False)
    ]
    unet = DenoiserSpec.model_validate(
        {"name": "unet", "params": {**UNET["params"], "in_channels": 2, "out_channels": 2, "context_dim": 8}},
        context={"registry": registry},
    )
    torch.manual_seed(0)
    model = LatentDiffusion(unet.build(), [u.build() for u in uses], uses)
    with torch.no_grad():  # zero-initialised layers (output, attention projections) would block what lies before them
        for weight in model.parameters():
            if not weight.any():
                weight.normal_(std=0.1)
    out = model(torch.randn(4, 2, 4, 4), torch.rand(4) * 999, {"label": torch.tensor([0, 1, 2, 0])})
    out.square().sum().backward()
    trained, frozen = model.conditioners
    assert all(p.grad is None for p in frozen.parameters()) and not any(p.requires_grad for p in frozen.parameters())
    model.train()
    assert trained.training and model.denoiser.training and not frozen.training, "frozen parts stay in eval mode"
    assert trained.embedding.weight.grad[:3].abs().sum() > 0
    missing = [n for n, p in model.denoiser.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing, missing


def test_dropping_uses_the_no_condition_output_but_keeps_concat(registry):
    uses = [
        ConditionerUse.model_validate(
            {"name": "class_label", "params": {"num_classes": 3, "dim": 8}}, context={"registry": registry}
        )
    ]
    model = LatentDiffusion(torch.nn.Identity(), [uses[0].build()], uses)
    labels = {"label": torch.tensor([0, 1])}
    dropped = model.condition(labels, torch.tensor([[True], [False]]))
    null = model.conditioners[0].unconditional(model.conditioners[0](labels["label"]))
    assert torch.equal(dropped.context[0], null.context[0])
    assert torch.equal(dropped.context[1], model.conditioners[0](labels["label"]).context[1])
    cond, uncond = model.guidance_pair(labels)
    assert isinstance(uncond, Conditioning) and torch.equal(uncond.context, null.context)


def test_a_semantic_and_super_resolution_ldm_trains_on_concat_conditions(tmp_path, capsys):
    data = {"name": "shapes", "params": {"size": 16, "num_examples": 64, "lowres_factor": 4}}
    ae = {**copy.deepcopy(TINY_AE), "name": "shapes-ae", "data": data}
    ae["model"]["params"].update(in_channels=3, z_channels=3)
    ae["train"].update(max_steps=2, checkpoint_every=2)
    assert run(tmp_path, ae) == 0
    hybrid = {
        **LDM,
        "name": "hybrid",
        "data": data,
        "first_stage": {"run": "shapes-ae"},
        "conditioners": [
            {"name": "semantic_map", "params": {"num_classes": 4, "channels": 4, "factor": 2, "context_dim": 16}},
            {"name": "low_res", "params": {"lowres_factor": 4, "factor": 2, "vector_dim": 8}},
            {"name": "class_label", "params": {"num_classes": 18, "dim": 16}},
        ],
        "train": {**LDM["train"], "max_steps": 4, "checkpoint_every": 4, "image_every": 4, "log_every": 1},
    }
    assert run(tmp_path, hybrid) == 0
    params = json.loads((tmp_path / "runs" / "hybrid" / "spec.json").read_text())["denoiser"]["params"]
    assert (params["in_channels"], params["context_dim"], params["vector_dim"]) == (3 + 4 + 3, 16, 8)
    assert list((tmp_path / "runs" / "hybrid" / "samples").iterdir()), "a sample grid was logged"
    sample = {
        "task": "sample",
        "name": "from-data",
        "runtime": {"accelerator": "cpu"},
        "model": {"run": "hybrid"},
        "data": {**data, "params": {**data["params"], "split": "val"}},
        "data_indices": [3, 5],
        "repeat": 2,
        "sampling": {"steps": 3, "guidance": 2.0},
    }
    assert run(tmp_path, sample) == 0
    manifest = [
        json.loads(line) for line in (tmp_path / "runs" / "from-data" / "manifest.jsonl").read_text().splitlines()
    ]
    assert [m["condition"]["data_index"] for m in manifest] == [3, 3, 5, 5]
    assert manifest[0]["condition"]["segmentation"] == "shapes[3].segmentation"
    assert isinstance(manifest[0]["condition"]["label"], int)
    assert run(tmp_path, {**sample, "name": "outside", "data_indices": [6, 99]}) == 2
    assert "data_indices: [99] are outside data (shapes), which has 7 examples" in capsys.readouterr().err
    wrong = copy.deepcopy(hybrid)
    wrong.update(name="wrong")
    wrong["conditioners"][0]["params"]["factor"] = 4
    assert run(tmp_path, wrong) == 2
    assert (
        "conditioners.0 (semantic_map) makes maps 4 times smaller than the image but the first stage's latent "
        "is 2 times smaller; set its factor to 2"
    ) in capsys.readouterr().err


@pytest.mark.parametrize(
    "conditioner,message",
    [
        (
            {"name": "semantic_map", "params": {"num_classes": 2, "factor": 2}},
            "data (shapes).segmentation: semantic_map got class 3, outside [0, 2)",
        ),
        (
            {"name": "low_res", "params": {"lowres_factor": 2, "factor": 2}},
            "data (shapes).lowres: low_res turns it into 4x4 maps but the latents are 8x8",
        ),
        (
            {"name": "class_label", "params": {"num_classes": 3}},
            "data (shapes).label: class_label got class 4, outside [0, 3)",
        ),
    ],
)
def test_data_a_conditioner_cannot_take_is_refused_before_anything_is_written(tmp_path, capsys, conditioner, message):
    data = {"name": "shapes", "params": {"size": 16, "num_examples": 40, "lowres_factor": 4}}
    ae = {**copy.deepcopy(TINY_AE), "name": "shapes-ae", "data": data}
    ae["model"]["params"].update(in_channels=3, z_channels=3)
    ae["train"].update(max_steps=2, checkpoint_every=2)
    assert run(tmp_path, ae) == 0
    spec = {**LDM, "name": "bad-data", "data": data, "first_stage": {"run": "shapes-ae"}, "conditioners": [conditioner]}
    assert run(tmp_path, spec) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs" / "bad-data").exists()


def _first_stage_and_data(runs):
    """The module's trained first stage and its LDM dataset: (first stage, dataset spec, dataset spec as JSON)."""
    from core.specs import DatasetSpec
    from tasks.autoencoder.spec import TrainAutoencoderSpec
    from tasks.cli.catalog import context
    from tasks.runs.spec import RunRef
    from tasks.runs.trained import load_trained

    registry = load_registry(env={"LDM_DISABLE_PLUGIN_AUTOLOAD": "1"})
    trained = load_trained(
        RunRef(run="ae"), context(registry, runs / "runs"), "first_stage", TrainAutoencoderSpec, "first_stage"
    )
    data = DatasetSpec.model_validate(LDM["data"], context={"registry": registry})
    return trained.module, data, data.model_dump(mode="json")


def _cache_folder(runs, dtype):
    from tasks.ldm.cache import cache_key

    first_stage, _, data_spec = _first_stage_and_data(runs)
    return runs / "runs" / ".latent-cache" / cache_key(first_stage, data_spec, ["label"], dtype)


def test_a_cache_read_by_loader_workers_in_small_batches_holds_what_one_process_stored(runs, tmp_path):
    """The module's cache was built in one process, 64 images at a time."""
    from lightning_fabric import Fabric

    from tasks.ldm.cache import build_cache

    first_stage, data, data_spec = _first_stage_and_data(runs)
    fabric = Fabric(accelerator="cpu", devices=1)
    folder, reused = build_cache(
        fabric, first_stage, data.build(), data_spec, ["label"], tmp_path, batch_size=7, num_workers=2
    )
    stored = _cache_folder(runs, "float32")
    assert not reused and folder.name == stored.name
    moments, expected = (np.load(f / "moments.npy") for f in (folder, stored))
    assert moments.shape == expected.shape and np.abs(moments - expected).max() <= 1e-6 * np.abs(expected).max()
    assert np.array_equal(np.load(folder / "label.npy"), np.load(stored / "label.npy"))


def test_a_disk_too_small_for_the_cache_is_refused_before_it_is_written(runs, monkeypatch, capsys):
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    short = {**LDM, "name": "ldm-full-disk", "cache_dtype": "float16", "train": {**LDM["train"], "max_steps": 2}}
    assert run(runs, short) == 2
    err = capsys.readouterr().err
    assert "latent_cache: the cache needs 0.00 GiB but" in err and "set cache_dtype to float16" in err
    assert not list((runs / "runs" / ".latent-cache").glob("*partial*")) and not _cache_folder(runs, "float16").exists()


def test_a_float16_cache_holds_the_float32_moments_in_half_the_disk(runs, capsys):
    short = {**LDM, "name": "ldm-half", "cache_dtype": "float16", "train": {**LDM["train"], "max_steps": 2}}
    short["train"] |= {"log_every": 1, "checkpoint_every": 2}
    assert run(runs, short) == 0
    out = capsys.readouterr().out
    assert "latent cache: " in out and "x (4, 4, 4) float16 = " in out
    half, full = (np.load(_cache_folder(runs, d) / "moments.npy", mmap_mode="r") for d in ("float16", "float32"))
    assert half.dtype == np.float16 and half.nbytes * 2 == full.nbytes
    assert np.abs(half.astype(np.float32) - full).max() <= 1e-3 * np.abs(full).max()
