"""Video: folders of clips, decoded once into uint8 frames on the device, sampled as clips.

Layouts ``root`` may have (looked for in this order):

- **DAVIS**: ``root/JPEGImages/<resolution>/<seq>/*.jpg`` (``480p`` preferred), with instance masks
  in ``root/Annotations/<resolution>/<seq>/*.png`` when present, and the split in
  ``root/ImageSets/<year>/train.txt`` / ``val.txt`` (``test`` reads ``val``), and keypoints in
  ``root/Keypoints/<resolution>/<seq>.json`` when present (below);
- **a folder of videos**: ``root/train/`` and ``root/test/``, or ``root`` itself (then every fifth
  video in sorted order is the test split; every fifth scene, all its views, where videos are views of
  scenes: below), each holding video files (``.mp4 .webm .avi .mkv .mov
  .m4v``, decoded by PyAV, which bundles FFmpeg: ``pip install 'selfsup[video]'``) or folders of
  frames (``<video>/00000.jpg ...``, any image format, in sorted order).

Videos named ``<scene>_view0``, ``<scene>_view1``, ... are synchronised views of one scene (frame
t of each shows the same moment; multi-view TCN pairs them). ``root/labels.csv`` (``sequence,label`` rows) gives each video a class, which its frames inherit
(the linear probe and kNN of frames then run as for images). ``root/tasks.csv`` (``sequence,task`` rows,
one per video) says which videos demonstrate the same task (not synchronised: each at its own pace);
the temporal evaluation then aligns the held-out demonstrations of a task with one another (XIRL's
measure). ``root/captions.csv`` (``sequence,caption``
rows; several rows per video allowed, each visit of a clip draws one) gives videos captions, for R3M's
language term; a video with no row has none. Frames are read like a folder's images (turned upright
by their EXIF orientation, the centred square, ``size`` x ``size``; masks with nearest neighbours). A video or frame
that cannot be decoded is named once and skipped (a video with an unreadable frame is dropped
whole, so that clip times stay true).

A keypoint file holds ``{"keypoints": [[[x, y, visible], ...] for each frame], "scale": [s, ...]}``:
per frame, the same K points in the upright frame's pixels (x right, y down, from the top-left corner;
``visible`` 0 or 1), and, optionally, per point the size in pixels its PCK is measured against; without
it, each frame's 0.6 x the diagonal of the box around its visible points, as CRW's and UVC's JHMDB
evaluation (:func:`selfsup.evaluate.video.person_scale`). They move with the frames' square crop and resize. A malformed file is refused naming the file and what is wrong.

Why PyAV: it is the one video decoder on the package registries that installs everywhere with its
own FFmpeg (torchcodec needs a system FFmpeg and is not available for every platform;
torchvision's video reading is deprecated in its favour).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor
from tqdm.auto import tqdm

from selfsup.data.dataset import ImageDataset
from selfsup.data.folder import IMAGE_EXTENSIONS, decode, open_image, square
from selfsup.data.sources import EpochOrdered, ImageBatch
from selfsup.errors import DataError

VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v")
_VIEW = re.compile(r"_view\d+$")
_TEST_EVERY = 5


@dataclass
class VideoSet(ImageDataset):
    """Every frame of a split's videos in memory, with where each frame comes from: an
    :class:`selfsup.data.ImageDataset` of the frames (the frame-level evaluations read it as one).

    Attributes (besides the frames' ``images``, ``labels``: each frame's video's class from
    ``labels.csv`` or None, ``classes`` and ``name``):
        video: ``(N,)`` int64, each frame's video (index into ``names``); frames are stored video
            after video, in time order.
        time: ``(N,)`` int64, each frame's position in its video.
        names: the videos' names (sequence folder or file stem).
        masks: uint8 ``(N, H, W)`` instance ids (0 background) when every video has them, else None.
        keypoints: per video index that has them, ``(points, scale)``: ``(T, K, 3)`` float32 ``(x, y,
            visible)`` in pixels of the stored frames, and ``(K,)`` each point's PCK scale in those pixels
            (None where the file gives none: the evaluation's per-frame person box).
        skipped: unreadable files and why.
        captions: per video, its captions from ``captions.csv`` (an empty tuple: none); None when the
            root has no captions file.
        tasks: ``(V,)`` int64, each video's task (index into the sorted task names of ``tasks.csv``);
            None when the root has no tasks file.
    """

    video: Tensor = None  # type: ignore[assignment]  (required: dataclass fields after defaults)
    time: Tensor = None  # type: ignore[assignment]
    names: list[str] = field(default_factory=list)
    masks: Tensor | None = None
    keypoints: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    captions: list[tuple[str, ...]] | None = None
    tasks: Tensor | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        n = self.images.shape[0]
        if self.video is None or self.time is None or self.video.shape != (n,) or self.time.shape != (n,):
            raise DataError(f"VideoSet {self.name!r}: video and time must be (N,) = ({n},) int64 tensors")
        if self.masks is not None and self.masks.shape != (n, *self.images.shape[-2:]):
            raise DataError(f"VideoSet {self.name!r}: masks must be (N, H, W), got {tuple(self.masks.shape)}")
        if self.tasks is not None and self.tasks.shape != (len(self.names),):
            raise DataError(f"VideoSet {self.name!r}: tasks must be (V,) = ({len(self.names)},), "
                            f"got {tuple(self.tasks.shape)}")
        if self.captions is not None and len(self.captions) != len(self.names):
            raise DataError(f"VideoSet {self.name!r}: captions must hold one tuple per video ({len(self.names)}), "
                            f"got {len(self.captions)}")

    @property
    def starts(self) -> Tensor:
        """``(V,)`` the index of each video's first frame in :attr:`images`."""
        lengths = self.lengths
        return torch.cumsum(lengths, 0) - lengths

    @property
    def lengths(self) -> Tensor:
        """``(V,)`` frames per video."""
        return torch.bincount(self.video, minlength=len(self.names))

    @property
    def scenes(self) -> Tensor:
        """``(V,)`` each video's scene: videos named ``<scene>_view<k>`` are synchronised views of one
        scene (frame t of each shows the same moment) and share an index; any other video is its own."""
        return _scenes(self.names)

    def frames(self, v: int) -> slice:
        """The rows of :attr:`images` holding video ``v``."""
        start = int(self.starts[v])
        return slice(start, start + int(self.lengths[v]))


def _scenes(names: list[str]) -> Tensor:
    keys = [name[:match.start()] if (match := _VIEW.search(name)) else name for name in names]
    index = {key: i for i, key in enumerate(dict.fromkeys(keys))}
    return torch.tensor([index[key] for key in keys], dtype=torch.int64)


def _davis_base(root: Path) -> tuple[Path, Path | None] | None:
    """(frames folder, masks folder or None) of a DAVIS layout, else None."""
    frames = root / "JPEGImages"
    if not frames.is_dir():
        return None
    resolutions = sorted(p.name for p in frames.iterdir() if p.is_dir() and not _hidden(p))
    if not resolutions:
        return None
    resolution = "480p" if "480p" in resolutions else resolutions[0]
    masks = root / "Annotations" / resolution
    return frames / resolution, masks if masks.is_dir() else None


def _davis_split(root: Path, names: list[str], split: str) -> list[str]:
    sets = sorted((root / "ImageSets").glob("*/" + ("train" if split == "train" else "val") + ".txt"))
    if sets:
        listed = [line.strip() for line in sets[-1].read_text().splitlines() if line.strip()]
        missing = [n for n in listed if n not in names]
        if missing:
            raise DataError(f"{sets[-1]} names sequences that {root / 'JPEGImages'} lacks: {', '.join(missing[:5])}")
        return listed
    return _every_fifth(names, split)


def _every_fifth(names: list[str], split: str) -> list[str]:
    """The names of ``split`` when every fifth scene in sorted order is held out: the views
    ``<scene>_view<k>`` of one scene stay on one side (a held-out scene seen by another camera in training
    would leak its moments, and leave the test split no pairs to align); any other video is its own scene,
    so plain folders hold out every fifth video."""
    scenes = _scenes([Path(n).stem if Path(n).suffix.lower() in VIDEO_EXTENSIONS else n for n in names])
    return [n for n, scene in zip(names, scenes.tolist())
            if (scene % _TEST_EVERY == _TEST_EVERY - 1) == (split == "test")]


def _frame_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not _hidden(p))


