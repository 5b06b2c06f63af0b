"""The measurements behind two choices of docs/scale.md: the probability store's codec and the JPEG decoder.

``python tools/scale/codecs.py [JPEG]`` prints, for a full-size (1918x1280) car-like map (a soft
silhouette upsampled from 144x96, so its uncertain band is wider than a trained model's), each
lossless codec's ratio and ms to encode and decode (blosc-lz4 where ``numcodecs`` is installed: it is
not a dependency); then, for a full-size JPEG (docs/scale.md used an image of ``bench data synth
--size 1918x1280``; default: a noisier one written here, slower to decode), each decoder's ms per
image and whether it gives OpenCV's pixels (PyTurboJPEG where it and the system's libturbojpeg are
installed); with a GPU, nvJPEG's too (``torchvision.io.decode_jpeg`` on CUDA, one image and 16 at
once). Mean of 20 calls. Last, simplejpeg against OpenCV on 144 JPEGs of three chroma subsamplings,
six qualities and eight sizes: the check behind "the same pixels" of the one decoder.
"""

from __future__ import annotations

import sys
import tempfile
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import simplejpeg
import torch
import torchvision
import zstandard
from PIL import Image

HEIGHT, WIDTH, CALLS = 1280, 1918, 20
GPU_BATCH = 16  # images one call of nvJPEG decodes together


def _mean_ms(call) -> tuple[float, object]:
    result = call()
    started = time.perf_counter()
    for _ in range(CALLS):
        call()
    return (time.perf_counter() - started) / CALLS * 1000, result


def car_map() -> np.ndarray:
    small = np.zeros((96, 144), np.float32)
    cv2.ellipse(small, (72, 55), (55, 22), 0, 0, 360, 1.0, -1)
    cv2.rectangle(small, (40, 30), (100, 50), 1.0, -1)
    small = cv2.GaussianBlur(small, (5, 5), 1.2)
    band = (small > 0.05) & (small < 0.95)  # a model's unsure edge is not smooth: a little noise in the band
    noise = np.random.default_rng(0).normal(0, 0.02, small.shape).astype(np.float32)
    small = np.clip(small + noise * band, 0, 1)
    return np.rint(cv2.resize(small, (WIDTH, HEIGHT), interpolation=cv2.INTER_LINEAR) * 255).astype(np.uint8)


def codecs(levels: np.ndarray) -> None:
    raw = levels.tobytes()
    png = lambda level: lambda: cv2.imencode(".png", levels, [cv2.IMWRITE_PNG_COMPRESSION, level])[1].tobytes()
    unpng = lambda data: cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED).tobytes()
    candidates = {f"zstd -{n}": (lambda n=n: zstandard.ZstdCompressor(level=n).compress(raw),
                                 zstandard.ZstdDecompressor().decompress) for n in (1, 3, 6)}
    candidates.update({f"zlib -{n}": (lambda n=n: zlib.compress(raw, n), zlib.decompress) for n in (1, 6)})
    candidates["PNG (OpenCV) -1"] = (png(1), unpng)
    try:
        from numcodecs import Blosc

        blosc = Blosc(cname="lz4", clevel=5, shuffle=Blosc.NOSHUFFLE)
        candidates["blosc-lz4"] = (lambda: blosc.encode(raw), lambda data: bytes(blosc.decode(data)))
    except ImportError:
        print("  blosc-lz4: not measured (numcodecs is not installed)")
    share = float(((levels > 0) & (levels < 255)).mean())
    print(f"map {WIDTH}x{HEIGHT}, {share:.1%} of pixels uncertain")
    for name, (encode, decode) in candidates.items():
        encode_ms, packed = _mean_ms(encode)
        decode_ms, unpacked = _mean_ms(lambda: decode(packed))
        assert unpacked == raw, name
        print(f"  {name:16s} {len(raw) / len(packed):5.1f}x  encode {encode_ms:5.2f} ms  decode {decode_ms:5.2f} ms")


