"""Images from a trained LDM: latents sampled with guidance, decoded by its latent space.

:func:`generate` samples one batch of normalised latents; :class:`Pipeline` (what
:func:`load_pipeline` makes of a ``train_ldm`` run, and what ``tasks.api.load`` returns) holds
the whole loop from seeds and conditions to images, in batches. Image i is drawn from its
own generator seeded ``seeds[i]`` (noise and every stochastic step), so a batch gives the
same images as its items one by one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning_fabric import Fabric
from pydantic import ValidationError
from torch import Tensor

from core import SpecError, UserError
from core.diffusion import NoiseSchedule
from core.guidance import guided
from core.masks import MASKED_IMAGE, latent_keep_mask, masked_input
from core.sampling import Generators, denoiser, sample, sigmas
from core.validation import problems
from tasks.autoencoder.latent_space import LatentSpace, load_latent_space
from tasks.ldm.model import LatentDiffusion
from tasks.ldm.precision import network, resolve_precision
from tasks.ldm.specs import SamplingSpec, too_many_steps
from tasks.runs.context import RunContext
from tasks.runs.spec import RunRef
from tasks.runs.trained import load_trained


@torch.no_grad()
def generate(
    ldm: LatentDiffusion,
    schedule: NoiseSchedule,
    sampling: SamplingSpec,
    conditions: dict[str, Any],
    noise: Tensor,
    generator: Generators = None,
    start: LatentStart | None = None,
) -> Tensor:
    """Normalised latents (B, c, h, w) sampled from standard-normal ``noise`` of that shape.

    ``conditions`` holds the example fields the conditioners read, batched (B); guidance,
    sampler, steps, spacing, precision and compilation come from ``sampling``; ``start`` the latents to start from
    (img2img) and the cells to keep (inpainting by replacement), see :func:`core.sampling.sample`.
    """
    cond, uncond = ldm.guidance_pair(conditions)
    net = network(ldm.denoiser, resolve_precision(sampling.precision, noise.device), sampling.compile)
    model = guided(net, cond.to(noise.device), uncond.to(noise.device), sampling.guidance)
    sampler = sampling.sampler.build()
    levels = sigmas(schedule, sampling.steps, sampling.spacing or sampler.spacing)
    fn = denoiser(model, schedule, ldm.prediction)
    if start is None:
        return sample(sampler, fn, noise, levels, generator=generator)
    return sample(
        sampler,
        fn,
        noise,
        levels,
        generator=generator,
        init=start.latents,
        strength=start.strength,
        mask=start.keep,
        resample=sampling.resample,
        jump=sampling.resample_jump,
    )


@dataclass(frozen=True)
class Init:
    """What to start from: images (N, C, H, W) in [-1, 1]; ``strength`` in [0, 1], how much of
    the schedule runs from them (0: the images back through the first stage; 1: all of it);
    ``masks`` (N, 1, H, W), 1 where to generate (None: everywhere). Outside the hole the
    result is the image itself, pasted back after decoding, as the paper's inpainting does."""

    images: Tensor
    strength: float = 1.0
    masks: Tensor | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.strength <= 1.0:
            raise UserError(f"strength: {self.strength} is outside [0, 1]; use 0 (keep the image) to 1 (all steps)")
        if self.masks is not None and self.masks.shape[-2:] != self.images.shape[-2:]:
            raise UserError(
                f"masks: {tuple(self.masks.shape[-2:])} is not the images' size {tuple(self.images.shape[-2:])}; "
                "give one mask of the image's size per image"
            )


@dataclass(frozen=True)
class LatentStart:
    """:class:`Init` in latent space for one batch: normalised latents (B, c, h, w), the
    strength, and the cells to keep (B, 1, h, w; 1: keep) or None."""

    latents: Tensor
    strength: float
    keep: Tensor | None


def batched(values: list[Any], device: torch.device) -> Any:
    """One field's values for a batch, as the conditioners take them: numbers as a tensor (B,),
    tensors stacked (B, ...), anything else (captions) as the list."""
    if values and isinstance(values[0], (int, float)):
        return torch.tensor(values, device=device)
    if values and isinstance(values[0], Tensor):
        return torch.stack(values).to(device)
    return list(values)


