"""Tests for selfsup.data: tiny IDX/CIFAR/image files written here, checked against independent references."""

from __future__ import annotations

import dataclasses
import errno
import gzip
import hashlib
import io
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import selfsup.data as data
from selfsup.data import DATASETS, ChecksumError, DownloadError, ImageDataset, SkippedImageWarning, load
from selfsup.data import download as remote
from selfsup.data.cifar import CIFAR10

# Where a real download (the main job's, or this suite's apt-get test) left Fashion-MNIST on this machine.
REAL_FASHION = Path(os.environ.get("SELFSUP_DATA") or "~/.cache/selfsup").expanduser() / "fashion_mnist"
# SHA-256 of the decompressed files, as published with the dataset.
FASHION_SHA256 = {
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
}


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """A private cache, and no network unless a test installs its own fetchers."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("SELFSUP_DATA", str(folder))

    def no_network(*args, **kwargs):
        raise AssertionError(f"unexpected network access: {args}")

    monkeypatch.setattr(remote, "fetch_url", no_network)
    monkeypatch.setattr(remote, "apt_fetch", no_network)
    return folder


# ---------------------------------------------------------------- IDX files


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding written out by hand: 0, 0, type 0x08, ndim, big-endian dims, payload."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_set(folder: Path, n_train=5, n_test=3, gz=True, seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(array)))
        else:
            (folder / name).write_bytes(idx_bytes(array))
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip_from_root(tmp_path, gz):
    arrays = write_idx_set(tmp_path / "fm", gz=gz)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        ds = load("fashion_mnist", split, root=tmp_path / "fm")
        expected = arrays[f"{prefix}-images-idx3-ubyte"]
        assert ds.images.dtype == torch.uint8 and ds.images.shape == (len(expected), 1, 28, 28)
        for k in range(len(expected)):
            for y in (0, 13, 27):
                for x in (0, 5, 27):
                    assert ds.images[k, 0, y, x].item() == expected[k, y, x]
        assert ds.labels.dtype == torch.int64
        assert ds.labels.tolist() == arrays[f"{prefix}-labels-idx1-ubyte"].tolist()
        assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot" and ds.name == "fashion_mnist"


def test_idx_root_missing_file_is_named(tmp_path):
    write_idx_set(tmp_path / "fm")
    (tmp_path / "fm" / "t10k-labels-idx1-ubyte.gz").unlink()
    load("mnist", "train", root=tmp_path / "fm")
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        load("mnist", "test", root=tmp_path / "fm")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load("mnist", root=tmp_path / "nowhere")


def _write(path: Path, raw: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw)
    return path


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"\x12\x34\x08\x03" + b"\x00" * 12, "magic"),
        (b"\x00\x00\x0d\x03" + struct.pack(">III", 1, 1, 1) + b"\x00" * 4, "float32"),
        (b"\x00\x00\x08\x02" + struct.pack(">II", 1, 1) + b"\x00", "dimensions"),
        (b"\x00\x00\x08\x03" + struct.pack(">I", 2), "header is truncated"),
        (b"\x00\x00\x08\x03" + struct.pack(">III", 2, 28, 28) + b"\x00" * (28 * 28 + 5), "truncated"),
        (b"\x00\x00\x08\x03" + struct.pack(">III", 1, 2, 2) + b"\x00" * 5, "extra bytes"),
        (b"\x00\x00", "too short"),
        (gzip.compress(b"\x00\x00\x08\x03" * 100, mtime=0)[:-20], "gzip"),
    ],
)
def test_idx_corrupt_images_file_is_a_clear_error(tmp_path, raw, message):
    write_idx_set(tmp_path / "fm")
    bad = _write(tmp_path / "fm" / "train-images-idx3-ubyte.gz", raw)
    with pytest.raises(ValueError, match=message) as info:
        load("fashion_mnist", root=tmp_path / "fm")
    assert str(bad) in str(info.value)


def test_idx_count_mismatch_and_bad_label(tmp_path):
    write_idx_set(tmp_path / "fm")
    labels = tmp_path / "fm" / "train-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(idx_bytes(np.zeros(4, np.uint8))))
    with pytest.raises(ValueError, match="5 images.*4 labels"):
        load("fashion_mnist", root=tmp_path / "fm")
    labels.write_bytes(gzip.compress(idx_bytes(np.array([0, 1, 2, 3, 10], np.uint8))))
    with pytest.raises(ValueError, match="label 10"):
        load("fashion_mnist", root=tmp_path / "fm")


def test_idx_reads_from_cache_and_names_it_when_empty(cache):
    with pytest.raises(FileNotFoundError, match=str(cache / "mnist")):
        load("mnist", download=False)
    arrays = write_idx_set(cache / "mnist", gz=False)
    ds = load("mnist", "test", download=False)
    assert np.array_equal(ds.images[:, 0].numpy(), arrays["t10k-images-idx3-ubyte"])
    assert ds.classes == [str(d) for d in range(10)]


def _serve(mirror: Path, log: list[str]):
    def fetch(url, dest, *, progress=True):
        log.append(url)
        shutil.copyfile(mirror / url.rsplit("/", 1)[-1], dest)

    return fetch


def _trust(monkeypatch, name: str, folder: Path, algorithm: str, decompressed: bool) -> dict[str, tuple]:
    """Make dataset ``name`` expect the digests of the fake files in ``folder`` (hashlib, computed here)."""
    checks = {}
    for path in folder.glob("*.gz"):
        content = gzip.decompress(path.read_bytes()) if decompressed else path.read_bytes()
        checks[path.name[:-3]] = (algorithm, hashlib.new(algorithm, content).hexdigest(), decompressed)
    monkeypatch.setitem(data._IDX, name, dataclasses.replace(data._IDX[name], checks=checks))
    return checks


def test_mnist_mirror_download_is_checked(tmp_path, cache, monkeypatch):
    arrays = write_idx_set(tmp_path / "mirror")
    _trust(monkeypatch, "mnist", tmp_path / "mirror", "md5", False)
    log: list[str] = []
    monkeypatch.setattr(remote, "fetch_url", _serve(tmp_path / "mirror", log))
    ds = load("mnist", "test", progress=False)
    assert np.array_equal(ds.images[:, 0].numpy(), arrays["t10k-images-idx3-ubyte"])
    wanted = ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    assert sorted(log) == [f"https://ossci-datasets.s3.amazonaws.com/mnist/{name}" for name in wanted]
    assert sorted(p.name for p in (cache / "mnist").iterdir()) == wanted


def test_checksum_mismatch_names_file_and_keeps_nothing(tmp_path, cache, monkeypatch):
    write_idx_set(tmp_path / "mirror")
    good = _trust(monkeypatch, "mnist", tmp_path / "mirror", "md5", False)["t10k-images-idx3-ubyte"][1]
    corrupt = tmp_path / "mirror" / "t10k-images-idx3-ubyte.gz"
    corrupt.write_bytes(gzip.compress(idx_bytes(np.ones((3, 28, 28), np.uint8))))
    actual = hashlib.md5(corrupt.read_bytes()).hexdigest()
    monkeypatch.setattr(remote, "fetch_url", _serve(tmp_path / "mirror", []))
    with pytest.raises(ChecksumError, match="t10k-images-idx3-ubyte") as info:
        load("mnist", "test", progress=False)
    assert good in str(info.value) and actual in str(info.value)
    assert not (cache / "mnist" / "t10k-images-idx3-ubyte.gz").exists()
    assert not [p for p in (cache / "mnist").iterdir() if p.name.startswith(".")]


def test_network_failure_is_a_download_error(monkeypatch):
    def offline(url, dest, *, progress=True):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(remote, "fetch_url", offline)
    with pytest.raises(DownloadError, match="ossci-datasets.*unreachable"):
        load("mnist", progress=False)


def _fake_apt(files: Path, log: list[str]):
    def apt_fetch(package, workdir):
        log.append(package)
        tree = workdir / "tree"
        shutil.copytree(files, tree / "usr/share/datasets/fashion-mnist")
        return tree

    return apt_fetch


def test_fashion_mnist_prefers_debian_package(tmp_path, cache, monkeypatch):
    arrays = write_idx_set(tmp_path / "deb")
    _trust(monkeypatch, "fashion_mnist", tmp_path / "deb", "sha256", True)
    log: list[str] = []
    monkeypatch.setattr(remote, "apt_fetch", _fake_apt(tmp_path / "deb", log))
    ds = load("fashion_mnist", "train", progress=False)
    assert log == ["dataset-fashion-mnist"]
    assert np.array_equal(ds.images[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    assert len(list((cache / "fashion_mnist").glob("*.gz"))) == 4
    load("fashion_mnist", "test", progress=False)
    assert log == ["dataset-fashion-mnist"], "a second load must come from the cache"


def test_fashion_mnist_falls_back_to_mirror_with_decompressed_sha256(tmp_path, monkeypatch):
    write_idx_set(tmp_path / "mirror")
    # The mirror's gz differ byte-wise from Debian's; only the decompressed digest must match.
    for path in (tmp_path / "mirror").glob("*.gz"):
        path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes()), compresslevel=1, mtime=12345))
    _trust(monkeypatch, "fashion_mnist", tmp_path / "mirror", "sha256", True)
    monkeypatch.setattr(remote, "apt_fetch", lambda package, workdir: None)
    log: list[str] = []
    monkeypatch.setattr(remote, "fetch_url", _serve(tmp_path / "mirror", log))
    assert len(load("fashion_mnist", "test", progress=False)) == 3
    assert all(url.startswith("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/t10k-") for url in log)


def _decompressed_sha256(path: Path) -> str:
    return hashlib.sha256(gzip.decompress(path.read_bytes())).hexdigest()


def _assert_real_fashion(train: ImageDataset, test: ImageDataset) -> None:
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    # Published per-channel statistics of Fashion-MNIST's training set (torchvision's and the dataset's
    # own README's normalisation constants).
    assert train.mean().item() == pytest.approx(0.2860, abs=1e-4)
    assert train.std().item() == pytest.approx(0.3530, abs=1e-4)


@pytest.mark.slow
def test_real_fashion_mnist_has_the_published_files_counts_and_statistics(cache, monkeypatch):
    """The real files: from this machine's cache when a download filled it, else fetched now with
    apt-get (Debian's dataset-fashion-mnist, never the mirror)."""
    names = [f"{name}.gz" for name in FASHION_SHA256]
    if all((REAL_FASHION / name).is_file() for name in names):
        (cache / "fashion_mnist").mkdir(parents=True)
        for name in names:
            shutil.copy(REAL_FASHION / name, cache / "fashion_mnist" / name)
    elif shutil.which("apt-get") is None:
        pytest.skip(f"no Fashion-MNIST in {REAL_FASHION} and no apt-get to fetch Debian's package")
    else:
        monkeypatch.undo()
        monkeypatch.setenv("SELFSUP_DATA", str(cache))

        def no_mirror(*args, **kwargs):
            raise AssertionError("the mirror was used: apt-get download dataset-fashion-mnist failed")

        monkeypatch.setattr(remote, "fetch_url", no_mirror)
    _assert_real_fashion(load("fashion_mnist", "train", progress=False), load("fashion_mnist", "test", progress=False))
    for name, digest in FASHION_SHA256.items():
        assert _decompressed_sha256(cache / "fashion_mnist" / f"{name}.gz") == digest


# ---------------------------------------------------------------- CIFAR


def cifar_row(image: np.ndarray) -> np.ndarray:
    """One (3, 32, 32) image as a CIFAR row, built pixel by pixel: R plane, G plane, B plane, row-major."""
    row = np.empty(3072, np.uint8)
    for c in range(3):
        for y in range(32):
            for x in range(32):
                row[c * 1024 + y * 32 + x] = image[c, y, x]
    return row


def cifar_pickle(images: np.ndarray, labels: dict[str, list[int]]) -> bytes:
    rows = np.stack([cifar_row(image) for image in images])
    batch = {b"batch_label": b"fake", b"data": rows, b"filenames": [b"x.png"] * len(images)}
    batch.update({key.encode(): value for key, value in labels.items()})
    return pickle.dumps(batch, protocol=2)


def write_cifar10(folder: Path, per_batch=2, seed=0) -> tuple[np.ndarray, np.ndarray, dict[str, bytes]]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (6 * per_batch, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, 6 * per_batch)
    members = {}
    for k, name in enumerate([f"data_batch_{b}" for b in range(1, 6)] + ["test_batch"]):
        part = slice(k * per_batch, (k + 1) * per_batch)
        members[name] = cifar_pickle(images[part], {"labels": labels[part].tolist()})
    members["batches.meta"] = pickle.dumps({b"label_names": [b"airplane"]}, protocol=2)
    folder.mkdir(parents=True, exist_ok=True)
    for name, raw in members.items():
        (folder / name).write_bytes(raw)
    return images, labels, members


def make_tar(path: Path, folder: str, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, raw in members.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path


def test_cifar10_pixel_layout_and_labels(tmp_path):
    images, labels, _ = write_cifar10(tmp_path / "root" / "cifar-10-batches-py")
    train = load("cifar10", root=tmp_path / "root")
    assert train.images.shape == (10, 3, 32, 32) and torch.equal(train.images, torch.from_numpy(images[:10]))
    assert train.labels.tolist() == labels[:10].tolist()
    test = load("cifar10", "test", root=tmp_path / "root" / "cifar-10-batches-py")
    assert torch.equal(test.images, torch.from_numpy(images[10:])) and test.labels.tolist() == labels[10:].tolist()
    assert test.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def test_cifar10_from_tarball_and_download(tmp_path, cache, monkeypatch):
    images, labels, members = write_cifar10(tmp_path / "src")
    archive = make_tar(tmp_path / "mirror" / "cifar-10-python.tar.gz", "cifar-10-batches-py", members)
    (tmp_path / "mirror" / "not-an-archive").mkdir()
    test = load("cifar10", "test", root=tmp_path / "mirror")
    assert torch.equal(test.images, torch.from_numpy(images[10:]))

    with pytest.raises(FileNotFoundError, match=str(cache / "cifar10")):
        load("cifar10", download=False)
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setitem(data._CIFAR, "cifar10", dataclasses.replace(CIFAR10, md5=md5))
    log: list[str] = []
    monkeypatch.setattr(remote, "fetch_url", _serve(tmp_path / "mirror", log))
    train = load("cifar10", progress=False)
    assert log == ["https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"]
    assert torch.equal(train.images, torch.from_numpy(images[:10])) and train.labels.tolist() == labels[:10].tolist()
    assert (cache / "cifar10" / "cifar-10-python.tar.gz").is_file()


def test_cifar100_fine_and_coarse(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (5, 3, 32, 32), dtype=np.uint8)
    fine, coarse = [0, 99, 42, 7, 99], [0, 19, 3, 1, 19]
    meta = {
        b"fine_label_names": [f"fine{k}".encode() for k in range(100)],
        b"coarse_label_names": [f"coarse{k}".encode() for k in range(20)],
    }
    members = {
        "train": cifar_pickle(images[:3], {"fine_labels": fine[:3], "coarse_labels": coarse[:3]}),
        "test": cifar_pickle(images[3:], {"fine_labels": fine[3:], "coarse_labels": coarse[3:]}),
        "meta": pickle.dumps(meta, protocol=2),
    }
    make_tar(tmp_path / "cifar-100-python.tar.gz", "cifar-100-python", members)
    ds = load("cifar100", "train", root=tmp_path)
    assert torch.equal(ds.images, torch.from_numpy(images[:3])) and ds.labels.tolist() == fine[:3]
    assert len(ds.classes) == 100 and ds.classes[42] == "fine42"
    ds = load("cifar100_coarse", "test", root=tmp_path)
    assert ds.labels.tolist() == coarse[3:] and len(ds.classes) == 20 and ds.classes[19] == "coarse19"
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        load("cifar100", root=tmp_path / "empty")


class _Exploit:
    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return os.mkdir, (str(self.target),)


def test_cifar_pickle_cannot_run_code_and_bad_data_is_named(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    batch = folder / "test_batch"
    batch.write_bytes(pickle.dumps({b"data": _Exploit(tmp_path / "pwned"), b"labels": []}, protocol=2))
    with pytest.raises(ValueError, match="test_batch.*posix.mkdir|test_batch.*os.mkdir"):
        load("cifar10", "test", root=tmp_path)
    assert not (tmp_path / "pwned").exists()
    batch.write_bytes(pickle.dumps({b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]}, protocol=2))
    with pytest.raises(ValueError, match=r"test_batch.*\(N, 3072\)"):
        load("cifar10", "test", root=tmp_path)
    batch.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, protocol=2))
    with pytest.raises(ValueError, match="test_batch.*1 'labels' for 2 images"):
        load("cifar10", "test", root=tmp_path)


