"""Write the synthetic videos the video recipes learn from (DAVIS layout, instance masks, labels.csv).

    python benchmarks/make_videos.py runs/data/synthetic_videos            # 120 videos, 24 frames, 64x64
    python benchmarks/make_videos.py DIR --videos 20 --sprites digits     # small, without Fashion-MNIST
    python benchmarks/make_videos.py DIR --shared-colour                  # a video's sprites in one colour
    python benchmarks/make_videos.py DIR --views 2                        # two synchronised cameras per scene
    python benchmarks/make_videos.py DIR --task                           # demonstrations of one task (tasks.csv)

See selfsup.data.synthetic_video for what the videos show.
"""

from __future__ import annotations

import argparse
import time

from selfsup.data.synthetic_video import write_synthetic_videos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root")
    parser.add_argument("--videos", type=int, default=120)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--sprites", choices=("fashion_mnist", "digits"), default="fashion_mnist")
    parser.add_argument("--shared-colour", action="store_true",
                        help="the sprites of a video share one colour (colour alone cannot tell them apart)")
    parser.add_argument("--views", type=int, default=1,
                        help="synchronised cameras per scene (sequences <name>_view0, _view1, ...: multi-view TCN)")
    parser.add_argument("--task", action="store_true",
                        help="every video demonstrates one task in one scene: its first sprite carried left to right at "
                             "its own pace over the same still background (tasks.csv; the temporal evaluation "
                             "aligns the demonstrations)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()
    root = write_synthetic_videos(args.root, videos=args.videos, frames=args.frames, size=args.size,
                                  sprites=args.sprites, shared_colour=args.shared_colour, views=args.views,
                                  task=args.task, seed=args.seed,
                                  progress=True)
    print(f"wrote {args.videos} videos of {args.frames} frames ({args.size}x{args.size}) to {root} in "
          f"{time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
