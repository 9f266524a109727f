"""Streamed images: folders and packed shards larger than memory, read batch by batch.

A streamed source never holds the dataset. DataLoader workers read the images of one batch,
``(epoch, position, rank)``, as uint8 ``(B, C, S, S)`` at a *stored side* ``S`` a little larger
than the training crop (``round(1.15 * size)`` by default, as FFCV stores ImageNet), the batch
is pinned (CUDA) and moved to the device, and the method's views are cut from it there in one
batched call, as for in-memory data.

What an index means is the reader's (:mod:`selfsup.data.readers`: image files or packed shards).

Determinism: the batch of ``(epoch, position, rank)`` is the same permutation slice as
:class:`selfsup.data.sources.InMemoryImages` takes, so it depends on those and the seed only, and
a resumed run reads exactly the batches it would have read. A file that cannot be decoded is
reported (path and reason, once) and its slot takes the next readable file in the folder's
order: which files are unreadable is a property of the folder, so the substitute is too, and
every process (DataLoader workers, DDP ranks, a resumed run) agrees on it. What a slot reports
with its image (its index in a training batch, its label, its file name) is the substitute's, so
nothing is trained or evaluated under the unreadable file's label.

Evaluation reads the *eval view*: the centred ``size x size`` square of the stored image, i.e.
"resize the short side to 1.15 x size, centre crop size", the ImageNet evaluation protocol
(256 -> 224 is 1.14x).
"""

from __future__ import annotations

import hashlib
import itertools
import operator
import os
import signal
import threading
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from selfsup.errors import DataError

from .dataset import ImageDataset
from .folder import _MAX_THREADS, SkippedImageWarning, _name_bytes, scan_folder
from .readers import STORE_RATIO, FileReader, PackedReader, SubsetReader, read_batch, stored_side
from .sources import ImageBatch, epoch_order

STATS_SAMPLES = 512
"""Images (a seeded sample) from which a streamed set's normalisation statistics are measured."""


class ImageStream:
    """A lazy uint8 ``(N, C, H, W)`` image collection: indexing decodes, :meth:`batches` streams.

    ``crop`` cuts the centred ``crop x crop`` square of each stored image (the evaluation view);
    None keeps the stored side. :meth:`subset` is lazy; ``stream[key]`` (an int, slice, list or
    index tensor) reads those images now, in threads, and returns a tensor.
    """

    dtype = torch.uint8
    ndim = 4
    device = torch.device("cpu")

    def __init__(self, reader, indices: Tensor | None = None, crop: int | None = None, workers: int = 2,
                 on_failures=None, size: int | None = None) -> None:
        self.reader = reader
        self.indices = torch.arange(len(reader)) if indices is None else indices.cpu().to(torch.int64)
        self.crop, self.size = crop, size or crop
        self.workers = workers
        self.on_failures = on_failures

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def side(self) -> int:
        return self.size or self.reader.side

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), self.reader.channels, self.side, self.side))

    def subset(self, index) -> ImageStream:
        """The images at positions ``index`` (int64 positions or a bool mask) of this stream, still unread."""
        index = torch.as_tensor(index).cpu()
        return ImageStream(self.reader, self.indices[index], self.crop, self.workers, self.on_failures, self.size)

    def _finish(self, images: np.ndarray, failures: list[tuple[int, str]]) -> Tensor:
        if failures and self.on_failures is not None:
            self.on_failures(failures)
        return eval_view(torch.from_numpy(images), self.crop, self.size)

    def __getitem__(self, key) -> Tensor:
        """Read images now: an int (or 0-d tensor) gives ``(C, H, W)``, a slice, list, bool mask or index
        tensor gives them stacked (an index tensor of any shape: that shape, then ``C, H, W``)."""
        return self.read(key)[0]

    def read(self, key) -> tuple[Tensor, Tensor]:
        """``self[key]``, and for each image the reader index it was read from (int64, the shape of
        the positions): the one asked for, or an unreadable file's substitute."""
        if not isinstance(key, (slice, list, Tensor, np.ndarray)):
            images, sources = self.read(torch.tensor([operator.index(key)]))
            return images[0], sources[0]
        if isinstance(key, slice):
            positions = self.indices[key]
        else:
            key = torch.as_tensor(key).cpu()
            if key.ndim == 0:
                images, sources = self.read(torch.tensor([int(key)]))
                return images[0], sources[0]
            if key.dtype != torch.bool:
                key = key.to(torch.int64)
            positions = self.indices[key]
        shape = positions.shape
        positions = positions.reshape(-1).tolist()
        out = np.empty((len(positions), self.reader.channels, self.reader.side, self.reader.side), dtype=np.uint8)
        chunks = [range(start, min(start + 64, len(positions))) for start in range(0, len(positions), 64)]

        def work(chunk: range) -> tuple[list[int], list[tuple[int, str]]]:
            return read_batch(self.reader, positions[chunk.start:chunk.stop], out[chunk.start:chunk.stop])[1:]

        with ThreadPoolExecutor(max_workers=min(_MAX_THREADS, os.cpu_count() or 1)) as pool:
            done = list(pool.map(work, chunks))
        sources = torch.tensor([s for found, _ in done for s in found], dtype=torch.int64)
        images = self._finish(out, [f for _, found in done for f in found])
        return images.reshape(*shape, *images.shape[1:]), sources.reshape(shape)

    def batches(self, batch_size: int) -> Iterator[Tensor]:
        """The images in order, ``batch_size`` at a time, read by ``workers`` DataLoader workers."""
        dataset = _Chunks(self.reader, self.indices, batch_size)
        for images, failures in _loader(dataset, range(len(dataset)), self.workers, pin=False):
            yield self._finish(images.numpy(), failures)


