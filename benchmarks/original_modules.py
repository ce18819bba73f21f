"""The original CompVis modules built from a config, and the comparison of our import of them
(used by ``compare_original.py``, which puts the original checkout on ``sys.path`` first; the
original code is imported inside the functions for that reason)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.nn import functional as F

from core import Conditioning, load_registry
from core.masks import masked_input
from core.sampling import denoiser, sample, sigmas
from tasks.api import load
from tasks.autoencoder.latent_space import load_latent_space
from tasks.cli.catalog import context
from tasks.run import main as run_task
from tasks.runs.spec import RunRef

CAPTION = "a painting of a fox sitting in a field at sunrise"


def first_stage(section: dict[str, Any]) -> torch.nn.Module:
    """The original first stage's modules: encoder, decoder, quant convs and (VQ) quantiser."""
    from ldm.modules.diffusionmodules.model import Decoder, Encoder
    from taming.modules.vqvae.quantize import VectorQuantizer2

    params = section["params"]
    dd, embed = params["ddconfig"], params["embed_dim"]
    moments = 2 * dd["z_channels"] if dd.get("double_z", True) else dd["z_channels"]
    quant = 2 * embed if dd.get("double_z", True) else embed
    parts = {
        "encoder": Encoder(**dd),
        "decoder": Decoder(**dd),
        "quant_conv": torch.nn.Conv2d(moments, quant, 1),
        "post_quant_conv": torch.nn.Conv2d(embed, dd["z_channels"], 1),
    }
    if "n_embed" in params:
        parts["quantize"] = VectorQuantizer2(params["n_embed"], embed, beta=0.25)
    return torch.nn.ModuleDict(parts)


def cond_stage(section: Any, first: dict[str, Any]) -> torch.nn.Module | None:
    """The original conditioner with weights (none for Identity, the first stage or none)."""
    from ldm.modules.encoders import modules

    if not isinstance(section, dict) or section["target"] == "torch.nn.Identity":
        return None
    name, params = section["target"].rsplit(".", 1)[1], dict(section.get("params", {}))
    if name == "BERTEmbedder":
        params["use_tokenizer"] = False  # the tokenizer holds no weights (and would download BERT's vocabulary)
    return getattr(modules, name)(**params)


def _redraw(module: torch.nn.Module, seed: int) -> None:
    """Every floating parameter and buffer drawn again: norm scales near 1, biases small, the rest
    N(0, 1) / sqrt(fan-in)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in sorted(module.state_dict(keep_vars=True).items()):
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            if tensor.ndim == 1:
                value = 1 + 0.1 * noise if "norm" in name and name.endswith("weight") else 0.1 * noise
            else:
                value = noise / max(1, tensor[0].numel()) ** 0.5
            tensor.copy_(value)


def _error(ours: torch.Tensor, theirs: torch.Tensor) -> tuple[float, float]:
    theirs = theirs.float()
    return round(theirs.std().item(), 4), float(f"{((ours.float() - theirs).abs().max() / theirs.abs().max()):.2e}")


def _first_stage_outputs(parts: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The original's moments (quant_conv of the encoder) and its decoding of their mode."""
    moments = parts["quant_conv"](parts["encoder"](x))
    z = moments.chunk(2, dim=1)[0] if "quantize" not in parts else parts["quantize"](moments)[0]
    return moments, parts["decoder"](parts["post_quant_conv"](z))


