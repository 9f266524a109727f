"""webdataset shards (tar files the tests write in webdataset's layout): indexed, decoded as a folder
decodes, batches of (epoch, position, rank) as the other streamed sources (exact, rank-split), a
broken sample named and replaced, and a run trained from them."""

import io
import json
import os
import sys
import tarfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.data.folder import SkippedImageWarning, decode
from selfsup.data.stream import ImageStream, StreamedImages, folder_split
from selfsup.data.webdataset import expand, shard_urls, webdataset_split
from selfsup.errors import DataError


def _picture(k: int) -> np.ndarray:
    rng = np.random.default_rng(k)
    return rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)


def _png(k: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(_picture(k)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_shards(root: Path, split: str, count: int, per_shard: int, *, broken: int | None = None,
                 images: Path | None = None) -> list[Path]:
    """``count`` samples of class k % 3 in ``{split}-00000.tar ...``: a JPEG and a .cls each (sample
    ``broken``: bytes that are no image). ``images`` also gets the same pictures as a labelled folder."""
    root.mkdir(parents=True, exist_ok=True)
    shards = []
    for first in range(0, count, per_shard):
        path = root / f"{split}-{first // per_shard:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for k in range(first, min(first + per_shard, count)):
                png = _png(k)
                data = b"garbage" if k == broken else png
                for name, payload in ((f"sample{k:05d}.png", data), (f"sample{k:05d}.cls", str(k % 3).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
                if images is not None and k != broken:
                    (images / f"class{k % 3}").mkdir(parents=True, exist_ok=True)
                    (images / f"class{k % 3}" / f"{k:05d}.png").write_bytes(png)
        shards.append(path)
    return shards


def test_brace_patterns_and_splits_expand_as_webdataset_writes_them(tmp_path):
    assert expand("a-{000..002}.tar") == ["a-000.tar", "a-001.tar", "a-002.tar"]
    assert expand("{train,test}-{9..10}.tar") == ["train-9.tar", "train-10.tar", "test-9.tar", "test-10.tar"]
    assert shard_urls("s/{split}-{0..1}.tar", "test") == ["s/test-0.tar", "s/test-1.tar"]
    with pytest.raises(FileNotFoundError, match="training shards only"):
        shard_urls("s/train-{0..1}.tar", "test")
    write_shards(tmp_path / "shards", "train", 4, 2)
    assert shard_urls(str(tmp_path / "shards"), "train") == [str(tmp_path / "shards" / f"train-0000{k}.tar")
                                                           for k in range(2)]


def test_samples_decode_as_the_same_images_in_a_folder(tmp_path):
    write_shards(tmp_path / "shards", "train", 9, 4, images=tmp_path / "images")
    split = webdataset_split(str(tmp_path / "shards" / "train-{00000..00002}.tar"), "train", 16, 3, ratio=1.15,
                             workers=0)
    assert len(split) == 9 and split.labels.tolist() == [k % 3 for k in range(9)] and split.classes == ["0", "1", "2"]
    reference = folder_split(tmp_path / "images", "train", 16, 3, workers=0)  # files sorted by class, then name
    by_name = {Path(reference.reader.name(i)).stem: i for i in range(len(reference))}
    for k in range(9):
        assert torch.equal(split.images[k], reference.images[by_name[f"{k:05d}"]]), k
    assert split.files[4].endswith("train-00001.tar:sample00004")


def test_batches_are_a_function_of_epoch_position_rank_and_split_between_ranks(tmp_path):
    write_shards(tmp_path / "shards", "train", 24, 5)
    pattern = str(tmp_path / "shards" / "train-{00000..00004}.tar")
    split = webdataset_split(pattern, "train", 16, 3, ratio=1.15, workers=0)
    one = StreamedImages(split, batch_size=8, world_size=1, seed=3, workers=0)
    again = StreamedImages(webdataset_split(pattern, "train", 16, 3, ratio=1.15, workers=0), batch_size=8,
                           world_size=1, seed=3, workers=0)
    two = [StreamedImages(split, batch_size=8, world_size=2, seed=3, workers=0, rank=r) for r in range(2)]
    for epoch, position in ((0, 0), (1, 2), (4, 1)):
        whole = one.batch(epoch, position, 0)
        assert torch.equal(whole.images, again.batch(epoch, position, 0).images)  # a resumed run reads the same
        halves = [two[r].batch(epoch, position, r) for r in range(2)]
        assert torch.equal(torch.cat([h.images for h in halves]), whole.images)  # each rank its half
        assert torch.equal(torch.cat([h.index for h in halves]), whole.index)


def test_a_broken_sample_is_named_once_and_replaced_by_the_next(tmp_path):
    write_shards(tmp_path / "shards", "train", 6, 3, broken=2)
    split = webdataset_split(str(tmp_path / "shards"), "train", 16, 3, ratio=1.15, workers=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        images = split.images[torch.arange(6)]
    assert torch.equal(images[2], images[3])  # the next readable sample fills the slot
    named = [str(w.message) for w in caught if issubclass(w.category, SkippedImageWarning)]
    assert len(named) == 1 and "train-00000.tar:sample00002" in named[0]


def test_bad_labels_and_empty_shards_are_one_line(tmp_path):
    root = tmp_path / "shards"
    root.mkdir()
    with tarfile.open(root / "train-0.tar", "w") as tar:
        for name, payload in (("a.png", b"x"), ("a.cls", b"three")):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(DataError, match=r"train-0.tar:a.cls: the label must be an integer"):
        webdataset_split(str(root / "train-0.tar"), "train", 16, 3, ratio=1.15)
    # A label of three billion would list three billion class names (memory); 1e30 overflowed int64.
    for label in (b"3000000000", b'{"label": 1e30}'):
        with tarfile.open(root / "train-0.tar", "w") as tar:
            for name, payload in (("a.png", b"x"), ("a.cls" if label[:1] != b"{" else "a.json", label)):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
        with pytest.raises(DataError, match=r"train-0.tar:a has label \d+; labels are class indices 0 .. 999,999"):
            webdataset_split(str(root / "train-0.tar"), "train", 16, 3, ratio=1.15)
    # int() took 2.7 as class 2 and true as class 1 without a word; Infinity was an OverflowError's traceback.
    for label in (b'{"label": 2.7}', b'{"label": true}', b'{"label": Infinity}', b'{"label": "2.7"}'):
        with tarfile.open(root / "train-0.tar", "w") as tar:
            for name, payload in (("a.png", b"x"), ("a.json", label)):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
        with pytest.raises(DataError, match=r"train-0.tar:a.json: the label must be an integer"):
            webdataset_split(str(root / "train-0.tar"), "train", 16, 3, ratio=1.15)
    (root / "train-0.tar").write_bytes(b"not a tar")
    with pytest.raises(DataError, match="cannot read shard"):
        webdataset_split(str(root / "train-0.tar"), "train", 16, 3, ratio=1.15)


def test_a_run_trains_and_evaluates_from_shards(tmp_path):
    from selfsup.config import load_config
    from selfsup.engine import pretrain

    write_shards(tmp_path / "shards", "train", 64, 16)
    write_shards(tmp_path / "shards", "test", 24, 12)
    cfg = load_config(None, ["data.name=webdataset", f"data.root={tmp_path / 'shards' / '{split}-{00000..00003}.tar'}",
                             "data.size=16", "data.workers=1", "backbone.width=4", "method_args.proj_hidden_dim=16",
                             "method_args.proj_dim=8", "train.batch_size=16", "train.epochs=1", "train.progress=false",
                             "train.knn_every=0", "eval.plots=false", "eval.floor=false", f"train.out_dir={tmp_path / 'run'}"])
    # The test split has 2 shards: the pattern's missing ones are a clear error; give its own count.
    with pytest.raises(DataError, match="test-00002.tar"):
        pretrain(cfg)
    cfg.data.root = str(tmp_path / "shards")  # the folder: train-*.tar and test-*.tar
    result = pretrain(cfg)
    results = json.loads((result.out_dir / "results.json").read_text())
    assert results["steps"] == 4 and results["data"] == "webdataset" and "knn" in results["evaluations"]


def test_threads_read_the_bytes_one_reader_reads_in_turn(tmp_path):
    # Many small samples, so that the threads' reads of one shard overlap often; a shared handle's
    # seek-then-read let a thread read at another's offset (a good sample reported unreadable).
    write_shards(tmp_path / "shards", "train", 600, 300)
    reader = webdataset_split(str(tmp_path / "shards"), "train", 16, 3, ratio=1.15, workers=0).images.reader
    serial = np.stack([reader.read(k) for k in range(600)])
    expected = np.stack([decode(io.BytesIO(_png(k)), reader.side, 3, draft=True) for k in range(600)])
    assert np.array_equal(serial, expected)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # hand the GIL between threads as often as possible
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            threaded = np.stack(list(pool.map(reader.read, [k for _ in range(3) for k in range(600)])))
        fresh = webdataset_split(str(tmp_path / "shards"), "train", 16, 3, ratio=1.15, workers=0).images.reader
        with warnings.catch_warnings():
            warnings.simplefilter("error", SkippedImageWarning)  # no good sample may be called unreadable
            streamed = ImageStream(fresh)[torch.arange(600)].numpy()  # the thread pool of every streamed read
    finally:
        sys.setswitchinterval(interval)
    assert np.array_equal(threaded, np.concatenate([expected] * 3))
    assert np.array_equal(streamed, expected)


def test_more_shards_than_open_files_allowed_are_read_without_holding_them_open(tmp_path):
    resource = pytest.importorskip("resource")
    write_shards(tmp_path / "shards", "train", 40, 1)  # 40 shards of one sample
    split = webdataset_split(str(tmp_path / "shards"), "train", 16, 3, ratio=1.15, workers=0)
    reader = split.images.reader
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    listing = next((d for d in ("/proc/self/fd", "/dev/fd") if os.path.isdir(d)), None)
    if listing is None:
        pytest.skip("no listing of this process's open files")
    in_use = len(os.listdir(listing))
    resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 16, hard))  # fewer files than shards may open
    try:
        images = [reader.read(k) for k in range(40)]
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    for k in (0, 17, 39):
        assert np.array_equal(images[k], decode(io.BytesIO(_png(k)), reader.side, 3, draft=True))


def _write_tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


def test_metadata_json_without_a_label_leaves_samples_unlabelled_and_a_mixed_set_is_refused(tmp_path):
    root = tmp_path / "shards"
    root.mkdir()
    laion = {f"{k:03d}.{ext}": payload for k in range(3) for ext, payload in
             (("png", _png(k)), ("json", json.dumps({"url": f"https://x/{k}.png", "caption": "a cat"}).encode()),
              ("txt", b"a cat"))}
    _write_tar(root / "train-0.tar", laion)
    split = webdataset_split(str(root / "train-0.tar"), "train", 16, 3, ratio=1.15, workers=0)
    assert len(split) == 3 and split.labels is None and split.classes is None
    assert np.array_equal(split.images.reader.read(1), decode(io.BytesIO(_png(1)), 18, 3, draft=True))
    _write_tar(root / "train-1.tar", {"004.png": _png(4), "004.json": b'{"label": 2, "caption": "a dog"}'})
    with pytest.raises(DataError, match=r"train-0.tar:000 has no label .* but .*train-1.tar:004 has one"):
        webdataset_split(str(root / "train-{0..1}.tar"), "train", 16, 3, ratio=1.15, workers=0)


def test_shards_at_another_fsspec_url_read_by_byte_range_as_local_ones(tmp_path):
    import fsspec

    write_shards(tmp_path / "shards", "train", 12, 6)
    memory = fsspec.filesystem("memory")
    for k in range(2):
        memory.pipe(f"/wds-{tmp_path.name}/train-{k}.tar", (tmp_path / "shards" / f"train-0000{k}.tar").read_bytes())
    remote = webdataset_split(f"memory:///wds-{tmp_path.name}/train-{{0..1}}.tar", "train", 16, 3, ratio=1.15,
                              workers=0)
    local = webdataset_split(str(tmp_path / "shards"), "train", 16, 3, ratio=1.15, workers=0)
    assert remote.labels.tolist() == local.labels.tolist()
    assert torch.equal(remote.images[torch.arange(12)], local.images[torch.arange(12)])
    memory.rm(f"/wds-{tmp_path.name}", recursive=True)