def center_crop(images: Tensor, crop: int | None) -> Tensor:
    """The centred ``crop x crop`` square of uint8 ``(..., S, S)`` images (None: as they are)."""
    if crop is None or images.shape[-1] == crop:
        return images
    top = (images.shape[-2] - crop) // 2
    left = (images.shape[-1] - crop) // 2
    return images[..., top:top + crop, left:left + crop].contiguous()


def eval_view(images: Tensor, crop: int | None, size: int | None) -> Tensor:
    """The centred ``crop`` square of uint8 ``(..., S, S)`` images, resized to ``size`` when that
    differs (a pack made for larger crops than a run's); None keeps the side as it is."""
    images = center_crop(images, crop)
    if size is not None and images.shape[-1] != size and images.numel():
        import torchvision.transforms.v2.functional as TF  # here: torchvision takes seconds to import

        images = TF.resize(images, [size, size], antialias=True)
    return images


class _Chunks(torch.utils.data.Dataset):
    """Item k: the k-th run of ``batch_size`` of ``indices`` (evaluation order)."""

    def __init__(self, reader, indices: Tensor, batch_size: int) -> None:
        self.reader, self.indices, self.batch_size = reader, indices, batch_size

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)

    def __getitem__(self, k: int):
        chunk = self.indices[k * self.batch_size:(k + 1) * self.batch_size].tolist()
        images, _, failures = read_batch(self.reader, chunk)
        return torch.from_numpy(images), failures


class _Steps(torch.utils.data.Dataset):
    """Item ``step``: this rank's share of global batch ``step`` (epochs follow one another)."""

    def __init__(self, reader, labels: Tensor | None, batch_size: int, local_batch: int, rank: int,
                 steps_per_epoch: int, seed: int) -> None:
        self.reader, self.labels = reader, labels
        self.batch_size, self.local_batch, self.rank = batch_size, local_batch, rank
        self.steps_per_epoch, self.seed = steps_per_epoch, seed
        self._order: tuple[int, Tensor] | None = None

    def order(self, epoch: int) -> Tensor:
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, epoch_order(len(self.reader), self.seed, epoch))
        return self._order[1]

    def __getitem__(self, step: int):
        epoch, position = divmod(step, self.steps_per_epoch)
        start = position * self.batch_size + self.rank * self.local_batch
        images, sources, failures = read_batch(self.reader, self.order(epoch)[start:start + self.local_batch].tolist())
        index = torch.tensor(sources, dtype=torch.int64)  # a substitute's slot is the substitute's sample
        labels = None if self.labels is None else self.labels[index]
        return step, torch.from_numpy(images), index, labels, failures