@dataclass
class Pipeline:
    """A trained LDM with its latent space, ready to sample."""

    ldm: LatentDiffusion
    space: LatentSpace
    schedule: NoiseSchedule
    latent_shape: tuple[int, int, int]
    run: str
    checkpoint: Path
    step: int
    weights: str
    reads: tuple[Path, ...]
    context: RunContext
    fabric: Fabric | None = None  # with several processes, each makes a share of every generate()

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the images the model makes."""
        factor = self.space.shape.factor
        return self.latent_shape[1] * factor, self.latent_shape[2] * factor

    @property
    def inpaints(self) -> bool:
        """Whether the model reads the masked image (an inpainting model): given init images and
        masks, it is shown them instead of starting from the images' latents."""
        return any(m.reads(m.params) == MASKED_IMAGE for m in self.ldm.conditioners)

    def sampling(self, **settings: Any) -> SamplingSpec:
        """Validated sampling settings: any field of :class:`SamplingSpec` (``sampler`` as a name
        or a component spec, ``steps``, ``spacing``, ``guidance``), its defaults for the rest.
        A :class:`UserError` names a wrong one."""
        if isinstance(settings.get("sampler"), str):
            settings["sampler"] = {"name": settings["sampler"]}
        try:
            spec = SamplingSpec.model_validate(settings, context={"registry": self.context.registry})
        except ValidationError as exc:
            raise SpecError(problems(exc), source="sampling settings") from None
        self.check(spec, "steps")
        return spec

    def check(self, sampling: SamplingSpec, field: str = "sampling.steps") -> None:
        """Raise :class:`UserError` if ``sampling`` asks for more steps than the model's schedule
        has, or for a precision this pipeline's device cannot run."""
        problem = too_many_steps(sampling.steps, self.schedule.steps, field)
        if problem:
            raise UserError(problem)
        resolve_precision(sampling.precision, self.device, field.replace("steps", "precision"))

    def check_inpainting(self, sampling: SamplingSpec, init: Init | None) -> None:
        """Raise :class:`UserError` if ``sampling`` asks for an inpainting option where it does
        nothing: ``hold_kept`` without masks or for a model that inpaints by replacement anyway;
        ``resample`` where no kept cells are held by replacement."""
        masked = init is not None and init.masks is not None
        if sampling.hold_kept and not (masked and self.inpaints):
            raise UserError(
                "sampling.hold_kept: true holds the kept cells of a model that reads the masked image, and these "
                "images are not that (no masks, or a model that inpaints by replacement anyway); use false"
            )
        if sampling.resample > 1 and not (masked and (sampling.hold_kept or not self.inpaints)):
            raise UserError(
                f"sampling.resample: {sampling.resample} applies to inpainting by replacement, and these images are "
                "not that (no masks, or a model that reads the masked image without hold_kept); use 1"
            )

    @property
    def device(self) -> torch.device:
        """Where the pipeline's models are."""
        return self.space.mean.device

    def generate(
        self,
        sampling: SamplingSpec,
        conditions: dict[str, list[Any]],
        seeds: list[int],
        batch_size: int = 16,
        progress: Callable[[int], None] | None = None,
        init: Init | None = None,
    ) -> Tensor:
        """Images (N, C, H, W) in [-1, 1] on the CPU, image i from ``seeds[i]``, item i of each
        condition list and of ``init``, ``batch_size`` at a time; ``progress`` gets the size of
        each batch done. With masks in ``init``, an inpainting model (:attr:`inpaints`) is shown
        the masked image (made from ``init`` unless the conditions hold it) and any other model
        inpaints by replacement; either way the kept pixels are pasted back.

        With a :attr:`fabric` of several processes, each makes a consecutive share (image i
        still from seed i, so the images do not depend on how many processes there are) and
        every process gets them all back."""
        self.check_inpainting(sampling, init)
        fabric = self.fabric
        if fabric is None or fabric.world_size == 1:
            return self._generate(sampling, conditions, seeds, batch_size, progress, init)
        share = math.ceil(len(seeds) / fabric.world_size)
        start = fabric.global_rank * share
        mine = seeds[start : start + share]
        shape = (self.space.shape.image_channels, *self.image_size)
        images = torch.zeros(0, *shape)
        if mine:
            part = {key: values[start : start + share] for key, values in conditions.items()}
            images = self._generate(sampling, part, mine, batch_size, progress, self.init_part(init, start, mine))
        padded = torch.zeros(share, *shape)
        padded[: len(images)] = images
        return fabric.all_gather(padded.to(self.device)).reshape(-1, *shape)[: len(seeds)].cpu()

    @torch.no_grad()
    def _generate(
        self,
        sampling: SamplingSpec,
        conditions: dict[str, list[Any]],
        seeds: list[int],
        batch_size: int = 16,
        progress: Callable[[int], None] | None = None,
        init: Init | None = None,
    ) -> Tensor:
        """:meth:`generate` in this process alone."""
        device = self.device
        out = []
        for start in range(0, len(seeds), batch_size):
            chunk = seeds[start : start + batch_size]
            generators = [torch.Generator(device="cpu").manual_seed(seed) for seed in chunk]
            noise = torch.stack([torch.randn(self.latent_shape, generator=g) for g in generators]).to(device)
            batch = {key: batched(values[start : start + batch_size], device) for key, values in conditions.items()}
            part = self.init_part(init, start, chunk)
            if self.inpaints and part is not None and part.masks is not None:
                batch.setdefault(MASKED_IMAGE, masked_input(part.images, part.masks).to(device))
                # The model sees the kept pixels itself, as the paper's inpainting samples; hold_kept adds replacement.
                begin = self._start(part, chunk) if sampling.hold_kept else None
            else:
                begin = self._start(part, chunk)
            latents = generate(self.ldm, self.schedule, sampling, batch, noise, generators, begin)
            images = self.space.decode(latents).cpu()
            if part is not None and part.masks is not None:
                images = part.masks * images + (1 - part.masks) * part.images
            out.append(images)
            if progress is not None:
                progress(len(chunk))
        return torch.cat(out)

    @staticmethod
    def init_part(init: Init | None, start: int, chunk: list[int]) -> Init | None:
        """The entries ``start`` to ``start + len(chunk)`` of ``init`` (``None`` stays ``None``)."""
        if init is None:
            return None
        masks = init.masks[start : start + len(chunk)] if init.masks is not None else None
        return Init(init.images[start : start + len(chunk)].float(), init.strength, masks)

    def _start(self, init: Init | None, seeds: list[int]) -> LatentStart | None:
        """``init`` in latent space; each image encoded under its own seed (a first stage may
        draw from its posterior), so an image is made again alone from its seed."""
        if init is None:
            return None
        device = self.space.mean.device
        latents = []
        for image, seed in zip(init.images, seeds, strict=True):
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(seed)
                latents.append(self.space.encode(image[None].to(device)))
        if init.masks is None:
            return LatentStart(torch.cat(latents), init.strength, None)
        keep = latent_keep_mask(init.masks, self.space.shape.factor).to(device)
        return LatentStart(torch.cat(latents), init.strength, keep)

    def sample(
        self,
        conditions: dict[str, list[Any]] | None = None,
        *,
        num_images: int | None = None,
        seed: int = 0,
        batch_size: int = 16,
        init: Tensor | None = None,
        strength: float = 1.0,
        masks: Tensor | None = None,
        **sampling: Any,
    ) -> Tensor:
        """Images (N, C, H, W) in [-1, 1] for ``conditions`` (one list per field the conditioners
        read, e.g. ``{"label": [3, 7]}``; N is their length) or ``num_images`` unconditional ones;
        image i from seed ``seed + i``. ``sampling``: see :meth:`sampling` (e.g. ``guidance=3``).

        ``init`` (N, C, H, W) in [-1, 1]: start from these images (img2img) with ``strength``;
        ``masks`` (N, 1, H, W), 1 (white) where to generate: inpainting by replacement (see :class:`Init`).
        """
        conditions = conditions or {}
        derived = {MASKED_IMAGE} if masks is not None else set()
        count = check_conditions(
            self.ldm, conditions, num_images or (len(init) if init is not None else None), derived=derived
        )
        start = self.init(init, strength, masks, count) if init is not None else None
        seeds = [seed + i for i in range(count)]
        return self.generate(self.sampling(**sampling), conditions, seeds, batch_size, init=start)

    def init(self, images: Tensor, strength: float, masks: Tensor | None, count: int, field: str = "init") -> Init:
        """:class:`Init` of ``count`` images, checked against the model (a :class:`UserError` names what differs)."""
        size = self.image_size
        wanted = (count, self.space.shape.image_channels, *size)
        if tuple(images.shape) != wanted:
            raise UserError(f"{field}: the images are shaped {tuple(images.shape)} but the model needs {wanted}")
        if masks is not None and tuple(masks.shape) != (count, 1, *size):
            raise UserError(f"masks: shaped {tuple(masks.shape)} but the model needs {(count, 1, *size)} (1: generate)")
        if masks is not None and not torch.all((masks == 0) | (masks == 1)):
            raise UserError("masks: values other than 0 and 1; make them binary (e.g. core.masks.binarise, cut at 0.5)")
        return Init(images, strength, masks)