# ---------------------------------------------------------------- folders


def solid(mode: str, size: tuple[int, int], color) -> Image.Image:
    return Image.new(mode, size, color)


def save(image: Image.Image, path: Path, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def test_folder_modes_labels_and_skipped_files(tmp_path):
    root = tmp_path / "photos"
    palette = solid("P", (9, 7), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    transparent_palette = palette.copy()
    transparent_palette.info["transparency"] = 1
    sixteen = Image.fromarray(np.full((6, 10), 40000, np.uint16))
    assert sixteen.mode == "I;16"
    files = {
        "a/gray.png": (solid("L", (12, 8), 77), (77, 77, 77)),
        "a/gray_alpha.png": (solid("LA", (8, 8), (200, 51)), (40, 40, 40)),
        "a/deep/rgb.bmp": (solid("RGB", (5, 9), (10, 20, 30)), (10, 20, 30)),
        "b/rgba.png": (solid("RGBA", (8, 8), (200, 100, 50, 128)), (100, 50, 25)),
        "b/palette.gif": (palette, (10, 200, 30)),
        "b/palette_transparent.png": (transparent_palette, (0, 0, 0)),
        "b/cmyk.jpg": (solid("CMYK", (8, 8), (0, 0, 0, 0)), (255, 255, 255)),
        "b/sixteen.png": (sixteen, (156, 156, 156)),
    }
    for name, (image, _) in files.items():
        save(image, root / name, **({"quality": 100} if name.endswith(".jpg") else {}))
    (root / "a" / "notes.txt").write_text("not an image")
    (root / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    jpeg = io.BytesIO()
    solid("RGB", (64, 64), (1, 2, 3)).save(jpeg, "JPEG")
    (root / "b" / "truncated.jpg").write_bytes(jpeg.getvalue()[:300])
    (root / ".hidden").mkdir()
    (root / ".hidden" / "junk.png").write_bytes(b"junk")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load("folder", root=root, size=4, progress=False)
    messages = [str(w.message) for w in caught if issubclass(w.category, SkippedImageWarning)]
    assert len(messages) == 3
    assert any(str(root / "b" / "broken.png") in m for m in messages)
    assert any(str(root / "b" / "truncated.jpg") in m for m in messages)
    assert "skipped 2 of" in messages[-1]

    assert ds.classes == ["a", "b"] and ds.name == "folder"
    assert ds.images.shape == (len(files), 3, 4, 4)
    # walk order: a/ files first (a/deep is a folder, visited after a's files), then b/
    walk = ["a/gray.png", "a/gray_alpha.png", "a/deep/rgb.bmp"] + sorted(n for n in files if n.startswith("b/"))
    assert ds.labels.tolist() == [0 if n.startswith("a/") else 1 for n in walk]
    for k, name in enumerate(walk):
        expected = files[name][1]
        got = ds.images[k].reshape(3, -1)
        tolerance = 1 if name.endswith(".jpg") else 0
        for c in range(3):
            assert (got[c].int() - expected[c]).abs().max().item() <= tolerance, (name, c, got[c].tolist(), expected)


def test_folder_float_and_32_bit_tiffs_are_scaled_or_refused_by_name(tmp_path):
    root = tmp_path / "tiffs"
    save(Image.fromarray(np.full((6, 6), 0.6, np.float32)), root / "float_unit.tif")  # mode F in [0, 1]
    save(Image.fromarray(np.full((6, 6), 200.0, np.float32)), root / "float_255.tif")
    save(Image.fromarray(np.full((6, 6), 200, np.int32)), root / "int32.tif")  # mode I, 32 bits a sample
    (root / "sixteen.pgm").write_bytes(b"P5 6 6 65535\n" + np.full(36, 40000, ">u2").tobytes())  # PIL: mode I
    assert Image.open(root / "float_unit.tif").mode == "F" and Image.open(root / "int32.tif").mode == "I"
    assert Image.open(root / "sixteen.pgm").mode == "I"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load("folder", root=root, size=4, progress=False)
    messages = [str(w.message) for w in caught if issubclass(w.category, SkippedImageWarning)]
    assert ds.files == ["float_unit.tif", "sixteen.pgm"]
    assert ds.images[0].flatten().tolist() == [153] * 48  # 0.6 * 255
    assert ds.images[1].flatten().tolist() == [156] * 48  # 40000 * 255 / 65535, as 16-bit PNGs
    assert any("float_255.tif" in m and "[200, 200]" in m and "[0, 1]" in m for m in messages)
    assert any("int32.tif" in m and "32-bit integer" in m for m in messages)


@pytest.mark.parametrize("error", [OSError(errno.EMFILE, "Too many open files"), MemoryError()])
def test_folder_raises_resource_errors_rather_than_skip_the_file(tmp_path, monkeypatch, error):
    from selfsup.data import folder

    for k in range(3):
        save(solid("L", (4, 4), 9 * k), tmp_path / f"{k}.png")
    real = folder.decode

    def starved(path, *args, **kwargs):
        if path.name == "1.png":
            raise error
        return real(path, *args, **kwargs)

    monkeypatch.setattr(folder, "decode", starved)
    with pytest.raises(type(error)):  # a file skipped now and read later would change the split
        load("folder", root=tmp_path, size=4, progress=False)


def test_folder_geometry_is_center_square_resize(tmp_path):
    rng = np.random.default_rng(0)
    wide = rng.integers(0, 256, (20, 40, 3), dtype=np.uint8)  # H=20, W=40
    save(Image.fromarray(wide), tmp_path / "wide.png")
    ds = load("folder", root=tmp_path, size=8, progress=False)
    assert ds.labels is None and ds.classes is None
    # the definition: shorter side 20 -> 8 (so 40 -> 16), then the centre 8 columns
    scaled = Image.fromarray(wide).resize((16, 8), Image.Resampling.BILINEAR)
    reference = np.asarray(scaled.crop((4, 0, 12, 8)))
    assert np.array_equal(ds.images[0].permute(1, 2, 0).numpy(), reference)
    gray = load("folder", root=tmp_path, size=8, channels=1, progress=False)
    scaled = Image.fromarray(wide).convert("L").resize((16, 8), Image.Resampling.BILINEAR)
    reference = np.asarray(scaled.crop((4, 0, 12, 8)))
    assert gray.images.shape == (1, 1, 8, 8) and np.array_equal(gray.images[0, 0].numpy(), reference)
    assert load("folder", root=tmp_path, progress=False).images.shape == (1, 3, 64, 64)


def test_folder_exif_orientation_is_applied(tmp_path):
    pixels = np.arange(6 * 6 * 3, dtype=np.uint8).reshape(6, 6, 3)
    exif = Image.Exif()
    exif[0x0112] = 3  # rotated 180 degrees
    save(Image.fromarray(pixels), tmp_path / "turned.png", exif=exif)
    ds = load("folder", root=tmp_path, size=6, progress=False)
    assert np.array_equal(ds.images[0].permute(1, 2, 0).numpy(), pixels[::-1, ::-1])


def test_folder_loose_files_mean_no_labels_and_train_test_layout(tmp_path):
    save(solid("L", (4, 4), 5), tmp_path / "flat" / "cls" / "x.png")
    save(solid("L", (4, 4), 6), tmp_path / "flat" / "loose.png")
    with pytest.warns(UserWarning, match=r"1 image file\(s\) lie directly in .*flat \(loose.png\) beside the class "
                                         r"folders, so the images are read without labels"):
        assert load("folder", root=tmp_path / "flat", size=4, progress=False).labels is None
    with pytest.raises(FileNotFoundError, match="test/"):
        load("folder", "test", root=tmp_path / "flat")

    split = tmp_path / "split"
    for name in ("train/cat/1.png", "train/dog/1.png", "train/eel/1.png", "test/cat/1.png", "test/eel/1.png"):
        save(solid("L", (4, 4), 9), split / name)
    train = load("folder", "train", root=split, size=4, progress=False)
    test = load("folder", "test", root=split, size=4, progress=False)
    assert train.classes == test.classes == ["cat", "dog", "eel"]
    assert train.labels.tolist() == [0, 1, 2] and test.labels.tolist() == [0, 2]


def test_folder_follows_linked_class_folders_as_imagefolder_and_walks_a_loop_once(tmp_path):
    datasets = pytest.importorskip("torchvision.datasets")
    root = tmp_path / "pets"
    for k in range(3):
        save(solid("L", (4, 4), 10 + k), root / "cat" / f"{k}.png")
        save(solid("L", (4, 4), 50 + k), tmp_path / "elsewhere" / "dog" / f"{k}.png")
    (root / "dog").symlink_to(tmp_path / "elsewhere" / "dog", target_is_directory=True)  # a class folder kept apart
    reference = datasets.ImageFolder(str(root))
    folder = load("folder", root=root, size=4, channels=1, progress=False)
    assert folder.classes == reference.classes == ["cat", "dog"]  # was ["cat"]: the linked folder dropped silently
    assert folder.labels.tolist() == [label for _, label in reference.samples]
    assert folder.images[:, 0, 0, 0].tolist() == [10, 11, 12, 50, 51, 52]
    (root / "cat" / "again").symlink_to(root, target_is_directory=True)  # a loop: each real folder read once
    assert len(load("folder", root=root, size=4, channels=1, progress=False)) == 6


def test_folder_takes_imagenets_val_as_the_test_split_and_warns_of_split_named_classes(tmp_path):
    # ImageNet's layout, train/ + val/: val/ is the held-out split (its images never trained on), not a class.
    imagenet = tmp_path / "imagenet"
    for name, value in (("train/n01/a.png", 1), ("train/n02/b.png", 2), ("val/n01/c.png", 3), ("val/n02/d.png", 4)):
        save(solid("L", (4, 4), value), imagenet / name)
    train = load("folder", "train", root=imagenet, size=4, progress=False)
    test = load("folder", "test", root=imagenet, size=4, progress=False)
    assert train.classes == test.classes == ["n01", "n02"]
    assert train.images[:, 0, 0, 0].tolist() == [1, 2] and test.images[:, 0, 0, 0].tolist() == [3, 4]
    # Beside test/, a val/ is a validation split, left out of both.
    save(solid("L", (4, 4), 5), imagenet / "test" / "n01" / "e.png")
    assert load("folder", "test", root=imagenet, size=4, progress=False).images[:, 0, 0, 0].tolist() == [5]
    assert len(load("folder", "train", root=imagenet, size=4, progress=False)) == 2
    # A lone train/ beside classes is not a split layout: its name becomes a class, which is said.
    lone = tmp_path / "lone"
    save(solid("L", (4, 4), 1), lone / "train" / "a.png")
    save(solid("L", (4, 4), 2), lone / "cat" / "b.png")
    with pytest.warns(UserWarning, match=r"first-level folders train are read as classes"):
        assert load("folder", root=lone, size=4, progress=False).classes == ["cat", "train"]


def test_a_file_of_another_kind_never_reaches_its_decoder_whatever_its_name(tmp_path, monkeypatch):
    # Pillow picks a decoder from the content: an EPS file called .png would go to the EPS plugin, which
    # runs Ghostscript on it. Only the listed image formats may decode; the file is skipped, named.
    from PIL import EpsImagePlugin
    reached = []
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", lambda self: reached.append(self) or 1 / 0)
    save(solid("L", (4, 4), 9), tmp_path / "imgs" / "cat" / "fine.png")
    (tmp_path / "imgs" / "cat" / "evil.png").write_bytes(
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 4 4\nshowpage\n")
    with pytest.warns(UserWarning, match="evil.png"):
        loaded = load("folder", root=tmp_path / "imgs", size=4, progress=False)
    assert len(loaded) == 1 and reached == []


def test_folder_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        load("folder", root=tmp_path / "missing")
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="no image files.*text"):
        load("folder", root=tmp_path / "text")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_bytes(b"nope")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedImageWarning)
        with pytest.raises(ValueError, match="none of the 1 image files.*bad"):
            load("folder", root=tmp_path / "bad", progress=False)
    with pytest.raises(ValueError, match="root"):
        load("folder")


# ---------------------------------------------------------------- ImageDataset and load()


def test_dataset_validates_its_fields():
    images = torch.zeros(3, 1, 4, 4, dtype=torch.uint8)
    with pytest.raises(ValueError, match="uint8"):
        ImageDataset(images.float(), None, None, "x")
    with pytest.raises(ValueError, match="1 or 3 channels"):
        ImageDataset(torch.zeros(3, 2, 4, 4, dtype=torch.uint8), None, None, "x")
    with pytest.raises(ValueError, match=r"int64 of shape \(3,\)"):
        ImageDataset(images, torch.zeros(3, dtype=torch.int32), None, "x")
    with pytest.raises(ValueError, match="2 classes"):
        ImageDataset(images, torch.tensor([0, 1, 2]), ["a", "b"], "x")
    with pytest.raises(ValueError, match="not square"):
        ImageDataset(torch.zeros(1, 3, 4, 5, dtype=torch.uint8), None, None, "x").size


def test_subset_to_and_properties():
    images = torch.arange(5 * 3 * 2 * 2, dtype=torch.uint8).reshape(5, 3, 2, 2)
    ds = ImageDataset(images, torch.tensor([0, 1, 0, 1, 2]), ["a", "b", "c"], "toy")
    assert (len(ds), ds.channels, ds.size, ds.num_classes) == (5, 3, 2, 3)
    picked = ds.subset(torch.tensor([4, 0]))
    assert torch.equal(picked.images[0], images[4]) and picked.labels.tolist() == [2, 0]
    assert picked.classes == ds.classes
    masked = ds.subset(ds.labels == 1)
    assert torch.equal(masked.images, images[[1, 3]]) and masked.labels.tolist() == [1, 1]
    with pytest.raises(ValueError, match="5"):
        ds.subset(torch.tensor([True, False]))
    with pytest.raises(ValueError, match="float"):
        ds.subset(torch.tensor([0.0]))
    moved = ds.to("meta")
    assert moved.images.device.type == "meta" and moved.labels.device.type == "meta"
    assert ds.to(torch.device("cpu")).images.device.type == "cpu"


def test_in_memory_batches_take_each_epochs_own_seeded_permutation():
    # Epoch e of seed s is torch.randperm(n) from a generator seeded with s * 1_000_003 + e
    # (selfsup.data.sources.epoch_order); batch p is positions [4p, 4p + 4) of it.
    images = torch.arange(12, dtype=torch.uint8).view(12, 1, 1, 1).expand(12, 1, 2, 2).contiguous()
    source = data.InMemoryImages(ImageDataset(images, torch.arange(12) % 3, ["a", "b", "c"], "toy"),
                                 batch_size=4, seed=3)
    orders = []
    for epoch in (0, 1):
        expected = torch.randperm(12, generator=torch.Generator().manual_seed(3 * 1_000_003 + epoch))
        batches = [source.batch(epoch, position, 0) for position in range(3)]
        assert torch.equal(torch.cat([b.index for b in batches]), expected)
        assert torch.equal(torch.cat([b.images[:, 0, 0, 0] for b in batches]), expected.to(torch.uint8))
        assert torch.equal(torch.cat([b.labels for b in batches]), expected % 3)
        orders.append(expected)
    assert not torch.equal(orders[0], orders[1])


def test_in_memory_ranks_split_each_global_batch_into_consecutive_slices():
    # world_size 2: rank r takes positions [4p + 2r, 4p + 2r + 2) of epoch e's order, so ranks 0 and 1
    # together are global batch p of one process, in order, with nothing shared or left out.
    images = torch.arange(12, dtype=torch.uint8).view(12, 1, 1, 1).expand(12, 1, 2, 2).contiguous()
    dataset = ImageDataset(images, torch.arange(12) % 3, ["a", "b", "c"], "toy")
    one = data.InMemoryImages(dataset, batch_size=4, seed=3)
    two = data.InMemoryImages(dataset, batch_size=4, world_size=2, seed=3)
    for epoch in (0, 1):
        expected = torch.randperm(12, generator=torch.Generator().manual_seed(3 * 1_000_003 + epoch))
        for position in range(3):
            ranks = [two.batch(epoch, position, rank) for rank in (0, 1)]
            start = 4 * position
            assert [b.index.tolist() for b in ranks] == [expected[start:start + 2].tolist(),
                                                         expected[start + 2:start + 4].tolist()]
            assert torch.equal(torch.cat([b.index for b in ranks]), one.batch(epoch, position, 0).index)
            pixels = torch.cat([b.images[:, 0, 0, 0] for b in ranks])
            assert torch.equal(pixels, expected[start:start + 4].to(torch.uint8))
            assert torch.equal(torch.cat([b.labels for b in ranks]), expected[start:start + 4] % 3)


def test_mean_std_across_chunks():
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (5000, 3, 2, 2), dtype=torch.uint8, generator=generator)
    images[:, 2] //= 4
    ds = ImageDataset(images, None, None, "noise")
    pixels = images.permute(1, 0, 2, 3).reshape(3, -1).double() / 255
    torch.testing.assert_close(ds.mean(), pixels.mean(dim=1).float())
    torch.testing.assert_close(ds.std(), pixels.std(dim=1, correction=0).float())


def test_convert_matches_pil():
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (4, 3, 10, 18), dtype=np.uint8)
    ds = ImageDataset(torch.from_numpy(rgb), None, None, "x")
    gray = ds.convert(channels=1)
    for k in range(4):
        pil = Image.fromarray(rgb[k].transpose(1, 2, 0))
        assert np.array_equal(gray.images[k, 0].numpy(), np.asarray(pil.convert("L")))
        small = ds.convert(size=5).images[k].permute(1, 2, 0).numpy().astype(int)
        # shorter side 10 -> 5 (so 18 -> 9), then the centre 5 columns
        reference = np.asarray(pil.resize((9, 5), Image.Resampling.BILINEAR).crop((2, 0, 7, 5))).astype(int)
        assert np.abs(small - reference).max() <= 1
    back = gray.convert(channels=3).images
    assert back.shape == (4, 3, 10, 18) and all(torch.equal(back[:, c], gray.images[:, 0]) for c in range(3))


