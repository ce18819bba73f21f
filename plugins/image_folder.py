"""``image_folder``: any folder of images, with labels, captions and maps when the folder has them.

Labels come from the first-level sub-folder names, captions from a sidecar ``.txt`` beside
each image (same name), segmentation maps from a parallel folder holding a single-channel
PNG of class indices at the same relative path. Building the dataset reads each image's
header only (format, size, channels), so a collection of any size opens in seconds; an image
whose data turns out unreadable when an example is made is named then, and skipped (the next
image stands in, and it is counted) with ``skip_bad``, or stops the run without.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pydantic import Field, PositiveInt, model_validator

from core import Dataset, ExampleShape, UserError
from core.data import DataParams, EpochIndex, epoch_of, fields_with_lowres, split_indices, with_lowres

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
MODES = {1: "L", 3: "RGB"}


def _images(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())


_REPORTED: set[str] = set()


class ImageFolder(Dataset):
    """Every image under a folder (recursively), resized or cropped to a square size."""

    class Params(DataParams):
        root: Path = Field(description="The folder of images.")
        size: PositiveInt = Field(description="Side of the square images given to the model.")
        fit: Literal["resize", "center_crop", "random_crop", "random_crop_each_epoch"] = Field(
            "center_crop",
            description="resize: squash to size x size; center_crop / random_crop / random_crop_each_epoch: scale "
            "the shorter side to size, then crop (random_crop: a crop fixed per image by seed and index; "
            "random_crop_each_epoch: drawn again in every epoch of training, by seed, index and epoch).",
        )
        flip: bool = Field(
            False,
            description="Mirror images left-right at random, drawn per image and epoch (by seed, index and epoch, "
            "so a resumed run sees the same flips); maps flip with them.",
        )
        channels: Literal[1, 3] = 3
        convert: bool = Field(
            False, description="Convert images of another channel count (grey, RGBA, palette) instead of refusing them."
        )
        labels: bool = Field(False, description="Give 'label': the index of the image's first-level sub-folder.")
        captions: bool = Field(False, description="Give 'caption': the text of the .txt file beside each image.")
        segmentation_root: Path | None = Field(
            None, description="Give 'segmentation' from PNGs at the same relative paths here."
        )
        skip_bad: bool = Field(
            False, description="Skip unreadable image files (and report how many) instead of refusing them."
        )
        seed: int = 0

        @model_validator(mode="after")
        def _folder_has_images(self) -> ImageFolder.Params:
            if not self.root.is_dir():
                raise ValueError(f"root {str(self.root)!r} is not a folder; give the folder that holds the images")
            if not _images(self.root):
                raise ValueError(
                    f"root {str(self.root)!r} holds no image files ({', '.join(sorted(EXTENSIONS))}); check the path"
                )
            if self.segmentation_root is not None and not self.segmentation_root.is_dir():
                raise ValueError(f"segmentation_root {str(self.segmentation_root)!r} is not a folder")
            return self

    @classmethod
    def example_shape(cls, params: ImageFolder.Params) -> ExampleShape:
        fields = {"image"} | {
            name
            for name, on in (
                ("label", params.labels),
                ("caption", params.captions),
                ("segmentation", params.segmentation_root),
            )
            if on
        }
        return ExampleShape(
            fields=fields_with_lowres(fields, params),
            image_size=(params.size, params.size),
            image_channels=params.channels,
        )

    def __init__(self, params: ImageFolder.Params) -> None:
        super().__init__(params)
        files, bad = [], []
        for path in _images(params.root):
            problem = self._check(path)
            if problem is None:
                files.append(path)
            elif params.skip_bad:
                bad.append(path)
            else:
                raise UserError(
                    f"data.params.root: {problem}; fix or remove the file, or set skip_bad (or convert) to true"
                )
        self.skipped = bad
        if bad and str(params.root) not in _REPORTED:  # once per folder, not once per split
            _REPORTED.add(str(params.root))
            print(
                f"data.params.root: skipped {len(bad)} unreadable image file(s) under {str(params.root)!r} "
                f"(skip_bad), e.g. {str(bad[0])!r}",
                file=sys.stderr,
            )
        if not files:
            raise UserError(f"data.params.root: none of the images under {str(params.root)!r} could be read")
        self.classes = sorted(
            {p.relative_to(params.root).parts[0] for p in files if len(p.relative_to(params.root).parts) > 1}
        )
        self.files = [files[i] for i in split_indices(len(files), params)]

    def _check(self, path: Path) -> str | None:
        """Why ``path`` cannot be an example (unreadable, wrong channels, missing sidecar), or ``None``."""
        p = self.params
        try:
            with Image.open(path) as image:  # the header only: the pixels are decoded when used
                mode = image.mode
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            return f"image file {str(path)!r} cannot be read ({type(exc).__name__}: {exc})"
        if mode != MODES[p.channels] and not p.convert:
            return (
                f"image file {str(path)!r} is {mode} ({Image.getmodebands(mode)} channel(s)), "
                f"not {MODES[p.channels]} ({p.channels}); set convert to true to convert it"
            )
        relative = path.relative_to(p.root)
        if p.labels and len(relative.parts) < 2:
            return (
                f"image file {str(path)!r} is not in a sub-folder, so it has no label; move it into its class's folder"
            )
        if p.captions and not path.with_suffix(".txt").is_file():
            return f"image file {str(path)!r} has no caption file {str(path.with_suffix('.txt'))!r}"
        if p.segmentation_root and not (p.segmentation_root / relative).with_suffix(".png").is_file():
            wanted = str((p.segmentation_root / relative).with_suffix(".png"))
            return f"image file {str(path)!r} has no segmentation map {wanted!r}"
        return None

    def __len__(self) -> int:
        return len(self.files)

    def _box(self, width: int, height: int, index: int) -> tuple[tuple[int, int], tuple[int, int, int, int] | None]:
        """The size to scale to and the crop box, for an image of ``width`` x ``height``."""
        size, fit = self.params.size, self.params.fit
        if fit == "resize":
            return (size, size), None
        scale = size / min(width, height)
        w, h = max(size, round(width * scale)), max(size, round(height * scale))
        if fit == "center_crop":
            left, top = (w - size) // 2, (h - size) // 2
        else:
            key = [self.params.seed, index] if fit == "random_crop" else [self.params.seed, index, epoch_of(index), 0]
            rng = np.random.default_rng(key)
            left, top = int(rng.integers(0, w - size + 1)), int(rng.integers(0, h - size + 1))
        return (w, h), (left, top, left + size, top + size)

    def _flipped(self, index: int) -> bool:
        """Whether this image is mirrored in the epoch that asks for it."""
        return self.params.flip and bool(
            np.random.default_rng([self.params.seed, index, epoch_of(index), 1]).random() < 0.5
        )

    def __getitem__(self, index: int) -> dict[str, Any]:
        for offset in range(len(self.files)):
            at = (index + offset) % len(self.files)
            try:
                return self._example(EpochIndex(at, epoch_of(index)))
            except (OSError, SyntaxError, ValueError) as exc:
                self._unreadable(self.files[at], exc)
        raise UserError(f"data.params.root: none of the images under {str(self.params.root)!r} could be decoded")

    def _unreadable(self, path: Path, exc: Exception) -> None:
        """Stop on an image whose pixels cannot be decoded, or (``skip_bad``) count and report it."""
        problem = f"image file {str(path)!r} cannot be decoded ({type(exc).__name__}: {exc})"
        if not self.params.skip_bad:
            raise UserError(f"data.params.root: {problem}; fix or remove the file, or set skip_bad to true")
        if path not in self.skipped:
            self.skipped.append(path)
            print(
                f"data.params.root: skipped {problem} (skip_bad; {len(self.skipped)} so far), the next image instead",
                file=sys.stderr,
            )

    def _example(self, index: int) -> dict[str, Any]:
        p, path = self.params, self.files[index]
        with Image.open(path) as image:
            image = image.convert(MODES[p.channels])
            scaled, box = self._box(*image.size, index)
            image = image.resize(scaled, Image.Resampling.BICUBIC)
            if box:
                image = image.crop(box)
            if self._flipped(index):
                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            array = np.asarray(image, dtype=np.float32).reshape(p.size, p.size, p.channels)
        example: dict[str, Any] = {"image": torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1.0}
        relative = path.relative_to(p.root)
        if p.labels:
            example["label"] = self.classes.index(relative.parts[0])
        if p.captions:
            example["caption"] = path.with_suffix(".txt").read_text(encoding="utf-8").strip()
        if p.segmentation_root:
            with Image.open((p.segmentation_root / relative).with_suffix(".png")) as seg:
                seg = seg.resize(scaled, Image.Resampling.NEAREST)
                if box:
                    seg = seg.crop(box)
                if self._flipped(index):
                    seg = seg.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
                example["segmentation"] = torch.from_numpy(np.asarray(seg, dtype=np.int64).copy())
        return with_lowres(example, p)
