"""image_folder: a user's own images, and every way such a folder can be wrong."""

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from core import UserError
from plugins.image_folder import ImageFolder


def folder(tmp_path, count=4, mode="RGB", size=(24, 16)):
    root, maps = tmp_path / "images", tmp_path / "maps"
    for i in range(count):
        cls = ("cat", "dog")[i % 2]
        (root / cls).mkdir(parents=True, exist_ok=True)
        (maps / cls).mkdir(parents=True, exist_ok=True)
        colour = np.full((size[1], size[0], 3), 40 * i, dtype=np.uint8)
        Image.fromarray(colour).convert(mode).save(root / cls / f"{i}.png")
        (root / cls / f"{i}.txt").write_text(f"picture {i}\n")
        seg = np.zeros((size[1], size[0]), dtype=np.uint8)
        seg[:, size[0] // 2 :] = i
        Image.fromarray(seg).save(maps / cls / f"{i}.png")
    return root, maps


def build(**params):
    return ImageFolder(ImageFolder.Params(**params))


def test_labels_captions_and_maps_come_from_the_folder(tmp_path):
    root, maps = folder(tmp_path)
    ds = build(root=root, size=8, fit="resize", labels=True, captions=True, segmentation_root=maps, lowres_factor=2)
    assert ImageFolder.example_shape(ds.params).fields == {"image", "label", "caption", "segmentation", "lowres"}
    assert len(ds) == 4 and ds.classes == ["cat", "dog"]
    ex = ds[1]  # files sort as cat/0, cat/2, dog/1, dog/3
    assert ex["label"] == 0 and ex["caption"] == "picture 2"
    assert ex["image"].shape == (3, 8, 8) and torch.allclose(ex["image"], torch.full((3, 8, 8), 80 / 127.5 - 1))
    assert ex["segmentation"].shape == (8, 8) and ex["segmentation"][0, 0] == 0 and ex["segmentation"][0, -1] == 2
    assert ex["lowres"].shape == (3, 4, 4)
    assert ds[2]["label"] == 1


def test_crops_keep_the_aspect_and_random_crops_are_fixed_per_image(tmp_path):
    root, _ = folder(tmp_path, size=(40, 20))
    centre = build(root=root, size=10)
    assert centre[0]["image"].shape == (3, 10, 10)
    a, b = build(root=root, size=10, fit="random_crop", seed=3), build(root=root, size=10, fit="random_crop", seed=3)
    assert torch.equal(a[0]["image"], b[0]["image"])
    assert len(build(root=root, size=10, split="val", val_every=2)) == 2


def test_missing_or_empty_folders_are_refused_up_front(tmp_path):
    with pytest.raises(ValidationError, match="is not a folder"):
        ImageFolder.Params(root=tmp_path / "nothing", size=8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValidationError, match="holds no image files"):
        ImageFolder.Params(root=tmp_path / "empty", size=8)


def test_a_corrupt_file_is_named_or_skipped_and_counted(tmp_path):
    root, _ = folder(tmp_path)
    garbage = root / "dog" / "1.png"
    garbage.write_bytes(b"not an image at all")
    with pytest.raises(UserError, match="image file '.*dog/1.png' cannot be read"):
        build(root=root, size=8)
    ds = build(root=root, size=8, skip_bad=True)
    assert len(ds) == 3 and ds.skipped == [garbage]


def test_an_image_whose_pixels_are_cut_short_is_named_when_met(tmp_path, capsys):
    """Only headers are read up front: a file cut after its header opens, and fails when decoded."""
    root, _ = folder(tmp_path)
    broken = root / "cat" / "0.png"
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) - 20])  # its pixel data cut short, its header whole
    ds = build(root=root, size=8)
    assert len(ds) == 4
    with pytest.raises(UserError, match=r"image file '.*cat/0.png' cannot be decoded .*set skip_bad to true"):
        ds[0]
    tolerant = build(root=root, size=8, skip_bad=True)
    assert torch.equal(tolerant[0]["image"], tolerant[1]["image"])  # the next image stands in
    assert tolerant.skipped == [broken] and "skipped image file" in capsys.readouterr().err


def test_images_with_other_channel_counts_are_refused_or_converted(tmp_path):
    root, _ = folder(tmp_path, mode="RGBA")
    with pytest.raises(UserError, match=r"is RGBA \(4 channel\(s\)\), not RGB \(3\); set convert to true"):
        build(root=root, size=8)
    assert build(root=root, size=8, convert=True)[0]["image"].shape == (3, 8, 8)
    grey, _ = folder(tmp_path / "grey", mode="L")
    assert build(root=grey, size=8, channels=1)[0]["image"].shape == (1, 8, 8)


def test_missing_sidecars_are_named(tmp_path):
    root, maps = folder(tmp_path)
    (root / "dog" / "1.txt").unlink()
    with pytest.raises(UserError, match="has no caption file '.*dog/1.txt'"):
        build(root=root, size=8, captions=True)
    (maps / "cat" / "2.png").unlink()
    with pytest.raises(UserError, match="has no segmentation map '.*cat/2.png'"):
        build(root=root, size=8, segmentation_root=maps)


def test_flips_and_crops_each_epoch_are_drawn_again_per_epoch_and_repeat_within_one(tmp_path):
    """Training hands datasets indices that carry their epoch (EpochIndex): the draws change
    from epoch to epoch and repeat for the same epoch (so a resumed run sees the same ones)."""
    from core.data import EpochIndex

    root, maps = tmp_path / "gradient", tmp_path / "maps"
    (root / "a").mkdir(parents=True)
    (maps / "a").mkdir(parents=True)
    Image.fromarray(np.tile(np.arange(40, dtype=np.uint8) * 6, (20, 1))).convert("RGB").save(root / "a" / "0.png")
    Image.fromarray(np.tile((np.arange(40) >= 30).astype(np.uint8), (20, 1))).save(maps / "a" / "0.png")
    cropping = build(root=root, size=10, fit="random_crop_each_epoch")
    crops = [cropping[EpochIndex(0, epoch)]["image"] for epoch in range(6)]
    assert len({c[0, 0, 0].item() for c in crops}) > 1, "other epochs, other crops"
    assert torch.equal(crops[2], cropping[EpochIndex(0, 2)]["image"]), "the same epoch, the same crop"
    flipping = build(root=root, size=10, flip=True, segmentation_root=maps)
    plain = build(root=root, size=10, segmentation_root=maps)[0]
    seen = [flipping[EpochIndex(0, epoch)] for epoch in range(8)]
    mirrored = [torch.equal(e["image"], plain["image"].flip(-1)) for e in seen]
    assert any(mirrored) and not all(mirrored)
    for example, flipped in zip(seen, mirrored, strict=True):
        expected = plain if not flipped else {k: v.flip(-1) for k, v in plain.items() if k != "label"}
        assert torch.equal(example["image"], expected["image"]), "unflipped epochs give the plain image"
        assert torch.equal(example["segmentation"], expected["segmentation"]), "maps flip with their images"
    assert torch.equal(seen[5]["image"], flipping[EpochIndex(0, 5)]["image"]), "the same epoch, the same flip"
