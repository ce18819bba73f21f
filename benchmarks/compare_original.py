"""Our import of the released CompVis models against the original code, run from a checkout of
it (nothing of it enters this repository).

    python benchmarks/compare_original.py PATH/TO/latent-diffusion --taming PATH/TO/taming-transformers \
        [--names tests/fixtures/original_names.json.gz] [--compare [CONFIG ...]] [--latent 16]

``--compare`` builds each config's original modules, redraws every parameter with a seed (so no
zero-initialised layer hides a difference), saves them as an original checkpoint (the UNet's raw
weights: the EMA naming is tested in CI), imports that with our ``import_checkpoint`` and compares, on the same
inputs: the first stage's moments and decoding, the conditioner's output, the UNet's output
with that conditioning, and a 10-step DDIM sample (the original ``DDIMSampler``, eta 0, against
our ``ddim`` with spacing ``ldm``) from the same noise, before decoding. Each row: the original
output's std and max|ours - original| / max|original|, in float32. Latents are ``--latent``
cells a side (the models are convolutional; smaller than the released size, for time).

``--names`` writes, for every released config (the first stages in
``models/first_stage_models/``, the LDMs in ``models/ldm/``, ``cin256-v2`` and
``txt2img-1p4B-eval``), its ``model`` section (training parts left out) and the name and shape
of every tensor the original modules hold, built from that section on the meta device: the
data ``tests/test_original_names.py`` checks our models against without the original code.
What the original imports but these modules do not need (``clip``, ``kornia``, ``omegaconf``'s
``ListConfig``) is stubbed; its VQ quantiser comes from taming-transformers.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import sys
import types
from pathlib import Path
from typing import Any

import torch
import yaml
from original_modules import compare, cond_stage, first_stage

CONFIGS = (
    *(
        f"models/first_stage_models/{name}/config.yaml"
        for name in (
            "kl-f4",
            "kl-f8",
            "kl-f16",
            "kl-f32",
            "vq-f4",
            "vq-f4-noattn",
            "vq-f8",
            "vq-f8-n256",
            "vq-f16",
        )
    ),
    *(
        f"models/ldm/{name}/config.yaml"
        for name in (
            "bsr_sr",
            "celeba256",
            "cin256",
            "ffhq256",
            "inpainting_big",
            "layout2img-openimages256",
            "lsun_beds256",
            "lsun_churches256",
            "semantic_synthesis256",
            "semantic_synthesis512",
            "text2img256",
        )
    ),
    "configs/latent-diffusion/cin256-v2.yaml",
    "configs/latent-diffusion/txt2img-1p4B-eval.yaml",
)
TRAINING_ONLY = ("lossconfig", "scheduler_config", "monitor", "ckpt_path", "ignore_keys")


def _stub_imports(checkout: Path, taming: Path) -> None:
    """Make the original's modules importable without the packages only its other parts use."""
    for name in ("clip", "kornia"):
        sys.modules.setdefault(name, types.ModuleType(name))
    omegaconf, listconfig = types.ModuleType("omegaconf"), types.ModuleType("omegaconf.listconfig")
    listconfig.ListConfig = type("ListConfig", (list,), {})
    sys.modules.setdefault("omegaconf", omegaconf)
    sys.modules.setdefault("omegaconf.listconfig", listconfig)
    sys.path[:0] = [str(checkout), str(taming)]


def _without_training(section: Any) -> Any:
    if isinstance(section, dict):
        return {key: _without_training(value) for key, value in section.items() if key not in TRAINING_ONLY}
    return section


def _shapes(module: torch.nn.Module | None) -> dict[str, list[int]]:
    return {key: list(value.shape) for key, value in module.state_dict().items()} if module is not None else {}


def original_names(checkout: Path) -> dict[str, Any]:
    """Per config: its model section and, per part, a key into a table of unique name-to-shape maps."""
    from ldm.modules.diffusionmodules.openaimodel import UNetModel  # the original code, from the checkout

    table, configs = {}, {}
    for relative in CONFIGS:
        model = _without_training(yaml.safe_load((checkout / relative).read_text())["model"])
        params = model.get("params", {})
        with torch.device("meta"):
            if "unet_config" not in params:
                parts = {"": _shapes(first_stage(model))}
            else:
                first = params["first_stage_config"]
                parts = {
                    "first_stage_model.": _shapes(first_stage(first)),
                    "model.diffusion_model.": _shapes(UNetModel(**params["unet_config"]["params"])),
                    "cond_stage_model.": _shapes(cond_stage(params.get("cond_stage_config"), first)),
                }
        keys = {}
        for prefix, shapes in parts.items():
            digest = hashlib.sha256(json.dumps(shapes, sort_keys=True).encode()).hexdigest()[:16]
            table[digest], keys[prefix] = shapes, digest
        configs[relative] = {"model": model, "parts": keys}
    return {"source": "CompVis/latent-diffusion", "configs": configs, "shapes": table}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkout", type=Path, help="a checkout of CompVis/latent-diffusion")
    parser.add_argument("--taming", type=Path, required=True, help="a checkout of CompVis/taming-transformers")
    parser.add_argument("--names", type=Path, help="write the names and shapes of every config's tensors here")
    parser.add_argument("--compare", nargs="*", help="compare these configs (all when none is named)")
    parser.add_argument("--latent", type=int, default=16, help="latent side of the compared inputs")
    args = parser.parse_args()
    _stub_imports(args.checkout, args.taming)
    if args.compare is not None:
        for relative in args.compare or CONFIGS:
            for row in compare(args.checkout, relative, args.latent):
                print(" | ".join(str(cell) for cell in row), flush=True)
    if args.names:
        data = original_names(args.checkout)
        with gzip.open(args.names, "wt") as handle:
            json.dump(data, handle, sort_keys=True)
        print(f"{len(data['configs'])} configs, {len(data['shapes'])} distinct parts: {args.names}")


if __name__ == "__main__":
    main()