def test_load_converts_size_and_channels(tmp_path):
    arrays = write_idx_set(tmp_path / "m")
    ds = load("mnist", root=tmp_path / "m", size=14, channels=3)
    assert ds.images.shape == (5, 3, 14, 14)
    for k in range(5):
        original = Image.fromarray(arrays["train-images-idx3-ubyte"][k])
        reference = np.asarray(original.resize((14, 14), Image.Resampling.BILINEAR))
        for c in range(3):
            assert np.abs(ds.images[k, c].numpy().astype(int) - reference).max() <= 1


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"name": "imagenet"}, ValueError, "fashion_mnist, mnist, cifar10, cifar100, cifar100_coarse, digits, photos, folder"),
        ({"name": "digits", "split": "val"}, ValueError, "split"),
        ({"name": "digits", "size": 0}, ValueError, "size"),
        ({"name": "digits", "size": 2.5}, ValueError, "size"),
        ({"name": "digits", "channels": 2}, ValueError, "channels"),
        ({"name": "digits", "root": "/somewhere"}, ValueError, "root"),
    ],
)
def test_load_rejects_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        load(**kwargs)
    assert set(DATASETS) >= {"fashion_mnist", "mnist", "cifar10", "cifar100", "digits", "folder"}


def test_digits_split_is_stratified_disjoint_and_scaled():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    train, test = load("digits", "train"), load("digits", "test")
    assert (len(train), len(test)) == (1437, 360) and train.images.shape[1:] == (1, 8, 8)
    full = {(np.rint(im * 255 / 16).astype(np.uint8).tobytes(), int(t)) for im, t in zip(bunch.images, bunch.target)}
    parts = [{(im.numpy().tobytes(), int(t)) for im, t in zip(ds.images, ds.labels)} for ds in (train, test)]
    assert parts[0] | parts[1] == full
    class_counts = np.bincount(bunch.target)
    assert np.abs(torch.bincount(test.labels).numpy() - 0.2 * class_counts).max() <= 1
    assert torch.equal(load("digits", "test").images, test.images)


