"""Sequences: folders of WAV files streamed as fixed-length windows of raw signal (CPC's speech path).

Layout: ``root/<label>/**/*.wav`` (the label is the first folder, e.g. the speaker), with
optional ``root/train`` and ``root/test`` above that; without them a fixed fifth of each label's
files (every fifth in sorted order) is the test split; ``.wav`` matches in any case (``.WAV``). Files are
read by :func:`read_header`'s own RIFF reading: PCM of 8 to 32 bits and IEEE float of 32 or 64 bits, plain
or ``WAVE_FORMAT_EXTENSIBLE`` (what ffmpeg writes for 24-bit audio and above 48 kHz, which the standard
library's ``wave`` reads only from Python 3.12; ``scipy.io.wavfile`` reads them but memory-maps no 24-bit
file, where a window must be read by seeking), any number of channels, averaged to mono. Only the
header is read when scanning; training reads each window by seeking, so files and folders may be far
larger than memory. A file that cannot be read (another encoding, a rate of 0, a broken header), or
that holds fewer frames than its header says (cut short), is reported and skipped; a file at another
rate is resampled (``scipy.signal.resample_poly``, a polyphase low-pass filter) or, with
``resample=False``, refused in one line naming it.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from selfsup.data.sources import EpochOrdered, ImageBatch
from selfsup.errors import DataError

# Source samples read on each side of a resampled window, so that the filter has its context.
_RESAMPLE_MARGIN = 256
_TEST_EVERY = 5


@dataclass(frozen=True)
class WavInfo:
    """One readable file: where, its label, and its header."""

    path: Path
    label: int
    frames: int
    rate: int
    channels: int
    width: int
    offset: int = 44
    """Where the samples start in the file (the data chunk's first byte)."""
    is_float: bool = False
    """IEEE float samples (format 3), else integer PCM."""


class WavError(ValueError):
    """A WAV file selfsup cannot read (its reason is the message)."""


_PCM, _FLOAT, _EXTENSIBLE = 1, 3, 0xFFFE


def _wav_layout(raw) -> tuple[int, int, int, int, int, bool]:
    """``(data offset, data bytes, rate, channels, sample width, is_float)`` from a RIFF/WAVE file's
    chunks (fmt first, then data; other chunks skipped), reading only the header."""
    head = raw.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        raise WavError("not a RIFF/WAVE file")
    layout = None
    while True:
        chunk = raw.read(8)
        if len(chunk) < 8:
            raise WavError("no data chunk" if layout else "no fmt chunk")
        name, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
        if name == b"fmt ":
            body = raw.read(size)
            if len(body) < 16:
                raise WavError("fmt chunk too short")
            tag, channels, rate, _, block, bits = struct.unpack("<HHIIHH", body[:16])
            if tag == _EXTENSIBLE:
                if len(body) < 40:
                    raise WavError("WAVE_FORMAT_EXTENSIBLE fmt chunk too short")
                tag = struct.unpack("<H", body[24:26])[0]  # the sub-format GUID's first two bytes
            if channels == 0 or rate == 0:
                raise WavError(f"{channels} channels at {rate} Hz")
            width = block // channels if block % channels == 0 else 0
            if tag == _PCM and width in (1, 2, 3, 4):
                layout = (rate, channels, width, False)
            elif tag == _FLOAT and width in (4, 8):
                layout = (rate, channels, width, True)
            else:
                raise WavError(f"format {tag} with {8 * width}-bit samples is not supported (PCM of 8-32 bits, "
                               f"float of 32 or 64)")
            raw.seek(size % 2, os.SEEK_CUR)
        elif name == b"data":
            if layout is None:
                raise WavError("data chunk before the fmt chunk")
            return (raw.tell(), size, *layout)
        else:
            raw.seek(size + size % 2, os.SEEK_CUR)


def _decode(raw: bytes, width: int, channels: int, is_float: bool = False) -> np.ndarray:
    """PCM (or float) bytes to float32 mono in [-1, 1]."""
    if is_float:
        samples = np.frombuffer(raw, "<f4" if width == 4 else "<f8").astype(np.float32)
    elif width == 1:  # 8-bit WAV is unsigned
        samples = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128) / 128
    elif width == 3:
        bytes3 = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        value = bytes3[:, 0] | (bytes3[:, 1] << 8) | (bytes3[:, 2] << 16)
        samples = (np.where(value >= 1 << 23, value - (1 << 24), value)).astype(np.float32) / (1 << 23)
    else:
        dtype = {2: "<i2", 4: "<i4"}[width]
        samples = np.frombuffer(raw, dtype).astype(np.float32) / float(2 ** (8 * width - 1))
    return samples.reshape(-1, channels).mean(axis=1) if channels > 1 else samples