def _hidden(path: Path) -> bool:
    """A hidden file or folder (``.ipynb_checkpoints/``, a Mac copy's ``._00000.jpg``), never a frame, a mask or a
    video: as image folders skip them (:func:`selfsup.data.folder.scan_folder`)."""
    return path.name.startswith(".")


def scan_videos(root: str | Path, split: str) -> list[tuple[str, Path, Path | None]]:
    """``(name, frames folder or video file, masks folder or None)`` of each video of ``split``."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"video folder {root} does not exist; data.root must be a folder of videos, of frame "
                        f"folders, or a DAVIS root (JPEGImages/480p/<sequence>/)")
    if split not in ("train", "test"):
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    davis = _davis_base(root)
    if davis is not None:
        frames, masks = davis
        names = sorted(p.name for p in frames.iterdir() if p.is_dir() and not _hidden(p))
        return [(n, frames / n, masks / n if masks is not None and (masks / n).is_dir() else None)
                for n in _davis_split(root, names, split)]
    split_folders = (root / "train").is_dir() and (root / "test").is_dir()
    base = root / split if split_folders else root
    entries = sorted(p for p in base.iterdir() if not _hidden(p) and (
        (p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS) or (p.is_dir() and p.name not in ("train", "test"))))
    entries = entries if split_folders else [p for p in entries if p.name in _every_fifth([e.name for e in entries], split)]
    if not entries:
        raise DataError(f"no video file ({' '.join(VIDEO_EXTENSIONS)}) or frame folder in {base} for split {split!r}")
    return [(p.stem if p.is_file() else p.name, p, None) for p in entries]


def _require_av(path: Path):
    try:
        import av
    except ImportError:
        raise DataError(f"{path}: reading video files needs PyAV: pip install 'selfsup[video]' (or give folders of "
                        f"frames)") from None
    return av


def upright(frame) -> Image.Image:
    """A decoded video frame as displayed: turned by its display matrix (a phone's portrait video is stored
    sideways with a rotation to show it upright), as a folder's frames are turned by their EXIF orientation.
    PyAV's ``VideoFrame.rotation`` is the counterclockwise angle, PIL's ``rotate`` turns counterclockwise."""
    image = frame.to_image()
    rotation = int(round(getattr(frame, "rotation", 0) or 0))  # PyAV < 14 does not read it: stored pixels
    return image.rotate(rotation, expand=True) if rotation % 360 else image


def _decode_video_file(path: Path, size: int, channels: int, max_frames: int | None) -> np.ndarray:
    av = _require_av(path)
    frames = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frames.append(square(upright(frame), size, channels))
            if max_frames is not None and len(frames) == max_frames:
                break
    if not frames:
        raise ValueError("no video frames")
    return np.stack(frames)


def _decode_frames(folder: Path, size: int, channels: int, max_frames: int | None) -> np.ndarray:
    files = _frame_files(folder)[:max_frames]
    if not files:
        raise ValueError("no frame images")
    return np.stack([decode(path, size, channels) for path in files])  # as a folder's images: upright (EXIF)


def _decode_masks(folder: Path, frames: Path, count: int, size: int) -> np.ndarray | None:
    """The masks of the first ``count`` frames of the ``frames`` folder, cropped and resized as they are.

    A mask covers its frame as displayed (EXIF orientation applied, like the frames and keypoints):
    its size must be the upright frame's. A mask of the stored pixels of a frame whose EXIF turns it
    (the mask's size is the stored frame's, not the upright one's) is turned the same way; a mask of
    any other size is refused naming the file, so that masks never drift off their frames.
    """
    files = sorted(p for p in folder.glob("*.png") if not _hidden(p))[:count]
    if len(files) != count:
        return None
    masks = []
    for path, frame in zip(files, _frame_files(frames)):
        with open_image(frame) as image:
            stored = image.size
            orientation = image.getexif().get(0x0112, 1)
        upright = stored[::-1] if orientation in (5, 6, 7, 8) else stored
        with open_image(path) as image:
            image.load()
            if image.mode not in ("P", "L"):
                raise DataError(f"{path}: instance masks must be palette or gray PNGs of object ids, got mode "
                                f"{image.mode}")
            if image.size != upright and image.size == stored:  # drawn on the stored pixels: turn it as the frame
                image = image.transpose(_TRANSPOSE[orientation])
            if image.size != upright:
                raise DataError(f"{path}: a mask must be its frame's size, {upright[0]} x {upright[1]} "
                                f"(width x height, as {frame.name} is displayed), got {image.size[0]} x "
                                f"{image.size[1]}")
            masks.append(square(image, size, 1, Image.Resampling.NEAREST)[0])
    return np.stack(masks)


# EXIF orientations 5-8 (the ones that swap width and height), as ImageOps.exif_transpose turns them.
_TRANSPOSE = {5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}


def _keypoint_file(frames: Path) -> Path | None:
    """``root/Keypoints/<resolution>/<seq>.json`` beside a DAVIS sequence's ``JPEGImages/<resolution>/<seq>``."""
    if frames.is_dir() and frames.parent.parent.name == "JPEGImages":
        path = frames.parent.parent.parent / "Keypoints" / frames.parent.name / f"{frames.name}.json"
        return path if path.is_file() else None
    return None


def read_keypoints(path: Path, count: int, width: int, height: int, size: int) -> tuple[Tensor, Tensor]:
    """A keypoint file (module docstring) of a video of ``count`` frames of ``width`` x ``height`` pixels,
    moved to the ``size`` x ``size`` centred square the frames are stored as: ``((T, K, 3), (K,))``."""
    import json

    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: not a readable JSON keypoint file ({error})") from None
    points = data.get("keypoints") if isinstance(data, dict) else None
    if not isinstance(points, list) or len(points) < count:
        raise DataError(f"{path}: 'keypoints' must list the points of each of the {count} frames read, got "
                        f"{len(points) if isinstance(points, list) else type(points).__name__}")
    points = points[:count]  # data.max_frames may read fewer frames than the video has
    try:
        track = torch.tensor(points, dtype=torch.float32)
    except (TypeError, ValueError) as error:
        raise DataError(f"{path}: every frame must hold the same K [x, y, visible] points ({error})") from None
    if track.ndim != 3 or track.shape[2] != 3 or track.shape[1] == 0:
        raise DataError(f"{path}: every frame must hold the same K [x, y, visible] points, got shape "
                        f"{tuple(track.shape)}")
    side = min(width, height)
    scale = None
    if "scale" in data:
        scale = torch.tensor(data["scale"], dtype=torch.float32)
        if scale.shape != (track.shape[1],) or not bool((scale > 0).all()):
            raise DataError(f"{path}: 'scale' must give each of the {track.shape[1]} points a positive size")
    factor = size / side  # the centred square's crop, then the resize
    track[:, :, 0] = (track[:, :, 0] - (width - side) / 2) * factor
    track[:, :, 1] = (track[:, :, 1] - (height - side) / 2) * factor
    inside = (track[:, :, :2] >= 0).all(dim=2) & (track[:, :, :2] < size).all(dim=2)
    track[:, :, 2] = ((track[:, :, 2] > 0) & inside).float()  # cropped away: not visible
    return track, None if scale is None else scale * factor


def _sequence_rows(path: Path, column: str) -> list[tuple[str, str]]:
    """The ``(sequence, value)`` rows of a ``sequence,<column>`` CSV, both non-empty."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows or [c.strip() for c in rows[0][:2]] != ["sequence", column]:
        raise DataError(f"{path}: the first row must be the header 'sequence,{column}'")
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise DataError(f"{path}, line {line}: expected 'sequence,{column}' with both non-empty (quote a "
                            f"value that holds a comma), got {row!r}")
    return [(row[0].strip(), row[1].strip()) for row in rows[1:]]


def _read_labels(root: Path) -> dict[str, str]:
    path = root / "labels.csv"
    return dict(_sequence_rows(path, "label")) if path.is_file() else {}


def _read_tasks(root: Path) -> dict[str, str] | None:
    path = root / "tasks.csv"
    return dict(_sequence_rows(path, "task")) if path.is_file() else None


def _read_captions(root: Path) -> dict[str, list[str]] | None:
    path = root / "captions.csv"
    if not path.is_file():
        return None
    captions: dict[str, list[str]] = {}
    for name, caption in _sequence_rows(path, "caption"):
        captions.setdefault(name, []).append(caption)
    return captions


def load_video_split(root: str | Path, split: str, *, size: int = 64, channels: int = 3,
                     max_frames: int | None = None, progress: bool = False) -> VideoSet:
    """Decode every video of ``split`` under ``root`` (layouts in the module docstring) into a
    :class:`VideoSet`; at most ``max_frames`` frames per video."""
    root = Path(root).expanduser()
    entries = scan_videos(root, split)
    named = _read_labels(root)
    captioned = _read_captions(root)
    tasked = _read_tasks(root)
    all_classes = sorted(set(named.values())) or None
    images, videos, times, masks, names, labels = [], [], [], [], [], []
    keypoints: dict[int, tuple[Tensor, Tensor]] = {}
    skipped: dict[str, str] = {}
    for name, path, mask_dir in tqdm(entries, desc=f"decoding {root.name} {split}", unit="video",
                                     disable=not progress):
        try:
            clip = (_decode_frames if path.is_dir() else _decode_video_file)(path, size, channels, max_frames)
        except DataError:
            raise
        except Exception as error:  # decoders raise many types on corrupt data; each means "skip this video"
            skipped[str(path)] = f"{type(error).__name__}: {error}"
            continue
        mask = _decode_masks(mask_dir, path, len(clip), size) if mask_dir is not None else None
        if named and name not in named:
            raise DataError(f"{root / 'labels.csv'} has no label for video {name!r}")
        if tasked is not None and name not in tasked:
            raise DataError(f"{root / 'tasks.csv'} has no task for video {name!r}")
        v = len(names)
        names.append(name)
        images.append(torch.from_numpy(clip))
        videos.append(torch.full((len(clip),), v, dtype=torch.int64))
        times.append(torch.arange(len(clip)))
        masks.append(None if mask is None else torch.from_numpy(mask))
        points = _keypoint_file(path)
        if points is not None:
            first = _frame_files(path)[0]
            with open_image(first) as image:
                width, height = ImageOps.exif_transpose(image).size  # the upright frame's, as decoded
            keypoints[v] = read_keypoints(points, len(clip), width, height, size)
        if all_classes is not None:
            labels.append(torch.full((len(clip),), all_classes.index(named[name]), dtype=torch.int64))
    if not names:
        raise DataError(f"no readable video in {root} for split {split!r}"
                        + (f" ({len(skipped)} skipped, e.g. {next(iter(skipped.items()))})" if skipped else ""))
    return VideoSet(torch.cat(images), torch.cat(labels) if all_classes is not None else None, all_classes,
                    f"video_{root.name}", video=torch.cat(videos), time=torch.cat(times), names=names,
                    masks=torch.cat(masks) if all(m is not None for m in masks) else None, keypoints=keypoints,
                    skipped=skipped,
                    captions=None if captioned is None else [tuple(captioned.get(name, ())) for name in names],
                    tasks=None if tasked is None else _task_index([tasked[name] for name in names]))


def _task_index(tasks: list[str]) -> Tensor:
    order = sorted(set(tasks))
    return torch.tensor([order.index(task) for task in tasks], dtype=torch.int64)


def window_times(length: int, stride: int = 1) -> Callable[[Tensor, torch.Generator], Tensor]:
    """The default clip sampler: ``length`` frames ``stride`` apart from a uniform start (a video
    shorter than the span gives its last frame repeated)."""
    def sample(lengths: Tensor, generator: torch.Generator) -> Tensor:
        span = (length - 1) * stride + 1
        room = (lengths - span + 1).clamp(min=1)
        start = (torch.rand(len(lengths), generator=generator) * room).long()
        times = start[:, None] + stride * torch.arange(length)
        return torch.minimum(times, lengths[:, None] - 1)
    return sample


@dataclass
class ClipPlan:
    """What global batch ``(epoch, position)`` of a clip source holds, before any frame is read:
    ``slots`` ``(B,)`` positions in the epoch's order, ``videos`` ``(B,)``, ``partners`` ``(B,)`` (the
    videos themselves without ``clip_views``), ``times`` ``(B, k)`` and ``captions`` ``(B,)`` rows of the
    caption table (-1: none) or None for uncaptioned data."""

    slots: Tensor
    videos: Tensor
    partners: Tensor
    times: Tensor
    captions: Tensor | None

    def rank(self, rank: int, local_batch: int) -> ClipPlan:
        """The share of process ``rank``."""
        mine = slice(rank * local_batch, (rank + 1) * local_batch)
        return ClipPlan(self.slots[mine], self.videos[mine], self.partners[mine], self.times[mine],
                        None if self.captions is None else self.captions[mine])


class ClipPlanner(EpochOrdered):
    """The clip sampling that in-memory and streamed video sources share: which videos, times,
    partner views and captions each global batch holds, from ``(seed, epoch, position)`` alone."""

    kind = "video"

    def __init__(self, names: list[str], lengths: Tensor, captions: list[tuple[str, ...]] | None, batch_size: int,
                 world_size: int, seed: int, clips_per_video: int) -> None:
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} must be divisible by the number of processes {world_size}")
        if clips_per_video < 1:
            raise ValueError(f"clips_per_video must be >= 1, got {clips_per_video}")
        self.names, self.lengths = names, lengths
        self.starts = torch.cumsum(lengths, 0) - lengths
        self.batch_size, self.local_batch = batch_size, batch_size // world_size
        self.seed, self.clips_per_video = seed, clips_per_video
        self.clip_times: Callable[[Tensor, torch.Generator], Tensor] = window_times(2)
        self.clip_views = 1
        self.scenes = _scenes(names)
        per_video = captions or []
        self.captions: list[str] = list(dict.fromkeys(c for texts in per_video for c in texts))
        row = {caption: i for i, caption in enumerate(self.captions)}
        self._caption_rows = [torch.tensor([row[c] for c in texts], dtype=torch.int64) for texts in per_video]

    def __len__(self) -> int:
        return len(self.names) * self.clips_per_video

    def plan(self, epoch: int, position: int) -> ClipPlan:
        """The clips of global batch ``position`` of ``epoch``."""
        slots = self.order(epoch)[position * self.batch_size:(position + 1) * self.batch_size]
        videos = slots % len(self.names)
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 1_000_033 + position)
        partners = self.partners(videos, generator) if self.clip_views > 1 else videos
        times = self.clip_times(torch.minimum(self.lengths[videos], self.lengths[partners]), generator)
        if times.ndim != 2 or len(times) != len(videos) or bool((times < 0).any()) or bool(
                (times >= self.lengths[videos][:, None]).any()):
            raise ValueError(f"clip_times must give (B, k) frame times inside each video, got shape "
                             f"{tuple(times.shape)}")
        captions = self.caption_ids(videos, generator) if self.captions else None
        return ClipPlan(slots, videos, partners, times, captions)

    def rows(self, plan: ClipPlan) -> Tensor:
        """``(b, k)`` (``(b, 2k)`` with partner views) frame rows of the split, video after video."""
        rows = self.starts[plan.videos][:, None] + plan.times
        if self.clip_views > 1:
            rows = torch.cat([rows, self.starts[plan.partners][:, None] + plan.times], dim=1)
        return rows

    def extra(self, plan: ClipPlan, device: torch.device) -> dict[str, Tensor]:
        """``ImageBatch.extra`` of a rank's plan."""
        extra = {"times": plan.times.to(device), "video": plan.videos.to(device)}
        if self.clip_views > 1:
            extra.update(times=torch.cat([plan.times, plan.times], dim=1).to(device), partner=plan.partners.to(device),
                         scene=self.scenes[plan.videos].to(device))
        if plan.captions is not None:
            extra["caption_ids"] = plan.captions.to(device)
        return extra

    def caption_ids(self, videos: Tensor, generator: torch.Generator) -> Tensor:
        """For each video, one of its captions drawn uniformly (a row of :attr:`captions`), -1 for none."""
        draws = torch.rand(len(videos), generator=generator)
        ids = []
        for video, draw in zip(videos.tolist(), draws.tolist()):
            rows = self._caption_rows[video]
            ids.append(int(rows[min(int(draw * len(rows)), len(rows) - 1)]) if len(rows) else -1)
        return torch.tensor(ids, dtype=torch.int64)

    def partners(self, videos: Tensor, generator: torch.Generator) -> Tensor:
        """For each video, another view of its scene drawn uniformly (itself when it has none)."""
        same = self.scenes[videos][:, None] == self.scenes[None, :]
        same[torch.arange(len(videos)), videos] = same.sum(dim=1) == 1  # itself only when alone
        draws = torch.rand(same.shape, generator=generator).masked_fill(~same, -1.0)
        return draws.argmax(dim=1)


