"""``slicerank bench images``: hostile image files against the limits of
:func:`ml_backend.transforms.load_grayscale` and :func:`~ml_backend.transforms.prepare_image`.

Each case is written to disk, then read and framed (as ``/predict`` and training do) in a fresh
child process, which reports its wall and CPU time (the CPU time says what a busy machine's
wall time hides) and how far its peak RSS rose above what it held before the read. The target (issue 21): any image up to 32 MB is refused or processed in at
most 1 s and 300 MB extra RSS.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

#: PNG colour types by Pillow mode name.
_COLOUR = {"L": (0, 1), "RGB": (2, 3), "RGBA": (6, 4)}


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def blank_png(width: int, height: int, mode: str = "L", *, rows_chunk: int = 256) -> bytes:
    """A valid 8-bit PNG of ``width`` × ``height`` black pixels, deflated as it is built (so a
    13,000² RGBA image costs ~650 KB and no 676 MB buffer): the decompression bomb shape."""
    colour, channels = _COLOUR[mode]
    row = b"\x00" * (1 + width * channels)  # filter byte "none", then the pixels
    z = zlib.compressobj(9)
    parts = []
    for start in range(0, height, rows_chunk):
        parts.append(z.compress(row * min(rows_chunk, height - start)))
    parts.append(z.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"".join(parts))
        + _chunk(b"IEND", b"")
    )  # fmt: skip


def noise_png(width: int, height: int, mode: str = "L", seed: int = 0) -> bytes:
    """A PNG of random pixels (barely compressible: the largest file for its size)."""
    from PIL import Image

    channels = _COLOUR[mode][1]
    shape = (height, width) if channels == 1 else (height, width, channels)
    arr = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def cases() -> dict[str, bytes]:
    """The files measured: the two of the issue, the largest accepted, just too large."""
    return {
        "2x60000 L PNG (issue 21)": blank_png(2, 60000),
        "13000x13000 RGBA PNG (issue 21)": blank_png(13000, 13000, "RGBA"),
        "20000x20000 L PNG (Pillow's hard bomb limit)": blank_png(20000, 20000),
        "4096x4096 L PNG, noise (largest accepted)": noise_png(4096, 4096),
        "2890x2890 RGBA PNG, noise (~32 MB)": noise_png(2890, 2890, "RGBA"),
        "4097x4096 L PNG (one column too many)": blank_png(4097, 4096),
        "4096x1000 L PNG (4.1:1)": blank_png(4096, 1000),
        "5600x5600 L PNG, noise (~31 MB)": noise_png(5600, 5600),
    }


_CHILD = r"""
import json, resource, sys, time
import numpy as np
from ml_backend.config import get_preset
from ml_backend.transforms import ImageRefusedError, load_grayscale, prepare_image
config = get_preset("study")
prepare_image(np.zeros((300, 300), np.uint8), config)  # warm the imports
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t, cpu = time.perf_counter(), time.process_time()
try:
    prepare_image(load_grayscale(sys.argv[1]), config)
    outcome = "processed"
except (ImageRefusedError, OSError) as exc:
    outcome = f"refused: {type(exc).__name__}: {str(exc)[:90]}"
seconds, cpu_seconds = time.perf_counter() - t, time.process_time() - cpu
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"outcome": outcome, "seconds": seconds, "cpu_seconds": cpu_seconds,
                  "extra_rss_mb": (after - before) / 1024}))
"""


def measure(path: Path) -> dict[str, Any]:
    """Read and frame ``path`` in a fresh child: outcome, seconds, extra peak RSS (MB)."""
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path)], capture_output=True, text=True, check=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_bench() -> dict[str, Any]:
    """Every case of :func:`cases`, measured; with the machine's load."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="slicerank-images-") as tmp:
        for name, data in cases().items():
            path = Path(tmp) / "case.png"
            path.write_bytes(data)
            result = measure(path)
            rows.append({"case": name, "file_bytes": len(data), **result})
    return {"cases": rows, "load_average": os.getloadavg()}


def main(args) -> int:
    """Handler of ``slicerank bench images``."""
    result = run_bench()
    for row in result["cases"]:
        print(f"{row['case']}: {row['file_bytes']} bytes, {row['outcome']}, "
              f"{row['seconds']:.3f} s ({row['cpu_seconds']:.3f} s CPU), "
              f"+{row['extra_rss_mb']:.0f} MB RSS")  # fmt: skip
    print(f"load average: {result['load_average']}")
    if args.json:
        from slicerank_base.jsonout import write_json

        write_json(args.json, result)
    return 0
