"""The six component interfaces a plugin implements.

Every concrete component class

* sets ``Params`` to a :class:`core.Params` subclass (extra keys forbidden) and is built as
  ``Component(params)`` from a validated instance of it;
* declares, from its params alone and before anything is built, what it produces, through a
  classmethod of its interface (:meth:`FirstStage.latent_shape`, :meth:`Conditioner.produces`,
  :meth:`Conditioner.reads`, :meth:`Dataset.example_shape`). Builders use these to fill and
  check the sizes of the parts that consume it.

The module-based interfaces are plain :class:`torch.nn.Module` subclasses, tied to no trainer.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from core.conditioning import Conditioning, ConditioningShape
from core.diffusion import Spacing
from core.interchange import DiffusersModel, NotExpressible
from core.original import Pair
from core.params import Params


class Component:
    """What every component shares: its ``Params`` class and the validated ``params``."""

    Params: ClassVar[type[Params]] = Params

    def __init__(self, params: Params) -> None:
        super().__init__()
        if not isinstance(params, type(self).Params):
            raise TypeError(
                f"{type(self).__name__} is built from {type(self).__name__}.Params, got {type(params).__name__}"
            )
        self.params = params

    def original_names(self) -> list[Pair]:
        """Each of this component's tensors paired with the names the original CompVis code
        gives it (see :mod:`core.original`, which converts state dicts both ways with them);
        empty, the default, when the component has no counterpart there. An implementation
        must pair every tensor of the state dict that the original has."""
        return []

    def diffusers_model(self) -> DiffusersModel:
        """This component as a diffusers model (class, config and tensor pairs; see
        :mod:`core.interchange`). Raises :class:`core.NotExpressible` naming the param that no
        diffusers class can express; the default: diffusers has no class for this component."""
        raise NotExpressible(f"{type(self).__name__} has no diffusers counterpart")

    @classmethod
    def from_diffusers(cls, class_name: str, config: dict[str, Any], folder: Path) -> dict[str, Any] | None:
        """Our params (a dict for ``Params``) expressing the model of class ``class_name`` in
        the diffusers pipeline part ``folder`` whose ``config.json`` is ``config``, or ``None``
        (the default) when this component does not express that class. Raises
        :class:`core.NotExpressible` naming a config key this component cannot express. A model
        built from the result must pair its tensors with the class's names in
        :meth:`diffusers_model`, or (a frozen pretrained model) load them from ``folder`` itself
        and pair none."""
        return None


@dataclass(frozen=True)
class LatentShape:
    """What a first stage makes of an image with ``image_channels`` channels.

    A (B, image_channels, H, W) image becomes a (B, channels, H / factor, W / factor) latent.
    """

    channels: int
    factor: int
    image_channels: int = 3


@dataclass(frozen=True)
class ExampleShape:
    """What every example of a dataset holds.

    ``fields`` names the keys of each example (always ``"image"``, plus e.g. ``"label"``,
    ``"caption"``, ``"segmentation"``); ``image_size`` is (H, W), or ``None`` when images
    vary in size; ``image_channels`` is the image's channel count.
    """

    fields: frozenset[str]
    image_size: tuple[int, int] | None
    image_channels: int = 3


class FirstStage(Component, nn.Module, abc.ABC):
    """Perceptual compression: an image to a latent and back.

    ``encode`` maps images (B, C_img, H, W), values in [-1, 1], to latents (B, c, H/f, W/f)
    as diffusion sees them (for a VQ model: before quantisation); ``decode`` maps such a
    latent back to an image (quantising first where the model has a codebook). c, f and
    C_img are what :meth:`latent_shape` declares.
    """

    @classmethod
    @abc.abstractmethod
    def latent_shape(cls, params: Params) -> LatentShape:
        """The latent channels c, the factor f and the image channels, from params alone."""

    @abc.abstractmethod
    def encode(self, x: Tensor) -> Tensor:
        """Images (B, C_img, H, W) in [-1, 1] -> latents (B, c, H/f, W/f)."""

    @abc.abstractmethod
    def decode(self, z: Tensor) -> Tensor:
        """Latents (B, c, h, w) -> images (B, C_img, h*f, w*f) in about [-1, 1]."""

    def mode(self, x: Tensor) -> Tensor:
        """Images (B, C_img, H, W) in [-1, 1] -> their most likely latents (B, c, H/f, W/f),
        never a draw: a posterior's mean, a VQ model's latent before quantisation. What a
        conditioner that encodes images with the first stage sees (as the original code takes a
        posterior's mode for conditions). By default :meth:`encode`."""
        return self.encode(x)

    def moments(self, x: Tensor) -> Tensor:
        """Images (B, C_img, H, W) -> what the encoder emits before the regulariser (B, m, h, w).

        Deterministic in eval mode, so a latent cache can store them; :meth:`latent_from_moments`
        turns them into a latent (for a KL posterior, a fresh sample at each call). By default
        the moments are the latent itself.
        """
        return self.encode(x)

    def latent_from_moments(self, moments: Tensor) -> Tensor:
        """Moments (B, m, h, w) from :meth:`moments` -> a latent (B, c, h, w), as :meth:`encode` gives."""
        return moments

    def decoder_last_layer(self) -> Tensor | None:
        """The weight of the decoder's output layer, where adaptive loss weights compare
        gradient norms; ``None`` when there is none."""
        return None

    def code_histogram(self, x: Tensor) -> Tensor | None:
        """How often each codebook entry is used for images x (B, C_img, H, W): counts (K,),
        or ``None`` for a first stage without a codebook."""
        return None

    def forward(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Training pass: images (B, C_img, H, W) -> (reconstructions of that shape, loss terms).

        The terms are the regulariser's (see :meth:`Regularizer.forward`); a first stage
        without one returns ``decode(encode(x))`` and no terms.
        """
        return self.decode(self.encode(x)), {}


class Regularizer(Component, nn.Module, abc.ABC):
    """Keeps a first stage's latent in check (KL towards N(0, I), or vector quantisation).

    A first stage builds its regulariser as ``cls(params, latent_channels=c)``. The encoder's
    last layer emits ``moment_channels(params, c)`` channels per position; the regulariser
    turns them into a latent of c channels.
    """

    def __init__(self, params: Params, latent_channels: int) -> None:
        super().__init__(params)
        self.latent_channels = latent_channels

    @classmethod
    @abc.abstractmethod
    def moment_channels(cls, params: Params, latent_channels: int) -> int:
        """How many channels the encoder must emit for a latent of ``latent_channels``."""

    @abc.abstractmethod
    def forward(self, moments: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Moments (B, m, h, w) -> (latent to decode in training (B, c, h, w), named scalar terms).

        ``terms["loss"]`` is the penalty to add to the training loss, already weighted by the
        regulariser's own params; the other terms are diagnostics to log (e.g. the raw KL,
        codebook perplexity). Each docstring states its reduction.
        """

    @abc.abstractmethod
    def latent(self, moments: Tensor) -> Tensor:
        """Moments (B, m, h, w) -> the latent (B, c, h, w) that diffusion is trained on."""

    def mode(self, moments: Tensor) -> Tensor:
        """Moments (B, m, h, w) -> the most likely latent (B, c, h, w), never a draw (a
        posterior's mean). By default :meth:`latent`, for regularisers that draw nothing."""
        return self.latent(moments)

    @abc.abstractmethod
    def quantize(self, z: Tensor) -> Tensor:
        """A latent (B, c, h, w) made ready for the decoder (identity where nothing is quantised)."""

    def code_histogram(self, moments: Tensor) -> Tensor | None:
        """How often each codebook entry serves these moments: counts (K,), or ``None`` without a codebook."""
        return None


class Denoiser(Component, nn.Module, abc.ABC):
    """The network of the diffusion model, e.g. a time-conditional UNet.

    ``forward(x, t, cond)`` takes the noisy latent x (B, c, h, w), the continuous timestep t
    (B,) and a :class:`Conditioning` whose parts it was sized for (``concat`` channels join
    x's, ``context`` is attended to, ``vector`` joins the time embedding), and returns a
    tensor of x's shape holding the ``prediction`` it was trained for: ``"eps"`` (the noise),
    ``"x0"`` (the clean latent) or ``"v"``.

    Its ``Params`` should have ``in_channels``, ``out_channels``, ``context_dim`` and
    ``vector_dim`` (``None`` by default): a pipeline fills them from what the first stage and
    the conditioners declare, and refuses a spec that states them otherwise.
    """

    prediction: str = "eps"

    @classmethod
    def downsamplings(cls, params: Params) -> int:
        """How many times the network halves h and w (latent sides must divide by 2^this)."""
        return 0

    @abc.abstractmethod
    def forward(self, x: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        """(B, c, h, w), (B,), Conditioning -> (B, c, h, w)."""


class Conditioner(Component, nn.Module, abc.ABC):
    """tau_theta: a condition y (a field of a training example) -> :class:`Conditioning`.

    Contract, checked by :mod:`core.testing`:

    * ``reads(params)`` names the example field it consumes (``"label"``, ``"caption"``...);
      ``forward`` takes that field batched: a tensor with B as its first axis, or a list of B
      items (e.g. strings).
    * ``produces(params)`` declares the parts and widths of its output; ``forward`` returns
      exactly those parts, on the input's device, in the module's floating dtype.
    * ``unconditional(cond)`` returns its "no condition" output with the same parts and
      shapes as ``cond``: an output of the conditioner (e.g. a learned null embedding), never
      a fake input. Classifier-free guidance and condition dropout use it.
    """

    @classmethod
    @abc.abstractmethod
    def reads(cls, params: Params) -> str:
        """The name of the example field this conditioner consumes."""

    @classmethod
    @abc.abstractmethod
    def produces(cls, params: Params) -> ConditioningShape:
        """The parts of :class:`Conditioning` it returns and their widths, from params alone."""

    trainable_by_default: ClassVar[bool] = True
    """Whether ``train_ldm`` optimises it with the denoiser when a spec's ``trainable`` is not
    given (a pretrained encoder sets this false and stays frozen unless asked)."""

    @classmethod
    def concat_factor(cls, params: Params) -> int | None:
        """How many times smaller than the image its concat maps are (a pipeline checks that
        this is the first stage's f); ``None`` when it gives no concat part."""
        return None

    @classmethod
    def first_stage_channels(cls, params: Params) -> int | None:
        """The latent channels c of the first stage whose encoder it uses (a pipeline checks
        that they are the first stage's and then calls :meth:`use_first_stage`); ``None``, the
        default, when it uses none."""
        return None

    def use_first_stage(self, encoder: FrozenEncoder) -> None:
        """Take the frozen first stage's encoder, for a conditioner whose
        :meth:`first_stage_channels` is not ``None``; called once the model is built, before any
        ``forward``. Keep it as given: it is no part of the conditioner's weights."""

    def fit(self, values: Sequence[Any]) -> None:
        """Learn what must be known before training from the training data (e.g. a vocabulary).

        Called once by ``train_ldm`` before training, with the field's value for every
        training example. What it learns must live in the module's state dict, so that it
        travels with the weights (a resumed run then loads it from the checkpoint). By
        default nothing.
        """

    @abc.abstractmethod
    def forward(self, y: Any) -> Conditioning:
        """A batch of the field :meth:`reads` names -> its conditioning (batch size B)."""

    @abc.abstractmethod
    def unconditional(self, cond: Conditioning) -> Conditioning:
        """The "no condition" output shaped like ``cond`` (same parts, shapes, dtype, device)."""


class FrozenEncoder:
    """A frozen first stage's :meth:`FirstStage.mode`, as a conditioner uses it: images
    (B, C_img, H, W) in [-1, 1] -> latents (B, c, H/f, W/f), without gradients, in the input's
    dtype.

    Not a module, so it is no part of a conditioner's weights, and never copied: an EMA copy
    of the conditioner shares the one first stage, which its owner moves between devices.
    """

    def __init__(self, first_stage: FirstStage) -> None:
        self._first_stage = first_stage

    @property
    def shape(self) -> LatentShape:
        """What the first stage declares."""
        return type(self._first_stage).latent_shape(self._first_stage.params)

    def __call__(self, images: Tensor) -> Tensor:
        weight = next(self._first_stage.parameters(), None)
        dtype = weight.dtype if weight is not None else images.dtype
        with torch.no_grad():
            return self._first_stage.mode(images.to(dtype)).to(images.dtype)

    def __deepcopy__(self, memo: dict[int, Any]) -> FrozenEncoder:
        return self


DenoiseFn = Callable[[Tensor, Tensor], Tensor]


class Sampler(Component, abc.ABC):
    """A solver that turns noise into a sample by repeatedly calling a denoiser.

    Samplers follow k-diffusion's convention, so that none of them knows the network's
    parameterisation: ``denoise(x, sigma)`` maps a noisy x (B, ...) at noise levels sigma
    (B,) to an estimate of the clean x; ``sigmas`` (n + 1,) is the decreasing sequence of
    noise levels to visit, ending at 0; ``x`` is the start, already at noise level
    ``sigmas[0]``.

    ``spacing`` names the timestep spacing (see :func:`core.sampling.timesteps`) used when a
    spec does not choose one; set it to the one that measures best for the method.
    """

    spacing: ClassVar[Spacing] = "logsnr"

    @abc.abstractmethod
    def sample(
        self,
        denoise: DenoiseFn,
        x: Tensor,
        sigmas: Tensor,
        *,
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> Tensor:
        """Noise x (B, ...) at sigmas[0] -> sample (B, ...) at sigma 0.

        Randomness comes only from ``generator``: one generator, or a list of B (one per
        sample, see :func:`core.sampling.noise_like`), in which case a batch gives the same
        samples as its items one by one.
        """


class Dataset(Component, torch.utils.data.Dataset, abc.ABC):
    """A source of training examples.

    ``ds[i]`` is a dict holding at least ``"image"``, a float tensor (C, H, W) in [-1, 1],
    plus the fields :meth:`example_shape` declares (``"label"``: an int, ``"caption"``: a
    str, ``"segmentation"``: a long tensor (H, W) of class indices, ...). Examples are
    deterministic: the same index always gives the same example.
    """

    @classmethod
    @abc.abstractmethod
    def example_shape(cls, params: Params) -> ExampleShape:
        """The fields, image size and channel count of every example, from params alone."""

    @abc.abstractmethod
    def __len__(self) -> int:
        """The number of examples."""

    @abc.abstractmethod
    def __getitem__(self, index: int) -> dict[str, Any]:
        """The example at ``index`` as a dict of its fields."""

    def caption_matches(self, images: Tensor, captions: Sequence[str]) -> tuple[Tensor, list[str]] | None:
        """Whether each image (N, C, H, W) in [-1, 1] shows what its caption says: a bool
        tensor (N,) and a group name per caption for reports (e.g. "2 objects"). ``None``, the
        default, where the dataset cannot read its own captions in pixels (most cannot)."""
        return None

    def boxes_found(self, images: Tensor, boxes: Tensor) -> Tensor | None:
        """Whether each asked object of a layout shows in its box: images (N, C, H, W) in
        [-1, 1], boxes (N, M, 5) of rows (class, x0, y0, x1, y1), class -1 an empty row ->
        bool (N, M), true where the image has an object of that class whose box overlaps the
        asked one with IoU >= 0.5 (false on empty rows). ``None``, the default, where the
        dataset cannot read objects from pixels."""
        return None


INTERFACES: dict[str, type[Component]] = {
    "first_stage": FirstStage,
    "regularizer": Regularizer,
    "denoiser": Denoiser,
    "conditioner": Conditioner,
    "sampler": Sampler,
    "dataset": Dataset,
}
"""Each kind of component by the name specs and ``--list`` use for it."""
