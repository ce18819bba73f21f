#!/usr/bin/env bash
# The checks that need a CUDA GPU, as one script for a lent GPU machine (see CONTRIBUTING.md):
# the test suite on the GPU, the quickstart trained in bf16-mixed, and the speed benchmarks on
# the GPU. Logs go to $OUT (default ./gpu-out).
#
#   bash benchmarks/gpu_check.sh            # from the repository root
#
# The machine's Python must hold torch with CUDA; packages it lacks travel as wheels in .whl/
# (pydantic, lightning-fabric, diffusers, ...), installed into /tmp/site.
. "$(dirname "$0")/gpu_env.sh"

# Under 10 minutes in all on a lent H200 (2026-11-27): its kernel launches are slow (gVisor),
# so the runs are short and the whole suite comes last, with what time is left.
step test_cuda 120 python3 -m pytest -q -p no:cacheprovider -rfE tests/test_cuda.py
tail -n 15 "$OUT/test_cuda.log"

mkdir -p /tmp/gpu-runs
step quickstart_bf16 150 python3 -m tasks.run configs/quickstart.json --runs-dir /tmp/gpu-runs \
    --set runtime.accelerator=cuda --set runtime.precision=bf16-mixed --set stages.1.train.max_steps=1000
tail -c 600 "$OUT/quickstart_bf16.log"; echo
cat /tmp/gpu-runs/quickstart-autoencoder/validation.json; echo
tail -n 1 /tmp/gpu-runs/quickstart-autoencoder/metrics.jsonl
tail -n 1 /tmp/gpu-runs/quickstart-ldm/metrics.jsonl
cp /tmp/gpu-runs/quickstart-samples/grid.png "$OUT/quickstart_bf16_grid.png" 2>/dev/null

step unet_fp32 45 python3 benchmarks/unet_vs_diffusers.py --device cuda --rounds 20 --warmup 5
step unet_bf16 45 python3 benchmarks/unet_vs_diffusers.py --device cuda --precision bf16-mixed --rounds 20 --warmup 5
step unet_bf16_b256 45 python3 benchmarks/unet_vs_diffusers.py --device cuda --precision bf16-mixed --batch 256 --rounds 10 --warmup 3
step engine_overhead 70 python3 benchmarks/engine_overhead.py --device cuda --steps 110 --rounds 3
for name in unet_fp32 unet_bf16 unet_bf16_b256 engine_overhead; do tail -n 4 "$OUT/$name.log"; done
step pytest 200 python3 -m pytest -q -p no:cacheprovider -rfE --tb=short
grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/pytest.log" | tail -n 30
