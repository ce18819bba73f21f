#!/usr/bin/env bash
# Issue #22's GPU measurements, as one script for a lent GPU machine (under 6 minutes): the
# txt2img UNet's train step through our engine's set-up, eager and compiled, beside diffusers',
# its share of the bf16 matmul peak, guided sampling in fp32 / bf16 / compiled, and the share of
# an autoencoder run's time spent waiting for 256 px PNGs (benchmarks/gpu_scale.py). Logs and
# the JSON report go to $OUT (default ./gpu-out).
#
#   bash benchmarks/gpu_scale.sh            # from the repository root
. "$(dirname "$0")/gpu_env.sh"
export PYTHONPATH=$PYTHONPATH:.
step gpu_scale 340 python3 benchmarks/gpu_scale.py --device cuda
tail -c 3000 "$OUT/gpu_scale.log"