def read_header(path: Path) -> tuple[int, int, int, int]:
    """(frames, rate, channels, sample width in bytes) of a WAV file; raises :class:`WavError`.

    A file that holds fewer frames than its header says (a copy cut short) raises too: its windows
    past the real data would be read as zeros (:func:`read_window` pads) and labelled all the same.
    """
    frames, rate, channels, width, _, _ = _header(path)
    return frames, rate, channels, width


def _header(path: Path) -> tuple[int, int, int, int, int, bool]:
    with open(path, "rb") as raw:
        offset, size, rate, channels, width, is_float = _wav_layout(raw)
        frames = size // (width * channels)
        held = (os.fstat(raw.fileno()).st_size - offset) // (width * channels)
    if held < frames:
        raise WavError(f"truncated: header says {frames} frames, file holds {held}")
    return frames, rate, channels, width, offset, is_float


def read_window(info: WavInfo, start: int, length: int, rate: int) -> np.ndarray:
    """Samples ``[start, start + length)`` of ``info``'s file at ``rate`` Hz (resampled if the file's
    rate differs), float32 mono, zero-padded past the end."""
    if info.rate == rate:
        first, count = start, length
    else:
        first = max(0, math.floor(start * info.rate / rate) - _RESAMPLE_MARGIN)
        count = math.ceil(length * info.rate / rate) + 2 * _RESAMPLE_MARGIN
    first = min(first, info.frames)
    count = max(0, min(count, info.frames - first))  # never past the data chunk (a LIST chunk may follow)
    block = info.width * info.channels
    with open(info.path, "rb") as f:
        f.seek(info.offset + first * block)
        samples = _decode(f.read(count * block), info.width, info.channels, info.is_float)
    if info.rate != rate:
        from scipy.signal import resample_poly  # scikit-learn's dependency: always installed

        ratio = Fraction(rate, info.rate)
        samples = resample_poly(samples, ratio.numerator, ratio.denominator).astype(np.float32)
        offset = round(start - first * rate / info.rate)
        samples = samples[offset:offset + length]
    if len(samples) < length:
        samples = np.pad(samples, (0, length - len(samples)))
    return samples[:length]