class _From(torch.utils.data.Sampler):
    """Steps ``start, start + 1, ...`` without end (the source asks for as many as training takes)."""

    def __init__(self, start: int) -> None:
        self.start = start

    def __iter__(self):
        return itertools.count(self.start)


def _loader(dataset, sampler, workers: int, pin: bool):
    # Its own generator: a DataLoader otherwise draws its workers' base seed from the global RNG,
    # which the augmentations use, so a run resumed mid-epoch would draw other views. (The
    # workers draw nothing random: what they read depends on the step alone.)
    return iter(torch.utils.data.DataLoader(
        dataset, batch_size=None, sampler=sampler, num_workers=workers, pin_memory=pin,
        generator=torch.Generator().manual_seed(0),
        collate_fn=_as_is, prefetch_factor=2 if workers else None, persistent_workers=False,
        worker_init_fn=_ignore_sigterm if workers else None))


def _as_is(item):
    return item


def _ignore_sigterm(worker_id: int) -> None:
    """A worker outlives a SIGTERM from anyone but its parent (a scheduler's preemption notice reaches
    every process of the job): the main process finishes its step, checkpoints and shuts its workers
    down itself (``train.stop_on_sigterm``); a worker that died of it would end the run with a traceback.
    Its parent's SIGTERM (the loader's last resort at shutdown, multiprocessing's at exit) still ends it
    at once, as PyTorch's own worker handler does. Linux (``sigwaitinfo`` names the sender); elsewhere
    PyTorch's handler stays."""
    if not hasattr(signal, "sigwaitinfo"):
        return
    parent = os.getppid()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # threads started from here inherit it

    def watch() -> None:
        while True:
            sender = signal.sigwaitinfo({signal.SIGTERM}).si_pid
            if sender == parent or os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=watch, name="selfsup-sigterm", daemon=True).start()


