"""How this process keeps the memory it frees: in its heap, for the next image, rather than given back.

Full-size images make every step allocate and free blocks of megabytes: a 1918x1280 uint8 map is
2.4 MB, a float32 input of three channels 29.5 MB. glibc maps every block over its threshold (128 KiB
at first, raised only to the largest block freed so far, at most 32 MiB) afresh from the kernel and
unmaps it when freed, and trims the heap's top beyond twice that threshold, so each image pays for
page faults on memory it just gave back: a fresh ensemble worker merged a car at a quarter of the
rate of a warmed-up one (72 against 314 images/s), and ``bench predict`` spent more time in the
kernel than in PyTorch. Blocks above 32 MiB are always mapped afresh: prediction keeps its batches
under that size on a CPU (``harness.engine.inference``). Elsewhere than glibc nothing is changed.
"""

from __future__ import annotations

import ctypes

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
HEAP_BLOCK = 32 << 20  # the largest block glibc will serve from its heap (its DEFAULT_MMAP_THRESHOLD_MAX)
KEPT = 512 << 20  # freed memory the heap keeps before it trims


def keep_freed_memory() -> None:
    """Serve blocks of up to ``HEAP_BLOCK`` from the heap and keep up to ``KEPT`` bytes of freed memory."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is not None:
        mallopt(_M_MMAP_THRESHOLD, HEAP_BLOCK)
        mallopt(_M_TRIM_THRESHOLD, KEPT)
