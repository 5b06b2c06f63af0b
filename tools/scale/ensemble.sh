#!/usr/bin/env bash
# The ensemble's test pass through the bench command (docs/scale.md), beside the in-process benchmark
# (tests/benchmarks/test_bench_ensemble.py): four runs of the pointwise floor model
# (tools/scale/pointwise.toml), each with its own seed, trained on 2 full-size synthetic cars and
# predicting IMAGES full-size test images (hard links to 16 JPEGs), and
#   bench ensemble RUN1 RUN2 RUN3 RUN4 --weights 0.45,0.1,0.3,0.15 --threshold 0.5 --post none
# with one worker process per core, as a user runs it. Prints bench ensemble's own images/s line.
#
#   tools/scale/ensemble.sh WORK [IMAGES]        e.g. tools/scale/ensemble.sh /scratch/ens 1024
#
# The runs' test maps are then replaced by the benchmark's car-like maps (tools/scale/car_maps.py),
# so that the two figures are of the same work; MAPS=model keeps the floor model's own maps, which
# disagree on every pixel (the exact merge's worst case). SIZE=WxH the images' size (default
# 1918x1280). POST=convex_hull,keep_largest (or seed_hull) post-processes every mask, forced
# (--force-post), instead of --post none. WORK needs about 1 GB per 1,000 images. Run from the checkout.
set -euo pipefail
work=$1
images=${2:-1024}
size=${SIZE:-1918x1280}
bench=${BENCH:-.venv/bin/bench}
export NO_ALBUMENTATIONS_UPDATE=1
mkdir -p "$work"

data="$work/data-$size-$images"
if [ ! -d "$data" ]; then
    "$bench" data synth --out "$data.source" --cars 2 --test-cars 1 --size "$size"
    mkdir "$data"
    cp -r "$data.source/train" "$data.source/train_masks" "$data.source/train_masks.csv" "$data"
    [ -f "$data.source/metadata.csv" ] && cp "$data.source/metadata.csv" "$data"
    mkdir "$data/test"
    sources=("$data.source"/test/*.jpg)
    for ((index = 0; index < images; index++)); do  # Carvana's naming: a 12-digit car id and the view
        printf -v name '%012x_%02d.jpg' $((index / 16)) $((1 + index % 16))
        ln "${sources[index % ${#sources[@]}]}" "$data/test/$name"
    done
fi

runs=()
for seed in 1 2 3 4; do
    "$bench" run tools/scale/pointwise.toml --set data.root="$data" --set seed=$seed --set train.epochs=1 \
        --results "$work/runs" --name "pointwise-$seed" | tail -1
    runs+=("$work/runs/pointwise-$seed")
done

if [ "${MAPS:-car}" = car ]; then  # the benchmark's maps: a 1x1 convolution's disagree on every pixel
    "$(dirname "$bench")/python" tools/scale/car_maps.py "${runs[@]}"
fi
rm -rf "$work/ensemble"
/usr/bin/time -f "bench ensemble: %e s wall, %M KB peak RSS of the main process" \
    "$bench" ensemble "${runs[@]}" --weights 0.45,0.1,0.3,0.15 --threshold 0.5 --post "${POST:-none}" \
    ${POST:+--force-post} --out "$work/ensemble"
"$(dirname "$bench")/python" -c "import torch, os; print('cpu capability', torch.backends.cpu.get_cpu_capability(), \
'with', len(os.sched_getaffinity(0)), 'cores')"