class StreamedDataset:
    """A streamed split with the interface evaluation reads from an :class:`ImageDataset`.

    ``images`` and ``inputs`` are :class:`ImageStream` eval views (centre ``size`` squares);
    ``labels`` and ``classes`` come from the folder names, known without decoding anything. A row
    whose file was found unreadable holds the next readable file's image (module docstring), and
    ``labels`` and ``files`` give that file's label and name for it from then on.
    """

    def __init__(self, reader, labels: Tensor | None, classes: list[str] | None, name: str, size: int,
                 workers: int = 2, view: int | None = None) -> None:
        view = view or size  # the centred square evaluation sees, before resizing it to ``size``
        if size > reader.side or view > reader.side:
            raise DataError(f"{name}: data.size={size} is larger than the stored side {reader.side}")
        self.reader, self._labels, self.classes, self.name = reader, labels, classes, name
        self.size, self.workers, self.view = size, workers, view
        self.skipped: dict[str, str] = {}
        """``{path: reason}`` of the unreadable files met so far (each reported once)."""
        self._unreadable: set[int] = set()  # reader indices of those files (this split's own)
        self._lock = threading.Lock()
        self.images = ImageStream(reader, crop=view, workers=workers, on_failures=self.report, size=size)
        self._moments: tuple[Tensor, Tensor] | None = None
        self._fingerprint: str | None = None

    def fingerprint(self) -> str:
        """sha256 of the split's file names in order (what a resume checks; computed once)."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            for index in range(len(self.reader)):
                digest.update(_name_bytes(self.reader.name(index)) + b"\n")
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def report(self, failures: list[tuple[int, str]]) -> None:
        """Warn once for each newly met unreadable file (``(reader index, reason)`` pairs)."""
        with self._lock:
            for index, reason in failures:
                self._unreadable.add(index)
                path = self.reader.name(index)
                if path not in self.skipped:
                    self.skipped[path] = reason
                    warnings.warn(f"skipping {path}: {reason}; its slot takes the next readable file",
                                  SkippedImageWarning, stacklevel=2)

    def __len__(self) -> int:
        return len(self.reader)

    def sources(self) -> Tensor:
        """For each row, the reader index of the image it holds: its own, or for a file found
        unreadable so far, the next readable one's (wrapping around), as :func:`read_batch` fills its
        slot; every file between the two was found unreadable on the way, so the chain is known."""
        with self._lock:
            unreadable = set(self._unreadable)
        sources = torch.arange(len(self.reader))
        for index in unreadable:
            substitute = index
            for _ in range(len(self.reader)):
                if substitute not in unreadable:
                    break
                substitute = (substitute + 1) % len(self.reader)
            sources[index] = substitute
        return sources

    @property
    def labels(self) -> Tensor | None:
        """int64 ``(N,)``: the label of the image each row holds (a substitute's for an unreadable file)."""
        if self._labels is None or not self._unreadable:
            return self._labels
        return self._labels[self.sources()]

    @property
    def inputs(self) -> ImageStream:
        return self.images

    @property
    def channels(self) -> int:
        return self.reader.channels

    @property
    def num_classes(self) -> int | None:
        return None if self.classes is None else len(self.classes)

    def to(self, device) -> StreamedDataset:
        return self  # batches are moved as they are read

    def subset(self, index: Tensor) -> StreamedDataset:
        """The samples at int64 positions ``index``, still unread."""
        if index.dtype == torch.bool:
            index = index.nonzero().squeeze(1)
        index = index.cpu().to(torch.int64)
        labels = None if self._labels is None else self._labels[index]
        subset = StreamedDataset(SubsetReader(self.reader, index.tolist()), labels, self.classes, self.name,
                                 self.size, self.workers, self.view)
        subset.skipped, subset._lock = self.skipped, self._lock  # one report for the split
        return subset

    def mean(self) -> Tensor:
        """Per-channel mean in [0, 1] over a seeded sample of :data:`STATS_SAMPLES` eval views."""
        return self._stats()[0]

    def std(self) -> Tensor:
        """Per-channel standard deviation over the same sample as :meth:`mean`."""
        return self._stats()[1]

    def _stats(self) -> tuple[Tensor, Tensor]:
        if self._moments is None:  # ImageDataset's own statistics, over the sample read into memory
            pick = torch.randperm(len(self), generator=torch.Generator().manual_seed(0))[:STATS_SAMPLES].sort().values
            sample = self.subset(pick).in_memory()
            self._moments = (sample.mean(), sample.std())
        return self._moments

    def in_memory(self) -> ImageDataset:
        """The split's eval views read whole into an :class:`ImageDataset` (for what needs tensors),
        each row's label and file those of the image read into it."""
        images, sources = self.images.read(slice(None))
        labels = None if self._labels is None else self._labels[sources]
        return ImageDataset(images, labels, self.classes, self.name, [self.reader.name(int(i)) for i in sources])

    @property
    def files(self) -> list[str]:
        """The file of the image each row holds (a folder's path, or the name a pack recorded): its
        own, or for a file found unreadable so far, its substitute's."""
        return [self.reader.name(int(i)) for i in self.sources()]


class StreamedImages:
    """The streamed image source: batches of ``(epoch, position, rank)`` read by DataLoader workers.

    Args:
        dataset: the training split (its reader, labels, eval size).
        batch_size: the global batch.
        world_size: processes sharing each global batch.
        seed: seeds the epoch orders (as :class:`selfsup.data.sources.InMemoryImages`).
        device: where the batches go (pinned first on CUDA).
        workers: DataLoader worker processes (0: read in this process).

    Unreadable files are reported through the dataset (``dataset.skipped``).
    """

    kind = "images"
    skip_note = "each slot filled by the next readable file"
    """What the end-of-run report says became of a skipped file's place in the batches."""

    def __init__(self, dataset: StreamedDataset, batch_size: int, world_size: int = 1, seed: int = 0,
                 device: torch.device | str = "cpu", workers: int = 2, rank: int = 0) -> None:
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} must be divisible by the number of processes {world_size}")
        self.dataset, self.batch_size, self.local_batch = dataset, batch_size, batch_size // world_size
        self.seed, self.device, self.workers, self.rank = seed, torch.device(device), workers, rank
        self.images = ImageStream(dataset.reader, workers=workers, on_failures=dataset.report)
        self._iterator = None
        self._next: int | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def inputs(self) -> ImageStream:
        """The training split's eval views (what evaluation encodes)."""
        return self.dataset.images

    def steps_per_epoch(self) -> int:
        return len(self) // self.batch_size

    def order(self, epoch: int) -> Tensor:
        return epoch_order(len(self), self.seed, epoch)

    @property
    def skipped(self) -> dict[str, str]:
        """``{path: reason}`` of the unreadable files met so far."""
        return self.dataset.skipped

    def batch(self, epoch: int, position: int, rank: int) -> ImageBatch:
        step = epoch * self.steps_per_epoch() + position
        if self._iterator is None or self._next != step or rank != self.rank:
            self.close()
            self.rank = rank
            steps = _Steps(self.dataset.reader, self.dataset._labels, self.batch_size, self.local_batch, rank,
                           self.steps_per_epoch(), self.seed)
            self._iterator = _loader(steps, _From(step), self.workers, pin=self.device.type == "cuda")
        got, images, index, labels, failures = next(self._iterator)
        if got != step:
            raise RuntimeError(f"streamed source: asked for step {step}, the loader gave {got}")
        self._next = step + 1
        if failures:
            self.dataset.report(failures)
        move = dict(device=self.device, non_blocking=True)
        return ImageBatch(images.to(**move), index.to(**move), None if labels is None else labels.to(**move))

    def close(self) -> None:
        """Stop the workers (training calls this when it ends; the next batch starts new ones)."""
        iterator, self._iterator, self._next = self._iterator, None, None
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()


