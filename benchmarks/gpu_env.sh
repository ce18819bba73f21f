# Sourced by the GPU scripts (gpu_check.sh, gpu_scale.sh): the packages the lent machine lacks
# (wheels in .whl/) and this project installed into /tmp/site, $OUT made, the GPU described,
# and step(), which runs a command with a time limit, logging to $OUT/NAME.log.
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
# The package itself, for its entry points (the built-in plugins are found through them).
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/site . || exit 1
export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(), 'bf16', torch.cuda.is_bf16_supported())"

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log, report the exit code
    local name=$1 limit=$2; shift 2
    local start=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    echo "== $name: exit $? in $((SECONDS - start)) s"
}

