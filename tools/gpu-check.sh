#!/usr/bin/env bash
# The GPU check (issue 16): everything segbench can only show on a GPU, in one script that ends
# inside 8 minutes on the lent H200, so that one call of the `device` tool does it all.
#
# Prepare, here (the device machine has torch, timm, opencv, pandas, rich, typer, but not these):
#   ../shared/tools/device-wheels.sh zstandard==0.25.0 tomli-w==1.2.0 simplejpeg==1.9.0 isal==1.9.1
# Run it there:   command "bash tools/gpu-check.sh", carry [".whl"], timeout_s 560
# Every step has its own time limit and the script goes on after a failure, so one broken step
# costs its limit, not the lease. What comes back under $OUT: gpu-check.log (all output),
# benchmark-*.json, predict.json. The figures go into docs/scale.md, beside the device's name.
set -uo pipefail
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu-check.log") 2>&1
started=$(date +%s)

step() {  # step SECONDS COMMAND...: run with a time limit, say how long it took and how it ended
    local limit=$1 t0
    shift
    t0=$(date +%s)
    echo "== $* (limit ${limit} s, $(( t0 - started )) s in)"
    timeout --signal=INT --kill-after=10 "$limit" "$@"
    echo "== exit $? after $(( $(date +%s) - t0 )) s"
}

# 1. the carried wheels, into a folder of their own (the image's own packages stay as they are)
site=$(mktemp -d)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl
export PYTHONPATH="$site:$PWD" NO_ALBUMENTATIONS_UPDATE=1 PYTHONUNBUFFERED=1 SEGBENCH_CACHE="$OUT/.cache"
bench() { python3 -m harness.cli "$@"; }
python3 -c 'import torch; print("torch", torch.__version__, "|", torch.cuda.get_device_name(0),
      "| CPU capability", torch.backends.cpu.get_cpu_capability())' || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

# 2. the CUDA tests (tests/test_cuda.py: fp16 with its GradScaler, bf16, CUDA against CPU prediction)
step 120 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py

# 3. throughput of the three recipes at full resolution (--size 1920x1280: the built-in images are
#    small) with their own batch sizes, bf16 with channels_last, and the same compiled; the loader
#    and harness overhead are measured on the CPU machines (docs/scale.md), so they are skipped here.
for recipe in vladimir alexander artsiom; do
    step 100 bench benchmark "recipes/$recipe.toml" --device cuda --size 1920x1280 \
        --variants "bf16+cl,bf16+cl+compile" --skip loader,overhead --warmup 3 --repeats 10 --results "$OUT/results"
done
find "$OUT/results" -name '*.json' -path '*benchmarks*' -exec cp {} "$OUT/" \; 2>/dev/null
for f in "$OUT"/*.json; do [ -e "$f" ] && mv "$f" "$OUT/benchmark-$(basename "$f")"; done

# 4. a short CUDA run of each half precision: the quick profile on the built-in set
for precision in fp16 bf16; do
    step 60 bench run recipes/alexander.toml --profile quick --device cuda --set "train.precision=$precision" \
        --results "$OUT/runs" --name "alexander-$precision"
done

# 5. the JPEG decoders on a full-size image, nvJPEG among them (tools/scale/codecs.py); then bench predict
#    at full size with flip TTA: 320 hard links to full-size synthetic JPEGs, the pointwise floor model
#    (tools/scale/pointwise.toml) and the quick alexander run of step 4.
step 60 bench data synth --out "$OUT/full" --cars 1 --test-cars 1 --size 1918x1280
images="$OUT/images" && mkdir -p "$images"
sources=("$OUT"/full/test/*.jpg)
step 30 python3 tools/scale/codecs.py "${sources[0]}"
for i in $(seq 0 319); do
    ln -f "${sources[$(( i % ${#sources[@]} ))]}" "$images/$(printf '%012x_%02d' "$i" $(( 1 + i % 16 ))).jpg"
done
step 40 bench run tools/scale/pointwise.toml --device cuda --results "$OUT/runs" --name pointwise
for run in pointwise alexander-bf16; do
    step 90 bench predict "$OUT/runs/$run" "$images" --out "$OUT/predict-$run" --format rle --device cuda \
        --batch-size 8 --workers 14
    cp "$OUT/predict-$run/predict.json" "$OUT/predict-$run.json" 2>/dev/null
done
echo "gpu-check: $(( $(date +%s) - started )) s in all"
