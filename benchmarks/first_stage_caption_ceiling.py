"""How much of a caption or a layout the first stage alone keeps: the `shapes` caption judge
(or, with --boxes, the layout judge) on its reconstructions of real validation images (an
upper bound for any LDM on that first stage).

    python benchmarks/first_stage_caption_ceiling.py --run shapes-text2img-autoencoder [--runs-dir runs] [--count 200]
    python benchmarks/first_stage_caption_ceiling.py --run shapes-layout-autoencoder --boxes
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from core import load_registry
from tasks.autoencoder.spec import TrainAutoencoderSpec
from tasks.cli.catalog import context
from tasks.runs.spec import RunRef
from tasks.runs.trained import load_trained, run_spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a train_autoencoder run on shapes")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"))
    parser.add_argument("--count", type=int, default=200, help="examples of each object count")
    parser.add_argument("--boxes", action="store_true", help="judge layouts: objects found in their boxes")
    args = parser.parse_args()
    ctx = context(load_registry(), args.runs_dir)
    ref = RunRef(run=args.run)
    first = load_trained(ref, ctx, "model", TrainAutoencoderSpec, "first_stage").module
    data_spec = run_spec(ref, ctx, "run").data
    val = data_spec.model_copy(update={"params": data_spec.params.model_copy(update={"split": "val"})}).build()
    examples = [val[i] for i in range(len(val))]
    if args.boxes:
        _boxes_ceiling(args, first, val, examples[: args.count])
        return
    for objects in (1, 2):
        chosen = [e for e in examples if e["caption"].count(" and ") == objects - 1][: args.count]
        images = torch.stack([e["image"] for e in chosen])
        with torch.no_grad():
            rebuilt = first.decode(first.encode(images)).clamp(-1, 1)
        right, _ = val.caption_matches(rebuilt, [e["caption"] for e in chosen])
        psnr = 10 * math.log10(4 / ((rebuilt - images) ** 2).mean().item())
        print(
            f"{args.run}: {objects}-object reconstructions judged right {right.double().mean().item():.1%} "
            f"of {len(chosen)}, PSNR {psnr:.2f} dB"
        )


def _boxes_ceiling(args: argparse.Namespace, first: torch.nn.Module, val, chosen: list[dict]) -> None:
    images = torch.stack([e["image"] for e in chosen])
    boxes = torch.stack([e["boxes"] for e in chosen])
    with torch.no_grad():
        rebuilt = first.decode(first.encode(images)).clamp(-1, 1)
    asked = boxes[..., 0] >= 0
    for name, pictures in (("real images", images), ("reconstructions", rebuilt)):
        found = val.boxes_found(pictures, boxes)[asked]
        print(f"{args.run}: {name}: objects found in their boxes {found.double().mean().item():.1%} of {len(found)}")
    psnr = 10 * math.log10(4 / ((rebuilt - images) ** 2).mean().item())
    print(f"{args.run}: reconstruction PSNR {psnr:.2f} dB")


if __name__ == "__main__":
    main()