class VideoClips(ClipPlanner):
    """A :class:`VideoSet` as a data source of clips: batch ``(epoch, position, rank)`` is ``(b, k, C,
    H, W)`` uint8 frames of ``b`` videos at ``k`` times each.

    An epoch visits every video ``clips_per_video`` times in a permutation drawn from ``(seed,
    epoch)``. Which frames a visit takes is the method's choice (``clip_times``: the lengths of the
    global batch's videos and a generator -> ``(B, k)`` frame times, e.g. R3M's five ordered frames;
    default :func:`window_times`), drawn for the whole global batch from a generator seeded by
    ``(seed, epoch, position)``, so a resumed run and any number of processes see the same clips.
    ``ImageBatch.extra`` carries ``times`` ``(b, k)`` and ``video`` ``(b,)``.

    ``clip_views`` = 2 (a method's, e.g. multi-view TCN's): each clip is also read, at the same times,
    from another view of its video's scene (drawn with the same generator; a video without other
    views is its own partner): frames ``(b, 2k, C, H, W)``, the first k of the video, the next k of
    the partner, with ``times`` ``(b, 2k)``, ``partner`` ``(b,)`` and ``scene`` ``(b,)`` in ``extra``.

    Captioned videos (``captions.csv``): :attr:`captions` is the table of distinct caption strings (empty
    without captions), and ``extra["caption_ids"]`` ``(b,)`` the row of the caption each visit drew
    (uniformly among its video's, from the same generator), -1 for a video without one.
    """

    def __init__(self, dataset: VideoSet, batch_size: int, world_size: int = 1, seed: int = 0,
                 device: torch.device | str = "cpu", clips_per_video: int = 8) -> None:
        super().__init__(dataset.names, dataset.lengths, dataset.captions, batch_size, world_size, seed,
                         clips_per_video)
        self.dataset, self.device = dataset, torch.device(device)
        self.images = dataset.images.to(self.device)
        self.skipped = dataset.skipped

    def close(self) -> None:
        """Nothing to release: the frames are one tensor (the streamed sources' interface)."""

    @property
    def inputs(self) -> Tensor:
        return self.images

    def batch(self, epoch: int, position: int, rank: int) -> ImageBatch:
        """Rank ``rank``'s clips of global batch ``position`` of ``epoch``."""
        plan = self.plan(epoch, position).rank(rank, self.local_batch)
        rows = self.rows(plan).to(self.device)
        labels = None if self.dataset.labels is None else self.dataset.labels.to(self.device)[rows[:, 0]]
        return ImageBatch(self.images[rows], plan.slots.to(self.device), labels, self.extra(plan, self.device))


__all__ = ["VIDEO_EXTENSIONS", "ClipPlan", "ClipPlanner", "VideoClips", "VideoSet", "load_video_split", "scan_videos", "window_times"]
