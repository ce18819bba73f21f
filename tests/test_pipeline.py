"""The `pipeline` task: stages in order, every stage validated first, finished stages skipped,
a stopped stage resumed."""

import copy
import json

from tasks.run import main
from tests.conftest import TINY_AE
from tests.test_ldm import LDM


def stages(ldm_steps):
    ae = {**copy.deepcopy(TINY_AE), "train": {**TINY_AE["train"], "max_steps": 10, "checkpoint_every": 10}}
    del ae["runtime"], ae["seed"]
    ldm = {
        **copy.deepcopy(LDM),
        "train": {**LDM["train"], "max_steps": ldm_steps, "checkpoint_every": 4, "log_every": 1},
    }
    del ldm["runtime"], ldm["seed"]
    sample = {
        "task": "sample",
        "name": "grid",
        "model": {"run": "ldm"},
        "conditions": {"label": [0, 1]},
        "sampling": {"steps": 4},
    }
    return [ae, ldm, sample]


def pipeline(tmp_path, ldm_steps, *extra):
    spec = {
        "task": "pipeline",
        "name": "all",
        "seed": 3,
        "runtime": {"accelerator": "cpu"},
        "stages": stages(ldm_steps),
    }
    path = tmp_path / "pipeline.json"
    path.write_text(json.dumps(spec))
    return main([str(path), "--runs-dir", str(tmp_path / "runs"), *extra])


def test_stages_run_in_order_and_a_finished_pipeline_is_skipped(tmp_path, capsys):
    assert pipeline(tmp_path, 8) == 0
    out = capsys.readouterr().out
    assert (
        out.index("'ae' (train_autoencoder): running")
        < out.index("'ldm' (train_ldm): running")
        < out.index("'grid' (sample): running")
    )
    runs = tmp_path / "runs"
    assert (runs / "grid" / "grid.png").is_file()
    assert json.loads((runs / "ldm" / "spec.json").read_text())["seed"] == 3, "the pipeline's seed is the default"
    assert pipeline(tmp_path, 8) == 0
    assert capsys.readouterr().out.count("done earlier, skipped") == 3


def test_an_interrupted_pipeline_resumes_the_stopped_stage(tmp_path, capsys):
    assert pipeline(tmp_path, 4) == 0  # as if the LDM stage had been stopped at step 4 of 8
    capsys.readouterr()
    (tmp_path / "runs" / "grid").rename(tmp_path / "grid-before")
    assert pipeline(tmp_path, 8) == 0
    out = capsys.readouterr().out
    assert "'ae' (train_autoencoder): done earlier, skipped" in out
    assert "'ldm' (train_ldm): resuming" in out and "'grid' (sample): running" in out
    steps = [
        row["step"] for row in map(json.loads, (tmp_path / "runs" / "ldm" / "metrics.jsonl").read_text().splitlines())
    ]
    assert steps == list(range(1, 9)), "steps 5 to 8 continue the run"


def test_every_stage_is_validated_before_the_first_runs(tmp_path, capsys):
    def check(change, message):
        spec = {"task": "pipeline", "name": "all", "stages": stages(8)}
        change(spec["stages"])
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(spec))
        assert main([str(path), "--runs-dir", str(tmp_path / "runs")]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "runs").exists()

    check(lambda s: s[1]["train"].update(max_steps=0), "stages.1.train.max_steps: Input should be greater than 0")
    check(lambda s: s[2].update(name="ae"), "stage names must differ, but 'ae' is used twice")
    check(
        lambda s: s[2].update(task="pipeline"),
        "stages.2: a stage's task is one of evaluate, export_checkpoint, import_checkpoint, inspect, latent_stats, "
        "sample",
    )
    check(lambda s: s[2].update(model={"run": "ldn"}), "stages.2.model: 'ldn' is neither an earlier stage nor a run in")


def test_the_quickstart_chains_its_stages_into_a_ten_by_ten_grid(tmp_path):
    from tests.conftest import ROOT

    spec = json.loads((ROOT / "configs" / "quickstart.json").read_text())
    ae, ldm, sample = spec["stages"]
    assert ldm["first_stage"]["run"] == ae["name"] and sample["model"]["run"] == ldm["name"]
    for stage in (ae, ldm):  # the same stages, a few steps long
        stage["train"].update(max_steps=3, checkpoint_every=3, image_every=None, log_every=1)
    sample["sampling"]["steps"] = 2
    path = tmp_path / "quickstart.json"
    path.write_text(json.dumps(spec))
    assert main([str(path), "--runs-dir", str(tmp_path / "runs")]) == 0
    out = tmp_path / "runs" / sample["name"]
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [m["condition"]["label"] for m in manifest] == [digit for digit in range(10) for _ in range(10)]
    assert {m["guidance"] for m in manifest} == {3.0}
    from PIL import Image

    assert Image.open(out / "grid.png").size == (320, 320)
