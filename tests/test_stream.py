"""Streamed images (selfsup.data.stream) and packs (selfsup.data.pack): order, decoding, corrupt files,
resume after SIGKILL with DataLoader workers, a memory cap, and the pack's checksums and resume."""

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup import data
from selfsup.data import folder
from selfsup.data import pack as packing
from selfsup.data.folder import SkippedImageWarning, load_folder
from selfsup.data.stream import FileReader, StreamedImages, folder_split, packed_split, stored_side
from selfsup.engine import load_checkpoint
from selfsup.errors import DataError

SCRIPT = Path(__file__).parent / "scripts" / "pretrain_digits.py"


def _picture(k: int, width: int, height: int) -> np.ndarray:
    rng = np.random.default_rng(k)
    yy, xx = np.mgrid[0:height, 0:width]
    smooth = np.stack([np.sin(xx / (5 + k % 7)), np.cos(yy / (4 + k % 5)), np.sin((xx + yy) / 9)], -1)
    return ((smooth * 0.5 + 0.5) * 200 + rng.integers(0, 55, (height, width, 3))).astype(np.uint8)


def make_folder(root: Path, count: int, *, suffix: str = ".png", size=(40, 30), classes: int = 3,
                test: int = 0) -> Path:
    """``count`` training images (and ``test`` test images) in ``classes`` class folders."""
    splits = {"train": count, "test": test} if test else {"": count}
    for split, n in splits.items():
        for k in range(n):
            folder = root / split / f"class{k % classes}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(_picture(k + (10_000 if split == "test" else 0), *size)).save(folder / f"{k:04d}{suffix}")
    return root


def pil_reference(path: Path, side: int, crop: int | None = None) -> np.ndarray:
    """What the stream must give, computed with PIL alone: centred square, resized to ``side``,
    then (eval view) the centred ``crop`` square."""
    with Image.open(path) as image:
        image = image.convert("RGB")
    w, h = image.size
    s = min(w, h)
    image = image.resize((side, side), Image.Resampling.BILINEAR, box=((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2))
    pixels = np.asarray(image).transpose(2, 0, 1)
    if crop is not None:
        top = (side - crop) // 2
        pixels = pixels[:, top:top + crop, top:top + crop]
    return pixels


def test_batches_follow_the_in_memory_order_and_split_across_ranks(tmp_path):
    root = make_folder(tmp_path / "imgs", 40)
    streamed = folder_split(root, "train", 12, 3, ratio=1.0, workers=0)
    in_memory = data.InMemoryImages(load_folder(root, "train", 12, 3, False), batch_size=8, seed=3)
    one = StreamedImages(streamed, batch_size=8, seed=3, workers=2)
    two = [StreamedImages(streamed, batch_size=8, world_size=2, seed=3, workers=0, rank=r) for r in (0, 1)]
    assert one.steps_per_epoch() == in_memory.steps_per_epoch() == 5
    for epoch, position in [(0, 0), (0, 1), (0, 4), (1, 2), (3, 0)]:  # out of order: the loader restarts there
        ours, reference = one.batch(epoch, position, 0), in_memory.batch(epoch, position, 0)
        assert torch.equal(ours.index, reference.index)
        assert torch.equal(ours.images, reference.images)
        assert torch.equal(ours.labels, reference.labels)
        halves = [source.batch(epoch, position, rank) for rank, source in enumerate(two)]
        assert torch.equal(torch.cat([h.images for h in halves]), reference.images)
    one.close()


class _WorkerPid(torch.utils.data.Dataset):
    def __getitem__(self, step):
        return os.getpid()

    def __len__(self):
        return 64


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not hasattr(signal, "sigwaitinfo"), reason="the sender of a signal is known on Linux only")
def test_loader_workers_outlive_a_sigterm_from_outside_but_not_their_parents():
    """Preemption signals every process of the job; the workers must leave the stop to the main process,
    and still end when the main process ends them (else a run's exit would wait on them for ever)."""
    from selfsup.data.stream import _loader

    iterator = _loader(_WorkerPid(), list(range(64)), workers=1, pin=False)
    worker = next(iterator)
    subprocess.run(["kill", "-TERM", str(worker)], check=True)  # a sender that is not the parent
    time.sleep(0.3)
    assert _alive(worker) and all(pid == worker for pid in iterator)  # it served the remaining steps
    iterator = _loader(_WorkerPid(), list(range(64)), workers=1, pin=False)
    worker = next(iterator)
    os.kill(worker, signal.SIGTERM)  # from its parent
    deadline = time.monotonic() + 10
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(worker)
    del iterator


def test_stored_side_and_eval_view_match_pil(tmp_path):
    root = make_folder(tmp_path / "imgs", 6, size=(50, 34))
    streamed = folder_split(root, "train", 20, 3, workers=0)
    side = stored_side(20)
    assert side == 23 == streamed.reader.side  # round(20 * 1.15)
    files = sorted(root.rglob("*.png"))
    source = StreamedImages(streamed, batch_size=2, workers=0)
    assert tuple(source.images[:].shape) == (6, 3, side, side)
    for k, path in enumerate(files):
        assert np.array_equal(source.images[k].numpy(), pil_reference(path, side))
        assert np.array_equal(streamed.images[k].numpy(), pil_reference(path, side, crop=20))  # evaluation's view


