"""webdataset tar shards against selfsup's pack and the plain folder, same workers, one process.

The generated JPEG folder of ``benchmarks/stream.py`` (500x375 photos) is read three ways through
the same streamed source (``StreamedImages``: workers read each batch of (epoch, position, rank)
to uint8 at 110 px): the folder's JPEGs, the same JPEGs written as webdataset shards (one tar
member per image and its class, 256 samples a shard; decoded like the folder, a ranged read each),
and the folder's ``selfsup pack`` (decoded once, no decoding when read). Prints the images/s of
each (median of ``--rounds``) and webdataset's ratio to the pack and to the folder.

    .venv/bin/python benchmarks/webdataset.py
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import statistics
import tarfile
from pathlib import Path

from stream import make_folder, timed

from selfsup.data.pack import pack_folder
from selfsup.data.stream import StreamedImages, folder_split, packed_split
from selfsup.data.webdataset import webdataset_split


def write_shards(folder: Path, out: Path, per_shard: int = 256) -> Path:
    """The folder's JPEGs as ``train-00000.tar ...`` in webdataset's layout (cached)."""
    files = sorted(folder.rglob("*.jpg"))
    classes = sorted({f.parent.name for f in files})
    if out.is_dir() and len(list(out.glob("train-*.tar"))) == -(-len(files) // per_shard):
        return out
    out.mkdir(parents=True, exist_ok=True)
    for first in range(0, len(files), per_shard):
        with tarfile.open(out / f"train-{first // per_shard:05d}.tar", "w") as tar:
            for path in files[first:first + per_shard]:
                key = f"{path.parent.name}_{path.stem}"
                for name, payload in ((f"{key}.jpg", path.read_bytes()),
                                      (f"{key}.cls", str(classes.index(path.parent.name)).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    return out


def loader(split, batch: int, workers: int):
    source = StreamedImages(split, batch_size=batch, workers=workers)
    try:
        for position in range(source.steps_per_epoch()):
            yield source.batch(0, position, 0).images
    finally:
        source.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", default="/tmp/selfsup-stream-bench")
    parser.add_argument("--images", type=int, default=1536)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    folder = make_folder(Path(args.folder), args.images)
    shards = write_shards(folder, Path(f"{args.folder}-wds"))
    pack = Path(f"{args.folder}-pack")
    index = pack / "index.json"
    if not index.is_file() or json.loads(index.read_text())["files"] != args.images:  # a pack of another folder
        shutil.rmtree(pack, ignore_errors=True)
        pack_folder(folder, pack, size=args.size)
    splits = {"folder JPEGs": folder_split(folder, "train", args.size, 3, workers=args.workers),
              "webdataset shards": webdataset_split(str(shards), "train", args.size, 3, ratio=1.15,
                                                    workers=args.workers),
              "selfsup pack": packed_split(pack, "train", args.size, workers=args.workers)}
    skip = 2 * args.workers + 1
    rates = {name: [] for name in splits}
    for _ in range(args.rounds):
        for name, split in splits.items():
            rates[name].append(timed(loader(split, args.batch, args.workers), args.steps, skip))
    median = {name: statistics.median(values) for name, values in rates.items()}
    print(f"{args.images} JPEGs of 500x375 read to uint8 at {round(args.size * 1.15)} px, batch {args.batch}, "
          f"{args.workers} workers, median of {args.rounds} rounds:")
    for name, rate in median.items():
        print(f"  {name:18s} {rate:9,.0f} images/s")
    print(f"  webdataset / pack   : {median['webdataset shards'] / median['selfsup pack']:.2f}")
    print(f"  webdataset / folder : {median['webdataset shards'] / median['folder JPEGs']:.2f}")


if __name__ == "__main__":
    main()