def scan_wav_folder(root: str | Path, split: str, rate: int, *, resample: bool = True,
                    progress: bool = False) -> tuple[list[WavInfo], list[str], dict[str, str]]:
    """The readable WAV files of ``split`` under ``root``, the label names, and the skipped files
    (``{path: reason}``, as every source's ``skipped``). Raises :class:`DataError` for a missing
    folder, no readable file, or (with ``resample=False``) a file at another rate than ``rate``."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"sequence folder {root} does not exist; data.root must be a folder of <label>/*.wav files")
    base = root / split if (root / "train").is_dir() and (root / "test").is_dir() else root
    if not base.is_dir():
        raise FileNotFoundError(f"{base} does not exist")
    # Labels from every split's folders, so that a label has the same index in train and test.
    tops = [root / "train", root / "test"] if base != root else [root]
    classes = sorted({p.name for top in tops if top.is_dir() for p in top.iterdir() if p.is_dir()}
                     - ({"train", "test"} if base == root else set()))
    if not classes:
        raise DataError(f"{base} has no label folders; put each speaker's (or class's) WAV files in its own "
                        f"folder: {base}/<label>/*.wav")
    files: list[WavInfo] = []
    skipped: dict[str, str] = {}
    paths = [(label, path) for label, name in enumerate(classes) if (base / name).is_dir()
             for path in sorted(p for p in (base / name).rglob("*") if p.suffix.lower() == ".wav"
                                and not p.name.startswith(".") and p.is_file())]
    if base == root:  # no train/test folders: every fifth file of each label is the test split
        by_label: dict[int, int] = {}
        kept = []
        for label, path in paths:
            position = by_label.get(label, 0)
            by_label[label] = position + 1
            if (position % _TEST_EVERY == _TEST_EVERY - 1) == (split == "test"):
                kept.append((label, path))
        paths = kept
    for label, path in tqdm(paths, desc=f"scanning {base}", unit="file", disable=not progress):
        try:
            frames, file_rate, channels, width, offset, is_float = _header(path)
        except (EOFError, OSError, ValueError, struct.error) as error:
            skipped[str(path)] = str(error) or type(error).__name__
            continue
        if file_rate != rate and not resample:
            raise DataError(f"{path} is sampled at {file_rate} Hz, not data.sample_rate={rate}; resample it, set "
                            f"data.sample_rate={file_rate}, or let selfsup resample (data.resample=true)")
        if frames == 0:
            skipped[str(path)] = "no samples"
            continue
        files.append(WavInfo(path, label, frames, file_rate, channels, width, offset, is_float))
    if not files:
        example = next(iter(skipped.items()), None)
        raise DataError(f"no readable WAV file in {base} for split {split!r}"
                        + (f" ({len(skipped)} skipped, e.g. {example[0]}: {example[1]})" if example else ""))
    return files, classes, skipped


@dataclass
class SignalSet:
    """Windows of signal held in memory (evaluation): float32 ``(N, 1, T)`` with labels.

    The sequence counterpart of :class:`selfsup.data.ImageDataset` for the engine's evaluation:
    ``inputs``, ``labels``, ``classes``, ``name``, ``channels`` (1) and ``size`` (T).
    """

    inputs: Tensor
    labels: Tensor
    classes: list[str]
    name: str

    def __len__(self) -> int:
        return self.inputs.shape[0]

    @property
    def channels(self) -> int:
        return 1

    @property
    def size(self) -> int:
        return self.inputs.shape[-1]

    def mean(self) -> Tensor:
        return self.inputs.mean().reshape(1)

    def std(self) -> Tensor:
        return self.inputs.std().clamp(min=1e-6).reshape(1)


class WavFolder(EpochOrdered):
    """A folder of WAV files as a data source of windows of ``window`` samples at ``sample_rate``.

    The training windows are the slots ``k`` of each file (``⌊frames / window⌋`` of them, at least
    one); epoch ``e`` visits them in a permutation drawn from ``(seed, e)``, and each window
    starts at ``k · window`` plus an offset drawn from ``(seed, e, slot)`` within the file's slack,
    so batch ``(epoch, position, rank)`` depends on nothing else (exact resume). Rank ``r`` takes
    the ``r``-th slice of the global batch. Every batch is read from disk: memory use does not grow
    with the folder.

    Args:
        root: the folder (see the module docstring for its layout).
        split: "train" or "test".
        sample_rate: the rate windows are read at (Hz).
        window: samples per window (CPC: 20480, 1.28 s at 16 kHz).
        batch_size, world_size, seed, device: as :class:`selfsup.data.InMemoryImages`.
        resample: resample files at another rate (else refuse them).
        eval_windows: windows per file in :attr:`dataset` (evenly spaced, for evaluation).
        progress: show a bar while scanning.
    """

    kind = "sequences"

    def __init__(self, root: str | Path, split: str = "train", *, sample_rate: int = 16000, window: int = 20480,
                 batch_size: int = 8, world_size: int = 1, seed: int = 0, device: torch.device | str = "cpu",
                 resample: bool = True, eval_windows: int = 4, progress: bool = False) -> None:
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} must be divisible by the number of processes {world_size}")
        if window < 1 or sample_rate < 1:
            raise ValueError(f"window and sample_rate must be positive, got {window}, {sample_rate}")
        self.root, self.split, self.rate, self.window = Path(root).expanduser(), split, sample_rate, window
        self.batch_size, self.local_batch, self.seed = batch_size, batch_size // world_size, seed
        self.device = torch.device(device)
        self.files, self.classes, self.skipped = scan_wav_folder(root, split, sample_rate, resample=resample,
                                                                 progress=progress)
        lengths = [self.frames_at_rate(f) for f in self.files]
        counts = [max(1, n // window) for n in lengths]
        self.slots = torch.tensor([(i, k) for i, c in enumerate(counts) for k in range(c)], dtype=torch.int64)
        self.slack = torch.tensor([max(0, n - c * window) for n, c in zip(lengths, counts)], dtype=torch.int64)
        self.eval_windows = eval_windows
        self._dataset: SignalSet | None = None

    @classmethod
    def from_config(cls, data_config, split: str = "train", root: str | Path | None = None, **kwargs) -> WavFolder:
        """The source a run's ``data`` section describes (``root`` overrides its folder)."""
        d = data_config
        return cls(root or d.root, split, sample_rate=d.sample_rate, window=d.window, resample=d.resample,
                   eval_windows=d.eval_windows, **kwargs)

    def frames_at_rate(self, info: WavInfo) -> int:
        """The file's length in samples at the source's rate."""
        return info.frames if info.rate == self.rate else math.floor(info.frames * self.rate / info.rate)

    def __len__(self) -> int:
        return len(self.slots)

    @property
    def inputs(self) -> Tensor:
        """The evaluation windows of :attr:`dataset` (what evaluation encodes)."""
        return self.dataset.inputs

    def start(self, epoch: int, slot: int) -> int:
        """First sample of window ``slot`` in ``epoch``."""
        file, k = self.slots[slot].tolist()
        slack = int(self.slack[file])
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 1_000_033 + slot)
        return k * self.window + (int(torch.randint(slack + 1, (1,), generator=generator)) if slack else 0)

    def batch(self, epoch: int, position: int, rank: int) -> ImageBatch:
        """Rank ``rank``'s windows of global batch ``position``: float ``(b, 1, window)`` signals."""
        first = position * self.batch_size + rank * self.local_batch
        index = self.order(epoch)[first:first + self.local_batch]
        signals = np.stack([read_window(self.files[int(self.slots[i, 0])], self.start(epoch, int(i)), self.window,
                                        self.rate) for i in index])
        labels = torch.tensor([self.files[int(self.slots[i, 0])].label for i in index], dtype=torch.int64)
        return ImageBatch(torch.from_numpy(signals).unsqueeze(1).to(self.device), index.to(self.device),
                          labels.to(self.device))

    @property
    def dataset(self) -> SignalSet:
        """``eval_windows`` evenly spaced windows of every file, in memory, with their labels."""
        if self._dataset is None:
            windows, labels = [], []
            for info in self.files:
                length = self.frames_at_rate(info)
                count = min(self.eval_windows, max(1, length // self.window))
                spacing = max(0, length - self.window) / max(1, count - 1) if count > 1 else 0
                for j in range(count):
                    windows.append(read_window(info, int(j * spacing), self.window, self.rate))
                    labels.append(info.label)
            self._dataset = SignalSet(torch.from_numpy(np.stack(windows)).unsqueeze(1),
                                      torch.tensor(labels, dtype=torch.int64), self.classes,
                                      f"wav_{self.root.name}")
        return self._dataset


__all__ = ["SignalSet", "WavFolder", "WavInfo", "read_header", "read_window", "scan_wav_folder"]
