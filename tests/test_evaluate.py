"""The `evaluate` task and its judges: each measure checked on cases with a known answer."""

import copy
import json

import numpy as np
import pytest
import torch
from scipy import linalg

from core import DatasetSpec, load_registry
from tasks.evaluation import judges
from tasks.evaluation.metrics import frechet_distance
from tasks.evaluation.reference_classifier import reference_classifier, split_of, stacked
from tests.conftest import TINY_AE
from tests.test_ldm import LDM, run

REGISTRY = load_registry(env={"LDM_DISABLE_PLUGIN_AUTOLOAD": "1"})
DIGITS = DatasetSpec.model_validate(LDM["data"], context={"registry": REGISTRY})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The tiny autoencoder ("ae") and a class-conditional LDM on it ("ldm", briefly trained)."""
    tmp = tmp_path_factory.mktemp("eval")
    ae = {**copy.deepcopy(TINY_AE), "train": {**TINY_AE["train"], "max_steps": 40, "checkpoint_every": 40}}
    ae["model"]["params"]["regularizer"]["params"] = {"sample": False}  # reconstructions from the posterior's mean
    assert run(tmp, ae) == 0
    assert run(tmp, {**LDM, "train": {**LDM["train"], "max_steps": 60, "checkpoint_every": 60}}) == 0
    return tmp


def evaluate(runs, name, **fields):
    spec = {
        "task": "evaluate",
        "name": name,
        "runtime": {"accelerator": "cpu"},
        "model": {"run": "ldm"},
        "per_class": 4,
        "num_images": 20,
        **fields,
    }
    return run(runs, spec)


def test_the_frechet_distance_is_fids_formula():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(300, 5, generator=gen, dtype=torch.float64) @ torch.randn(5, 5, generator=gen, dtype=torch.float64)
    b = torch.randn(200, 5, generator=gen, dtype=torch.float64) * 0.5 + 1
    cov_a, cov_b = np.cov(a.numpy().T), np.cov(b.numpy().T)
    expected = (
        np.sum((a.numpy().mean(0) - b.numpy().mean(0)) ** 2)
        + np.trace(cov_a)
        + np.trace(cov_b)
        - 2 * np.trace(linalg.sqrtm(cov_a @ cov_b).real)
    )
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-9)
    # Fewer samples than dimensions: singular covariances are fine.
    assert np.isfinite(frechet_distance(a[:3], b[:4]))


def test_the_reference_classifier_is_trained_once_judges_real_data_well_and_is_cached(tmp_path):
    judge = reference_classifier(DIGITS, "label", tmp_path)
    assert judge.classes == 10 and judge.val_accuracy >= 0.85, judge.val_accuracy  # 8 px, 1 channel digits
    again = reference_classifier(DIGITS, "label", tmp_path)
    assert again.val_accuracy == judge.val_accuracy
    images = stacked(split_of(DIGITS, "val"), "image")
    assert torch.equal(again.run(images)[0], judge.run(images)[0])
    assert len(list((tmp_path / ".reference-classifiers").iterdir())) == 1


def test_the_class_judge_scores_real_images_as_its_validation_and_wrong_labels_low(tmp_path):
    judge = reference_classifier(DIGITS, "label", tmp_path)
    train, val = split_of(DIGITS, "train"), split_of(DIGITS, "val")
    images, labels = stacked(val, "image"), stacked(val, "label")
    metrics, tables = judges.classes(judge, images, labels, train, val, "label")
    assert metrics["class_accuracy"] == pytest.approx(judge.val_accuracy)
    assert metrics["frechet_distance"] == pytest.approx(0, abs=1e-6) and metrics["frechet_real_train_vs_val"] > 0
    assert len(tables["accuracy by label"]) == 10
    shifted, _ = judges.classes(judge, images, (labels + 1) % 10, train, val, "label")
    assert shifted["class_accuracy"] < 0.15


def test_super_resolution_and_layout_judges_on_known_cases():
    data = DatasetSpec.model_validate(
        {"name": "shapes", "params": {"size": 16, "num_examples": 40, "lowres_factor": 4}},
        context={"registry": REGISTRY},
    ).build()
    truth, lowres = stacked(data, "image"), stacked(data, "lowres")
    maps = stacked(data, "segmentation")
    exact = judges.super_resolution(truth, truth, lowres)
    assert exact["psnr"] > 100 and exact["psnr_gain_over_bicubic"] > 10 and exact["ssim"] == pytest.approx(1)
    bicubic = torch.nn.functional.interpolate(lowres, size=(16, 16), mode="bicubic").clamp(-1, 1)
    assert judges.super_resolution(bicubic, truth, lowres)["psnr_gain_over_bicubic"] == pytest.approx(0, abs=1e-5)
    found, tables = judges.layout(truth, maps, truth)
    assert found["foreground_iou"] == found["judge_iou_on_real"] == pytest.approx(1)
    assert len(tables["foreground iou by map class (1..)"]) == 3
    blank, _ = judges.layout(torch.full_like(truth, -1), maps, truth)
    assert blank["foreground_iou"] == 0


def test_evaluate_a_class_conditional_run(runs, capsys):
    assert evaluate(runs, "eval", sampling={"sampler": {"name": "ddim"}, "steps": 5, "guidance": 2.0}) == 0
    report = json.loads((runs / "runs" / "eval" / "eval.json").read_text())
    metrics = report["metrics"]
    assert report["sampler"] == "ddim" and report["steps"] == 5 and report["guidance"] == 2.0 and report["step"] == 60
    assert metrics["images"] == 40 and 0 <= metrics["class_accuracy"] <= 1
    assert metrics["frechet_ratio"] == pytest.approx(metrics["frechet_distance"] / metrics["frechet_real_train_vs_val"])
    assert (runs / "runs" / "eval" / "grid.png").is_file() and list((runs / "runs" / "eval" / "tensorboard").iterdir())
    out = capsys.readouterr().out
    assert "class_accuracy" in out and "classifier_val_accuracy" in out
    # The same seed gives the same samples, hence the same figures.
    assert evaluate(runs, "eval-again", sampling={"sampler": {"name": "ddim"}, "steps": 5, "guidance": 2.0}) == 0
    assert json.loads((runs / "runs" / "eval-again" / "eval.json").read_text())["metrics"] == metrics


def test_evaluate_a_first_stage_gives_its_training_validation(runs):
    assert evaluate(runs, "eval-ae", model={"run": "ae"}) == 0
    metrics = json.loads((runs / "runs" / "eval-ae" / "eval.json").read_text())["metrics"]
    trained = json.loads((runs / "runs" / "ae" / "validation.json").read_text())
    assert metrics["psnr"] == pytest.approx(trained["psnr"], abs=1e-4) and metrics["examples"] == trained["examples"]


def test_bad_evaluations_are_one_sentence_errors(runs, tmp_path, capsys):
    assert evaluate(runs, "bad", features="net.pt2") == 2
    assert "features" in capsys.readouterr().err, "no unpickled feature networks (RELIABILITY.md)"
    assert evaluate(runs, "bad", model={"run": "nope"}) == 2
    assert "model.run: 'nope' is not a run" in capsys.readouterr().err
    assert evaluate(runs, "bad", sampling={"steps": 5000}) == 2
    assert "5000 is more than the 1000 timesteps" in capsys.readouterr().err
    assert not (runs / "runs" / "bad").exists()


def test_the_caption_judge_reads_real_shapes_and_refuses_what_they_do_not_show():
    data = DatasetSpec.model_validate(
        {"name": "shapes", "params": {"size": 32, "num_examples": 300, "split": "val", "two_object_fraction": 0.8}},
        context={"registry": REGISTRY},
    ).build()
    images, captions = stacked(data, "image"), [data[i]["caption"] for i in range(len(data))]
    found, _ = judges.captions(data, images, images, captions)
    assert found["caption_match"] == found["judge_match_on_real"] == 1.0
    assert found["caption_match 1 object"] == found["caption_match 2 objects"] == 1.0
    # Colour bound to shape: the same words with colours swapped between the objects do not match.
    two, swapped = [], []
    for i, caption in enumerate(captions):
        if " and " in caption:
            (_, c1, s1), (_, c2, s2) = (part.split() for part in caption.split(" and "))
            if c1 != c2 and s1 != s2:
                two.append(i)
                swapped.append(f"a {c2} {s1} and a {c1} {s2}")
    assert len(two) >= 5
    matches, _ = data.caption_matches(images[two], swapped)
    assert not matches.any()
    matches, _ = data.caption_matches(torch.full_like(images[:5], -1), captions[:5])
    assert not matches.any(), "a blank image shows nothing"
    with pytest.raises(ValueError, match="is not a shapes caption"):
        data.caption_matches(images[:1], ["two red circles"])


def test_the_inpainting_judge_measures_inside_the_hole_only_pooled_over_images():
    truth = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    masks = torch.zeros(2, 1, 8, 8)
    masks[0, :, :4] = 1
    masks[1, :, :2] = 1
    images = truth + 0.2 * masks - 0.5 * (1 - masks)  # errors outside the hole do not count
    report = judges.inpainting(images, truth, masks)
    assert report["hole_psnr"] == pytest.approx(10 * np.log10(4 / 0.04), abs=1e-4)
    assert report["hole_fraction"] == pytest.approx(0.375)
    images[1] += 0.2 * masks[1]  # image 1's hole (16 of the 48 hole pixels) now off by 0.4
    pooled = (32 * 0.04 + 16 * 0.16) / 48
    assert judges.inpainting(images, truth, masks)["hole_psnr"] == pytest.approx(10 * np.log10(4 / pooled), abs=1e-4)
    filled = judges.mean_fill(truth, masks)
    kept = truth[0][:, 4:].mean((1, 2))
    assert torch.allclose(filled[0][:, :4], kept[:, None, None].expand(3, 4, 8))
    assert torch.equal(filled[0][:, 4:], truth[0][:, 4:])
    assert report["hole_psnr_gain_over_mean_fill"] == pytest.approx(report["hole_psnr"] - report["mean_fill_hole_psnr"])