def test_jpeg_draft_decoding_keeps_the_side_and_the_picture(tmp_path):
    big = tmp_path / "big.jpg"
    Image.fromarray(_picture(1, 800, 600)).save(big, quality=92)
    reader = FileReader([big], side=110, channels=3)
    drafted = reader.read(0).astype(np.float64)
    full = pil_reference(big, 110).astype(np.float64)  # full-size decode, then resize
    assert drafted.shape == full.shape == (3, 110, 110)
    assert np.abs(drafted - full).mean() < 3.0  # the same picture: DCT-domain scaling differs by a few levels


def test_corrupt_files_are_reported_once_and_replaced_by_the_next_readable_file(tmp_path):
    root = make_folder(tmp_path / "imgs", 12, classes=1)
    broken = root / "class0" / "0003b.png"  # sorts right after 0003.png
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    streamed = folder_split(root, "train", 16, 3, ratio=1.0, workers=0)
    files = [Path(f) for f in streamed.reader.files]
    position = files.index(broken)
    source = StreamedImages(streamed, batch_size=13, seed=0, workers=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = source.batch(0, 0, 0)
        again = source.batch(1, 0, 0)
    messages = [str(w.message) for w in caught if issubclass(w.category, SkippedImageWarning)]
    assert len(messages) == 1 and str(broken) in messages[0]  # reported once, naming the file
    assert list(source.skipped) == [str(broken)]
    slot = int((source.order(0)[:13] == position).nonzero())  # where the plan put the broken file
    assert first.index[slot] == position + 1  # the substitute, which also has a slot of its own
    assert np.array_equal(first.images[slot].numpy(), pil_reference(files[position + 1], 16))
    again_slot = int((source.order(1)[:13] == position).nonzero())
    assert again.index[again_slot] == position + 1 and torch.equal(again.images[again_slot], first.images[slot])
    source.close()


def _black_corrupt_white(root: Path) -> Path:
    """a/0.png black, a/1.png unreadable, b/0.png and b/1.png white: two classes, a known picture each."""
    for name, value in (("a/0.png", 0), ("b/0.png", 255), ("b/1.png", 255)):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(root / name)
    (root / "a" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n corrupt")
    return root


@pytest.mark.filterwarnings("ignore::selfsup.data.folder.SkippedImageWarning")
def test_a_substituted_slot_carries_the_substitutes_index_label_and_name(tmp_path):
    root = _black_corrupt_white(tmp_path / "imgs")
    written = {"a/0.png": (0, 0), "b/0.png": (1, 255), "b/1.png": (1, 255)}  # label, pixel of each readable file
    streamed = folder_split(root, "train", 8, 3, ratio=1.0, workers=0)
    relative = [Path(f).relative_to(root).as_posix() for f in streamed.reader.files]
    assert relative == ["a/0.png", "a/1.png", "b/0.png", "b/1.png"]
    batch = StreamedImages(streamed, batch_size=4, workers=0).batch(0, 0, 0)
    planned = StreamedImages(streamed, batch_size=4).order(0).tolist()
    read = [relative[i] for i in batch.index.tolist()]
    # Slot of a/1.png: b/0.png, the next readable file, and everything the slot says is b/0.png's.
    assert read == ["b/0.png" if relative[i] == "a/1.png" else relative[i] for i in planned]
    assert batch.labels.tolist() == [written[name][0] for name in read]
    assert batch.images[:, 0, 0, 0].tolist() == [written[name][1] for name in read]
    halves = [StreamedImages(streamed, batch_size=4, world_size=2, workers=0, rank=r).batch(0, 0, r) for r in (0, 1)]
    assert torch.equal(torch.cat([h.index for h in halves]), batch.index)  # ranks agree on the substitute
    memory = streamed.in_memory()
    names = [Path(f).relative_to(root).as_posix() for f in memory.files]
    assert names == ["a/0.png", "b/0.png", "b/0.png", "b/1.png"]
    assert memory.labels.tolist() == [written[n][0] for n in names]
    assert memory.images[:, 0, 0, 0].tolist() == [written[n][1] for n in names]
    # Evaluation reads the stream and then the split's labels and files: the same, once the file was met.
    assert streamed.labels.tolist() == memory.labels.tolist() and streamed.files == memory.files
    assert folder_split(root, "train", 8, 3, ratio=1.0).labels.tolist() == [0, 0, 1, 1]  # nothing read yet


def test_stream_indexing_gives_the_shapes_tensors_do(tmp_path):
    root = make_folder(tmp_path / "imgs", 9)
    stream = folder_split(root, "train", 12, 3, ratio=1.0, workers=0).images
    every = stream[:]
    assert every.shape == stream.shape == (9, 3, 12, 12)
    assert torch.equal(stream[np.int64(4)], every[4]) and torch.equal(stream[torch.tensor(4)], every[4])
    assert stream[[]].shape == (0, 3, 12, 12)
    grid = torch.tensor([[0, 8], [3, 3]])
    assert torch.equal(stream[grid], every[grid])
    mask = torch.arange(9) % 2 == 0
    assert torch.equal(stream[mask], every[mask]) and torch.equal(stream.subset(mask)[:], every[mask])
    assert torch.equal(stream[2:7:2], every[2:7:2])


def test_features_of_a_stream_equal_those_of_its_tensor(tmp_path):
    from selfsup.evaluate import extract_features

    root = make_folder(tmp_path / "imgs", 21)
    streamed = folder_split(root, "train", 12, 3, workers=2)
    encoder = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 10 * 10, 5))
    ours = extract_features(encoder, streamed.images, batch_size=8)
    reference = extract_features(encoder, streamed.images[:], batch_size=8)
    assert torch.equal(ours, reference)
    subset = torch.tensor([20, 3, 7])
    picked = extract_features(encoder, streamed.images.subset(subset), batch_size=2)
    torch.testing.assert_close(picked, reference[subset], rtol=1e-5, atol=1e-6)  # other batch size: float rounding


