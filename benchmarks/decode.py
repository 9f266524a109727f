"""Folder decoding (the in-memory folder loader and ``selfsup pack``): processes against threads, in one run.

Writes ``--count`` JPEGs of ``--side`` pixels (crops of scikit-image's photos, or noise where it is
missing), then decodes them to ``--size`` with ``selfsup.data.folder.decode_files`` twice: in a
pool of threads (what selfsup did before: 8 at most, PIL holding the GIL for its resize) and in
``decode_pool``'s forked processes, one per core. Prints images/s of each and the ratio.

    .venv/bin/python benchmarks/decode.py                  # 2,000 JPEGs of 256 px to 96 px
    .venv/bin/python benchmarks/decode.py --count 20000    # a larger folder (16 cores: pack's speed)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from selfsup.data import folder


def pictures(count: int, side: int) -> list[np.ndarray]:
    try:
        from skimage import data as photos

        sources = [getattr(photos, name)() for name in ("astronaut", "coffee", "chelsea", "rocket")]
    except ImportError:
        sources = [np.random.default_rng(0).integers(0, 256, (2 * side, 2 * side, 3), dtype=np.uint8)]
    rng = np.random.default_rng(0)
    out = []
    for k in range(count):
        image = sources[k % len(sources)]
        top, left = (rng.integers(0, max(1, image.shape[i] - side)) for i in (0, 1))
        out.append(image[top:top + side, left:left + side])
    return out


def timed(pool, files: list[Path], size: int) -> float:
    start = time.perf_counter()
    with pool:
        for _ in folder.decode_files(pool, files, size, 3):
            pass
    return len(files) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--size", type=int, default=96)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for k, pixels in enumerate(pictures(args.count, args.side)):
            path = Path(tmp) / f"{k:06d}.jpg"
            Image.fromarray(pixels).save(path, quality=90)
            files.append(path)
        cores = os.cpu_count() or 1
        threads = timed(ThreadPoolExecutor(max_workers=min(folder._MAX_THREADS, cores)), files, args.size)
        processes = timed(folder.decode_pool(len(files), processes=True), files, args.size)
    print(f"{args.count} JPEGs of {args.side} px decoded to {args.size} px on {cores} cores:")
    print(f"  threads ({min(folder._MAX_THREADS, cores)})         : {threads:8,.0f} images/s")
    print(f"  processes ({cores})         : {processes:8,.0f} images/s   (decode_pool uses them from "
          f"{folder._PROCESSES_FROM_CORES} cores)")
    print(f"  ratio processes / threads: {processes / threads:6.2f}")


if __name__ == "__main__":
    main()
