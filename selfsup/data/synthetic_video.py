"""Synthetic videos with exact instance masks, written in the DAVIS layout: data to learn and test
video methods on where no video set can be downloaded.

Each video shows one to three sprites (Fashion-MNIST garments, or scikit-learn's digits where
Fashion-MNIST is not at hand), each tinted with its own colour (or, ``shared_colour``, all with one), moving on a straight line that
bounces off the borders, turning and occluding one another (the later sprite in front), over a
crop of a real colour photo (scikit-learn's ``china`` and ``flower``) that pans at a constant speed.
Everything is a function of the seed. The files::

    root/JPEGImages/480p/<seq>/00000.jpg ...   the frames (JPEG, quality 95)
    root/Annotations/480p/<seq>/00000.png ...  instance ids per pixel (0 background, 1.. sprites),
                                               palette PNGs as DAVIS writes them
    root/Keypoints/480p/<seq>.json             five keypoints per sprite (KEYPOINTS) per frame, each with
                                               whether its pixel shows its sprite, and the sprite's side
                                               as its PCK scale (selfsup.data.video's keypoint files)
    root/ImageSets/2017/train.txt, val.txt     the split, one sequence per line
    root/labels.csv                            sequence,label: the class of the first sprite
    root/captions.csv                          sequence,caption: a narration of the first sprite and the
                                               camera ("a red sneaker moves up and to the left while the
                                               camera pans right")

The first sprite is the largest, so a sequence's label is the class of what a viewer sees most.
The caption names its colour (the nearest of :data:`COLOURS`), its class, the direction of its first
motion (before any bounce) and the camera's pan, so that it says what happens over the video.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

DAVIS_RESOLUTION = "480p"
KEYPOINTS = ((0.0, 0.0), (-0.5, -0.5), (0.5, -0.5), (-0.5, 0.5), (0.5, 0.5))
"""Each sprite's keypoints in its own coordinates (-1..1 across the sprite image, x right, y down):
its centre and the centres of its four quadrants, carried with its motion and rotation."""
COLOURS = {"red": (1.0, 0.25, 0.25), "green": (0.25, 1.0, 0.25), "blue": (0.25, 0.25, 1.0),
           "yellow": (1.0, 1.0, 0.25), "magenta": (1.0, 0.25, 1.0), "cyan": (0.25, 1.0, 1.0), "white": (1.0, 1.0, 1.0)}
"""The colour names captions use, with their tints (the nearest one names a sprite's tint)."""


def _direction(velocity: np.ndarray, still: float) -> str:
    """Words for a motion ``(dy, dx)`` in image axes (y down): "up and to the left", "right", "nowhere"."""
    vertical = "up" if velocity[0] < -still else "down" if velocity[0] > still else ""
    horizontal = "left" if velocity[1] < -still else "right" if velocity[1] > still else ""
    if vertical and horizontal:
        return f"{vertical} and to the {horizontal}"
    return vertical or horizontal or "nowhere"


def caption(colour: np.ndarray, name: str, velocity: np.ndarray, pan: np.ndarray) -> str:
    """A video's narration from its first sprite's tint, class name and velocity and the camera's pan
    (pixels per frame; the scene drifts opposite to the pan)."""
    tint = min(COLOURS, key=lambda key: float(np.sum((np.asarray(COLOURS[key]) - colour) ** 2)))
    motion = _direction(velocity, 0.5)
    moves = "stays still" if motion == "nowhere" else f"moves {motion}"
    camera = _direction(pan, 0.3)
    pans = "the camera is still" if camera == "nowhere" else f"the camera pans {camera}"
    return f"a {tint} {name.lower()} {moves} while {pans}"


def davis_palette() -> list[int]:
    """The PASCAL VOC colour map DAVIS annotations use: index ``i``'s RGB from the bits of ``i``."""
    palette = []
    for index in range(256):
        rgb = [0, 0, 0]
        value = index
        for shift in range(7, -1, -1):
            for channel in range(3):
                rgb[channel] |= ((value >> channel) & 1) << shift
            value >>= 3
        palette.extend(rgb)
    return palette


def _sprites(source: str) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(uint8 (N, h, w) gray sprites, class names, labels)."""
    if source == "fashion_mnist":
        from selfsup.data import load

        data = load("fashion_mnist", "train", progress=False)
        return data.images[:, 0].numpy(), list(data.classes), data.labels.numpy()
    if source == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images = np.rint(bunch.images * (255 / 16)).astype(np.uint8)
        return images, [str(d) for d in bunch.target_names], bunch.target
    raise ValueError(f"sprites must be 'fashion_mnist' or 'digits', got {source!r}")


def _backgrounds() -> list[np.ndarray]:
    from sklearn.datasets import load_sample_images

    return [np.asarray(image) for image in load_sample_images().images]


def render_video(rng: np.random.Generator, sprites: np.ndarray, backgrounds: list[np.ndarray], *, frames: int,
                 size: int, objects: int, shared_colour: bool = False,
                 classes: list[str] | None = None, labels: np.ndarray | None = None, task: bool = False,
                 ) -> tuple[np.ndarray, np.ndarray, list[int], dict, str]:
    """One video: uint8 RGB frames ``(T, size, size, 3)``, instance ids ``(T, size, size)``, the
    sprite indices it shows (first, largest, at the back), its keypoints (:data:`KEYPOINTS` of
    each sprite, in the keypoint file's form: ``{"keypoints": T x K x [x, y, visible], "scale": K
    sprite sides}``; a point is visible where its pixel shows its own sprite) and its caption
    (:func:`caption`; the first sprite's class ``classes[labels[index]]``, "sprite" without them; no
    random draw of its own, so the frames are those of a run without captions). ``shared_colour``: every
    sprite takes the first one's colour (the random draws are the same, so the motions are those of
    the other setting). ``task``: the video is a demonstration of one task in one scene, the first
    sprite carried from the left edge to the right edge at its own pace (its x at time t is the span's
    fraction (t / (T - 1)) ** g, g drawn from 0.5-2 per video, at a height drawn as before) over the
    same still view of the first photo in every video; the other sprites move as in the other setting."""
    photo = backgrounds[rng.integers(len(backgrounds))]
    pan = rng.uniform(-1.5, 1.5, 2)  # pixels per frame at the output size
    zoom = rng.uniform(1.0, 2.0)  # photo pixels per output pixel
    span = size * zoom + np.abs(pan) * zoom * frames
    top = rng.uniform(0, max(1, photo.shape[0] - span[0]))
    left = rng.uniform(0, max(1, photo.shape[1] - span[1]))
    if task:  # every demonstration in one scene: the first photo's centre, a still camera (the draws above kept)
        photo, pan, zoom = backgrounds[0], np.zeros(2), 1.5
        top, left = (photo.shape[0] - size * zoom) / 2, (photo.shape[1] - size * zoom) / 2
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    video = np.empty((frames, size, size, 3), np.float64)
    start = np.array([top, left]) + np.where(pan < 0, -pan * zoom * frames, 0)
    for t in range(frames):
        rows = np.clip(start[0] + (ys + pan[0] * t) * zoom, 0, photo.shape[0] - 1).astype(np.int64)
        cols = np.clip(start[1] + (xs + pan[1] * t) * zoom, 0, photo.shape[1] - 1).astype(np.int64)
        video[t] = photo[rows, cols]
    masks = np.zeros((frames, size, size), np.uint8)
    points = np.zeros((frames, objects * len(KEYPOINTS), 2))
    scales = []
    chosen = rng.choice(len(sprites), objects, replace=False).tolist()
    for k, index in enumerate(chosen):
        side = size * (0.55 if k == 0 else rng.uniform(0.3, 0.42))
        position = rng.uniform(side / 2, size - side / 2, 2)
        velocity = rng.uniform(-2.5, 2.5, 2)
        angle, turn = rng.uniform(-0.4, 0.4), rng.uniform(-0.08, 0.08)
        tint = rng.uniform(0.25, 1.0, 3)
        tint /= tint.max()
        if shared_colour and k == 0:
            first_tint = tint
        tint = first_tint if shared_colour else tint
        carried = task and k == 0
        if carried:
            pace = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))
            velocity = np.array([0.0, 1.0])  # what the caption says: it moves right
        if k == 0:
            name = "sprite" if classes is None or labels is None else classes[int(labels[index])]
            narration = caption(tint, name, velocity, pan)
        sprite = torch.from_numpy(sprites[index]).float()[None, None] / 255
        for t in range(frames):
            centre = position + velocity * t
            if carried:
                centre = np.array([position[0], side / 2 + (size - side) * (t / max(1, frames - 1)) ** pace])
            for axis in range(2):  # bounce: reflect the straight path into [side/2, size - side/2]
                low, high = side / 2, size - side / 2
                period = 2 * (high - low)
                phase = (centre[axis] - low) % period
                centre[axis] = low + (phase if phase <= high - low else period - phase)
            theta = angle + turn * t
            cos, sin = math.cos(theta), math.sin(theta)
            scale = size / side
            # Output pixel (normalised) -> sprite coordinates: rotate about the centre, then scale.
            cy, cx = (2 * centre / size - 1)
            matrix = torch.tensor([[scale * cos, scale * sin, -scale * (cos * cx + sin * cy)],
                                   [-scale * sin, scale * cos, -scale * (-sin * cx + cos * cy)]],
                                  dtype=torch.float32)[None]
            for p, (u, v) in enumerate(KEYPOINTS):  # sprite coordinates -> output pixels: the inverse map
                xn = cx + (cos * u - sin * v) / scale
                yn = cy + (sin * u + cos * v) / scale
                points[t, k * len(KEYPOINTS) + p] = ((xn + 1) * size / 2, (yn + 1) * size / 2)
            grid = F.affine_grid(matrix, [1, 1, size, size], align_corners=False)
            alpha = F.grid_sample(sprite, grid, align_corners=False)[0, 0].numpy().astype(np.float64)
            inside = alpha > 0.15
            shade = alpha[..., None] * tint * 255
            video[t][inside] = shade[inside]
            masks[t][inside] = k + 1
        scales += [side] * len(KEYPOINTS)
    owner = np.repeat(np.arange(1, objects + 1), len(KEYPOINTS))
    pixel = np.clip(np.floor(points).astype(np.int64), 0, size - 1)
    visible = masks[np.arange(frames)[:, None], pixel[..., 1], pixel[..., 0]] == owner[None]
    track = np.concatenate([np.round(points, 3), visible[..., None]], axis=2)
    keypoints = {"keypoints": track.tolist(), "scale": [round(float(x), 3) for x in scales]}
    return np.clip(np.rint(video), 0, 255).astype(np.uint8), masks, chosen, keypoints, narration


def second_camera(rng: np.random.Generator, clip: np.ndarray, masks: np.ndarray,
                  keypoints: dict) -> tuple[np.ndarray, np.ndarray, dict]:
    """The same moments seen by another, fixed camera: every frame zoomed in (1.15-1.4x), rolled
    (±0.3 rad) and shifted (up to ±0.1 of the side) by one similarity transform drawn for the video,
    frames bilinear, masks nearest; keypoints moved by the same transform, visible where the new
    mask shows their sprite."""
    frames, size = clip.shape[:2]
    zoom, roll = rng.uniform(1.15, 1.4), rng.uniform(-0.3, 0.3)
    shift = rng.uniform(-0.1, 0.1, 2)
    cos, sin = math.cos(roll) / zoom, math.sin(roll) / zoom
    # output (normalised x, y) -> source: p_src = A p_out + b
    a = np.array([[cos, -sin], [sin, cos]])
    theta = torch.tensor(np.concatenate([a, shift[:, None]], axis=1), dtype=torch.float32)[None].expand(frames, -1, -1)
    grid = F.affine_grid(theta, [frames, 1, size, size], align_corners=False)
    pixels = torch.from_numpy(clip).permute(0, 3, 1, 2).float()
    warped = F.grid_sample(pixels, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    ids = F.grid_sample(torch.from_numpy(masks)[:, None].float(), grid, mode="nearest", padding_mode="zeros",
                        align_corners=False)[:, 0].round().to(torch.uint8).numpy()
    track = np.array(keypoints["keypoints"], dtype=np.float64)
    source = 2 * track[..., :2] / size - 1                                     # normalised source points
    moved = (source - shift) @ np.linalg.inv(a).T                              # p_out = A^-1 (p_src - b)
    points = (moved + 1) * size / 2
    owner = np.repeat(np.arange(1, track.shape[1] // len(KEYPOINTS) + 1), len(KEYPOINTS))
    inside = ((points >= 0) & (points < size)).all(axis=2)
    pixel = np.clip(np.floor(points).astype(np.int64), 0, size - 1)
    visible = inside & (ids[np.arange(frames)[:, None], pixel[..., 1], pixel[..., 0]] == owner[None])
    view = {"keypoints": np.concatenate([np.round(points, 3), visible[..., None]], axis=2).tolist(),
            "scale": [round(float(x) * zoom, 3) for x in keypoints["scale"]]}
    frames_out = warped.permute(0, 2, 3, 1).round().clamp(0, 255).to(torch.uint8).numpy()
    return frames_out, ids, view


def write_synthetic_videos(root: str | Path, *, videos: int = 60, frames: int = 24, size: int = 64,
                           val_fraction: float = 0.25, max_objects: int = 3, sprites: str = "fashion_mnist",
                           shared_colour: bool = False, views: int = 1, task: bool = False, seed: int = 0,
                           progress: bool = False) -> Path:
    """Write ``videos`` synthetic videos of ``frames`` frames at ``size`` x ``size`` under ``root`` in
    the DAVIS layout (see the module docstring); the last ``val_fraction`` of them are the ``val``
    split. ``shared_colour``: the sprites of a video share one colour, so that colour alone cannot tell
    them apart (the same videos otherwise). ``views`` > 1: each video is a scene seen by ``views``
    synchronised cameras, written as sequences ``<name>_view0``, ``<name>_view1``, ... (the first the
    camera of ``views=1``, the others :func:`second_camera`s; the views of a scene share a split and a
    label). ``task``: every video demonstrates one task (:func:`render_video`'s ``task``: the first
    sprite carried left to right, each video at its own pace), written in ``tasks.csv`` so that the
    temporal evaluation aligns the held-out demonstrations with one another. Returns ``root``."""
    if videos < 2 or frames < 2 or size < 16 or not 0 < val_fraction < 1 or max_objects < 1 or views < 1:
        raise ValueError(f"need videos >= 2, frames >= 2, size >= 16, 0 < val_fraction < 1, max_objects >= 1 and "
                         f"views >= 1; got {videos}, {frames}, {size}, {val_fraction}, {max_objects}, {views}")
    from tqdm.auto import tqdm

    root = Path(root)
    images, classes, labels = _sprites(sprites)
    backgrounds = _backgrounds()
    palette = davis_palette()
    rng = np.random.default_rng(seed)
    names, rows, scenes, narrations = [], [], [], []
    for v in tqdm(range(videos), desc="synthetic videos", unit="video", disable=not progress):
        scene = f"video{v:04d}"
        clip, masks, chosen, keypoints, narration = render_video(
            rng, images, backgrounds, frames=frames, size=size, objects=int(rng.integers(1, max_objects + 1)),
            shared_colour=shared_colour, classes=classes, labels=labels, task=task)
        shots = [(clip, masks, keypoints)]
        if views > 1:
            camera = np.random.default_rng([seed, v])  # its own stream: the first view stays that of views=1
            shots += [second_camera(camera, clip, masks, keypoints) for _ in range(views - 1)]
        label = classes[int(labels[chosen[0]])]
        scene_names = []
        for k, (clip_k, masks_k, keypoints_k) in enumerate(shots):
            name = scene if views == 1 else f"{scene}_view{k}"
            _write_sequence(root, name, clip_k, masks_k, keypoints_k, palette)
            scene_names.append(name)
            rows.append((name, label))
            narrations.append((name, narration))
        scenes.append(scene_names)
    n_val = max(1, round(videos * val_fraction))
    names = [name for group in scenes[:-n_val] for name in group], [name for group in scenes[-n_val:] for name in group]
    sets = root / "ImageSets" / "2017"
    sets.mkdir(parents=True, exist_ok=True)
    (sets / "train.txt").write_text("".join(f"{n}\n" for n in names[0]))
    (sets / "val.txt").write_text("".join(f"{n}\n" for n in names[1]))
    with open(root / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["sequence", "label"])
        writer.writerows(rows)
    with open(root / "captions.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["sequence", "caption"])
        writer.writerows(narrations)
    if task:
        with open(root / "tasks.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["sequence", "task"])
            writer.writerows((name, "carry to the right") for name, _ in rows)
    return root


def _write_sequence(root: Path, name: str, clip: np.ndarray, masks: np.ndarray, keypoints: dict,
                    palette: list[int]) -> None:
    frame_dir = root / "JPEGImages" / DAVIS_RESOLUTION / name
    mask_dir = root / "Annotations" / DAVIS_RESOLUTION / name
    points_dir = root / "Keypoints" / DAVIS_RESOLUTION
    for folder in (frame_dir, mask_dir, points_dir):
        folder.mkdir(parents=True, exist_ok=True)
    for t in range(len(clip)):
        Image.fromarray(clip[t]).save(frame_dir / f"{t:05d}.jpg", quality=95)
        mask = Image.fromarray(masks[t], "P")
        mask.putpalette(palette)
        mask.save(mask_dir / f"{t:05d}.png")
    (points_dir / f"{name}.json").write_text(json.dumps(keypoints, separators=(",", ":")))


__all__ = ["COLOURS", "DAVIS_RESOLUTION", "KEYPOINTS", "caption", "davis_palette", "render_video", "second_camera",
           "write_synthetic_videos"]