def _schedule(params: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The original LatentDiffusion's schedule buffers (``linear``: the squared linspace of the
    roots, in float64, stored in float32)."""
    start, end, steps = params.get("linear_start", 1e-4), params.get("linear_end", 2e-2), params.get("timesteps", 1000)
    betas = torch.linspace(start**0.5, end**0.5, steps, dtype=torch.float64) ** 2
    cumprod = torch.cumprod(1 - betas, 0)
    prev = torch.cat([torch.ones(1, dtype=torch.float64), cumprod[:-1]])
    return {"betas": betas.float(), "alphas_cumprod": cumprod.float(), "alphas_cumprod_prev": prev.float()}


def _condition(name: str | None, ours: Any, original: torch.nn.Module | None, latent: int) -> tuple[Any, Any]:
    """(our conditioner's input, the original's conditioning c) for conditioner ``name``."""
    generator = torch.Generator().manual_seed(7)
    if name == "class_label":
        label = torch.tensor([3])
        return label, original({"class_label": label}, key="class_label")
    if name in ("text_bert", "layout"):
        given = [CAPTION] if name == "text_bert" else [[[5, 0.1, 0.2, 0.5, 0.6], [17, 0.4, 0.3, 0.9, 0.8]]]
        ids = ours.token_ids(given)[0] if name == "text_bert" else ours.token_ids(given)
        return given, original(ids)
    if name == "semantic_map":
        seg = torch.randint(0, ours.params.num_classes, (1, 4 * latent, 4 * latent), generator=generator)
        onehot = F.one_hot(seg, ours.params.num_classes).permute(0, 3, 1, 2).float()
        return seg, original(onehot)
    if name == "low_res":
        lowres = torch.rand(1, 3, latent, latent, generator=generator) * 2 - 1
        return lowres, lowres
    return None, None


def _inpainting_condition(parts: torch.nn.Module, latent: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(8)
    image = torch.rand(1, 3, 4 * latent, 4 * latent, generator=generator) * 2 - 1
    mask = (torch.rand(1, 1, 4 * latent, 4 * latent, generator=generator) > 0.5).float()
    given = masked_input(image, mask)
    c = torch.cat([parts["quant_conv"](parts["encoder"](given[:, :3])), F.interpolate(given[:, 3:], size=latent)], 1)
    return given, c


class _Shim:
    """What the original DDIMSampler asks of a LatentDiffusion: its schedule and apply_model."""

    def __init__(self, unet: torch.nn.Module, key: str | None, schedule: dict[str, torch.Tensor]) -> None:
        self.unet, self.key = unet, key
        self.betas, self.alphas_cumprod = schedule["betas"], schedule["alphas_cumprod"]
        self.alphas_cumprod_prev, self.num_timesteps = schedule["alphas_cumprod_prev"], len(schedule["betas"])
        self.device = torch.device("cpu")

    def apply_model(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        if self.key == "concat":
            return self.unet(torch.cat([x, c], dim=1), t)
        return self.unet(x, t, context=c) if self.key == "crossattn" else self.unet(x, t)


def _original_ddim(shim: _Shim, c: Any, noise: torch.Tensor) -> torch.Tensor:
    from ldm.models.diffusion.ddim import DDIMSampler

    sampler = DDIMSampler(shim)
    sampler.register_buffer = lambda name, value: setattr(sampler, name, value)  # it moves them to CUDA
    samples, _ = sampler.sample(
        10, len(noise), tuple(noise.shape[1:]), conditioning=c, eta=0.0, x_T=noise, verbose=False
    )
    return samples


def _compare_ldm(relative: str, runs: Path, parts: dict[str, Any], params: dict[str, Any], latent: int) -> list:
    pipe = load("imported", runs_dir=runs)
    module = pipe.ldm.conditioners[0] if len(pipe.ldm.conditioners) else None
    name = pipe.ldm.uses[0].name if module is not None else None
    if name == "inpainting":
        given, c = _inpainting_condition(parts["first_stage"], latent)
    else:
        given, c = _condition(name, module, parts.get("cond"), latent)
    key = params.get("conditioning_key") or ("concat" if params.get("concat_mode", True) else "crossattn")
    key = None if module is None else key
    generator = torch.Generator().manual_seed(9)
    z = torch.randn(1, pipe.latent_shape[0], latent, latent, generator=generator)
    t = torch.tensor([421])
    shim = _Shim(parts["unet"], key, _schedule(params))
    rows = []
    with torch.no_grad():
        ours_c = pipe.ldm.condition({module.reads(module.params): given}) if module is not None else Conditioning()
        if module is not None:
            mine = ours_c.context if key == "crossattn" else ours_c.concat
            rows.append([relative, f"conditioner ({name})", *_error(mine, c)])
        rows.append([relative, "UNet output", *_error(pipe.ldm.denoiser(z, t, ours_c), shim.apply_model(z, t, c))])
        theirs = _original_ddim(shim, c, z)
        ddim = pipe.sampling(sampler="ddim").sampler.build()
        net = denoiser(lambda x, s: pipe.ldm.denoiser(x, s, ours_c), pipe.schedule, pipe.ldm.prediction)
        rows.append(
            [relative, "DDIM, 10 steps", *_error(sample(ddim, net, z, sigmas(pipe.schedule, 10, "ldm")), theirs)]
        )
    return rows


def compare(checkout: Path, relative: str, latent: int) -> list[list[Any]]:
    """Rows (config, output, original std, relative max error) for one config."""
    model = yaml.safe_load((checkout / relative).read_text())["model"]
    params = model.get("params", {})
    ldm = "unet_config" in params
    section = params["first_stage_config"] if ldm else model
    parts: dict[str, Any] = {"first_stage": first_stage(section).eval()}
    _redraw(parts["first_stage"], 0)
    state = {("first_stage_model." if ldm else "") + k: v for k, v in parts["first_stage"].state_dict().items()}
    if ldm:
        state |= _ldm_state(parts, params, section)
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        torch.save({"state_dict": state, "global_step": 0}, tmp / "model.ckpt")
        (tmp / "config.yaml").write_text(yaml.safe_dump({"model": model}))
        spec = {
            "spec_version": 1,
            "task": "import_checkpoint",
            "name": "imported",
            "runtime": {"accelerator": "cpu"},
            "checkpoint": str(tmp / "model.ckpt"),
            "original_config": str(tmp / "config.yaml"),
            "weights": "raw",
        }
        (tmp / "import.json").write_text(json.dumps(spec))
        if run_task([str(tmp / "import.json"), "--runs-dir", str(tmp / "runs")]) != 0:
            return [[relative, "import", "refused", ""]]
        rows = _compare_first_stage(relative, tmp / "runs", parts["first_stage"])
        if ldm:
            rows += _compare_ldm(relative, tmp / "runs", parts, params, latent)
    return rows


def _ldm_state(parts: dict[str, Any], params: dict[str, Any], section: dict[str, Any]) -> dict[str, torch.Tensor]:
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    parts["unet"] = UNetModel(**params["unet_config"]["params"]).eval()
    _redraw(parts["unet"], 1)
    parts["cond"] = cond_stage(params.get("cond_stage_config"), section)
    state = {f"model.diffusion_model.{k}": v for k, v in parts["unet"].state_dict().items()}
    if parts["cond"] is not None:
        parts["cond"].eval()
        _redraw(parts["cond"], 2)
        state |= {f"cond_stage_model.{k}": v for k, v in parts["cond"].state_dict().items()}
    if params.get("scale_by_std"):
        state["scale_factor"] = torch.tensor(0.25)
    return state | _schedule(params)


def _compare_first_stage(relative: str, runs: Path, parts: torch.nn.Module) -> list:
    space = load_latent_space(RunRef(run="imported"), context(load_registry(), runs), "first_stage")
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        moments, decoded = _first_stage_outputs(parts, x)
        ours = space.first_stage
        rows = [[relative, "first stage moments", *_error(ours.moments(x), moments)]]
        rows.append([relative, "first stage decoding", *_error(ours.decode(ours.mode(x)), decoded)])
    return rows