def check_conditions(
    ldm: LatentDiffusion,
    conditions: dict[str, list[Any]],
    num_images: int | None,
    field: str = "conditions",
    derived: set[str] = frozenset(),
) -> int:
    """How many images ``conditions`` ask for; a :class:`UserError` if they do not fit the model.
    ``derived``: fields made from the init images and masks where not given (the masked image)."""
    needed = sorted({m.reads(m.params) for m in ldm.conditioners} - (derived - set(conditions)))
    given = sorted(conditions)
    if given != needed:
        raise UserError(
            f"{field}: the model's conditioners read {needed or 'nothing'} but {given or 'nothing'} "
            f"was given; give one list for each of {needed}"
            if needed
            else f"{field}: the model is unconditional; give num_images instead of {given}"
        )
    lengths = {key: len(values) for key, values in conditions.items()}
    if len(set(lengths.values())) > 1:
        raise UserError(f"{field}: the lists have different lengths {lengths}; give one entry per image in each")
    if not needed:
        if not num_images:
            raise UserError(f"{field}: the model is unconditional; say how many images with num_images")
        return num_images
    device = next(ldm.parameters()).device
    ldm.check_inputs({key: batched(values, device) for key, values in conditions.items()}, field)
    return next(iter(lengths.values()))


def load_pipeline(
    ref: RunRef, ctx: RunContext, field: str, device: str | torch.device = "cpu", fabric: Fabric | None = None
) -> Pipeline:
    """The pipeline of a run holding an LDM (``train_ldm``, ``import_checkpoint``) and the
    latent space it was trained in (its spec's ``first_stage``); with a launched ``fabric``, on
    its device, sharing each generation among its processes."""
    device = fabric.device if fabric is not None else device
    trained = load_trained(ref, ctx, field, None, "ldm")
    spec = trained.spec
    space = load_latent_space(spec.first_stage, ctx, f"{field} (its first_stage)")
    size = spec.image_size()
    if size is None:
        raise UserError(f"{field}: {ref.run!r} was trained on images of varying size; sampling needs a fixed size")
    factor = space.shape.factor
    return Pipeline(
        ldm=trained.module.use_first_stage(space.first_stage).to(device),
        space=space.to(device),
        schedule=spec.diffusion.noise_schedule(),
        latent_shape=(space.shape.channels, size[0] // factor, size[1] // factor),
        run=ref.run,
        checkpoint=trained.checkpoint,
        step=trained.step,
        weights=ref.weights,
        reads=(trained.checkpoint, *space.sources),
        context=ctx,
        fabric=fabric,
    )
