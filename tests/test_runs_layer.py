"""The "trained run" layer: what a run reference accepts, latent spaces from either kind of run,
and ``--dry-run`` / ``--list`` printing what a run will use. Works on copies of the stored
old runs (tests/fixtures/old_runs: a tiny KL first stage ``old-ae`` and an LDM ``old-ldm``)."""

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from core import load_registry
from tasks.autoencoder.latent_space import load_latent_space
from tasks.cli.catalog import context
from tasks.runs.spec import RunRef

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "old_runs"
OLD_LDM = json.loads((FIXTURE / "old-ldm" / "spec.json").read_text())
# The spec a user writes: the denoiser's sizes left out, to be filled from the first stage and conditioner.
NEW_LDM = {
    **{key: OLD_LDM[key] for key in ("task", "data", "conditioners", "diffusion")},
    "name": "new-ldm",
    "runtime": {"accelerator": "auto"},
    "first_stage": {"run": "old-ae"},
    "denoiser": {
        "name": "unet",
        "params": {
            key: OLD_LDM["denoiser"]["params"][key]
            for key in ("model_channels", "channel_mult", "attention_levels", "norm_groups", "num_heads")
        },
    },
    "sampling": {"steps": 3},
    "train": {"max_steps": 2, "batch_size": 8, "ema": None},
}


def write(path, spec):
    path.write_text(json.dumps(spec))
    return path


def test_dry_run_fills_the_denoisers_sizes_and_the_runtime(cli, old_runs, tmp_path):
    code, out, err = cli(write(tmp_path / "ldm.json", NEW_LDM), "--dry-run")
    assert code == 0, err
    resolved = json.loads(out)
    params = resolved["denoiser"]["params"]
    assert (params["in_channels"], params["out_channels"], params["context_dim"]) == (2, 2, 16)
    assert params["vector_dim"] is None
    assert resolved["runtime"]["accelerator"] == "cpu" and resolved["runtime"]["strategy"] == "single_device"
    assert not (old_runs / "new-ldm").exists(), "a dry run writes nothing"


def test_dry_run_of_a_pipeline_resolves_each_stage_from_the_earlier_ones(cli):
    code, out, err = cli(Path(__file__).resolve().parent.parent / "configs" / "quickstart.json", "--dry-run")
    assert code == 0, err
    stages = json.loads(out)["stages"]
    params = stages[1]["denoiser"]["params"]
    assert (params["in_channels"], params["out_channels"], params["context_dim"], params["vector_dim"]) == (
        3,
        3,
        64,
        None,
    ), "from the autoencoder stage's 3 latent channels and the class embedding's 64"
    assert {stage["runtime"]["accelerator"] for stage in stages} == {"cpu"}


def test_dry_run_of_an_ldm_on_a_run_that_does_not_exist_is_the_runs_error(cli, tmp_path):
    spec = {**NEW_LDM, "first_stage": {"run": "nowhere"}}
    code, out, err = cli(write(tmp_path / "ldm.json", spec), "--dry-run")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "first_stage.run: 'nowhere' is not a run" in err


def test_a_run_of_the_wrong_task_is_refused_naming_both(cli, old_runs, tmp_path):
    spec = {"task": "sample", "name": "s", "model": {"run": "old-ae"}, "conditions": {"label": [1]}}
    code, _, err = cli(write(tmp_path / "s.json", spec))
    assert code == 2
    assert (
        "model.run: 'old-ae' is a train_autoencoder run, which holds no latent diffusion model; give a train_ldm or "
        "import_checkpoint run" in err
    )
    assert not (old_runs / "s").exists()


def test_a_latent_stats_run_is_a_latent_space_train_ldm_can_use(cli, old_runs, tmp_path):
    stats = {
        "task": "latent_stats",
        "name": "stats",
        "first_stage": {"run": "old-ae"},
        "data": {"name": "digits", "params": {"size": 8, "channels": 1, "split": "val"}},
    }
    code, _, err = cli(write(tmp_path / "stats.json", stats))
    assert code == 0, err
    written = load_file(str(old_runs / "stats" / "latent_stats.safetensors"))

    space = load_latent_space(RunRef(run="stats"), context(load_registry(), old_runs), "first_stage")
    assert torch.equal(space.mean.flatten(), written["mean"]) and torch.equal(space.std.flatten(), written["std"])
    own = load_latent_space(RunRef(run="old-ae"), context(load_registry(), old_runs), "first_stage")
    assert not torch.equal(space.mean, own.mean), "the validation split's statistics, not the stored ones"

    code, _, err = cli(write(tmp_path / "ldm.json", {**NEW_LDM, "first_stage": {"run": "stats"}}))
    assert code == 0, err
    reads = json.loads((old_runs / "new-ldm" / "environment.json").read_text())["starts"][0]["reads"]
    assert [Path(p).name for p in reads] == ["step-00000004.safetensors", "latent_stats.safetensors"]


def test_list_shows_what_each_dataset_gives(cli):
    code, out, _ = cli("--list")
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert "fields image, label (+ lowres with lowres_factor)" in lines["digits"]
    assert "fields boxes, caption, image, label, segmentation (+ lowres with lowres_factor)" in lines["shapes"]
    assert "fields follow its params (set root, size" in lines["image_folder"]
