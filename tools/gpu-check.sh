#!/usr/bin/env bash
# The GPU check: everything segbench can only show on a GPU, in one script that ends inside 8 minutes
# on the lent machine, so that one call of the `device` tool does it all. Every step asserts what it
# measures, and the script stops with a non-zero exit at the first step that fails.
#
#   bash tools/gpu-check.sh          on the GPU machine (CUDA steps, full-resolution benchmarks)
#   bash tools/gpu-check.sh --cpu    the rehearsal: every step at tiny size on the CPU (.ci/run runs it),
#                                    so the script is known to work before a GPU is lent
#
# Prepare, here (the device machine has torch, timm, opencv, pandas, rich, typer, but not these; setuptools
# builds segbench there, with --no-build-isolation, as nothing can be downloaded):
#   ../shared/tools/device-wheels.sh zstandard==0.25.0 tomli-w==1.2.0 simplejpeg==1.9.0 isal==1.9.1 \
#       submitit==1.5.4 cloudpickle==3.1.3 setuptools
# Run it there:   command "bash tools/gpu-check.sh", carry [".whl"], timeout_s 560
# What comes back under $OUT: gpu-check.log (all output), benchmark-*.json, predict-*.json. The figures
# go into docs/scale.md, beside the device's name.
set -euo pipefail
mode=gpu
[ "${1:-}" = "--cpu" ] && mode=cpu
repo=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu-check.log") 2>&1
started=$(date +%s)
python=$(command -v "${PYTHON:-python3}")
case $python in /*) ;; *) python="$PWD/$python" ;; esac  # the steps run from another folder (not resolved:
                                                          # a venv's python is a link that must stay one)

step() {  # step SECONDS COMMAND...: run with a time limit; stop the script when it fails
    local limit=$1 t0 code=0
    shift
    t0=$(date +%s)
    echo "== $* (limit ${limit} s, $(( t0 - started )) s in)"
    timeout --signal=INT --kill-after=10 "$limit" "$@" || code=$?
    echo "== exit $code after $(( $(date +%s) - t0 )) s"
    [ "$code" -eq 0 ] || { echo "gpu-check: FAILED at: $*"; exit "$code"; }
}

# 1. segbench itself, installed (not the checkout on PYTHONPATH: its plugins register through the
#    installed package's entry points), with the carried wheels, into a folder of their own; the
#    image's own packages stay as they are. Everything then runs from a folder that is not the checkout.
site="$OUT/site"
if [ -d "$repo/.whl" ] && ls "$repo"/.whl/*.whl >/dev/null 2>&1; then
    step 120 "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$repo"/.whl/*.whl
fi
export PYTHONPATH="$site" NO_ALBUMENTATIONS_UPDATE=1 PYTHONUNBUFFERED=1 SEGBENCH_CACHE="$OUT/.cache" COLUMNS=100
step 120 "$python" -m pip install -q --no-deps --no-build-isolation --no-compile --no-cache-dir --target "$site" "$repo"
work="$OUT/work" && mkdir -p "$work" && cd "$work"
export PATH="$site/bin:$PATH"  # the bench command the install wrote
step 30 "$python" -c '
from importlib.metadata import entry_points
import harness, torch
found = sorted(e.name for e in entry_points(group="bench"))
assert {"core", "alexander", "vladimir", "artsiom"} <= set(found), f"entry points of group bench: {found}"
assert "/site/" in harness.__file__, f"harness imported from {harness.__file__}, not the installed package"
cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA"
print("torch", torch.__version__, "|", cuda, "| CPU capability", torch.backends.cpu.get_cpu_capability())'
step 30 bash -c "command -v bench && bench plugins | grep -q smp"

if [ "$mode" = gpu ]; then
    device=cuda
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    gpus=$("$python" -c 'import torch; print(",".join(f"cuda:{i}" for i in range(torch.cuda.device_count())))')
    # the quick profile on the built-in set, and a full-resolution image for the benchmarks
    tiny=()
    size=1920x1280
    # 2. the CUDA tests: fp16 asserts its GradScaler scaled, bf16 trains, CUDA prediction against the CPU's
    #    (fp32) and half precision's, within stated shares of pixels
    step 150 "$python" -m pytest -q -p no:cacheprovider "$repo/tests/test_cuda.py"
else
    device=cpu
    gpus=cpu,cpu
    tiny=(--set data.source.cars=4 --set data.source.test_cars=1 --set "data.source.size=[96, 64]" --set folds.k=2
          --set train.epochs=1 --set train.steps_per_epoch=2 --set train.precision=fp32 --set train.channels_last=false)
    size=96x64
fi

# 3. a quick run on the device, then the same folds with one worker per device (--devices): same Dice
step 200 bench run "$repo/recipes/alexander.toml" --profile quick --device "$device" "${tiny[@]}" \
    --results "$OUT/runs" --name quick
step 300 bench run "$repo/recipes/alexander.toml" --profile quick --devices "$gpus" "${tiny[@]}" \
    --results "$OUT/runs" --name quick-devices
step 30 "$python" -c '
import json, sys
one, spread = (json.load(open(f"{sys.argv[1]}/runs/{name}/summary.json")) for name in ("quick", "quick-devices"))
assert one["complete"] and spread["complete"]
print(f"out-of-fold Dice: one process {one['"'"'oof_dice'"'"']:.4f}, one worker a device {spread['"'"'oof_dice'"'"']:.4f}")
assert abs(one["oof_dice"] - spread["oof_dice"]) < 0.02, "the folds spread over devices should train alike"' "$OUT"

# 3b. each fold trained by several processes (--ddp): on the GPUs when there are two or more (one lent
#     GPU cannot show it), on the CPU in the rehearsal
processes=$(( $(tr -cd , <<< "$gpus" | wc -c) + 1 ))
if [ "$processes" -ge 2 ]; then
    step 300 bench run "$repo/recipes/alexander.toml" --profile quick --ddp "$processes" --device "$device" \
        "${tiny[@]}" --results "$OUT/runs" --name quick-ddp
    step 30 "$python" -c '
import json, sys
run = json.load(open(f"{sys.argv[1]}/runs/quick-ddp/summary.json"))
assert run["complete"] and json.load(open(f"{sys.argv[1]}/runs/quick-ddp/environment.json"))["ddp"]["processes"] >= 2
print(f"--ddp: out-of-fold Dice {run['"'"'oof_dice'"'"']:.4f}")' "$OUT"
else
    echo "== --ddp skipped: one GPU"
fi

# 4. throughput of the three recipes (on the GPU at full resolution, with their own batch sizes)
for recipe in vladimir alexander artsiom; do
    if [ "$mode" = gpu ]; then
        step 100 bench benchmark "$repo/recipes/$recipe.toml" --device cuda --size "$size" \
            --variants "bf16+cl,bf16+cl+compile" --skip loader,overhead --warmup 3 --repeats 10 --results "$OUT/results"
    else
        step 100 bench benchmark "$repo/recipes/$recipe.toml" --profile quick --device cpu --size "$size" \
            --variants fp32 --skip loader,overhead --warmup 1 --repeats 2 --results "$OUT/results"
    fi
done
for f in "$OUT"/results/benchmarks/*.json; do cp "$f" "$OUT/benchmark-$(basename "$f")"; done

# 5. prediction of the quick run's test images, in one job and in two shards: the same submission
test_images=$(find "$SEGBENCH_CACHE" -type d -name test | head -1)
[ -n "$test_images" ] || { echo "gpu-check: no built-in test images under $SEGBENCH_CACHE"; exit 1; }
step 120 bench predict "$OUT/runs/quick" "$test_images" --out "$OUT/predict-one" --device "$device"
for shard in 1/2 2/2; do
    step 120 bench predict "$OUT/runs/quick" "$test_images" --out "$OUT/predict-shards" --device "$device" --shard "$shard"
done
step 10 cmp "$OUT/predict-one/submission.csv.gz" "$OUT/predict-shards/submission.csv.gz"
cp "$OUT/predict-one/predict.json" "$OUT/predict-one.json"
echo "gpu-check ($mode): passed in $(( $(date +%s) - started )) s"
