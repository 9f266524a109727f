"""Streamed video: clips decoded batch by batch in DataLoader workers, for video sets larger than memory.

``data.name=video`` with ``data.stream=true``. Only what sampling needs is read up front: each
training video's frame count (a frame folder's files are counted; a video file's packets are
demuxed, not decoded), its label (``labels.csv``) and its captions (``captions.csv``). The batch
of ``(epoch, position, rank)`` is planned in the training process exactly as
:class:`selfsup.data.VideoClips` plans it (:class:`selfsup.data.video.ClipPlanner`: the same
videos, times, partner views and captions, the method's ``clip_times`` included), and
DataLoader workers decode only those frames, at ``data.size`` as the in-memory source stores
them: the batches of the two sources are equal, and a resumed run reads the batches it would
have read. (The normalisation statistics are those of a seeded sample of 512 frames, as for a
streamed folder, where the in-memory source takes every frame.)

Frames of a frame folder are decoded one file each; a video file is decoded once per clip from
its start (decoders seek to key frames only, and a clip's frames are usually close together),
the last decoded video kept per thread. A clip that cannot be read (a truncated file, a corrupt
frame among its times) is replaced by the next video of the split that reads at the same times
(clamped to its length), and the video is named once; a partner view that cannot be read is
replaced by the clip's own video (as a video without other views is its own partner), and so is
the partner of a substituted clip, so that the two views of a clip always share a scene. Whether
a clip reads is a property of the files and the clip alone, so the substitute is the same in
every worker, process and resumed run. What the batch says of a substituted clip is the
substitute's: its label, video, partner, scene, clamped times, slot (the same visit of the
substitute) and caption (the substitute's first, -1 without one). Videos whose frames cannot
even be counted are named and left out before training, as the in-memory source leaves them out
(it also leaves out a video with any unreadable frame, which a stream only finds when a clip
needs it).

The held-out split stays in memory (:func:`selfsup.data.load_video_split`): evaluation reads
every frame of it. The training split's frames, for the frame probes and the statistics, are a
:class:`selfsup.data.stream.ImageStream` over every frame of every video, read in chunks.
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from selfsup.errors import DataError

from .folder import SkippedImageWarning, _machine_fault, decode, square
from .sources import ImageBatch
from .stream import StreamedDataset, _From, _loader
from .video import ClipPlan, ClipPlanner, _frame_files, _read_captions, _read_labels, _require_av, scan_videos, upright


def count_frames(path: Path, max_frames: int | None = None) -> int:
    """Frames of a frame folder (its image files) or a video file (its video packets with data),
    at most ``max_frames``."""
    if path.is_dir():
        count = len(_frame_files(path))
    else:
        av = _require_av(path)
        with av.open(str(path)) as container:
            count = sum(1 for packet in container.demux(video=0) if packet.size)
    if count == 0:
        raise ValueError("no video frames" if path.is_file() else "no frame images")
    return count if max_frames is None else min(count, max_frames)


class VideoFrameReader:
    """Every frame of a list of videos as the rows of a stream reader (``read(row)`` -> uint8 ``(C,
    size, size)``; row ``starts[v] + t`` is frame ``t`` of video ``v``), and whole clips
    (:meth:`clip`). Picklable: DataLoader workers get a copy, each with its own cache."""

    def __init__(self, paths: list[Path], lengths: list[int], size: int, channels: int) -> None:
        self.paths, self.lengths = [str(p) for p in paths], list(lengths)
        self.starts = np.cumsum([0] + self.lengths)
        self.side, self.channels = size, channels
        self._local = threading.local()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_local")
        state.pop("_bad", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    def __len__(self) -> int:
        return int(self.starts[-1])

    def locate(self, row: int) -> tuple[int, int]:
        """``(video, time)`` of a row."""
        video = int(np.searchsorted(self.starts, row, side="right")) - 1
        return video, row - int(self.starts[video])

    def name(self, row: int) -> str:
        video, time = self.locate(row)
        return f"{self.paths[video]} (frame {time})"

    def read(self, row: int) -> np.ndarray:
        video, time = self.locate(row)
        return self.clip(video, [time])[0]

    def clip(self, video: int, times: list[int]) -> np.ndarray:
        """Frames ``times`` of ``video`` as uint8 ``(k, C, size, size)``; raises where they cannot be read."""
        path = Path(self.paths[video])
        if path.is_dir():
            files = _frame_files(path)
            frames = []
            for time in times:
                if time >= len(files):
                    raise ValueError(f"has {len(files)} frames, not {time + 1}")
                frames.append(decode(files[time], self.side, self.channels))  # as in memory: upright (EXIF)
            return np.stack(frames)
        cached = getattr(self._local, "video", None)
        if cached is None or cached[0] != video:
            self._local.video = None  # free the last video before decoding the next
            self._local.video = (video, self._decode(path, self.lengths[video]))
        decoded = self._local.video[1]
        if max(times) >= len(decoded):
            raise ValueError(f"ends after {len(decoded)} frames; frame {max(times)} was counted")
        return decoded[times]

    def _decode(self, path: Path, length: int) -> np.ndarray:
        av = _require_av(path)
        frames = []
        with av.open(str(path)) as container:
            for frame in container.decode(video=0):
                frames.append(square(upright(frame), self.side, self.channels))
                if len(frames) == length:
                    break
        if not frames:
            raise ValueError("no video frames")
        return np.stack(frames)


class StreamedVideoSet(StreamedDataset):
    """A streamed video split: a :class:`selfsup.data.stream.StreamedDataset` of its frames (for
    evaluation and statistics) with what clip sampling needs (the :class:`selfsup.data.VideoSet`
    attributes ``names``, ``lengths``, ``video``, ``time``, ``captions``), nothing decoded."""

    def __init__(self, reader: VideoFrameReader, names: list[str], labels: Tensor | None, classes: list[str] | None,
                 captions: list[tuple[str, ...]] | None, name: str, workers: int = 2,
                 skipped: dict[str, str] | None = None) -> None:
        lengths = torch.tensor(reader.lengths, dtype=torch.int64)
        self.names, self.lengths, self.captions = names, lengths, captions
        self.video = torch.repeat_interleave(torch.arange(len(names)), lengths)
        self.time = torch.arange(len(self.video)) - torch.repeat_interleave(torch.cumsum(lengths, 0) - lengths, lengths)
        frame_labels = None if labels is None else labels[self.video]
        super().__init__(reader, frame_labels, classes, name, reader.side, workers)
        self.video_labels = labels
        self.skipped.update(skipped or {})


def streamed_video_split(root: str | Path, split: str, *, size: int, channels: int = 3,
                         max_frames: int | None = None, workers: int = 2) -> StreamedVideoSet:
    """``split`` of the videos under ``root`` (the layouts of :mod:`selfsup.data.video`), counted, not decoded."""
    root = Path(root).expanduser()
    named = _read_labels(root)
    captioned = _read_captions(root)
    classes = sorted(set(named.values())) or None
    names, paths, lengths, labels, skipped = [], [], [], [], {}
    for name, path, _ in scan_videos(root, split):
        try:
            count = count_frames(path, max_frames)
        except DataError:
            raise
        except Exception as error:  # decoders raise many types on corrupt data: skip the video
            if _machine_fault(error):
                raise
            skipped[str(path)] = f"{type(error).__name__}: {error}"
            continue
        if named and name not in named:
            raise DataError(f"{root / 'labels.csv'} has no label for video {name!r}")
        names.append(name)
        paths.append(path)
        lengths.append(count)
        if classes is not None:
            labels.append(classes.index(named[name]))
    if not names:
        raise DataError(f"no readable video in {root} for split {split!r}"
                        + (f" ({len(skipped)} skipped, e.g. {next(iter(skipped.items()))})" if skipped else ""))
    return StreamedVideoSet(VideoFrameReader(paths, lengths, size, channels), names,
                            torch.tensor(labels) if classes is not None else None, classes,
                            None if captioned is None else [tuple(captioned.get(n, ())) for n in names],
                            f"video_{root.name}", workers, skipped)


class _ClipReads(torch.utils.data.Dataset):
    """Item ``(step, videos, partners, times)`` (``partners``: None without partner views): those clips
    read, substituted as the module docstring says. Returns ``(step, frames, videos read, partners read
    or None, [(video, reason), ...])``, the frames uint8 ``(b, k, C, S, S)``, or ``(b, 2k, C, S, S)``
    with partners (the video's k frames, then the partner's)."""

    def __init__(self, reader: VideoFrameReader) -> None:
        self.reader = reader

    def _clip(self, video: int, times: list[int]) -> np.ndarray:
        last = self.reader.lengths[video] - 1
        return self.reader.clip(video, [min(t, last) for t in times])

    def __getitem__(self, item):
        step, videos, partners, times = item
        count = len(self.reader.lengths)
        clips, read, paired, failures = [], [], [], []
        for row, (video, clip_times) in enumerate(zip(videos.tolist(), times.tolist())):
            for attempt in range(count):
                candidate = (video + attempt) % count
                try:
                    clip = self._clip(candidate, clip_times)
                    break
                except DataError:
                    raise
                except Exception as error:  # a corrupt file: name it, take the next video
                    if _machine_fault(error):
                        raise
                    failures.append((candidate, f"{type(error).__name__}: {error}"))
            else:
                raise DataError(f"none of the {count} videos could be read; see the warnings for why")
            read.append(candidate)
            if partners is not None:
                partner, view = candidate, clip  # a substitute, or a video alone, is its own partner
                if candidate == video and int(partners[row]) != video:
                    try:
                        partner, view = int(partners[row]), self._clip(int(partners[row]), clip_times)
                    except DataError:
                        raise
                    except Exception as error:  # the partner is corrupt: the video is its own
                        if _machine_fault(error):
                            raise
                        failures.append((int(partners[row]), f"{type(error).__name__}: {error}"))
                        partner, view = candidate, clip
                paired.append(partner)
                clip = np.concatenate([clip, view])
            clips.append(clip)
        return (step, torch.from_numpy(np.stack(clips)), torch.tensor(read, dtype=torch.int64),
                None if partners is None else torch.tensor(paired, dtype=torch.int64), failures)


class _Plans(torch.utils.data.Sampler):
    """Steps from ``start`` on, each as ``(step, videos, times)`` of this rank's clips, planned here
    (in the training process, where the method's ``clip_times`` lives)."""

    def __init__(self, source: StreamedVideoClips, start: int, rank: int) -> None:
        self.source, self.start, self.rank = source, start, rank

    def __iter__(self):
        for step in _From(self.start):
            plan = self.source.plan(*divmod(step, self.source.steps_per_epoch())).rank(self.rank, self.source.local_batch)
            yield step, plan.videos, plan.partners if self.source.clip_views > 1 else None, plan.times


class StreamedVideoClips(ClipPlanner):
    """The streamed video source: the clips of :class:`selfsup.data.VideoClips`, decoded by
    ``workers`` DataLoader workers as training asks for them (module docstring)."""

    def __init__(self, dataset: StreamedVideoSet, batch_size: int, world_size: int = 1, seed: int = 0,
                 device: torch.device | str = "cpu", clips_per_video: int = 8, workers: int = 2, rank: int = 0) -> None:
        super().__init__(dataset.names, dataset.lengths, dataset.captions, batch_size, world_size, seed,
                         clips_per_video)
        self.dataset, self.device, self.workers, self.rank = dataset, torch.device(device), workers, rank
        self._iterator = None
        self._next: int | None = None

    @property
    def inputs(self):
        """The training frames as a lazy stream (what evaluation encodes)."""
        return self.dataset.images

    @property
    def images(self):
        return self.dataset.images

    @property
    def skipped(self) -> dict[str, str]:
        """``{path: reason}`` of the videos left out or found unreadable so far."""
        return self.dataset.skipped

    def _as_read(self, plan: ClipPlan, videos: Tensor, partners: Tensor | None) -> ClipPlan:
        """``plan`` with each clip read from a substitute (``videos``, ``partners``: what was read)
        described as the substitute's: its video, partner, slot, times clamped to its length and
        caption (module docstring)."""
        partners = videos if partners is None else partners
        if torch.equal(videos, plan.videos) and torch.equal(partners, plan.partners):
            return plan
        captions = plan.captions
        if captions is not None:
            captions = captions.clone()
            for row in (videos != plan.videos).nonzero().flatten().tolist():
                rows = self._caption_rows[int(videos[row])]
                captions[row] = int(rows[0]) if len(rows) else -1
        return ClipPlan(plan.slots - plan.videos + videos, videos, partners,
                        torch.minimum(plan.times, self.lengths[videos][:, None] - 1), captions)

    def report(self, failures: list[tuple[int, str]]) -> None:
        for video, reason in failures:
            path = self.dataset.reader.paths[video]
            if path not in self.dataset.skipped:
                self.dataset.skipped[path] = reason
                warnings.warn(f"skipping video {path}: {reason}; a clip it cannot give takes the next video's "
                              "(a partner view it cannot give: the clip's own video)",
                              SkippedImageWarning, stacklevel=2)

    def batch(self, epoch: int, position: int, rank: int) -> ImageBatch:
        """Rank ``rank``'s clips of global batch ``position`` of ``epoch``."""
        step = epoch * self.steps_per_epoch() + position
        if self._iterator is None or self._next != step or rank != self.rank:
            self.close()
            self.rank = rank
            self._iterator = _loader(_ClipReads(self.dataset.reader), _Plans(self, step, rank), self.workers,
                                     pin=self.device.type == "cuda")
        got, frames, videos, partners, failures = next(self._iterator)
        if got != step:
            raise RuntimeError(f"streamed video: asked for step {step}, the loader gave {got}")
        self._next = step + 1
        if failures:
            self.report(failures)
        plan = self._as_read(self.plan(epoch, position).rank(rank, self.local_batch), videos, partners)
        labels = self.dataset.video_labels
        move = dict(device=self.device, non_blocking=True)
        return ImageBatch(frames.to(**move), plan.slots.to(self.device),
                          None if labels is None else labels[plan.videos].to(self.device), self.extra(plan, self.device))

    def close(self) -> None:
        """Stop the workers (training calls this when it ends; the next batch starts new ones)."""
        iterator, self._iterator, self._next = self._iterator, None, None
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()


__all__ = ["StreamedVideoClips", "StreamedVideoSet", "VideoFrameReader", "count_frames", "streamed_video_split"]
