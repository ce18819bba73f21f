"""Layouts on ``shapes``: its ``boxes`` field, up to three objects, the judge that reads objects
and their boxes back from pixels, and ``evaluate`` of a layout-to-image run."""

import copy
import json

import pytest
import torch

from core import DatasetSpec, load_registry
from plugins.layout import Layout
from plugins.shapes import COLOURS, SHAPES, Shapes
from tasks.evaluation import judges
from tests.conftest import TINY_AE
from tests.test_ldm import UNET, run

REGISTRY = load_registry(env={"LDM_DISABLE_PLUGIN_AUTOLOAD": "1"})
THREE = {"size": 32, "num_examples": 300, "max_objects": 3, "min_extent": 0.25, "max_extent": 0.45}


def test_boxes_hold_each_objects_class_and_square_in_caption_order():
    ds = Shapes(Shapes.Params(size=24, num_examples=100))
    for i in range(len(ds)):
        ex = ds[i]
        boxes, seg = ex["boxes"], ex["segmentation"]
        assert boxes.shape == (3, 5)
        rows = [row for row in boxes.tolist() if row[0] >= 0]
        assert all(row[0] == -1 and row[1:] == [0, 0, 0, 0] for row in boxes.tolist()[len(rows) :])
        words = [part.split()[1:] for part in ex["caption"].split(" and ")]
        assert [(list(COLOURS)[int(r[0]) // 3], SHAPES[int(r[0]) % 3]) for r in rows] == [tuple(w) for w in words]
        assert rows[0][0] == ex["label"]
        for label, x0, y0, x1, y1 in rows:
            assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1 and x1 - x0 == pytest.approx(y1 - y0)
            inside = seg[round(y0 * 24) : round(y1 * 24), round(x0 * 24) : round(x1 * 24)]
            assert (inside == SHAPES.index(SHAPES[int(label) % 3]) + 1).any()
        covered = torch.zeros_like(seg, dtype=torch.bool)
        for _, x0, y0, x1, y1 in rows:
            covered[round(y0 * 24) : round(y1 * 24), round(x0 * 24) : round(x1 * 24)] = True
        assert not (seg > 0)[~covered].any(), "every object pixel lies in its box"


def test_three_objects_come_in_each_count_and_at_least_8_px():
    ds = Shapes(Shapes.Params(**THREE))
    counts = [int((ds[i]["boxes"][:, 0] >= 0).sum()) for i in range(len(ds))]
    assert {1, 2, 3} == set(counts)
    assert all(abs(counts.count(n) / len(counts) - 1 / 3) < 0.12 for n in (1, 2))
    sides = [(row[3] - row[1]) * 32 for i in range(50) for row in ds[i]["boxes"].tolist() if row[0] >= 0]
    assert min(sides) >= 8


def test_the_judge_finds_real_objects_in_their_boxes_and_nothing_misplaced_or_misnamed():
    ds = Shapes(Shapes.Params(**THREE))
    images = torch.stack([ds[i]["image"] for i in range(100)])
    boxes = torch.stack([ds[i]["boxes"] for i in range(100)])
    asked = boxes[..., 0] >= 0
    found = ds.boxes_found(images, boxes)
    assert found.shape == asked.shape and not found[~asked].any()
    assert found[asked].double().mean() >= 0.98
    moved = boxes.clone()
    moved[..., 1::2] = (moved[..., 1::2] + 0.5) % 1.0  # x0 and x1 shifted half the width, wrapped
    moved[..., 3] = moved[..., 1] + (boxes[..., 3] - boxes[..., 1])
    assert ds.boxes_found(images, moved)[asked].double().mean() < 0.1
    renamed = boxes.clone()
    renamed[..., 0] = torch.where(asked, (renamed[..., 0] + 3) % 18, renamed[..., 0])  # the next colour
    assert not ds.boxes_found(images, renamed)[asked].any()
    report = judges.boxes(ds, images, images, boxes)
    assert report["objects_found"] == report["judge_objects_found_on_real"] >= 0.98
    assert report["objects"] == int(asked.sum())


def test_the_layout_conditioner_takes_the_shapes_boxes():
    ds = Shapes(Shapes.Params(**THREE))
    params = Layout.Params(num_classes=18, max_objects=3, vocab_size=1090, width=8, layers=1, heads=2)
    ids = Layout(params).token_ids(torch.stack([ds[i]["boxes"] for i in range(4)]))
    first = ds[0]["boxes"][0].tolist()
    assert ids[0, 0] == int(first[0])
    assert ids[0, 1] == round(first[2] * 32) * 33 + round(first[1] * 32), "corners on the 33-point grid are pixels"
    assert ids.shape == (4, 11) and (ids[:, -2:] == torch.tensor([0, 1088])).all()


def test_evaluate_a_layout_run_beside_the_judges_ceiling(tmp_path):
    data = {"name": "shapes", "params": {"size": 16, "num_examples": 100, "max_objects": 3, "min_extent": 0.3}}
    ae = copy.deepcopy(TINY_AE)
    ae["model"]["params"]["in_channels"] = 3
    ae["data"] = data
    assert run(tmp_path, ae) == 0
    layout = {"num_classes": 18, "max_objects": 3, "vocab_size": 290, "width": 8, "layers": 1, "heads": 2}
    ldm = {
        "task": "train_ldm",
        "name": "ldm",
        "seed": 0,
        "runtime": {"accelerator": "cpu"},
        "data": data,
        "first_stage": {"run": "ae"},
        "denoiser": UNET,
        "conditioners": [{"name": "layout", "params": layout, "drop_rate": 0.1}],
        "sampling": {"steps": 4},
        "train": {"max_steps": 4, "batch_size": 8, "checkpoint_every": 4},
    }
    assert run(tmp_path, ldm) == 0
    spec = {"task": "evaluate", "name": "eval", "runtime": {"accelerator": "cpu"}, "model": {"run": "ldm"}}
    assert run(tmp_path, {**spec, "num_images": 5}) == 0
    metrics = json.loads((tmp_path / "runs" / "eval" / "eval.json").read_text())["metrics"]
    val = Shapes(Shapes.Params.model_validate({**data["params"], "split": "val"}))
    asked = sum(int((val[i]["boxes"][:, 0] >= 0).sum()) for i in range(5))
    assert metrics["objects"] == asked and metrics["images"] == 5
    assert metrics["judge_objects_found_on_real"] >= 0.98
    assert 0 <= metrics["objects_found"] <= 1


def test_max_objects_beyond_three_is_refused():
    with pytest.raises(ValueError, match="max_objects"):
        DatasetSpec.model_validate({"name": "shapes", "params": {"max_objects": 4}}, context={"registry": REGISTRY})
