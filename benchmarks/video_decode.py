"""Decoding speed of the video source: the same clips as MPEG-4 files (PyAV) and as JPEG frame folders (PIL),
decoded whole up front (the in-memory source) and clip by clip (the streamed source, data.stream=true).

    python benchmarks/video_decode.py [--videos 40 --frames 48 --side 256 --size 64 --workers 2]

Writes the videos once (smooth moving gradients with noise, side x side), then times
selfsup.data.load_video_split on each layout (decode, centred square, resize to size), best of 3,
and prints frames/s and the ratio in one run. Then, per layout, the streamed source: its start-up
(frame counts only) against the whole decode, and the clips/s its DataLoader workers deliver for
R3M's five-frame clips at batch 32 (after the first 2 x workers + 1 batches), beside the frames each
clip decodes. torchcodec, the other candidate, is not on this
machine's package registries; PyAV is the decoder that installs everywhere with its own FFmpeg.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def write(root: Path, videos: int, frames: int, side: int) -> None:
    import av

    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:side, 0:side]
    for v in range(videos):
        clip = np.stack([np.stack([(xs + 7 * t + 13 * v) % 256, (ys + 3 * t) % 256, np.full_like(xs, 40 * v % 256)], -1)
                         + rng.integers(0, 8, (side, side, 3)) for t in range(frames)]).astype(np.uint8)
        folder = root / "jpeg" / f"v{v:03d}"
        folder.mkdir(parents=True)
        for t, frame in enumerate(clip):
            Image.fromarray(frame).save(folder / f"{t:05d}.jpg", quality=90)
        (root / "mp4").mkdir(exist_ok=True)
        with av.open(str(root / "mp4" / f"v{v:03d}.mp4"), "w") as container:
            stream = container.add_stream("mpeg4", rate=25)
            stream.width = stream.height = side
            stream.pix_fmt = "yuv420p"
            for frame in clip:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode(None))


def main() -> None:
    from selfsup.data import load_video_split

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=40)
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=20)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.videos} videos x {args.frames} frames "
          f"of {args.side}x{args.side}, decoded to {args.size}x{args.size}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write(root, args.videos, args.frames, args.side)
        rates = {}
        for layout in ("mp4", "jpeg"):
            best = float("inf")
            for _ in range(3):
                started = time.perf_counter()
                frames = len(load_video_split(root / layout, "train", size=args.size))  # 4 of every 5 videos
                best = min(best, time.perf_counter() - started)
            rates[layout] = frames / best
            print(f"{layout:5} {frames} frames in {best:.2f} s: {rates[layout]:,.0f} frames/s")
        print(f"MPEG-4 through PyAV / JPEG frames through PIL: {rates['mp4'] / rates['jpeg']:.2f}x")
        for layout in ("mp4", "jpeg"):
            stream(root / layout, layout, args)


def stream(root: Path, layout: str, args) -> None:
    from selfsup.data import StreamedVideoClips, streamed_video_split
    from selfsup.methods import R3M
    from selfsup.nn import build_backbone

    started = time.perf_counter()
    train = streamed_video_split(root, "train", size=args.size, workers=args.workers)
    scan = time.perf_counter() - started
    source = StreamedVideoClips(train, batch_size=32, clips_per_video=64, workers=args.workers)
    source.clip_times = R3M(build_backbone("convnet", in_channels=3, image_size=args.size, width=4)).clip_times
    skip = 2 * args.workers + 1
    for position in range(skip):
        source.batch(0, position, 0)
    started = time.perf_counter()
    for position in range(skip, skip + args.batches):
        source.batch(0, position, 0)
    rate = 32 * args.batches / (time.perf_counter() - started)
    source.close()
    print(f"{layout:5} streamed, {args.workers} workers: start-up {scan:.2f} s (frame counts), {rate:,.0f} clips/s of "
          f"5 frames ({5 * rate:,.0f} frames/s)")


if __name__ == "__main__":
    main()