def folder_split(root: str | Path, split: str, size: int, channels: int, *, ratio: float = STORE_RATIO,
                 workers: int = 2, progress: bool = False) -> StreamedDataset:
    """A folder's split (layout as :mod:`selfsup.data.folder`) as a :class:`StreamedDataset`."""
    files, labels, classes, base = scan_folder(root, split, progress=progress)
    reader = FileReader(files, stored_side(size, ratio), channels)
    return StreamedDataset(reader, labels, classes, "folder", size, workers)


def packed_split(root: str | Path, split: str, size: int | None, *, workers: int = 2, verify: bool = False,
                 progress: bool = False) -> StreamedDataset:
    """A packed split (``selfsup pack``'s output) as a :class:`StreamedDataset`; ``size`` None:
    the crop the pack was made for."""
    from .pack import open_pack

    pack = open_pack(root, split, verify=verify, progress=progress)
    labels = None if pack.labels is None else torch.from_numpy(pack.labels)
    # Evaluation sees the centred square of the crop the pack was made for, resized to ``size``, so
    # that it covers what training crops cover whatever size a run picks.
    return StreamedDataset(PackedReader(pack), labels, pack.classes, "packed", size or pack.size, workers,
                           view=pack.size)


__all__ = ["STORE_RATIO", "FileReader", "ImageStream", "PackedReader", "StreamedDataset", "StreamedImages",
           "SubsetReader", "center_crop", "eval_view", "folder_split", "packed_split", "read_batch",
           "stored_side"]