def decoders(path: Path) -> None:
    data = path.read_bytes()
    reference = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    candidates = {
        "simplejpeg": lambda: simplejpeg.decode_jpeg(data, colorspace="RGB"),
        "simplejpeg with fast IDCT": lambda: simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=True),
        "cv2.imread + RGB": lambda: cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB),
        "cv2.imdecode + RGB": lambda: cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR),
                                                   cv2.COLOR_BGR2RGB),
        "torchvision (CPU)": lambda: torchvision.io.decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        .permute(1, 2, 0).numpy(),
        "PIL": lambda: np.asarray(Image.open(path).convert("RGB")),
    }
    try:
        from turbojpeg import TJPF_RGB, TurboJPEG

        turbo = TurboJPEG()
        candidates["PyTurboJPEG"] = lambda: turbo.decode(data, pixel_format=TJPF_RGB)
    except (ImportError, RuntimeError, OSError) as error:  # the module, or the system's libturbojpeg
        print(f"  PyTurboJPEG: not measured ({type(error).__name__}: {error})")
    images_per_call = dict.fromkeys(candidates, 1)
    if torch.cuda.is_available():  # nvJPEG, which tools/gpu-check.sh measures on the lent GPU
        encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        candidates["torchvision (CUDA)"] = lambda: _synchronised(torchvision.io.decode_jpeg(encoded, device="cuda"))
        candidates[f"torchvision (CUDA), {GPU_BATCH} at once"] = lambda: _synchronised(
            torchvision.io.decode_jpeg([encoded] * GPU_BATCH, device="cuda")[0])
        images_per_call.update({"torchvision (CUDA)": 1, f"torchvision (CUDA), {GPU_BATCH} at once": GPU_BATCH})
    print(f"decoders, {path.name}")
    for name, decode in candidates.items():
        ms, image = _mean_ms(decode)
        if isinstance(image, torch.Tensor):
            image = image.permute(1, 2, 0).cpu().numpy()
        print(f"  {name:34s} {ms / images_per_call[name]:5.2f} ms  same pixels as OpenCV: {_differences(image, reference)}")


def _differences(image: np.ndarray, reference: np.ndarray) -> str:
    if np.array_equal(image, reference):
        return "yes"
    differ = np.abs(image.astype(np.int16) - reference.astype(np.int16))
    return f"no: {float((differ > 0).any(axis=2).mean()):.0%} of pixels differ, by up to {int(differ.max())}"


SUBSAMPLINGS = {"4:4:4": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444, "4:2:2": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_422,
                "4:2:0": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420}
QUALITIES = (50, 70, 80, 90, 95, 100)
SIZES = ((64, 40), (65, 41), (96, 64), (127, 93), (240, 160), (333, 217), (480, 320), (1918, 1280))


def decoder_agreement(scratch: Path) -> None:
    """simplejpeg against OpenCV (the reference the training decoder once was) on 144 varied JPEGs."""
    rng = np.random.default_rng(1)
    same = total = 0
    for sampling_name, sampling in SUBSAMPLINGS.items():
        for quality in QUALITIES:
            for width, height in SIZES:
                noise = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
                image = cv2.GaussianBlur(noise, (0, 0), 2.0)  # photo-like: smooth regions and edges
                path = scratch / f"{sampling_name.replace(':', '')}-{quality}-{width}x{height}.jpg"
                cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                                               sampling])
                reference = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
                same += np.array_equal(simplejpeg.decode_jpeg(path.read_bytes(), colorspace="RGB"), reference)
                total += 1
    print(f"simplejpeg gives OpenCV's pixels on {same} of {total} JPEGs ({len(SUBSAMPLINGS)} subsamplings x "
          f"{len(QUALITIES)} qualities x {len(SIZES)} sizes)")


def _synchronised(image: torch.Tensor) -> torch.Tensor:
    torch.cuda.synchronize()
    return image


def main() -> None:
    print(f"cpu capability {torch.backends.cpu.get_cpu_capability()}")
    codecs(car_map())
    with tempfile.TemporaryDirectory() as scratch:
        if len(sys.argv) > 1:
            decoders(Path(sys.argv[1]))
        else:  # a photo-like full-size JPEG: noise over the car map
            noise = np.random.default_rng(0).integers(0, 64, (HEIGHT, WIDTH, 3), dtype=np.uint8)
            image = np.clip(noise + car_map()[..., None] // 2, 0, 255).astype(np.uint8)
            path = Path(scratch) / "full.jpg"
            cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
            decoders(path)
        decoder_agreement(Path(scratch))


if __name__ == "__main__":
    main()