def test_the_runs_max_samples_subset_is_the_first_rows_of_its_seeded_permutation_in_order():
    from selfsup.config import load_config
    from selfsup.engine.sources import load_datasets

    # data.max_samples=300 with train.seed=5: rows randperm(1437)[:300] of a generator seeded with 5,
    # kept in the split's own order.
    cfg = load_config(None, ["data.name=digits", "data.max_samples=300", "train.seed=5"])
    train, test = load_datasets(cfg, progress=False)
    whole = load("digits", "train")
    rows = torch.randperm(1437, generator=torch.Generator().manual_seed(5))[:300].sort().values
    assert torch.equal(train.images, whole.images[rows]) and torch.equal(train.labels, whole.labels[rows])
    assert torch.equal(test.images, load("digits", "test").images)


_LOAD_WITH_WARNINGS_AS_ERRORS = """
import sys, warnings
import numpy as np
from selfsup.data import load
warnings.simplefilter("error")
for channels in (3, 1):
    np.save(f"{sys.argv[1]}/images{channels}.npy", load("folder", root=sys.argv[1], size=6, channels=channels,
                                                        progress=False).images.numpy())
"""


def test_folder_decodes_without_warnings(tmp_path):
    # PIL hands numpy read-only pixels, and torch.from_numpy warned about them. torch warns once per
    # process, so a fresh one: in this one an earlier test may have had the warning already.
    rng = np.random.default_rng(0)
    pixels = [rng.integers(0, 256, (6, 6, 3), dtype=np.uint8) for _ in range(2)]
    for k, array in enumerate(pixels):
        save(Image.fromarray(array), tmp_path / f"{k}.png")
    child = subprocess.run([sys.executable, "-c", _LOAD_WITH_WARNINGS_AS_ERRORS, str(tmp_path)],
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr[-2000:]
    gray = [np.asarray(Image.fromarray(array).convert("L"))[..., None] for array in pixels]
    for channels, expected in ((3, pixels), (1, gray)):
        images = np.load(tmp_path / f"images{channels}.npy")
        assert np.array_equal(images.transpose(0, 2, 3, 1), np.stack(expected))


def test_photos_are_labelled_crops_of_the_shipped_colour_photos_from_disjoint_regions():
    from selfsup.data import photos

    train, test = data.load("photos", "train"), data.load("photos", "test")
    assert train.images.shape == (4500, 3, 32, 32) and test.images.shape == (900, 3, 32, 32)
    assert train.classes == test.classes and len(train.classes) == 9 and "astronaut" in train.classes
    assert train.labels.bincount().tolist() == [500] * 9 and test.labels.bincount().tolist() == [100] * 9
    # every crop is a piece of its own photo: found at its position in the resized photo
    resized = list(photos._photos().values())
    for split, dataset, (lo, hi) in (("train", train, (0.0, 0.75)), ("test", test, (0.75, 1.0))):
        for i in range(0, len(dataset), 211):
            image = resized[int(dataset.labels[i])]
            crop = dataset.images[i].permute(1, 2, 0).numpy()
            windows = np.lib.stride_tricks.sliding_window_view(image, (32, 32, 3))[..., 0, :, :, :]
            corner = np.nonzero((windows[..., 0, 0, :] == crop[0, 0]).all(axis=-1))  # candidates, then whole
            matches = (windows[corner] == crop).all(axis=(-1, -2, -3))
            rows, cols = corner[0][matches], corner[1][matches]
            assert len(rows) >= 1, (split, i)
            width = image.shape[1]
            assert lo * width - 1 <= cols.min() and cols.min() + 32 <= hi * width + 1  # its side of the boundary
    assert torch.equal(train.images, data.load("photos", "train").images)  # a pure function of the seed
    with pytest.raises(ValueError, match="takes no root"):
        data.load("photos", root="/tmp")