def test_a_streamed_run_equals_the_in_memory_run_of_the_same_folder(tmp_path):
    """With data.store_ratio=1 the workers decode each image at the training size, the very pixels
    the in-memory folder source holds, in the same order; the views come from the same RNG, so the
    two runs end bit-identical, evaluation included."""
    from selfsup.config import load_config
    from selfsup.engine import pretrain

    root = make_folder(tmp_path / "imgs", 96, test=24)
    common = ["method=simclr", "data.name=folder", f"data.root={root}", "data.size=16", "backbone.width=8",
              "method_args.proj_hidden_dim=32", "method_args.proj_dim=16", "train.batch_size=32", "train.epochs=2",
              "train.progress=false", "train.knn_every=1", "eval.plots=false", "eval.save_embeddings=false"]
    memory = pretrain(load_config(None, [*common, f"train.out_dir={tmp_path / 'memory'}"]))
    streamed = pretrain(load_config(None, [*common, "data.stream=true", "data.store_ratio=1.0", "data.workers=2",
                                           f"train.out_dir={tmp_path / 'streamed'}"]))
    a, b = (load_checkpoint(tmp_path / run / "checkpoints" / "last.ckpt") for run in ("memory", "streamed"))
    assert a["step"] == b["step"] == 6
    for key, value in a["model"].items():
        assert torch.equal(b["model"][key], value), key
    assert a["history"]["knn"] == b["history"]["knn"] and len(a["history"]["knn"]) == 2
    assert streamed.metrics == memory.metrics


def test_views_without_a_random_crop_take_the_centre_evaluation_sees(tmp_path):
    from selfsup.config import load_config
    from selfsup.engine import Trainer

    root = make_folder(tmp_path / "imgs", 16, size=(40, 30))
    cfg = load_config(None, ["method=rotation", "augment.recipe=none", "data.name=folder", f"data.root={root}",
                             "data.stream=true", "data.size=20", "data.workers=0", "backbone.width=8",
                             "train.batch_size=8", "train.progress=false", f"train.out_dir={tmp_path / 'run'}"])
    trainer = Trainer(cfg)
    batch = trainer.make_batch(0, 1)
    assert trainer.source.images[:1].shape[-1] == 23  # stored with the 15% margin
    expected = trainer.train_set.images[batch.index].float() / 255  # centre 20 of 23: evaluation's view
    assert torch.equal(batch.views[0], expected)


# -- pack -----------------------------------------------------------------------------------------

