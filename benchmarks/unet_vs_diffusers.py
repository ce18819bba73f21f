"""Our UNet against diffusers' UNet2DConditionModel at one fixed configuration, side by side.

Configuration (issue #6): latent 16x16x4, channels 64/128/128, 2 residual blocks per level,
cross-attention transformers at the two lower levels (and the middle) with head width 32,
context 8 tokens x 128, GroupNorm 32, time embedding added (not scale-shift, diffusers'
default). Batch 16. Each round times a forward pass (no grad) and a train step (forward,
MSE loss, backward, AdamW step) of each model in turn, so all see the same machine load;
the first rounds are warm-up. Each model is timed in two set-ups: "plain", contiguous
weights and ``torch.optim.AdamW`` with its defaults (as diffusers' training scripts make
it); and "engine", as our training engine runs any model (``make_optimizer``'s fused AdamW,
channels-last weights: the default ``runtime.memory_format``). The plain pair and the
engine pair compare the networks; ours (engine) against diffusers (plain) compares what a
user of each project gets by default. FLOPs are counted once with torch's FlopCounterMode; the
matmul peak is the best of several 2048^3 matmuls (4096^3 on a GPU) on the same threads, in the
precision the models run in (fp32, or bf16 under ``--precision bf16-mixed``, which runs both
models under bf16 autocast). On a GPU every timing waits for the device.

    python benchmarks/unet_vs_diffusers.py [--rounds 7] [--warmup 2] [--threads N]
        [--device cpu|cuda] [--precision 32-true|bf16-mixed] [--batch 16]

Prints the parameter counts, each model's median ms per forward and per train step, their
GFLOP/s, the fraction of the matmul peak, and the ratios diffusers / ours (> 1: ours faster).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from core import Conditioning
from plugins.unet import UNet
from tasks.engine.optim import make_optimizer
from tasks.engine.specs import OptimizerSpec

SIDE, TOKENS, CONTEXT = 16, 8, 128
SETUPS = ("plain", "engine")


def ours() -> torch.nn.Module:
    return UNet(
        UNet.Params(
            in_channels=4,
            out_channels=4,
            context_dim=CONTEXT,
            model_channels=64,
            channel_mult=[1, 2, 2],
            num_res_blocks=2,
            attention_levels=[1, 2],
            head_channels=32,
            norm_groups=32,
            scale_shift_norm=False,
        )
    )


def theirs() -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    # diffusers' attention_head_dim is, for historical reasons, the number of heads: 128 / 4 = 32 wide.
    return UNet2DConditionModel(
        sample_size=SIDE,
        in_channels=4,
        out_channels=4,
        block_out_channels=(64, 128, 128),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=CONTEXT,
        attention_head_dim=4,
        norm_num_groups=32,
    )


def calls(
    model: torch.nn.Module,
    is_ours: bool,
    batch: int,
    device: str,
    bf16: bool,
    engine: bool,
    shape: tuple[int, int, int] = (SIDE, TOKENS, CONTEXT),
):
    """(forward, train_step, run) closures over fixed seeded inputs on ``device`` (``shape``:
    latent side, context tokens, context width); ``engine``: the optimiser and memory format of
    our training engine, else torch's AdamW defaults."""
    side, tokens, width = shape
    generator = torch.Generator().manual_seed(0)
    x, target = (torch.randn(batch, 4, side, side, generator=generator).to(device) for _ in range(2))
    t = torch.randint(0, 1000, (batch,), generator=generator).float().to(device)
    context = torch.randn(batch, tokens, width, generator=generator).to(device)
    cond = Conditioning(context=context)
    if engine:
        model.to(memory_format=torch.channels_last)
        optimizer = make_optimizer(OptimizerSpec(lr=1e-4), model)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def run() -> torch.Tensor:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            out = model(x, t, cond) if is_ours else model(x, t, encoder_hidden_states=context).sample
        return out.float()

    def forward() -> None:
        with torch.no_grad():
            run()

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(run(), target).backward()
        optimizer.step()

    return forward, train_step, run


def flops(run) -> tuple[float, float]:
    """(forward FLOPs, forward + backward FLOPs)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        run()
    forward = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        run().square().mean().backward()
    return forward, counter.get_total_flops()


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: str) -> float:
    """Milliseconds ``fn`` takes, waiting for the device before and after."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return (time.perf_counter() - start) * 1000


def matmul_peak(device: str, dtype: torch.dtype, repeats: int = 5) -> float:
    """The best matmul rate of ``dtype`` on this device, in GFLOP/s."""
    n = 4096 if device == "cuda" else 2048
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    return 2 * n**3 / min(timed(lambda: a @ b, device) for _ in range(repeats)) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    # fp32 means fp32 on a GPU too: no TF32 in the models or in the peak.
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    bf16 = args.precision == "bf16-mixed"
    torch.manual_seed(0)
    models = {
        f"{who} ({setup})": make().to(args.device)
        for setup in SETUPS
        for who, make in (("ours", ours), ("diffusers", theirs))
    }
    closures = {
        name: calls(model, name.startswith("ours"), args.batch, args.device, bf16, name.endswith("(engine)"))
        for name, model in models.items()
    }
    times = {name: {"forward": [], "train": []} for name in models}
    for round_ in range(args.warmup + args.rounds):
        for name, (forward, train_step, _) in closures.items():
            f, s = timed(forward, args.device), timed(train_step, args.device)
            if round_ >= args.warmup:
                times[name]["forward"].append(f)
                times[name]["train"].append(s)
    peak = matmul_peak(args.device, torch.bfloat16 if bf16 else torch.float32)
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"threads {torch.get_num_threads()}"
    print(f"{where}, batch {args.batch}, {args.precision}, matmul peak {peak:.1f} GFLOP/s")
    medians = {}
    for name, model in models.items():
        forward_flops, train_flops = flops(closures[name][2])
        f, s = statistics.median(times[name]["forward"]), statistics.median(times[name]["train"])
        medians[name] = (f, s)
        print(
            f"{name:18s} {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params | forward {f:.1f} ms "
            f"({forward_flops / f / 1e6:.1f} GFLOP/s, {forward_flops / f / 1e6 / peak:.0%} of peak) | "
            f"train step {s:.1f} ms ({train_flops / s / 1e6:.1f} GFLOP/s, {train_flops / s / 1e6 / peak:.0%} of peak)"
        )
    for theirs_, ours_ in [
        *((f"diffusers ({s})", f"ours ({s})") for s in SETUPS),
        ("diffusers (plain)", "ours (engine)"),
    ]:
        print(
            f"{theirs_} / {ours_}: forward {medians[theirs_][0] / medians[ours_][0]:.3f}, "
            f"train step {medians[theirs_][1] / medians[ours_][1]:.3f}"
        )


if __name__ == "__main__":
    main()
