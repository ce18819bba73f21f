"""``layout``: a layout of labelled boxes -> tokens -> a transformer encoder trained with the
UNet, its token states the cross-attention context (the paper's layout-to-image conditioner).

The tokens are those of the released ``layout2img-openimages256`` model (taming-transformers'
bounding-box conditional builder): a square grid of ``int(sqrt(vocab_size))`` points per side
over the image, each object three tokens (its class, its top-left corner, its bottom-right
corner), empty slots filled with the "no object" token ``vocab_size - 1``, then the two corner
tokens of the crop the image was cut to (always the whole image here). The encoder is the one
that model encodes them with: learned absolute positions, pre-LayerNorm attention and GELU
feed-forward layers, and a final LayerNorm.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from pydantic import Field, PositiveInt, field_validator, model_validator
from torch import Tensor, nn

from core import Conditioning, Params
from core.original import Pair
from plugins.blocks import heads_divide_width
from plugins.context import ContextConditioner
from plugins.encoder_blocks import EncoderBlock, encoder_pairs

EMPTY_SLOT = -1
"""The class of a row that holds no object (the padding of a fixed-size box tensor)."""


def _corner_token(x: float, y: float, grid: int) -> int:
    # Python's round() rounds halves to even (44.5 -> 44), as the original does.
    return round(y * (grid - 1)) * grid + round(x * (grid - 1))


def layout_objects(
    objects: Sequence[Sequence[float]], num_classes: int, max_objects: int | None = None
) -> list[tuple[int, float, float, float, float]]:
    """The objects ``(class, x0, y0, x1, y1)`` of one layout, checked, empty slots dropped.

    ``objects`` is a sequence of ``(class, x0, y0, x1, y1)``: a class index in
    [0, num_classes) and the box's top-left and bottom-right corners as fractions of the image's
    width and height (y down). A class of -1 marks an empty slot and is skipped. A
    ``ValueError`` names an object that is malformed, outside the image, has no area or has a
    class outside [0, num_classes), and a layout of more than ``max_objects`` objects.
    """
    checked = []
    for i, row in enumerate(objects):
        try:
            label, x0, y0, x1, y1 = (float(v) for v in row)
        except (TypeError, ValueError):
            raise ValueError(
                f"object {i} is {row!r}; give each object as [class, x0, y0, x1, y1] with numbers"
            ) from None
        if label == EMPTY_SLOT:
            continue
        if not label.is_integer() or not 0 <= label < num_classes:
            raise ValueError(
                f"object {i} has class {label:g}, outside [0, {num_classes}); "
                "give a class index below num_classes or raise num_classes"
            )
        box = (x0, y0, x1, y1)
        if not all(0 <= v <= 1 for v in box):
            raise ValueError(
                f"object {i} has box {box} outside [0, 1]; give (x0, y0, x1, y1) as fractions of the image's "
                "width and height"
            )
        if x1 <= x0 or y1 <= y0:
            raise ValueError(
                f"object {i} has box {box} with no area; give its top-left corner (x0, y0) first and its "
                "bottom-right corner (x1, y1), with x1 > x0 and y1 > y0, second"
            )
        checked.append((int(label), *box))
    if max_objects is not None and len(checked) > max_objects:
        raise ValueError(
            f"the layout has {len(checked)} objects but max_objects is {max_objects}; give at most "
            f"{max_objects} or raise max_objects"
        )
    return checked


def batch_layouts(y: Tensor | Sequence[Any]) -> list[Sequence[Sequence[float]]]:
    """A batch of layouts, a (B, N, 5) tensor or a list of B layouts, as B lists of objects
    (Python floats: float64, as the original computes); a ``ValueError`` names a bad one."""
    if isinstance(y, Tensor) and (y.ndim != 3 or y.shape[-1] != 5):
        raise ValueError(
            f"layouts come as boxes of shape (B, N, 5), got {tuple(y.shape)}; give each object as "
            "[class, x0, y0, x1, y1]"
        )
    layouts = []
    for i, objects in enumerate(y):
        if isinstance(objects, Tensor):
            objects = objects.tolist()
        if isinstance(objects, (str, bytes)) or not isinstance(objects, Sequence):
            raise ValueError(
                f"example {i} is {objects!r}, not a list of objects; give a list of [class, x0, y0, x1, y1]"
            )
        layouts.append(objects)
    return layouts


def layout_tokens(objects: Sequence[Sequence[float]], params: Layout.Params) -> list[int]:
    """The token sequence (length ``params.sequence_length``) of one layout, as the original builds it.

    ``objects`` is checked by :func:`layout_objects`. Objects keep their order (the original
    shuffles them when it builds training examples; shuffle the data for that).
    """
    grid, tokens = params.grid, []
    checked = layout_objects(objects, params.num_classes, params.max_objects)
    for label, x0, y0, x1, y1 in checked:
        # The original holds (x0, y0, width, height) and adds the size back to find the far
        # corner; doing the same float arithmetic keeps near-half cases on the same grid point.
        far_x, far_y = x0 + (x1 - x0), y0 + (y1 - y0)
        tokens += [label, _corner_token(x0, y0, grid), _corner_token(far_x, far_y, grid)]
    tokens += [params.no_object] * (3 * (params.max_objects - len(checked)))
    # The crop the image was cut to: at sampling time the whole image, corners (0, 0) and (1, 1).
    return tokens + [_corner_token(0.0, 0.0, grid), _corner_token(1.0, 1.0, grid)]


class Layout(ContextConditioner):
    """Layout-to-image: labelled boxes -> tokens -> a pre-norm transformer; context (B, 3 * max_objects + 2, width).

    The field (``"boxes"`` by default) holds one layout per example, a list of objects, each
    ``[class, x0, y0, x1, y1]``: a class index in [0, num_classes) and the box's top-left and
    bottom-right corners as fractions of the image's width and height, y pointing down (so
    ``0 <= x0 < x1 <= 1`` and ``0 <= y0 < y1 <= 1``). A dataset gives it as a float tensor
    (max_objects, 5) (float64 keeps the coordinates exactly as written), its unused rows with
    class -1, so that examples batch into (B, max_objects, 5); a ``sample`` spec gives it as
    JSON lists (``"boxes": [[[5, 0.1, 0.2, 0.5, 0.6]], []]``: one object of class 5, then an empty
    layout).
    ``forward`` takes either: a (B, N, 5) tensor, or a list of B layouts (lists or tensors).
    The original model's attribute flags are part of its class index: class + 340 * flags,
    flags adding 1 for a group of objects, 2 occluded, 4 a depiction, 8 inside; num_classes 5440.

    The "no condition" output is the encoding of the empty layout (every slot empty).
    """

    class Params(Params):
        """The original model's values are in each description."""

        num_classes: PositiveInt = Field(
            description=(
                "Class indices are 0 to num_classes - 1; each is its own token (the original: 340 OpenImages classes "
                "times 16 attribute combinations, class + 340 * flags, so 5440)."
            )
        )
        max_objects: PositiveInt = Field(30, description="Object slots in the token sequence (the original: 30).")
        vocab_size: int = Field(
            8192,
            ge=5,
            description=(
                "Rows of the token embedding (the original: 8192); corners lie on a grid of int(sqrt(vocab_size)) "
                "points per side and the last token means 'no object'."
            ),
        )
        width: PositiveInt = Field(
            128, description="Token width d of the context (B, 3 * max_objects + 2, d) (the original: 512)."
        )
        layers: PositiveInt = Field(2, description="Transformer encoder layers (the original: 16).")
        heads: PositiveInt = Field(4, description="Attention heads; must divide width (the original: 8).")
        head_width: PositiveInt | None = Field(
            None, description="Channels per attention head; none: width / heads (the original: 64)."
        )
        ff_mult: PositiveInt = Field(4, description="Feed-forward width as a multiple of width (the original: 4).")
        qkv_bias: bool = Field(
            False,
            description="Whether the attention's query, key and value projections have a bias (the original: no).",
        )
        field: str = Field("boxes", description="The example field holding the layout.")

        _heads_divide_width = field_validator("heads")(heads_divide_width)

        @model_validator(mode="after")
        def _tokens_do_not_collide(self) -> Layout.Params:
            grid = math.isqrt(self.vocab_size)
            if grid * grid == self.vocab_size:
                raise ValueError(
                    f"vocab_size {self.vocab_size} is a square, so the 'no object' token {self.vocab_size - 1} would "
                    f"also be the corner (1, 1); use a vocab_size that is not a square (e.g. {self.vocab_size + 1})"
                )
            if self.num_classes > self.vocab_size - 1:
                raise ValueError(
                    f"num_classes {self.num_classes} needs class tokens up to {self.num_classes - 1}, but token "
                    f"{self.vocab_size - 1} means 'no object'; raise vocab_size above {self.num_classes}"
                )
            return self

        @property
        def grid(self) -> int:
            """Points per side of the corner grid."""
            return math.isqrt(self.vocab_size)

        @property
        def no_object(self) -> int:
            """The token of an empty object slot."""
            return self.vocab_size - 1

        @property
        def sequence_length(self) -> int:
            """Tokens per layout: three per object slot and the crop's two corners."""
            return 3 * self.max_objects + 2

    def __init__(self, params: Layout.Params) -> None:
        super().__init__(params)
        p = params
        self.tokens = nn.Embedding(p.vocab_size, p.width)
        nn.init.normal_(self.tokens.weight, std=0.02)
        self.positions = nn.Parameter(torch.randn(p.sequence_length, p.width) * 0.02)
        head_width = p.head_width or p.width // p.heads
        self.blocks = nn.ModuleList(
            EncoderBlock(p.width, p.heads, head_width, p.ff_mult, p.qkv_bias) for _ in range(p.layers)
        )
        self.norm = nn.LayerNorm(p.width)

    def token_ids(self, y: Tensor | Sequence[Any]) -> Tensor:
        """Token ids (B, 3 * max_objects + 2) of a batch of layouts; a ``ValueError`` names a bad one."""
        rows = []
        for i, objects in enumerate(batch_layouts(y)):
            try:
                rows.append(layout_tokens(objects, self.params))
            except ValueError as exc:
                raise ValueError(f"example {i}: {exc}") from None
        return torch.tensor(rows, dtype=torch.long, device=self.tokens.weight.device).view(
            -1, self.params.sequence_length
        )

    def original_names(self) -> list[Pair]:
        """The original ``BERTEmbedder``'s names (x-transformers, under ``transformer.``)."""
        names = {"tokens": "tokens", "positions": "positions", "norm": "norm"}
        return encoder_pairs("blocks", names, self.params.layers, self.params.qkv_bias)

    def encode(self, ids: Tensor) -> Tensor:
        """Token ids (B, L) -> context (B, L, width)."""
        x = self.tokens(ids) + self.positions
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, y: Tensor | Sequence[Any]) -> Conditioning:
        """Layouts ((B, N, 5) or a list of B) -> context (B, 3 * max_objects + 2, width)."""
        return Conditioning(context=self.encode(self.token_ids(y)))

    def unconditional(self, cond: Conditioning) -> Conditioning:
        """The empty layout's encoding, repeated over the batch of ``cond``."""
        empty = self.encode(self.token_ids([[]]))
        return Conditioning(context=empty.to(cond.context).expand(cond.batch_size, -1, -1))