def test_pack_rows_labels_and_checksums(tmp_path):
    root = make_folder(tmp_path / "imgs", 10, test=4)
    (root / "train" / "class1" / "bad.png").write_bytes(b"nope")
    with pytest.warns(SkippedImageWarning) as caught:
        indexes = packing.pack_folder(root, tmp_path / "pack", size=16, shard_size=4, progress=False)
    messages = [str(w.message) for w in caught]
    assert any("bad.png" in m for m in messages) and any("skipped 1 of 11 image files" in m for m in messages)
    train = indexes["train"]
    # 11 files in order: class0 (4), class1 (3 and bad.png, last), class2 (3); shards of 4 files each
    assert [s["count"] for s in train["shards"]] == [4, 3, 3] and train["count"] == 10
    assert train["skipped"][0]["file"] == str(Path("class1") / "bad.png")
    for shard in train["shards"]:  # the recorded checksum is the file's
        path = tmp_path / "pack" / "train" / shard["file"]
        assert shard["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        rows = np.load(path, mmap_mode="r")  # numpy alone reads a shard
        for k, name in enumerate(shard["files"]):
            assert np.array_equal(rows[k], pil_reference(root / "train" / name, 18))  # stored side round(16 * 1.15)
    streamed = packed_split(tmp_path / "pack", "train", None, workers=0)
    assert streamed.size == 16 and len(streamed) == 10 and streamed.classes == ["class0", "class1", "class2"]
    names = [name for shard in train["shards"] for name in shard["files"]]
    assert streamed.labels.tolist() == [int(Path(n).parts[0][-1]) for n in names]
    assert np.array_equal(streamed.images[7].numpy(), pil_reference(root / "train" / names[7], 18, crop=16))
    test = data.load("packed", "test", tmp_path / "pack")
    assert test.images.shape == (4, 3, 16, 16) and test.classes == streamed.classes


def test_file_names_that_are_not_utf8_pack_stream_and_fingerprint(tmp_path):
    root = make_folder(tmp_path / "imgs", 3, classes=1)
    plain = folder_split(root, "train", 8, 3, workers=0)
    # The fingerprint of UTF-8 names is what checkpoints already hold: sha256 of each name and a newline.
    assert plain.fingerprint() == hashlib.sha256(b"".join(f.encode() + b"\n" for f in plain.reader.files)).hexdigest()
    odd = os.path.join(os.fsencode(root / "class0"), b"caf\xe9.png")  # Latin-1 bytes: not UTF-8
    try:
        with open(odd, "wb") as file:
            Image.fromarray(np.full((8, 8, 3), 77, np.uint8)).save(file, "PNG")
    except OSError:
        pytest.skip("this filesystem refuses file names that are not UTF-8")
    streamed = folder_split(root, "train", 8, 3, ratio=1.0, workers=0)
    assert os.fsencode(streamed.reader.files[-1]) == odd
    assert len(streamed.fingerprint()) == 64 and streamed.fingerprint() != plain.fingerprint()
    assert streamed.images[3].flatten().tolist() == [77] * 3 * 8 * 8
    index = packing.pack_folder(root, tmp_path / "pack", size=8, ratio=1.0, progress=False)["train"]
    assert index["count"] == 4 and not index["skipped"]
    packed = packed_split(tmp_path / "pack", "train", None, workers=0)
    assert os.fsencode(root / packed.reader.names[-1]) == odd
    assert packed.images[3].flatten().tolist() == [77] * 3 * 8 * 8 and len(packed.fingerprint()) == 64


def test_pack_takes_imagenets_val_as_the_test_split(tmp_path):
    # train/ + val/ (no test/) packs as train/ and test/, val's images in test, with the folder's classes.
    root = tmp_path / "imagenet"
    for name, value in (("train/n01/a.png", 10), ("train/n02/b.png", 20), ("val/n02/c.png", 30)):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(root / name)
    indexes = packing.pack_folder(root, tmp_path / "pack", size=8, ratio=1.0, progress=False)
    assert sorted(indexes) == ["test", "train"] and indexes["test"]["count"] == 1
    test = packed_split(tmp_path / "pack", "test", None, workers=0)
    assert test.images[0].flatten().tolist() == [30] * 3 * 8 * 8 and test.labels.tolist() == [1]


@pytest.mark.parametrize("error", [OSError(errno.EMFILE, "Too many open files"), MemoryError()])
def test_running_out_of_memory_or_descriptors_stops_a_pack_rather_than_skip_the_file(tmp_path, monkeypatch, error):
    root = make_folder(tmp_path / "imgs", 4)
    real = folder.decode

    def starved(path, *args, **kwargs):
        if path.name == "0002.png":
            raise error
        return real(path, *args, **kwargs)

    monkeypatch.setattr(folder, "decode", starved)
    with pytest.raises(type(error)):
        packing.pack_folder(root, tmp_path / "pack", size=8, progress=False)
    monkeypatch.setattr(folder, "decode", real)  # memory back: the pack resumes and holds every file
    assert packing.pack_folder(root, tmp_path / "pack", size=8, progress=False)["train"]["count"] == 4


def test_reading_a_pack_holds_no_file_descriptors(tmp_path):
    root = make_folder(tmp_path / "imgs", 30)
    packing.pack_folder(root, tmp_path / "pack", size=8, shard_size=1, progress=False)  # 30 shards
    streamed = packed_split(tmp_path / "pack", "train", None, workers=0)
    before = len(os.listdir("/proc/self/fd"))
    images = streamed.images[:]
    assert images.shape == (30, 3, 8, 8) and len(os.listdir("/proc/self/fd")) == before
    (tmp_path / "pack" / "shard-00007.npy").unlink()  # gone after the pack was opened
    with pytest.raises(DataError, match="packed: cannot read .*shard-00007.npy"):
        streamed.images[:]  # an error, never a skipped "file"


def test_a_pack_view_for_smaller_crops_covers_what_training_crops_cover(tmp_path):
    import torchvision.transforms.v2.functional as TF

    root = make_folder(tmp_path / "imgs", 5)
    packing.pack_folder(root, tmp_path / "pack", size=16, progress=False)  # stored at 18
    native = packed_split(tmp_path / "pack", "train", None, workers=0).images[:]  # centre 16 of 18
    smaller = packed_split(tmp_path / "pack", "train", 12, workers=0).images[:]
    assert torch.equal(smaller, TF.resize(native, [12, 12], antialias=True))


def test_decoding_in_processes_gives_every_file_in_order_and_names_the_broken_one(tmp_path):
    from concurrent.futures import ProcessPoolExecutor

    root = make_folder(tmp_path / "imgs", 80)
    (root / "class1" / "9999.png").write_bytes(b"not an image")
    files, *_ = folder.scan_folder(root, "train")
    with folder.decode_pool(len(files), processes=True) as pool:
        assert isinstance(pool, ProcessPoolExecutor) == sys.platform.startswith("linux")
        with pytest.warns(SkippedImageWarning, match="9999.png"):
            results = list(folder.decode_files(pool, files, 16, 3))
    assert len(results) == 81
    for path, result in zip(files, results):
        if path.name == "9999.png":
            assert isinstance(result, str) and "UnidentifiedImageError" in result
        else:
            assert np.array_equal(result, folder.decode(path, 16, 3))  # what one decode in this process gives


def test_pack_resumes_after_an_interruption_to_the_same_shards(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "imgs", 13)
    packing.pack_folder(root, tmp_path / "fresh", size=12, shard_size=4, progress=False)
    real, calls = folder._try_decode, []

    def interrupted(*args):
        calls.append(1)
        if len(calls) > 9:  # two shards written, the third cut off
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(folder, "_try_decode", interrupted)
    with pytest.raises(KeyboardInterrupt):
        packing.pack_folder(root, tmp_path / "pack", size=12, shard_size=4, progress=False)
    with pytest.raises(DataError, match="unfinished pack"):
        packing.open_pack(tmp_path / "pack")
    kept = (tmp_path / "pack" / "shard-00000.npy").stat().st_mtime_ns
    monkeypatch.setattr(folder, "_try_decode", real)
    calls.clear()
    counted = []
    monkeypatch.setattr(folder, "_try_decode", lambda *a: counted.append(1) or real(*a))
    packing.pack_folder(root, tmp_path / "pack", size=12, shard_size=4, progress=False)
    assert len(counted) == 13 - 8  # only the unwritten shards were decoded
    assert (tmp_path / "pack" / "shard-00000.npy").stat().st_mtime_ns == kept
    for k in range(4):
        name = f"shard-{k:05d}.npy"
        assert (tmp_path / "pack" / name).read_bytes() == (tmp_path / "fresh" / name).read_bytes()
    with pytest.raises(DataError, match=r"other settings \(size: 12, now 20\)"):
        packing.pack_folder(root, tmp_path / "pack", size=20, shard_size=4, progress=False)


def test_a_second_pack_rewrites_a_recorded_shard_whose_bytes_changed(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "imgs", 6)
    packing.pack_folder(root, tmp_path / "fresh", size=12, shard_size=4, progress=False)
    out = tmp_path / "pack"
    packing.pack_folder(root, out, size=12, shard_size=4, progress=False)
    shard = out / "shard-00000.npy"
    changed = bytearray(shard.read_bytes())
    changed[-1] ^= 0xFF  # a pixel of the shard's last image: same length, same header
    shard.write_bytes(bytes(changed))
    real, decoded = folder._try_decode, []
    monkeypatch.setattr(folder, "_try_decode", lambda *a: decoded.append(1) or real(*a))
    packing.pack_folder(root, out, size=12, shard_size=4, progress=False)
    assert len(decoded) == 6  # the changed shard and every later one are written again
    for name in ("shard-00000.npy", "shard-00001.npy"):
        assert (out / name).read_bytes() == (tmp_path / "fresh" / name).read_bytes()
    assert len(packing.open_pack(out, verify=True)) == 6


def test_a_pack_resumed_after_a_kill_mid_index_write_leaves_no_temporary(tmp_path):
    """A SIGKILL while atomic_write replaces the index (or writes a shard) leaves its temporary: the
    resumed pack removes it (seen once as a leftover in CI's real-kill test, whose timing rarely hits it)."""
    root = make_folder(tmp_path / "imgs", 6)
    out = tmp_path / "pack"
    packing.pack_folder(root, out, size=12, shard_size=4, progress=False)
    stale = [out / ".index.json.0123456789abcdef.tmp", out / ".shard-00001.npy.fedcba9876543210.tmp"]
    for path in stale:
        path.write_bytes(b"half written")
    index = json.loads((out / "index.json").read_text())
    index["complete"] = False  # as a pack killed before its end
    (out / "index.json").write_text(json.dumps(index))
    packing.pack_folder(root, out, size=12, shard_size=4, progress=False)
    assert not list(out.glob(".*tmp*")) and packing.open_pack(out)


def test_pack_killed_before_its_first_shard_is_recorded_resumes(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "imgs", 6)
    real, writes = packing._write_index, []

    def killed_after_the_first_shard(out, index):
        writes.append(len(index["shards"]))
        if index["shards"]:
            raise KeyboardInterrupt  # shard-00000.npy is on disk, the index does not list it yet
        real(out, index)

    monkeypatch.setattr(packing, "_write_index", killed_after_the_first_shard)
    with pytest.raises(KeyboardInterrupt):
        packing.pack_folder(root, tmp_path / "pack", size=12, shard_size=4, progress=False)
    assert (tmp_path / "pack" / "shard-00000.npy").is_file() and writes == [0, 1]
    monkeypatch.setattr(packing, "_write_index", real)
    packing.pack_folder(root, tmp_path / "pack", size=12, shard_size=4, progress=False)
    assert len(packing.open_pack(tmp_path / "pack", verify=True)) == 6


@pytest.mark.parametrize("name", ["../outside.npy", "/etc/passwd", "sub/shard.npy", "..", ""])
def test_a_pack_never_reads_outside_its_folder(tmp_path, name):
    root = make_folder(tmp_path / "imgs", 4)
    packing.pack_folder(root, tmp_path / "pack", size=12, shard_size=4, progress=False)
    outside = tmp_path / "outside.npy"  # a file the crafted index points at
    np.save(outside, np.zeros((4, 3, 14, 14), dtype=np.uint8))
    index = json.loads((tmp_path / "pack" / "index.json").read_text())
    index["shards"][0]["file"] = name
    (tmp_path / "pack" / "index.json").write_text(json.dumps(index))
    with pytest.raises(DataError, match="outside its folder"):
        packing.open_pack(tmp_path / "pack")
    with pytest.raises(DataError, match="outside its folder"):  # nor when resuming a pack into that folder
        packing.pack_folder(root, tmp_path / "pack", size=12, shard_size=4, progress=False)


def test_a_pack_never_follows_a_shard_link_out_of_its_folder(tmp_path):
    root = make_folder(tmp_path / "imgs", 4)
    packing.pack_folder(root, tmp_path / "pack", size=12, shard_size=4, progress=False)
    shard = tmp_path / "pack" / json.loads((tmp_path / "pack" / "index.json").read_text())["shards"][0]["file"]
    outside = tmp_path / "outside.npy"
    outside.write_bytes(shard.read_bytes())
    shard.unlink()
    shard.symlink_to(outside)  # a plain name in the index, a link on disk
    with pytest.raises(DataError, match="is a symbolic link"):
        packing.open_pack(tmp_path / "pack")


@pytest.mark.slow
def test_selfsup_pack_killed_mid_shard_resumes_to_the_same_bytes(tmp_path, kill_after_checkpoint):
    root = make_folder(tmp_path / "imgs", 300, size=(64, 48))
    fresh = subprocess.run([sys.executable, "-m", "selfsup", "pack", str(root), str(tmp_path / "fresh"),
                            "--size", "24", "--shard-size", "32"], capture_output=True, text=True, timeout=300)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    command = [sys.executable, "-m", "selfsup", "pack", str(root), str(tmp_path / "pack"), "--size", "24",
               "--shard-size", "32"]
    # A real SIGKILL once three shards are on disk: whatever the process was doing (a shard half written,
    # the index being replaced) is left as it was.
    running = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_after_checkpoint(running, tmp_path / "pack" / "shard-00002.npy")
    assert not (tmp_path / "pack" / "shard-00009.npy").exists(), "the pack finished before it was killed"
    with pytest.raises(DataError, match="unfinished pack"):
        packing.open_pack(tmp_path / "pack")
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    shards = sorted(p.name for p in (tmp_path / "fresh").glob("shard-*.npy"))
    assert shards == sorted(p.name for p in (tmp_path / "pack").glob("shard-*.npy")) and len(shards) == 10
    for name in shards:
        assert (tmp_path / "pack" / name).read_bytes() == (tmp_path / "fresh" / name).read_bytes(), name
    assert not list((tmp_path / "pack").glob(".*tmp*"))  # no temporary left behind
    assert len(packing.open_pack(tmp_path / "pack", verify=True)) == 300


def test_a_shard_that_does_not_match_its_index_is_named(tmp_path):
    root = make_folder(tmp_path / "imgs", 8)
    packing.pack_folder(root, tmp_path / "pack", size=12, shard_size=4, progress=False)
    shard = tmp_path / "pack" / "shard-00001.npy"
    original = shard.read_bytes()
    shard.write_bytes(original[:-100])  # cut short
    with pytest.raises(DataError, match="shard-00001.npy.*cut short") as info:
        packing.open_pack(tmp_path / "pack")
    assert "mangles a key" not in str(info.value)  # the shard's own message, not the index's (wrong advice)
    changed = bytearray(original)
    changed[-1] ^= 0xFF  # same length, other pixels
    shard.write_bytes(bytes(changed))
    packing.open_pack(tmp_path / "pack")  # headers and lengths agree ...
    with pytest.raises(DataError, match="shard-00001.npy does not match its sha256") as info:
        packing.open_pack(tmp_path / "pack", verify=True)  # ... the checksum does not
    assert str(info.value).startswith("packed: ") and "mangles a key" not in str(info.value)
    np.save(shard, np.zeros((3, 3, 14, 14), dtype=np.uint8))
    with pytest.raises(DataError, match=r"shard-00001.npy holds uint8 \(3, 3, 14, 14\).*4 images of 3x14x14"):
        packing.open_pack(tmp_path / "pack")
    (tmp_path / "pack" / "index.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(DataError, match="not a selfsup pack index"):
        packing.open_pack(tmp_path / "pack")


def test_cli_pack_then_pretrain_on_the_pack(tmp_path, monkeypatch):
    from selfsup import cli

    monkeypatch.setattr(cli.common, "tune_allocator", lambda: None)  # process-wide malloc settings: the CLI's, not a test's

    root = make_folder(tmp_path / "imgs", 48, test=12)
    assert cli.main(["pack", str(root), str(tmp_path / "pack"), "--size", "16", "--shard-size", "20"]) == 0
    assert (tmp_path / "pack" / "train" / "shard-00002.npy").is_file()
    assert cli.main(["pack", str(root), str(tmp_path / "pack"), "--size", "16"]) == 2  # other settings: usage error
    from selfsup.config import load_config
    from selfsup.engine import pretrain

    cfg = load_config(None, ["method=simclr", "data.name=packed", f"data.root={tmp_path / 'pack'}", "data.workers=1",
                             "backbone.width=8", "train.batch_size=16", "train.epochs=1", "train.progress=false",
                             "train.knn_every=0", "eval.plots=false", "eval.save_embeddings=false",
                             "data.verify=true", f"train.out_dir={tmp_path / 'run'}"])
    pretrain(cfg)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["steps"] == 3 and results["evaluations"]["knn"]["data"] == "packed"
    # The command line re-reads the pack's eval view whole and gets the run's own kNN figure.
    assert cli.main(["evaluate", "knn", str(tmp_path / "run" / "checkpoints" / "last.ckpt")]) == 0
    again = json.loads((tmp_path / "run" / "evaluations" / "knn.json").read_text())
    assert again["accuracy"] == results["evaluations"]["knn"]["accuracy"]
    assert cli.main(["evaluate", "finetune", str(tmp_path / "run" / "checkpoints" / "last.ckpt"), "--labels", "50%",
                     "--seeds", "1", "--steps", "2"]) == 0  # reads the streamed splits whole, as tensors
    assert (tmp_path / "run" / "evaluations" / "finetune.json").is_file()
    assert cli.main(["embed", str(tmp_path / "run" / "checkpoints" / "last.ckpt")]) == 0  # its own data, streamed
    embeddings = np.load(tmp_path / "run" / "embeddings" / "packed_test.npy")
    assert embeddings.shape == (12, 64)  # 12 test images, the ConvNet's 8 x width (8) features


def test_a_resume_over_a_changed_folder_is_refused(tmp_path):
    from selfsup.config import ConfigError, load_config
    from selfsup.engine import pretrain

    root = make_folder(tmp_path / "imgs", 32)
    settings = ["method=simclr", "data.name=folder", f"data.root={root}", "data.stream=true", "data.size=12",
                "data.workers=0", "backbone.width=8", "method_args.proj_hidden_dim=16", "method_args.proj_dim=8",
                "train.batch_size=16", "train.progress=false", "train.knn_every=0", "eval.plots=false",
                "eval.linear=false", "eval.knn=false", f"train.out_dir={tmp_path / 'run'}"]
    pretrain(load_config(None, [*settings, "train.epochs=1"]))
    (root / "class0" / "0000.png").rename(root / "class0" / "renamed.png")  # same count, other files
    with pytest.raises(ConfigError, match="not the ones the checkpoint was trained on"):
        pretrain(load_config(None, [*settings, "train.epochs=2"]), resume=True)
    Image.fromarray(_picture(99, 40, 30)).save(root / "class0" / "extra.png")
    with pytest.raises(ConfigError, match="trained on 32 samples, folder now gives 33"):
        pretrain(load_config(None, [*settings, "train.epochs=2"]), resume=True)


def test_stream_settings_are_checked(tmp_path):
    from selfsup.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="streamed images .* carry no captions"):
        load_config(None, ["method=clip", "data.name=folder", "data.stream=true", "data.captions=templates"])

    with pytest.raises(ConfigError, match="data.stream: streams folders, packs, webdataset shards and videos"):
        load_config(None, ["data.name=digits", "data.stream=true"])
    with pytest.raises(ConfigError, match="data.workers: must be >= 0"):
        load_config(None, ["data.workers=-1"])
    with pytest.raises(ConfigError, match="data.store_ratio: must be >= 1"):
        load_config(None, ["data.store_ratio=0.9"])
    root = make_folder(tmp_path / "imgs", 4)
    with pytest.raises(DataError, match="data.size=30 is larger than the stored side 23"):
        packing.pack_folder(root, tmp_path / "pack", size=20, progress=False)
        packed_split(tmp_path / "pack", "train", 30)
    with pytest.raises(FileNotFoundError, match="no index.json in .*make a pack with: selfsup pack"):
        packed_split(tmp_path / "nothing", "train", None)


# -- resume after SIGKILL, with DataLoader workers --------------------------------------------------

def _run(out_dir, *args):
    return subprocess.Popen([sys.executable, str(SCRIPT), str(out_dir), *args], env=dict(os.environ, PYTHONHASHSEED="0"),
                            start_new_session=True)  # its own process group: the kill takes the workers too


def test_streamed_folder_run_killed_mid_epoch_resumes_to_the_same_weights(tmp_path, kill_after_checkpoint):
    root = make_folder(tmp_path / "jpgs", 200, suffix=".jpg", size=(48, 36))
    (root / "class1" / "0001x.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut off")  # an unreadable file
    settings = ["data.name=folder", f"data.root={root}", "data.stream=true", "data.workers=2", "train.batch_size=32",
                "train.epochs=2", "train.checkpoint_every=2", "train.knn_every=0", "eval.knn=false"]
    reference = _run(tmp_path / "reference", *settings)
    victim = _run(tmp_path / "victim", *settings)
    ckpt = tmp_path / "victim" / "checkpoints" / "last.ckpt"
    kill_after_checkpoint(victim, ckpt)  # the process group: the DataLoader workers die too
    killed_at = load_checkpoint(ckpt)["step"]
    assert 0 < killed_at < 12  # 6 steps per epoch: the resumed run crosses an epoch boundary
    resumed = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "victim"), *settings, "--resume"],
                             capture_output=True, text=True, timeout=240, env=dict(os.environ, PYTHONHASHSEED="0"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "0001x.jpg" in resumed.stderr  # the unreadable file, named
    assert reference.wait(timeout=240) == 0
    done, expected = load_checkpoint(ckpt), load_checkpoint(tmp_path / "reference" / "checkpoints" / "last.ckpt")
    assert done["step"] == expected["step"] == 12
    for key, value in expected["model"].items():
        assert torch.equal(done["model"][key], value), key
    skipped = json.loads((tmp_path / "victim" / "results.json").read_text())["skipped_files"]
    assert [Path(s["path"]).name for s in skipped] == ["0001x.jpg"]


# -- memory stays flat: a folder 10x the memory cap -------------------------------------------------

_CAPPED = textwrap.dedent("""
    import resource, sys, threading, time
    import psutil
    from selfsup.data.stream import StreamedImages, folder_split
    root, budget, keep = sys.argv[1], int(sys.argv[2]) << 20, sys.argv[3] == "keep"
    dataset = folder_split(root, "train", 224, 3, workers=2)
    source = StreamedImages(dataset, batch_size=16, seed=0, workers=2)
    source.batch(0, 0, 0)  # workers up, first batches in flight
    def vm_data():
        return int(next(l for l in open("/proc/self/status") if l.startswith("VmData:")).split()[1]) << 10
    # The cap: private memory may grow by at most `budget` in this process and in each worker it forks.
    resource.setrlimit(resource.RLIMIT_DATA, (vm_data() + budget, resource.RLIM_INFINITY))
    me = psutil.Process()
    def rss():
        return sum(p.memory_info().rss for p in [me, *me.children(recursive=True)])
    base, peak, done = rss(), [0], []
    def sample():
        while not done:
            peak[0] = max(peak[0], rss()); time.sleep(0.01)
    watcher = threading.Thread(target=sample); watcher.start()
    kept = []
    try:
        for epoch in range(2):
            for position in range(1 if epoch == 0 else 0, source.steps_per_epoch()):
                images = source.batch(epoch, position, 0).images
                if keep:
                    kept.append(images.clone())  # the control: a source that held what it read
    finally:
        done.append(1); watcher.join()
    decoded = len(dataset) * images[0].numel()
    print(decoded >> 20, (peak[0] - base) >> 20)
""")


def test_memory_stays_flat_under_a_cap_on_a_folder_ten_times_larger(tmp_path):
    budget_mb = 32
    count = 10 * budget_mb * 2**20 // (3 * 258 * 258) + 1  # decoded at 258 px (224 * 1.15): 10x the cap
    root = tmp_path / "big"
    rng = np.random.default_rng(0)
    for k in range(count):
        folder = root / f"class{k % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (270, 300, 3), dtype=np.uint8)).save(folder / f"{k}.jpg", quality=60)
    script = tmp_path / "capped.py"
    script.write_text(_CAPPED)
    run = subprocess.run([sys.executable, str(script), str(root), str(budget_mb), "stream"], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    decoded_mb, growth_mb = map(int, run.stdout.split())
    assert decoded_mb >= 10 * budget_mb
    assert growth_mb < budget_mb  # resident memory of the process and its workers, two epochs through
    control = subprocess.run([sys.executable, str(script), str(root), str(budget_mb), "keep"], capture_output=True,
                             text=True, timeout=300)
    assert control.returncode != 0 and "allocate" in control.stderr  # the cap is real: holding the data fails
