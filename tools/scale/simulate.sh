#!/usr/bin/env bash
# Carvana's test set, simulated (docs/scale.md): bench predict over a folder of 100,064 full-size
# images that are hard links to 16 synthetic 1918x1280 JPEGs (the disk holds 16 files), with the
# pointwise floor model (tools/scale/pointwise.toml) and flip TTA. The first attempt is killed with
# SIGKILL after KILL_AFTER seconds; the second, run under tools/scale/memory.py, finishes the job.
#
#   tools/scale/simulate.sh WORK [IMAGES [KILL_AFTER]]      e.g. tools/scale/simulate.sh /scratch/sim
#
# FORMAT=rle|png|maps chooses bench predict's output (default rle); SIZE=WxH the images' size (default
# 1918x1280: 144x96 runs the bookkeeping of 100,064 images in minutes instead of hours on a CPU).
#
# WORK needs a few GB free. Prints what docs/scale.md records: images done before the kill, images
# redone after it (none, if resuming works), images/s, peak memory of the process tree, output size.
set -euo pipefail
work=$1
images=${2:-100064}
kill_after=${3:-120}
format=${FORMAT:-rle}
size=${SIZE:-1918x1280}
python=${PYTHON:-.venv/bin/python}
bench() { "$python" -m harness.cli "$@"; }
export NO_ALBUMENTATIONS_UPDATE=1
mkdir -p "$work"

full="$work/full-$size" test="$work/test-$size"  # per size: a WORK reused with another SIZE gets its own
[ -d "$full" ] || bench data synth --out "$full" --cars 1 --test-cars 1 --size "$size"
"$python" - "$full" "$test" "$images" <<'EOF'
import os, sys
from pathlib import Path
full, folder, count = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
sources = sorted((full / "test").glob("*.jpg"))
if not folder.is_dir() or len(os.listdir(folder)) != count:
    folder.mkdir(exist_ok=True)
    for index in range(count):  # Carvana's naming: a 12-digit car id and the view number
        target = folder / f"{index // 16:012x}_{1 + index % 16:02d}.jpg"
        if not target.exists():
            os.link(sources[index % len(sources)], target)
print(f"{count} images in {folder}, hard links to {len(sources)} files")
EOF
bench run tools/scale/pointwise.toml --results "$work/runs" --name pointwise

out="$work/predict-$format"
rm -rf "$out"
command=(-m harness.cli predict "$work/runs/pointwise" "$test" --out "$out" --format "$format")
setsid "$python" "${command[@]}" &
first=$!
sleep "$kill_after"
kill -9 -- "-$first" 2>/dev/null || true  # the whole process group: the loader's workers too
wait "$first" 2>/dev/null || true
case $format in
    rle) before=$(wc -l < "$out/rle.part" 2>/dev/null || echo 0) ;;
    png) before=$(find "$out/masks" -name '*.png' | wc -l) ;;
    maps) before=$(find "$out/maps" -name '*.zst' | wc -l) ;;
esac
echo "killed after ${kill_after} s with ${before} images done"
"$python" tools/scale/memory.py "$work/memory.json" -- "$python" "${command[@]}"
cat "$work/memory.json"
"$python" - "$out" "$before" <<'EOF'
import json, sys
report = json.load(open(f"{sys.argv[1]}/predict.json"))
print(json.dumps({key: report.get(key) for key in ("images", "predicted", "resumed", "skipped", "seconds",
                                                    "images_per_s", "decoder", "device")}, default=str))
EOF
du -sh "$out"
