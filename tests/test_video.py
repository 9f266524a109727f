"""Video: the synthetic generator, the video source, the time-contrastive losses, the DAVIS metrics,
mask propagation, the three video methods and their command-line evaluations."""

import json
import math
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from selfsup import augment, losses
from selfsup.data import VideoClips, load_video_split, streamed_video_split
from selfsup.data.sources import epoch_order
from selfsup.data.synthetic_video import davis_palette, write_synthetic_videos
from selfsup.data.video import window_times
from selfsup.errors import DataError
from selfsup.evaluate import video
from selfsup.methods import R3M, TCN, VideoColorization
from selfsup.methods.base import Batch
from selfsup.nn import Backbone, build_backbone


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """12 synthetic videos of 8 frames at 32x32 (digits sprites: no download), 3 of them held out."""
    return write_synthetic_videos(tmp_path_factory.mktemp("videos") / "synthetic", videos=12, frames=8, size=32,
                                  sprites="digits", seed=0)


# ----------------------------------------------------------------------------- the generator


def test_the_generator_writes_the_davis_layout_with_masks_over_the_sprites(videos):
    names = sorted(p.name for p in (videos / "JPEGImages" / "480p").iterdir())
    assert len(names) == 12
    train = (videos / "ImageSets" / "2017" / "train.txt").read_text().split()
    val = (videos / "ImageSets" / "2017" / "val.txt").read_text().split()
    assert sorted(train + val) == names and len(val) == 3 and not set(train) & set(val)
    mask = Image.open(videos / "Annotations" / "480p" / names[0] / "00000.png")
    assert mask.mode == "P" and mask.getpalette()[:9] == [0, 0, 0, 128, 0, 0, 0, 128, 0]  # DAVIS/VOC colours
    ids = np.asarray(mask)
    assert ids[ids > 0].size > 20 and set(np.unique(ids)) <= {0, 1, 2, 3}
    rows = (videos / "labels.csv").read_text().splitlines()
    assert rows[0] == "sequence,label" and len(rows) == 13


def test_generated_keypoints_move_rigidly_with_their_sprite_and_are_visible_on_it(videos):
    """Each sprite's five points keep the geometry of KEYPOINTS (a rotation and a shift of the sprite
    frame: corners 0.3536 side from the centre, a square of side 0.5 side) through bounces and turns,
    and a point is visible exactly where the mask shows its own sprite."""
    from selfsup.data.synthetic_video import KEYPOINTS

    for name in sorted(p.stem for p in (videos / "Keypoints" / "480p").glob("*.json"))[:4]:
        data = json.loads((videos / "Keypoints" / "480p" / f"{name}.json").read_text())
        track, scale = np.array(data["keypoints"]), np.array(data["scale"])
        assert track.shape == (8, len(scale), 3) and len(scale) % len(KEYPOINTS) == 0
        for k in range(len(scale) // 5):
            points, side = track[:, 5 * k:5 * k + 5, :2], scale[5 * k]
            centre_to_corner = np.linalg.norm(points[:, 1:] - points[:, :1], axis=2)
            np.testing.assert_allclose(centre_to_corner, 0.5 * math.sqrt(2) * side / 2, atol=0.01)
            np.testing.assert_allclose(np.linalg.norm(points[:, 2] - points[:, 1], axis=1), 0.5 * side, atol=0.01)
        for t in range(8):
            mask = np.asarray(Image.open(videos / "Annotations" / "480p" / name / f"{t:05d}.png"))
            for i, (x, y, visible) in enumerate(track[t]):
                owner = i // 5 + 1
                assert bool(visible) == (mask[min(int(y), 31), min(int(x), 31)] == owner)


def test_keypoint_files_move_with_the_square_crop_and_bad_ones_are_named(tmp_path):
    from selfsup.data.video import read_keypoints

    path = tmp_path / "seq.json"  # a 100 x 60 frame: the centred square is x in [20, 80), resized to 30
    path.write_text(json.dumps({"keypoints": [[[20, 0, 1], [50, 30, 1], [10, 30, 1]]] * 2, "scale": [60, 30, 6]}))
    track, scale = read_keypoints(path, 2, 100, 60, 30)
    assert track[0].tolist() == [[0.0, 0.0, 1.0], [15.0, 15.0, 1.0], [-5.0, 15.0, 0.0]]  # cropped away: not visible
    assert scale.tolist() == [30.0, 15.0, 3.0]
    track, scale = read_keypoints(path, 1, 100, 60, 30)  # data.max_frames read fewer frames
    assert track.shape == (1, 3, 3)
    for text, message in (("{", "not a readable JSON"), ('{"keypoints": [[[1, 2, 1]]]}', "each of the 2 frames"),
                          ('{"keypoints": [[[1, 2, 1]], [[1, 2]]]}', "same K"),
                          ('{"keypoints": [[[1, 2, 1]], [[1, 2, 1]]], "scale": [0]}', "positive size")):
        path.write_text(text)
        with pytest.raises(DataError, match=message) as error:
            read_keypoints(path, 2, 100, 60, 30)
        assert "seq.json" in str(error.value)


def test_the_generator_is_a_function_of_its_seed(tmp_path):
    first = write_synthetic_videos(tmp_path / "a", videos=2, frames=3, size=16, sprites="digits", seed=5)
    second = write_synthetic_videos(tmp_path / "b", videos=2, frames=3, size=16, sprites="digits", seed=5)
    other = write_synthetic_videos(tmp_path / "c", videos=2, frames=3, size=16, sprites="digits", seed=6)
    frame = "JPEGImages/480p/video0000/00002.jpg"
    assert (first / frame).read_bytes() == (second / frame).read_bytes() != (other / frame).read_bytes()


def test_the_palette_is_pascal_voc():
    palette = davis_palette()
    # VOC's colour map, index 1..5: (128,0,0) (0,128,0) (128,128,0) (0,0,128) (128,0,128)
    assert palette[3:18] == [128, 0, 0, 0, 128, 0, 128, 128, 0, 0, 0, 128, 128, 0, 128]


# ----------------------------------------------------------------------------- reading videos


def test_a_davis_root_reads_frames_masks_labels_and_its_split(videos):
    test = load_video_split(videos, "test", size=32)
    assert test.names == (videos / "ImageSets" / "2017" / "val.txt").read_text().split()
    assert test.images.shape == (24, 3, 32, 32) and test.images.dtype == torch.uint8
    assert test.video.tolist() == [0] * 8 + [1] * 8 + [2] * 8 and test.time.tolist() == list(range(8)) * 3
    frame = np.asarray(Image.open(videos / "JPEGImages" / "480p" / test.names[1] / "00003.jpg"))
    assert np.array_equal(test.images[8 + 3].permute(1, 2, 0).numpy(), frame)
    truth = np.asarray(Image.open(videos / "Annotations" / "480p" / test.names[1] / "00003.png"))
    assert np.array_equal(test.masks[8 + 3].numpy(), truth)
    labels = dict(row.split(",") for row in (videos / "labels.csv").read_text().splitlines()[1:])
    assert test.classes[int(test.labels[8])] == labels[test.names[1]]
    assert int(test.lengths[2]) == 8 and int(test.starts[2]) == 16


def _write_mp4(path, frames):
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"qscale": "1"}
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))


def test_video_files_and_frame_folders_are_read_and_bad_ones_named_and_skipped(tmp_path):
    pytest.importorskip("av")
    root = tmp_path / "clips"
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    # Smooth frames (a moving gradient) survive lossy coding nearly unchanged.
    ys, xs = np.mgrid[0:32, 0:32]
    frames = np.stack([np.stack([(xs * 8 + 10 * t) % 256, ys * 8, np.full_like(xs, 128)], -1).astype(np.uint8)
                       for t in range(6)])
    _write_mp4(root / "train" / "moving.mp4", frames)
    folder = root / "train" / "stills"
    folder.mkdir()
    for t in range(4):
        Image.fromarray(frames[t]).save(folder / f"{t:05d}.png")
    (root / "train" / "broken.mp4").write_bytes(b"not a video at all" * 10)
    _write_mp4(root / "test" / "held_out.mp4", frames[:3])
    train = load_video_split(root, "train", size=32)
    assert train.names == ["moving", "stills"] and train.lengths.tolist() == [6, 4]
    assert list(train.skipped) == [str(root / "train" / "broken.mp4")]
    decoded = train.images[:6].permute(0, 2, 3, 1).numpy().astype(int)
    assert np.abs(decoded - frames).mean() < 6  # mpeg4 at its best quantiser
    assert np.array_equal(train.images[6:].permute(0, 2, 3, 1).numpy(), frames[:4])  # PNG frames: exact
    assert train.masks is None and train.labels is None
    assert load_video_split(root, "test", size=16).images.shape == (3, 3, 16, 16)


def test_a_video_file_is_read_upright_by_its_display_matrix(tmp_path):
    # A phone's portrait video: the pixels stored turned, the track's display matrix (tkhd) turning them back.
    av = pytest.importorskip("av")
    if not hasattr(av.VideoFrame, "rotation"):
        pytest.skip("this PyAV does not read display matrices")
    import struct

    ys, xs = np.mgrid[0:48, 0:32]  # as displayed: 32 wide, 48 high; red grows to the right, green downwards
    shown = np.stack([xs * 7, ys * 5, np.full_like(xs, 128)], -1).astype(np.uint8)
    stored = np.ascontiguousarray(np.rot90(shown))  # turned a quarter counterclockwise: 48 wide, 32 high
    root = tmp_path / "clips"
    root.mkdir()
    _write_mp4(root / "portrait.mp4", np.stack([stored] * 3))
    data = bytearray((root / "portrait.mp4").read_bytes())
    matrix = data.find(b"tkhd") - 4 + 48  # a version-0 track header's 3x3 matrix (16.16 and 2.30 fixed point)
    data[matrix:matrix + 36] = struct.pack(">9i", 0, 65536, 0, -65536, 0, 0, 0, 0, 1 << 30)  # display: turn clockwise
    (root / "portrait.mp4").write_bytes(data)
    with av.open(str(root / "portrait.mp4")) as container:
        assert next(container.decode(video=0)).rotation == -90  # what ffmpeg reads from that matrix
    expected = shown[8:40].astype(int)  # the displayed frame's centred square
    for videos in (load_video_split(root, "train", size=32), streamed_video_split(root, "train", size=32, workers=0)):
        frame = videos.images[0].permute(1, 2, 0).numpy().astype(int)
        assert np.abs(frame - expected).mean() < 6, np.abs(frame - expected).mean()


def test_hidden_files_and_folders_are_never_frames_masks_or_videos(tmp_path):
    # A Mac copy's ._ files and a notebook's .ipynb_checkpoints/: as image folders skip them. Before, the ._ frame
    # made its whole video unreadable, the hidden folder became a video (moving which fifth is held out), and a ._
    # mask was a traceback.
    rng = np.random.default_rng(5)
    root = tmp_path / "plain"
    for k in range(6):
        (root / f"clip{k}").mkdir(parents=True)
        for t in range(3):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / f"clip{k}" / f"{t:05d}.png")
    clean = {split: load_video_split(root, split, size=8) for split in ("train", "test")}
    (root / "clip1" / "._00000.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (root / ".ipynb_checkpoints").mkdir()
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / ".ipynb_checkpoints" / "00000.png")
    for split in ("train", "test"):
        videos = load_video_split(root, split, size=8)
        assert videos.names == clean[split].names and not videos.skipped
        assert torch.equal(videos.images, clean[split].images)
    assert clean["test"].names == ["clip4"]
    davis = write_synthetic_videos(tmp_path / "davis", videos=4, frames=3, size=16, sprites="digits", seed=1)
    before = load_video_split(davis, "train", size=16)
    for sequence in before.names:
        (davis / "Annotations" / "480p" / sequence / "._00000.png").write_bytes(b"\x00\x05\x16\x07")
        (davis / "JPEGImages" / "480p" / sequence / "._00000.jpg").write_bytes(b"\x00\x05\x16\x07")
    after = load_video_split(davis, "train", size=16)
    assert after.names == before.names and torch.equal(after.masks, before.masks)


def test_frames_are_read_upright_by_their_exif_orientation_and_keypoints_follow(tmp_path):
    rng = np.random.default_rng(4)
    upright = rng.integers(0, 256, (2, 30, 20, 3), dtype=np.uint8)  # as displayed: 20 wide, 30 high
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": the files store the frames turned left
    frames = tmp_path / "JPEGImages" / "480p" / "seq"
    frames.mkdir(parents=True)
    for t in range(2):
        Image.fromarray(np.ascontiguousarray(np.rot90(upright[t]))).save(frames / f"{t:05d}.png", exif=exif)
    (tmp_path / "Keypoints" / "480p").mkdir(parents=True)
    (tmp_path / "Keypoints" / "480p" / "seq.json").write_text(json.dumps({"keypoints": [[[3, 12, 1]]] * 2}))
    # Masks: frame 0's drawn on the upright frame (30 x 20), frame 1's on the stored pixels (20 x 30).
    ids = rng.integers(0, 4, (2, 30, 20), dtype=np.uint8)
    (tmp_path / "Annotations" / "480p" / "seq").mkdir(parents=True)
    Image.fromarray(ids[0], "L").save(tmp_path / "Annotations" / "480p" / "seq" / "00000.png")
    Image.fromarray(np.ascontiguousarray(np.rot90(ids[1])), "L").save(tmp_path / "Annotations" / "480p" / "seq"
                                                                     / "00001.png")
    clips = load_video_split(tmp_path, "train", size=20)
    # The upright frames' centred 20 x 20 squares (rows 5..24), scale 1; the point moves up 5 rows.
    assert torch.equal(clips.images, torch.from_numpy(upright[:, 5:25]).permute(0, 3, 1, 2))
    assert torch.equal(clips.masks, torch.from_numpy(ids[:, 5:25]))  # both masks stay on their frames
    points, scale = clips.keypoints[0]
    assert points[0].tolist() == [[3.0, 7.0, 1.0]] and scale is None  # no scale in the file: CRW's person box
    # Streamed, the frames are the same upright squares.
    streamed = streamed_video_split(tmp_path, "train", size=20)
    assert np.array_equal(streamed.reader.clip(0, [0, 1]), upright[:, 5:25].transpose(0, 3, 1, 2))
    # A mask of neither size is refused, naming it.
    Image.fromarray(np.zeros((30, 30), np.uint8), "L").save(tmp_path / "Annotations" / "480p" / "seq" / "00001.png")
    with pytest.raises(DataError, match=r"00001.png: a mask must be its frame's size, 20 x 30 .* got 30 x 30"):
        load_video_split(tmp_path, "train", size=20)


def test_without_a_split_every_fifth_video_is_held_out(tmp_path):
    for v in range(10):
        (tmp_path / f"v{v}").mkdir()
        Image.fromarray(np.full((8, 8, 3), v, np.uint8)).save(tmp_path / f"v{v}" / "00000.png")
        Image.fromarray(np.full((8, 8, 3), v, np.uint8)).save(tmp_path / f"v{v}" / "00001.png")
    assert load_video_split(tmp_path, "test", size=8).names == ["v4", "v9"]
    assert len(load_video_split(tmp_path, "train", size=8).names) == 8


def test_without_a_split_the_views_of_a_held_out_scene_are_held_out_together(tmp_path):
    # 10 scenes seen by 2 cameras each (<scene>_view<k>), plus one plain video: every fifth scene in sorted
    # order is held out with both its views (scenes s04 and s09), so no held-out moment is trained on from
    # the other camera, and the test split keeps its pairs.
    names = [f"s{s:02d}_view{k}" for s in range(10) for k in (0, 1)] + ["zz_plain"]
    for name in names:
        (tmp_path / name).mkdir()
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / name / "00000.png")
    test = load_video_split(tmp_path, "test", size=8).names
    train = load_video_split(tmp_path, "train", size=8).names
    assert test == ["s04_view0", "s04_view1", "s09_view0", "s09_view1"]
    assert sorted(train + test) == sorted(names) and not set(train) & set(test)


def test_bad_labels_and_missing_folders_are_named(tmp_path, videos):
    with pytest.raises(DataError, match="does not exist"):
        load_video_split(tmp_path / "nowhere", "train")
    (tmp_path / "a").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a" / "0.png")
    (tmp_path / "labels.csv").write_text("name,class\na,x\n")
    with pytest.raises(DataError, match=r"labels.csv: the first row must be the header 'sequence,label'"):
        load_video_split(tmp_path, "train", size=8)
    (tmp_path / "labels.csv").write_text("sequence,label\nb,x\n")
    with pytest.raises(DataError, match="no label for video 'a'"):
        load_video_split(tmp_path, "train", size=8)


def test_captions_are_read_per_video_and_drawn_per_visit(tmp_path):
    for split, name in (("train", "a"), ("train", "b"), ("train", "c"), ("test", "d")):
        (tmp_path / split / name).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / split / name / "0.png")
    (tmp_path / "captions.csv").write_text('sequence,caption\na,one\nb,"two, with a comma"\na,three\nz,unused\n')
    train = load_video_split(tmp_path, "train", size=8)
    assert train.names == ["a", "b", "c"] and train.captions == [("one", "three"), ("two, with a comma",), ()]
    whole = VideoClips(train, batch_size=6, seed=1, clips_per_video=100)
    whole.clip_times = window_times(1)
    assert whole.captions == ["one", "three", "two, with a comma"]
    drawn = {v: set() for v in range(3)}
    for position in range(whole.steps_per_epoch()):
        batch = whole.batch(0, position, 0)
        for v, c in zip(batch.extra["video"].tolist(), batch.extra["caption_ids"].tolist()):
            drawn[v].add(c)
    assert drawn == {0: {0, 1}, 1: {2}, 2: {-1}}
    halves = [VideoClips(train, batch_size=6, world_size=2, seed=1, clips_per_video=100) for _ in range(2)]
    for half in halves:
        half.clip_times = window_times(1)
    assert torch.equal(torch.cat([halves[r].batch(2, 7, r).extra["caption_ids"] for r in range(2)]),
                       whole.batch(2, 7, 0).extra["caption_ids"])
    (tmp_path / "captions.csv").write_text("sequence,text\na,one\n")
    with pytest.raises(DataError, match=r"captions.csv: the first row must be the header 'sequence,caption'"):
        load_video_split(tmp_path, "train", size=8)
    (tmp_path / "captions.csv").write_text("sequence,caption\na,one\nb,\n")
    with pytest.raises(DataError, match=r"captions.csv, line 3: expected 'sequence,caption'"):
        load_video_split(tmp_path, "train", size=8)


def test_clips_are_a_function_of_epoch_and_position_and_split_over_ranks(videos):
    train = load_video_split(videos, "train", size=32)
    whole = VideoClips(train, batch_size=6, seed=3, clips_per_video=2)
    whole.clip_times = window_times(3, 2)
    halves = [VideoClips(train, batch_size=6, world_size=2, seed=3, clips_per_video=2) for _ in range(2)]
    for half in halves:
        half.clip_times = window_times(3, 2)
    assert len(whole) == 18 and whole.steps_per_epoch() == 3
    later = whole.batch(1, 2, 0)
    whole.batch(0, 0, 0)  # asking for other batches first changes nothing (exact resume)
    again = whole.batch(1, 2, 0)
    assert torch.equal(later.images, again.images) and torch.equal(later.extra["times"], again.extra["times"])
    slots = epoch_order(18, 3, 1)[12:18]
    assert torch.equal(later.index, slots) and torch.equal(later.extra["video"], slots % 9)
    times = later.extra["times"]
    assert torch.equal(times[:, 1:] - times[:, :-1], torch.full((6, 2), 2))  # stride 2
    for row, (v, t) in enumerate(zip(later.extra["video"].tolist(), times.tolist())):
        assert torch.equal(later.images[row], train.images[train.frames(v)][t])
    parts = [halves[r].batch(1, 2, r) for r in range(2)]
    assert torch.equal(torch.cat([p.images for p in parts]), later.images)
    assert torch.equal(torch.cat([p.labels for p in parts]), later.labels)


def test_window_times_stay_inside_short_videos():
    times = window_times(4, 3)(torch.tensor([20, 5]), torch.Generator().manual_seed(0))
    assert times[0].tolist()[1:] == [t + 3 for t in times[0].tolist()[:-1]] and times[0, -1] < 20
    assert times[1].tolist() == [0, 3, 4, 4]  # a 5-frame video cannot hold the span: its last frame repeats


def test_clip_views_jitter_the_brightness_of_one_channel_clips_as_of_rgb_ones():
    # Whole frames (area 1), no flip, brightness only, no clamping (values <= 0.6, factors <= 1.5): each
    # view is its clip times one factor per clip, the factor an RGB clip draws under the same seed.
    gray = 0.1 + 0.5 * torch.rand(3, 4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    options = {"scale": (1.0, 1.0), "flip_p": 0.0, "jitter": (0.5, 0.0, 0.0, 0.0), "jitter_p": 1.0}
    views = augment.clip_views(gray, **options, generator=torch.Generator().manual_seed(1))
    rgb = augment.clip_views(gray.expand(-1, -1, 3, -1, -1), **options, generator=torch.Generator().manual_seed(1))
    factors = (views / gray).flatten(1)
    torch.testing.assert_close(factors, factors[:, :1].expand_as(factors))
    torch.testing.assert_close(factors[:, 0], (rgb / gray).flatten(1)[:, 0])
    assert (factors[:, 0] - 1).abs().min() > 1e-3


# ----------------------------------------------------------------------------- losses


@pytest.mark.parametrize("across", [True, False])
def test_time_contrastive_triplet_equals_a_double_loop(across):
    torch.manual_seed(0)
    e = torch.nn.functional.normalize(torch.randn(10, 4, dtype=torch.float64), dim=1)
    times = torch.tensor([0, 1, 2, 3, 4, 5, 0, 1, 2, 3])
    seqs = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1, 1])
    pos_radius, neg_radius, margin = 1, 2, 0.2
    total, count = 0.0, 0
    for i in range(10):
        for j in range(10):
            if i == j or seqs[i] != seqs[j] or abs(times[i] - times[j]) > pos_radius:
                continue
            d_ap = float(((e[i] - e[j]) ** 2).sum())
            negatives = [float(((e[i] - e[k]) ** 2).sum()) for k in range(10)
                         if (across and seqs[k] != seqs[i])
                         or (seqs[k] == seqs[i] and abs(times[i] - times[k]) > neg_radius)]
            if not negatives:  # within one sequence, frames 1-2 of the 4-frame one have no negative: the official
                # masked_maximum of an empty mask is the row's smallest distance, the anchor's own 0
                d_an = min(float(((e[i] - e[k]) ** 2).sum()) for k in range(10))
            else:
                farther = [d for d in negatives if d > d_ap]
                d_an = min(farther) if farther else max(negatives)
            total += max(0.0, margin + d_ap - d_an)
            count += 1
    expected = total / count
    got = losses.time_contrastive_triplet(e, times, seqs, pos_radius=pos_radius, neg_radius=neg_radius, margin=margin,
                                          across_sequences=across)
    assert float(got) == pytest.approx(expected, rel=1e-9)
    if not across:  # the official default's batch is one sequence: the same as each sequence alone,
        # weighted by its positive pairs (10 in the first, 6 in the second)
        alone = [float(losses.time_contrastive_triplet(e[m], times[m], seqs[m], pos_radius=pos_radius,
                                                       neg_radius=neg_radius, margin=margin)) for m in (seqs == 0, seqs == 1)]
        assert count == 16 and float(got) == pytest.approx((10 * alone[0] + 6 * alone[1]) / 16, rel=1e-9)
    with pytest.raises(ValueError, match="pos_radius < neg_radius"):
        losses.time_contrastive_triplet(e, times, seqs, pos_radius=3, neg_radius=3)


def test_r3m_loss_equals_the_official_formula_written_out():
    torch.manual_seed(1)
    s0, s1, s2 = (torch.randn(5, 3, dtype=torch.float64) for _ in range(3))
    shuffles = torch.stack([torch.randperm(5) for _ in range(6)]).view(3, 2, 5)  # [k, 0] for s0, [k, 1] for s2
    assert not torch.equal(shuffles[:, 0], shuffles[:, 1])
    eps = 1e-8
    terms = []
    for n in range(5):
        def sim(a, b):
            return -math.sqrt(float(((a - b) ** 2).sum()))
        neg2 = sum(math.exp(sim(s2[n], s2[shuffles[k, 1, n]])) for k in range(3))
        neg0 = sum(math.exp(sim(s0[n], s0[shuffles[k, 0, n]])) for k in range(3))
        e12, e02, e01 = math.exp(sim(s2[n], s1[n])), math.exp(sim(s2[n], s0[n])), math.exp(sim(s1[n], s0[n]))
        l1 = -math.log(eps + e12 / (eps + e02 + e12 + neg2))
        l2 = -math.log(eps + e01 / (eps + e01 + e02 + neg0))
        terms.append((l1 + l2) / 2)
    assert float(losses.r3m_time_contrastive(s0, s1, s2, shuffles)) == pytest.approx(sum(terms) / 5, rel=1e-9)
    # (K, N): one permutation for both anchors.
    shared = torch.stack([shuffles[:, 0]] * 2, 1)
    assert float(losses.r3m_time_contrastive(s0, s1, s2, shuffles[:, 0])) == float(
        losses.r3m_time_contrastive(s0, s1, s2, shared))


def test_r3m_language_reward_equals_the_official_formula_written_out():
    """trainer.py: rewloss = -log(eps + e^p / (eps + e^p + sum_k e^n_k)), masked, then the mean over every row."""
    torch.manual_seed(2)
    positive, negatives = torch.randn(6, dtype=torch.float64) * 2, torch.randn(6, 4, dtype=torch.float64) * 2
    mask = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    eps = 1e-8
    rows = [-math.log(eps + math.exp(p) / (eps + math.exp(p) + sum(math.exp(n) for n in negs)))
            for p, negs in zip(positive.tolist(), negatives.tolist())]
    expected = sum(r * m for r, m in zip(rows, mask.tolist())) / 6
    assert float(losses.r3m_language_reward(positive, negatives, mask)) == pytest.approx(expected, rel=1e-7)
    assert float(losses.r3m_language_reward(positive, negatives)) == pytest.approx(sum(rows) / 6, rel=1e-7)
    big = losses.r3m_language_reward(torch.tensor([800.0], dtype=torch.float64), torch.tensor([[790.0]], dtype=torch.float64))  # e^800 overflows the official
    assert float(big) == pytest.approx(-math.log(1e-8 + 1 / (1 + math.exp(-10))), rel=1e-5)


def test_r3m_language_term_ranks_later_frames_under_the_caption_as_the_official(videos):
    """The three official terms G(e0, eg|es1|es2, l) against G(e0, e0|es0|es1, l) and other videos' (e0*, e*)
    under this caption, by hand with a known linear score and the method's own shuffles replayed."""
    train = load_video_split(videos, "train", size=32)
    source = VideoClips(train, batch_size=4, clips_per_video=1)
    method = R3M(build_backbone("convnet", in_channels=3, image_size=32, width=4), captions=source.captions,
                 language_weight=1.0, text_tower="transformer", reward_hidden=8, shuffles=2)
    source.clip_times = method.clip_times
    raw = source.batch(0, 0, 0)
    ids = raw.extra["caption_ids"].clone()
    ids[1] = -1  # a clip without a caption counts as zero
    batch = Batch([raw.images], raw.index, raw.labels, {**raw.extra, "caption_ids": ids})
    weight = torch.randn(2 * method.backbone.out_dim + 128, generator=torch.Generator().manual_seed(0))  # ConvNet width 4: 32-d
    method.reward = torch.nn.Linear(len(weight), 1, bias=False)
    with torch.no_grad():
        method.reward.weight.copy_(weight[None])
    embeddings = torch.randn(4, 5, 32)
    with torch.no_grad():
        language = method.text(method.caption_table[ids.clamp(min=0)])
    torch.manual_seed(5)
    got = method.language_loss(embeddings, batch)
    torch.manual_seed(5)

    def g(first, later, n):
        return float(torch.cat([first, later, language[n]]) @ weight)

    start, end, s0, s1, s2 = embeddings.unbind(1)
    total = 0.0
    for later, earlier in ((end, start), (s1, s0), (s2, s1)):
        others = [torch.randperm(4) for _ in range(2)]
        for n in range(4):
            scores = [g(start[n], later[n], n), g(start[n], earlier[n], n)]
            scores += [g(start[o[n]], later[o[n]], n) for o in others]
            ratio = math.exp(scores[0]) / sum(math.exp(x) for x in scores)
            total += float(ids[n] >= 0) * -math.log(1e-8 + ratio) / 4
    assert float(got.detach()) == pytest.approx(total / 3, rel=1e-4)
    with pytest.raises(ValueError, match="captions.csv"):
        R3M(build_backbone("convnet", in_channels=3, image_size=32, width=4), captions=[], language_weight=1.0)


def test_r3m_samples_frames_as_the_official_loader():
    """The official draws (1-based, numpy's exclusive upper bound): start = randint(1, 2 + int(0.2 L)),
    end = randint(int(0.8 L) - 1, L), s1 = randint(2, L), s0 = randint(1, s1), s2 = randint(s1, L + 1);
    ours are those minus one, each value of the official's range reached and none outside it."""
    method = R3M(build_backbone("convnet", in_channels=3, image_size=32, width=4))
    length = 12
    times = method.clip_times(torch.full((20000,), length), torch.Generator().manual_seed(0)) + 1  # 1-based
    start, end, s0, s1, s2 = times.T
    assert set(start.tolist()) == set(range(1, 2 + int(0.2 * length)))
    assert set(end.tolist()) == set(range(int(0.8 * length) - 1, length))
    assert set(s1.tolist()) == set(range(2, length))
    assert bool((s0 < s1).all() & (s0 >= 1).all() & (s2 >= s1).all() & (s2 <= length).all())
    assert {(int(a), int(b)) for a, b in zip(s0, s1)} == {(a, b) for b in range(2, length) for a in range(1, b)}


def test_r3m_training_step_is_the_official_weighted_sum_of_its_terms():
    """trainer.py with non-default weights: tcnweight * the time-contrastive term of (es0, es1, es2) = alle[:, 2:5]
    + l1weight * mean ||e||_1 + l2weight * mean ||e||_2 over all five frames' embeddings, by hand from the
    backbone's embeddings with the method's shuffles replayed: per negative, one permutation for the s0
    anchor then one for the s2 anchor (es0_shuf, es2_shuf), drawn independently as the official draws them,
    so that swapping s0 and s2 changes the loss."""
    from selfsup.methods.base import Progress

    torch.manual_seed(0)
    method = R3M(build_backbone("convnet", in_channels=3, image_size=16, width=4), crop_scale=None,
                 tcn_weight=0.7, l1_weight=0.05, l2_weight=0.3)
    clips = torch.randint(0, 256, (4, 5, 3, 16, 16), dtype=torch.uint8)
    torch.manual_seed(3)
    out = method.training_step(Batch([clips], torch.arange(4)), Progress(0, 10, 5))
    torch.manual_seed(3)
    shuffles = [(torch.randperm(4).tolist(), torch.randperm(4).tolist()) for _ in range(3)]  # (for s0, for s2)
    with torch.no_grad():
        e = method.backbone(clips.flatten(0, 1).float() / 255).double()  # (20, D): the five frames of each clip
    rows = [[float(v) for v in row] for row in e]
    l1 = sum(sum(abs(v) for v in row) for row in rows) / 20
    l2 = sum(math.sqrt(sum(v * v for v in row)) for row in rows) / 20

    def sim(a, b):
        return -math.sqrt(sum((x - y) ** 2 for x, y in zip(rows[a], rows[b])))

    eps, terms = 1e-8, []
    for n in range(4):
        s0, s1, s2 = 5 * n + 2, 5 * n + 3, 5 * n + 4
        neg2 = sum(math.exp(sim(s2, 5 * p2[n] + 4)) for _, p2 in shuffles)
        neg0 = sum(math.exp(sim(s0, 5 * p0[n] + 2)) for p0, _ in shuffles)
        e12, e02, e01 = math.exp(sim(s2, s1)), math.exp(sim(s2, s0)), math.exp(sim(s1, s0))
        l_2 = -math.log(eps + e12 / (eps + e02 + e12 + neg2))  # anchor s2: s1 nearer than s0
        l_0 = -math.log(eps + e01 / (eps + e01 + e02 + neg0))  # anchor s0: s1 nearer than s2
        terms.append((l_2 + l_0) / 2)
    tcn = sum(terms) / 4
    assert sum(sum(v * v for v in row) for row in rows) / 20 > l2 + 1  # the squared norms would not pass
    assert float(out["l1"]) == pytest.approx(l1, rel=1e-5)
    assert float(out["l2"]) == pytest.approx(l2, rel=1e-5)
    assert float(out["tcn"]) == pytest.approx(tcn, rel=1e-5)
    assert float(out["loss"].detach()) == pytest.approx(0.7 * tcn + 0.05 * l1 + 0.3 * l2, rel=1e-5)


# ----------------------------------------------------------------------------- DAVIS metrics


def test_boundary_map_is_davis_seg2bmap():
    seg = torch.zeros(5, 5, dtype=torch.bool)
    seg[1:3, 1:3] = True
    expected = torch.zeros(5, 5, dtype=torch.bool)
    expected[0:3, 0:3] = True
    expected[1, 1] = False  # davis2017-evaluation's seg2bmap: the ring shifted half a pixel to the origin
    assert torch.equal(video.boundary_map(seg), expected)


def _f_measure_reference(fg, gt, bound_th=0.008):
    """DAVIS's f_measure with scikit-image's disk and scipy's binary dilation: the tolerance is
    ``bound_th`` pixels when it is >= 1, else ceil(bound_th x the image diagonal)."""
    from scipy.ndimage import binary_dilation
    from skimage.morphology import disk

    radius = bound_th if bound_th >= 1 else math.ceil(bound_th * math.hypot(*fg.shape))
    fg_b, gt_b = video.boundary_map(torch.from_numpy(fg)).numpy(), video.boundary_map(torch.from_numpy(gt)).numpy()
    fg_d, gt_d = binary_dilation(fg_b, disk(radius)), binary_dilation(gt_b, disk(radius))
    n_fg, n_gt = fg_b.sum(), gt_b.sum()
    if n_fg == 0 and n_gt == 0:
        return 1.0
    if n_fg == 0 or n_gt == 0:
        return 0.0
    precision, recall = (fg_b & gt_d).sum() / n_fg, (gt_b & fg_d).sum() / n_gt
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def test_contour_accuracy_and_region_similarity_match_references():
    rng = np.random.default_rng(0)
    for _ in range(5):
        gt = np.zeros((120, 90), bool)
        fg = np.zeros((120, 90), bool)
        y, x = rng.integers(10, 60, 2)
        gt[y:y + 40, x:x + 25] = True
        dy, dx = rng.integers(-6, 7, 2)
        fg[y + dy:y + dy + 38, x + dx:x + dx + 27] = True
        got = float(video.contour_accuracy(torch.from_numpy(gt)[None], torch.from_numpy(fg)[None])[0])
        assert got == pytest.approx(_f_measure_reference(fg, gt), abs=1e-6)
        iou = (gt & fg).sum() / (gt | fg).sum()
        assert float(video.region_similarity(torch.from_numpy(gt), torch.from_numpy(fg))) == pytest.approx(iou)
    empty = torch.zeros(1, 8, 8, dtype=torch.bool)
    full = torch.ones(1, 8, 8, dtype=torch.bool)
    assert float(video.region_similarity(empty, empty)) == 1.0 and float(video.contour_accuracy(empty, empty)) == 1.0
    some = empty.clone()
    some[0, 2:5, 2:5] = True
    assert float(video.contour_accuracy(some, empty)) == 0.0 and float(video.contour_accuracy(empty, some)) == 0.0
    assert float(video.contour_accuracy(some, some)) == 1.0 and float(video.region_similarity(full, some)) == 9 / 64


def test_contour_accuracy_takes_a_bound_th_of_one_or_more_as_pixels():
    # Vertical stripes on 10x10: the truth's boundary (seg2bmap) is columns 1 and 5, the prediction's
    # (columns 3..7) columns 2 and 7. Within 1 px, column 1 <-> 2 match and 5 and 7 do not: P = R = 1/2,
    # F = 1/2; within 2 px all match. 0.008 x diagonal rounds up to 1 px here; bound_th=1 is 1 px, not
    # ceil(1 x diagonal) = 15 px.
    truth = torch.zeros(1, 10, 10, dtype=torch.bool)
    truth[0, :, 2:6] = True
    predicted = torch.zeros(1, 10, 10, dtype=torch.bool)
    predicted[0, :, 3:8] = True
    assert [float(video.contour_accuracy(truth, predicted, th)[0]) for th in (0.008, 1, 2)] == [0.5, 0.5, 1.0]
    rng = np.random.default_rng(1)
    for bound_th in (1, 2, 3):  # DAVIS's f_measure on shifted rectangles
        gt = np.zeros((40, 30), bool)
        fg = np.zeros((40, 30), bool)
        y, x = rng.integers(5, 15, 2)
        gt[y:y + 20, x:x + 10] = True
        dy, dx = rng.integers(-4, 5, 2)
        fg[y + dy:y + dy + 18, x + dx:x + dx + 12] = True
        got = float(video.contour_accuracy(torch.from_numpy(gt)[None], torch.from_numpy(fg)[None], bound_th)[0])
        assert got == pytest.approx(_f_measure_reference(fg, gt, bound_th), abs=1e-6)


def _two_stripes(left: int, right: int, n: int = 10) -> torch.Tensor:
    """An (n, n) id map: object 1 in columns [0, left), object 2 in columns [right, n)."""
    ids = torch.zeros(n, n, dtype=torch.long)
    ids[:, :left] = 1
    ids[:, right:] = 2
    return ids


def test_davis_scores_and_the_propagation_entry_average_over_objects_as_davis_does():
    # Object 1 (columns 0..2, boundary column 2) is always right. Object 2 is truly columns 6..9 (boundary
    # column 5); predicted as columns 8..9 (boundary column 7, 2 px away: outside the 1 px tolerance) it has
    # J = 20/40 and F = 0. DAVIS-2017 averages J and F over objects (all sequences' objects together).
    truth = torch.stack([_two_stripes(3, 6)] * 4)
    predicted = torch.stack([_two_stripes(0, 10), _two_stripes(3, 8), _two_stripes(3, 6), _two_stripes(0, 10)])
    assert video.davis_scores(truth, predicted) == {1: (1.0, 1.0), 2: (0.75, 0.5)}  # frames 1 and 2 only
    # The copy baseline: video "a" starts with object 2 at columns 8..9 and then shows it at 6..9 (its two
    # objects score (1, 1) and (0.5, 0)); video "b" is still, its one object scores (1, 1).
    masks = torch.cat([_two_stripes(3, 8)[None], truth[1:], torch.stack([_two_stripes(3, 10)] * 3)])
    rows = [torch.arange(4), torch.arange(4, 7)]
    videos = SimpleNamespace(names=["a", "b"], frames=lambda v: rows[v], masks=masks, keypoints=None,
                             images=torch.zeros(7, 3, 10, 10, dtype=torch.uint8))
    entry = video.propagation_entry(videos, None, data="x", baseline="copy")
    assert (entry["objects"], entry["videos"]) == (3, 2)
    assert entry["j"] == pytest.approx((1 + 0.5 + 1) / 3) and entry["f"] == pytest.approx((1 + 0 + 1) / 3)
    assert entry["j_and_f"] == pytest.approx(0.75)  # pooled over the 3 objects: (J 2.5 / 3 + F 2 / 3) / 2
    assert entry["per_video"] == {"a": {"j": 0.75, "f": 0.5}, "b": {"j": 1.0, "f": 1.0}}


def test_davis_scores_leave_out_the_first_and_last_frames():
    truth = torch.zeros(4, 6, 6, dtype=torch.long)
    truth[:, 1:4, 1:4] = 1
    predicted = truth.clone()
    predicted[0] = 0  # wrong only where DAVIS does not look
    predicted[3] = 0
    assert video.davis_scores(truth, predicted) == {1: (1.0, 1.0)}
    predicted[1] = 0
    assert video.davis_scores(truth, predicted) == {1: (0.5, 0.5)}


# ----------------------------------------------------------------------------- propagation


def test_propagation_with_ideal_features_recovers_the_masks_and_copies_a_still_video():
    masks = torch.zeros(5, 16, 16, dtype=torch.long)
    for t in range(5):  # an object moving one grid cell (4 pixels) per frame
        masks[t, 4:8, 2 + 2 * t:6 + 2 * t] = 1
    onehot = torch.nn.functional.one_hot(masks, 2).permute(0, 3, 1, 2).float()
    features = torch.nn.functional.avg_pool2d(onehot, 2) + 0.01  # (T, 2, 8, 8): which object is there
    predicted = video.propagate_masks(features, masks[0], topk=5, temperature=0.01)
    j = video.region_similarity(masks == 1, predicted == 1)
    assert bool((j > 0.7).all()), j
    still = video.propagate_masks(torch.randn(1, 6, 8, 8).expand(4, -1, -1, -1), masks[0], topk=1, radius=1)
    assert torch.equal(still, masks[0].expand(4, -1, -1))


def test_propagation_looks_for_context_matches_within_the_radius_and_weighs_the_topk_by_softmax_over_temperature():
    """A 1x3 grid, radius 2: cell 0 sees cells 0 and 1 of the context frames (frame 0 is searched whole).
    Frame 1 is frame 0 with a shared component e4 (each cell's best match is itself, so it carries frame 0's
    labels); frame 2's cell 0 is frame 1's cell 2 (cosine 1, outside the radius), 4/5 to its cell 1 and 2/sqrt(10)
    to its cell 0 (inside), 1/sqrt(5) at most to frame 0."""
    e = torch.eye(4)
    frame0 = e[:3]  # cells 0, 1, 2: e1, e2, e3
    frame1 = torch.stack([e[0] + e[3], e[1] + 2 * e[3], e[2] + 2 * e[3]])
    frame2 = torch.stack([e[2] + 2 * e[3], e[1] + 2 * e[3], e[2] + 2 * e[3]])
    features = torch.stack([frame0, frame1, frame2]).permute(0, 2, 1)[:, :, None]  # (3, 4, 1, 3)
    first = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])[:, None]  # (K=2, 1, 3): cell 1 is object 1
    nearest = video.propagate_labels(features, first, topk=1, radius=2, temperature=0.1)
    assert torch.equal(nearest[1], first)
    assert nearest[2, :, 0, 0].tolist() == [0.0, 1.0]  # frame 1's cell 1, not the perfect match beyond the radius
    soft = video.propagate_labels(features, first, topk=2, radius=2, temperature=0.1)
    assert torch.equal(soft[1], first)
    weights = torch.tensor([4 / 5, 2 / math.sqrt(10)], dtype=torch.float64).div(0.1).softmax(0)  # cell 1, cell 0
    assert soft[2, :, 0, 0].tolist() == pytest.approx([float(weights[1]), float(weights[0])], abs=1e-6)


def _kendall_tau_b(x, y):
    """Kendall's tau-b by its definition: (concordant - discordant) / sqrt((n0 - ties_x) (n0 - ties_y))."""
    n = len(x)
    concordant = discordant = ties_x = ties_y = 0
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = x[i] - x[j], y[i] - y[j]
            ties_x += dx == 0
            ties_y += dy == 0
            if dx * dy > 0:
                concordant += 1
            elif dx * dy < 0:
                discordant += 1
    pairs = n * (n - 1) / 2
    return (concordant - discordant) / math.sqrt((pairs - ties_x) * (pairs - ties_y))


def test_temporal_order_tau_is_kendalls_tau_b_of_gaps_and_distances_averaged_over_videos():
    torch.manual_seed(0)
    features = torch.randn(14, 5, dtype=torch.float64)
    vid = torch.tensor([0] * 6 + [1] * 8)
    time = torch.cat([torch.arange(6), torch.arange(8)])
    expected = []
    for v in (0, 1):
        rows = (vid == v).nonzero().squeeze(1).tolist()
        x = torch.nn.functional.normalize(features[rows], dim=1)
        pairs = [(a, b) for a in range(len(rows)) for b in range(a + 1, len(rows))]
        gaps = [abs(int(time[rows[a]]) - int(time[rows[b]])) for a, b in pairs]
        distances = [1 - float(x[a] @ x[b]) for a, b in pairs]
        expected.append(_kendall_tau_b(gaps, distances))
    assert video.temporal_order_tau(features, vid, time) == pytest.approx(sum(expected) / 2, abs=1e-9)


def test_temporal_measures_reward_features_that_follow_time():
    time = torch.arange(10).repeat(2)
    vid = torch.arange(2).repeat_interleave(10)
    angle = 0.1 * time.float() + 2.0 * vid  # each video on its own arc: distance grows with the gap
    features = torch.stack([angle.cos(), angle.sin()], 1).double()
    assert video.temporal_order_tau(features, vid, time) > 0.95
    assert video.same_video_retrieval(features, vid, time) == (1.0, 1.0)
    shuffled = features[torch.randperm(20, generator=torch.Generator().manual_seed(0))]
    assert video.temporal_order_tau(shuffled, vid, time) < 0.5


def test_same_video_retrieval_averages_the_time_gap_over_the_frames_whose_neighbour_is_of_their_video():
    # Angles 0, 0.2, 0.5 (frame 2 three times as long: cosine): frames 0 and 1 are each other's nearest (same video,
    # gap 2); frame 2, alone in its video, finds frame 1 (gap 5), which counts against the share but not in the gap.
    angle = torch.tensor([0.0, 0.2, 0.5])
    features = torch.stack([angle.cos(), angle.sin()], 1) * torch.tensor([[1.0], [1.0], [3.0]])
    share, gap = video.same_video_retrieval(features, torch.tensor([0, 0, 1]), torch.tensor([0, 2, 7]))
    assert share == pytest.approx(2 / 3)
    assert gap == 2.0


def test_cross_view_alignment_matches_each_frame_to_the_other_views_nearest_and_scores_the_matched_order():
    # Scene 0 has two views of 4 frames: view 0's frame t is unit vector t; view 1's frame t is unit vector
    # m(t), m = (0, 2, 1, 3), so each view's frame t finds the other's frame m(t) (m is its own inverse).
    # Video 2 is a scene of its own (no other view): it adds no pair.
    m = [0, 2, 1, 3]
    eye = torch.eye(4, dtype=torch.float64)
    features = torch.cat([eye, eye[m], torch.randn(3, 4, dtype=torch.float64)])
    vid = torch.tensor([0] * 4 + [1] * 4 + [2] * 3)
    time = torch.cat([torch.arange(4), torch.arange(4), torch.arange(3)])
    scenes = torch.tensor([0, 0, 1])
    # Matched times (0, 2, 1, 3) against (0, 1, 2, 3): 5 concordant pairs, 1 discordant -> tau (5 - 1) / 6;
    # |t - m(t)| = (0, 1, 1, 0): mean 0.5 over a 4-frame view -> 0.125. Both ordered pairs alike.
    tau, error, pairs = video.cross_view_alignment(features, vid, time, scenes)
    assert (tau, error, pairs) == (pytest.approx(_kendall_tau_b([0, 1, 2, 3], m)), pytest.approx(0.125), 2)
    assert _kendall_tau_b([0, 1, 2, 3], m) == pytest.approx(4 / 6)
    entry = video.temporal_entry(features, vid, time, data="toy", scenes=scenes)
    assert entry["alignment_tau"] == pytest.approx(4 / 6) and entry["view_pairs"] == 2
    assert "XIRL" in entry["protocol"]
    solo = video.temporal_entry(features, vid, time, data="toy", scenes=torch.tensor([0, 1, 2]))
    assert "alignment_tau" not in solo and "XIRL" not in solo["protocol"]
    assert video.cross_view_alignment(features, vid, time, torch.tensor([0, 1, 2]))[2] == 0


def test_demonstrations_of_a_task_are_aligned_with_one_another_by_hand():
    # Videos 0 and 1 demonstrate task 0: video 1 shows video 0's frames in reverse, so each frame t of one
    # matches frame 7 - t of the other: tau -1, |t - (7 - t)| = 7, 5, 3, 1, 1, 3, 5, 7 -> mean 4 over 8 frames.
    # Video 2 is another task's only demonstration: no pair. Scenes: every video its own.
    eye = torch.eye(8, dtype=torch.float64)
    features = torch.cat([eye, eye.flip(0), torch.randn(5, 8, dtype=torch.float64)])
    vid = torch.tensor([0] * 8 + [1] * 8 + [2] * 5)
    time = torch.cat([torch.arange(8), torch.arange(8), torch.arange(5)])
    entry = video.temporal_entry(features, vid, time, data="toy", scenes=torch.tensor([0, 1, 2]),
                                 tasks=torch.tensor([0, 0, 1]))
    assert entry["task_alignment_tau"] == pytest.approx(-1.0) and entry["task_alignment_error"] == pytest.approx(0.5)
    assert entry["task_pairs"] == 2 and "alignment_tau" not in entry and "tasks.csv" in entry["protocol"]
    assert "task_alignment_tau" not in video.temporal_entry(features, vid, time, data="toy")


def test_demonstrations_of_different_lengths_align_by_phase():
    # Video 1 shows the task of video 0 (8 frames) at half the pace (16 frames): its frames 2t and 2t + 1 are video
    # 0's frame t. Perfectly aligned by progress: video 0's frame t (phase t/8) matches frame 2t of video 1 (phase
    # 2t/16, the same); each of video 1's frames 2t, 2t + 1 (phases 2t/16, (2t + 1)/16) matches video 0's frame t
    # (t/8): errors 0 and 1/16, mean 1/32 over that direction. Both directions: (0 + 1/32) / 2 = 1/64. By frame
    # numbers the first direction alone would read mean |t - 2t| / 8 = 3.5 / 8 (the review's 0.375-and-up errors).
    eye = torch.eye(8, dtype=torch.float64)
    features = torch.cat([eye, eye.repeat_interleave(2, dim=0)])
    vid = torch.tensor([0] * 8 + [1] * 16)
    time = torch.cat([torch.arange(8), torch.arange(16)])
    # ties: video 0's frame t has cosine 1 with both 2t and 2t + 1 of video 1; argmax takes the first, 2t
    entry = video.temporal_entry(features, vid, time, data="toy", tasks=torch.tensor([0, 0]))
    assert entry["task_alignment_error"] == pytest.approx(1 / 64)
    assert entry["task_alignment_tau"] > 0.9
    # Synchronised views keep TCN's frame-number error (views of one scene have one length).
    _, by_frames, _ = video.cross_view_alignment(features, vid, time, torch.tensor([0, 0]))
    first = (torch.arange(8) - 2 * torch.arange(8)).abs().double().mean() / 8
    second = (torch.arange(16) - torch.arange(16) // 2).abs().double().mean() / 16
    assert by_frames == pytest.approx(float(first + second) / 2)


def test_task_videos_carry_the_first_sprite_left_to_right_each_at_its_own_pace(tmp_path):
    root = write_synthetic_videos(tmp_path / "task", videos=6, frames=8, size=32, sprites="digits", task=True, seed=0)
    rows = (root / "tasks.csv").read_text().splitlines()
    names = sorted(p.name for p in (root / "JPEGImages" / "480p").iterdir())
    assert rows[0] == "sequence,task" and sorted(r.split(",")[0] for r in rows[1:]) == names
    assert {r.split(",")[1] for r in rows[1:]} == {"carry to the right"}
    middles = []
    for name in names:
        points = json.loads((root / "Keypoints" / "480p" / f"{name}.json").read_text())
        centre = np.array(points["keypoints"])[:, 0, :2]  # the first sprite's centre, (x, y) per frame
        side = points["scale"][0]
        assert centre[0, 0] == pytest.approx(side / 2, abs=1e-3) and centre[-1, 0] == pytest.approx(32 - side / 2, abs=1e-3)
        assert bool((np.diff(centre[:, 0]) > 0).all()) and np.ptp(centre[:, 1]) < 1e-3
        middles.append((centre[4, 0] - side / 2) / (32 - side))  # the fraction of the way at frame 4
    assert np.ptp(middles) > 0.1  # paces differ
    # one scene: the same still background in every demonstration (raw frames, before JPEG)
    from selfsup.data.synthetic_video import _backgrounds, _sprites, render_video

    sprites, backgrounds = _sprites("digits")[0], _backgrounds()
    (a, mask_a, *_), (b, mask_b, *_) = (render_video(np.random.default_rng(k), sprites, backgrounds, frames=4,
                                                     size=32, objects=2, task=True) for k in (1, 2))
    free = (mask_a == 0) & (mask_b == 0) & (mask_a[:1] == 0) & (mask_b[:1] == 0)  # background in all of them
    assert free.sum() > 1000 and np.array_equal(a[free], b[free]) and np.array_equal(a[free], np.broadcast_to(a[:1], a.shape)[free])
    test = load_video_split(root, "test", size=32)
    assert test.tasks is not None and test.tasks.tolist() == [0] * len(test.names)
    (root / "tasks.csv").write_text("sequence,task\n" + "".join(f"{n},carry\n" for n in names[:-1]))
    with pytest.raises(DataError, match=f"tasks.csv has no task for video '{names[-1]}'"):
        load_video_split(root, "test", size=32)
    assert load_video_split(tmp_path / "task", "train", size=32).tasks is not None  # the others still read


# ----------------------------------------------------------------------------- methods


def _clip_batch(videos, method, count=4):
    from selfsup.methods.base import Batch, Progress

    train = load_video_split(videos, "train", size=32)
    source = VideoClips(train, batch_size=count, clips_per_video=2)
    source.clip_times = method.clip_times
    raw = source.batch(0, 0, 0)
    return Batch([raw.images], raw.index, raw.labels, raw.extra), Progress(0, 10, 5)


@pytest.mark.parametrize("make", [
    lambda b: TCN(b, frames=4, pos_radius=1, neg_radius=2),
    lambda b: R3M(b),
    lambda b: VideoColorization(b, references=2, dim=8),
], ids=["tcn", "r3m", "video_colorization"])
def test_each_video_method_takes_a_step_that_lowers_its_loss(videos, make):
    torch.manual_seed(0)
    method = make(build_backbone("convnet", in_channels=3, image_size=32, width=8))
    batch, progress = _clip_batch(videos, method)
    optimiser = torch.optim.Adam(method.parameters(), lr=1e-3)
    before = None
    for _ in range(8):  # the same batch: its loss must fall
        torch.manual_seed(1)  # the same augmentation every time
        loss = method.training_step(batch, progress)["loss"]
        before = float(loss.detach()) if before is None else before
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    torch.manual_seed(1)
    assert float(method.training_step(batch, progress)["loss"].detach()) < before


@pytest.mark.parametrize("make", [lambda b: TCN(b, frames=4, pos_radius=1, neg_radius=2), lambda b: R3M(b)],
                         ids=["tcn", "r3m"])
def test_tcn_and_r3m_never_flip_their_clips(videos, make, monkeypatch):
    # R3M's rctraj (r3m/utils/data_loaders.py) is a RandomResizedCrop alone; TCN's official
    # preprocess_training_image has no flip either.
    seen = []
    original = augment.clip_views
    monkeypatch.setattr(augment, "clip_views", lambda *a, **k: (seen.append(k), original(*a, **k))[1])
    method = make(build_backbone("convnet", in_channels=3, image_size=32, width=4))
    method.training_step(*_clip_batch(videos, method))
    assert len(seen) == 1 and seen[0]["flip_p"] == 0.0


@pytest.fixture(scope="module")
def two_camera_videos(tmp_path_factory):
    """6 scenes seen by 2 synchronised cameras, 6 frames at 32x32, 2 scenes (4 sequences) held out."""
    return write_synthetic_videos(tmp_path_factory.mktemp("views") / "synthetic", videos=6, frames=6, size=32,
                                  sprites="digits", views=2, val_fraction=0.3, seed=1)


def test_the_second_camera_sees_the_same_scene_zoomed_and_rolled(two_camera_videos, videos):
    """Each scene's first view is the single-camera video of the same seed, and the second view's
    keypoints are a similarity transform of the first's: every distance between two of a frame's
    points grows by one zoom (1.15-1.4), which is also the ratio of the points' recorded scales."""
    single = write_synthetic_videos(two_camera_videos.parent / "single", videos=6, frames=6, size=32,
                                    sprites="digits", val_fraction=0.3, seed=1)
    first = np.asarray(Image.open(two_camera_videos / "JPEGImages" / "480p" / "video0002_view0" / "00003.jpg"))
    assert np.array_equal(first, np.asarray(Image.open(single / "JPEGImages" / "480p" / "video0002" / "00003.jpg")))
    names = (two_camera_videos / "ImageSets" / "2017" / "val.txt").read_text().split()
    assert names == ["video0004_view0", "video0004_view1", "video0005_view0", "video0005_view1"]
    for scene in ("video0000", "video0003"):
        a, b = (json.loads((two_camera_videos / "Keypoints" / "480p" / f"{scene}_view{k}.json").read_text())
                for k in (0, 1))
        pa, pb = np.array(a["keypoints"])[..., :2], np.array(b["keypoints"])[..., :2]
        da = np.linalg.norm(pa[:, :, None] - pa[:, None, :], axis=3)
        db = np.linalg.norm(pb[:, :, None] - pb[:, None, :], axis=3)
        zoom = np.array(b["scale"]) / np.array(a["scale"])
        assert 1.15 <= zoom[0] <= 1.4 and np.allclose(zoom, zoom[0], rtol=1e-4)  # scales kept to 3 decimals
        np.testing.assert_allclose(db[da > 1], zoom[0] * da[da > 1], rtol=1e-3, atol=0.01)
        for t in range(6):  # visible where the warped mask shows the point's own sprite
            mask = np.asarray(Image.open(two_camera_videos / "Annotations" / "480p" / f"{scene}_view1" / f"{t:05d}.png"))
            for i, (x, y, visible) in enumerate(np.array(b["keypoints"])[t]):
                inside = 0 <= x < 32 and 0 <= y < 32
                assert bool(visible) == (inside and mask[int(y), int(x)] == i // 5 + 1)


def test_views_of_a_scene_are_paired_at_the_same_times(two_camera_videos):
    train = load_video_split(two_camera_videos, "train", size=32)
    assert train.scenes.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    source = VideoClips(train, batch_size=4, seed=0, clips_per_video=2)
    source.clip_times, source.clip_views = window_times(3), 2
    batch = source.batch(0, 1, 0)
    videos, partners, times = batch.extra["video"], batch.extra["partner"], batch.extra["times"]
    assert batch.images.shape == (4, 6, 3, 32, 32) and torch.equal(times[:, :3], times[:, 3:])
    assert torch.equal(train.scenes[videos], train.scenes[partners]) and bool((videos != partners).all())
    assert torch.equal(batch.extra["scene"], train.scenes[videos])
    for row in range(4):
        rows = train.frames(int(partners[row]))
        assert torch.equal(batch.images[row, 3:], train.images[rows][times[row, :3]])
    halves = [VideoClips(train, batch_size=4, world_size=2, seed=0, clips_per_video=2) for _ in range(2)]
    for half in halves:
        half.clip_times, half.clip_views = window_times(3), 2
    assert torch.equal(torch.cat([halves[r].batch(0, 1, r).images for r in range(2)]), batch.images)
    alone = VideoClips(load_video_split(two_camera_videos, "train", size=32), batch_size=2, clips_per_video=1)
    alone.scenes = torch.arange(8)  # no other view: each clip is paired with itself
    alone.clip_times, alone.clip_views = window_times(2), 2
    lonely = alone.batch(0, 0, 0)
    assert torch.equal(lonely.extra["partner"], lonely.extra["video"])


def test_multi_view_time_contrastive_is_the_official_semi_hard_triplet_over_timestep_labels():
    """By a double loop: labels (scene, time); positives share the label, every other label is negative."""
    torch.manual_seed(0)
    e = torch.nn.functional.normalize(torch.randn(12, 5), dim=1)
    times = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2])
    scenes = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1])  # two scenes x two views x three times
    d = torch.cdist(e, e).square()
    terms = []
    for i in range(12):
        for j in range(12):
            if i == j or scenes[i] != scenes[j] or times[i] != times[j]:
                continue
            negatives = [d[i, k] for k in range(12) if scenes[k] != scenes[i] or times[k] != times[i]]
            farther = [n for n in negatives if n > d[i, j]]
            chosen = min(farther) if farther else max(negatives)
            terms.append(max(0.0, 0.2 + float(d[i, j]) - float(chosen)))
    expected = sum(terms) / len(terms)
    assert losses.multi_view_time_contrastive(e, times, scenes).item() == pytest.approx(expected, rel=1e-5)
    # neg_radius 1 spares the neighbouring times of the same scene
    near = losses.multi_view_time_contrastive(e, times, scenes, neg_radius=1)
    terms = []
    for i in range(12):
        for j in range(12):
            if i == j or scenes[i] != scenes[j] or times[i] != times[j]:
                continue
            negatives = [d[i, k] for k in range(12) if scenes[k] != scenes[i] or abs(times[k] - times[i]) > 1]
            farther = [n for n in negatives if n > d[i, j]]
            terms.append(max(0.0, 0.2 + float(d[i, j]) - float(min(farther) if farther else max(negatives))))
    assert near.item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)


def test_a_video_paired_with_itself_gives_no_positive_only_negatives():
    # Scene 0 seen by two views (videos 0 and 1), scene 1 by one video (2) paired with itself: its two
    # halves are the same frames, which the official batch (each moment of each view once) never holds.
    torch.manual_seed(0)
    e = torch.nn.functional.normalize(torch.randn(12, 5), dim=1)
    times = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2])
    scenes = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    views = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 2])
    d = torch.cdist(e, e).square()
    terms = []
    for i in range(12):
        for j in range(12):
            if views[i] == views[j] or scenes[i] != scenes[j] or times[i] != times[j]:
                continue
            negatives = [d[i, k] for k in range(12) if scenes[k] != scenes[i] or times[k] != times[i]]
            farther = [n for n in negatives if n > d[i, j]]
            terms.append(max(0.0, 0.2 + float(d[i, j]) - float(min(farther) if farther else max(negatives))))
    assert len(terms) == 6  # scene 0's three moments, both ways; none of scene 1
    got = losses.multi_view_time_contrastive(e, times, scenes, views=views)
    assert got.item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)
    assert losses.multi_view_time_contrastive(e, times, scenes).item() != pytest.approx(got.item(), rel=1e-3)


def _flat_backbone():
    torch.manual_seed(0)
    return Backbone(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 6)), 6, 3, [0.0] * 3, [1.0] * 3)


def _npairs_tcn_step(times, *, scene, video, partner):
    """Multi-view TCN's n-pairs loss on random 8-pixel clips at ``times`` ``(b, 2k)`` (each clip's first k
    frames its video's, the rest its partner's), and the clips' raw embeddings ``(b, 2k, 4)``."""
    from selfsup.methods.base import Batch, Progress

    frames = times.shape[1] // 2
    method = TCN(_flat_backbone(), dim=4, frames=frames, multi_view=True, loss="npairs", crop_scale=None).train()
    clips = torch.randint(0, 256, (len(times), 2 * frames, 3, 8, 8), dtype=torch.uint8)
    extra = {"times": times, "scene": torch.tensor(scene), "video": torch.tensor(video),
             "partner": torch.tensor(partner)}
    out = method.training_step(Batch([clips], torch.arange(len(times)), None, extra), Progress(0, 10, 5))
    with torch.no_grad():
        e = method.embedder(method.backbone(clips.flatten(0, 1).float() / 255)).double()
    return out["loss"].item(), e.view(len(times), 2 * frames, 4)


def test_multi_view_tcn_npairs_spreads_a_shared_moment_over_its_positives_as_tf_npairs_loss():
    # Scene 0's clip drawn twice (video 0 with partner 1, video 1 with partner 0) at the same times: each
    # moment has two positives, TF npairs_loss's target 1/2 on each; scene 1's lone video (partner itself)
    # gives no pair.
    times = torch.tensor([[3, 4, 3, 4], [3, 4, 3, 4], [0, 1, 0, 1]])
    loss, e = _npairs_tcn_step(times, scene=[0, 0, 1], video=[0, 1, 2], partner=[1, 0, 2])
    a, p = e[:2, :2].reshape(4, 4), e[:2, 2:].reshape(4, 4)
    moment = [3, 4, 3, 4]
    expected = 0.0
    for i in range(4):
        logits = [float(a[i] @ p[j]) for j in range(4)]
        lse = math.log(sum(math.exp(v) for v in logits))
        same = [j for j in range(4) if moment[j] == moment[i]]
        expected += sum(lse - logits[j] for j in same) / len(same)
    expected = expected / 4 + 0.25 * 0.002 * (float((a ** 2).sum(1).mean()) + float((p ** 2).sum(1).mean()))
    assert loss == pytest.approx(expected, rel=1e-5)


def test_multi_view_tcn_npairs_is_the_official_npairs_loss_between_the_two_views():
    # Two scenes' clips of 3 frames in each of 2 views (times 4, 5, 6 and 0, 1, 2): 6 anchors (view 0),
    # each with the same moment of view 1 as its positive and the 5 other positives as negatives,
    # on raw embeddings, plus TF npairs_loss's 0.25 * 0.002 * (mean |a|^2 + mean |p|^2).
    times = torch.tensor([[4, 5, 6, 4, 5, 6], [0, 1, 2, 0, 1, 2]])
    loss, e = _npairs_tcn_step(times, scene=[0, 1], video=[0, 2], partner=[1, 3])
    a, p = e[:, :3].reshape(6, 4), e[:, 3:].reshape(6, 4)
    expected = 0.0
    for i in range(6):
        logits = [float(a[i] @ p[j]) for j in range(6)]
        expected += math.log(sum(math.exp(v) for v in logits)) - logits[i]
    expected = expected / 6 + 0.25 * 0.002 * (float((a ** 2).sum(1).mean()) + float((p ** 2).sum(1).mean()))
    assert loss == pytest.approx(expected, rel=1e-5)
    backbone = _flat_backbone()
    with pytest.raises(ValueError, match="multi_view=True"):
        TCN(backbone, loss="npairs")
    with pytest.raises(ValueError, match="'triplet' or 'npairs'"):
        TCN(backbone, multi_view=True, loss="lifted")
    # Within one video, a clip of 8 frames cannot reach beyond neg_radius 12: no frame would have a negative.
    with pytest.raises(ValueError, match="spans 7 frames, not more than neg_radius=12"):
        TCN(backbone, frames=8, pos_radius=6, neg_radius=12)
    assert TCN(backbone, frames=8, pos_radius=6, neg_radius=12, across_videos=True).across_videos
    assert TCN(backbone).across_videos is False  # the defaults (36 frames, radii 6 and 12) are consistent


def test_single_view_tcn_takes_negatives_from_its_own_video_as_the_official_estimator(videos):
    from selfsup.methods.base import Batch

    backbone = build_backbone("convnet", in_channels=3, image_size=32, width=8)
    method = TCN(backbone, dim=4, frames=4, pos_radius=1, neg_radius=2, crop_scale=None).eval()
    batch, progress = _clip_batch(videos, method)
    assert method.across_videos is False and TCN(backbone, multi_view=True).across_videos is True
    # Two copies of one batch under different video ids: with negatives from their own video only,
    # the loss is the one batch's (each copy alone); with other videos' frames as negatives it is not.
    twice = Batch([torch.cat([batch.views[0], batch.views[0]])], torch.cat([batch.index, batch.index]),
                  None, {"video": torch.cat([batch.extra["video"], batch.extra["video"] + 1000]),
                         "times": torch.cat([batch.extra["times"], batch.extra["times"]])})
    with torch.no_grad():
        one, two = (float(method.training_step(b, progress)["loss"]) for b in (batch, twice))
        method.across_videos = True
        across = float(method.training_step(twice, progress)["loss"])
    assert two == pytest.approx(one, rel=1e-5) and across != pytest.approx(one, rel=1e-3)
    with pytest.raises(ValueError, match="single-view only"):
        TCN(backbone, multi_view=True, across_videos=False)


def test_multi_view_tcn_trains_on_paired_views_through_the_engine(two_camera_videos, tmp_path):
    from selfsup.config import load_config
    from selfsup.engine import Trainer

    trainer = Trainer(load_config("recipes/tcn_synthetic_videos.yaml", [
        f"data.root={two_camera_videos}", "data.size=32", "data.clips_per_video=2", "train.batch_size=4",
        "train.epochs=1", "backbone.width=8", "method_args.multi_view=true", "method_args.frames=3",
        "train.progress=false", "eval.plots=false", f"train.out_dir={tmp_path}"]))
    assert trainer.source.clip_views == 2
    batch = trainer.make_batch(0, 0)
    assert batch.views[0].shape[:2] == (4, 6) and "scene" in batch.extra
    trainer.fit()
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["step"] == 4 and all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    # The held-out scenes' two views are aligned frame by frame, beside the random network's alignment.
    from selfsup import cli

    assert cli.main(["evaluate", "temporal", str(tmp_path / "checkpoints" / "last.ckpt")]) == 0
    entry = json.loads((tmp_path / "evaluations" / "temporal.json").read_text())
    assert entry["view_pairs"] == 4  # 2 held-out scenes x 2 ordered pairs of views
    assert {"alignment_tau", "alignment_error"} <= entry.keys() & entry["random_init"].keys()


class _PositionCode(torch.nn.Module):
    """Features that say only where a grid cell is: one orthogonal unit vector per cell of an 8x8 grid."""

    def forward(self, images):
        return torch.eye(64).view(1, 64, 8, 8).expand(len(images), -1, -1, -1)


def test_video_colorization_copies_the_colour_of_the_pixels_it_attends_to(videos, monkeypatch):
    """With features that match each target pixel to the same place in the references only, and a
    still clip, each predicted colour is the pixel's own: colour accuracy 1, loss near 0."""
    method = VideoColorization(build_backbone("convnet", in_channels=3, image_size=32, width=8), references=2,
                               dim=8, temperature=0.01)
    monkeypatch.setattr(method, "dense_encoder", lambda: _PositionCode())
    batch, progress = _clip_batch(videos, method, count=2)
    batch.views[0] = batch.views[0][:, :1].expand(-1, 3, -1, -1, -1).contiguous()
    with torch.no_grad():
        out = method.training_step(batch, progress)
    assert float(out["colour_accuracy"]) == 1.0 and float(out["loss"]) < 1e-6
    assert bool(method.fitted) and method.centres.shape == (16, 2)
    batch.views[0] = torch.flip(batch.views[0], dims=[1, -1])  # target mirrored: its own place holds other colours
    batch.views[0][:, -1] = torch.flip(batch.views[0][:, -1], dims=[-1])
    with torch.no_grad():
        assert float(method.training_step(batch, progress)["colour_accuracy"]) < 1.0


def test_the_colorization_encoder_sees_gray_only():
    method = VideoColorization(build_backbone("convnet", in_channels=3, image_size=32, width=8))
    encoder = method.eval_encoder().eval()
    x = torch.rand(2, 3, 32, 32)
    gray = (0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:]).expand(-1, 3, -1, -1)
    torch.testing.assert_close(encoder(x), encoder(gray.contiguous()))
    assert encoder.out_dim == method.backbone.out_dim and torch.equal(encoder.mean, method.backbone.mean)


def _skimage_lab_input(x):
    """LabInput's mapping by an independent route: skimage's rgb2lab, then L / 100, a / 255 + 1/2, b / 255 + 1/2."""
    color = pytest.importorskip("skimage.color")
    lab = torch.from_numpy(color.rgb2lab(x.permute(0, 2, 3, 1).double().numpy())).permute(0, 3, 1, 2).float()
    return torch.cat([lab[:, :1] / 100, lab[:, 1:] / 255 + 0.5], dim=1)


class _Spy(torch.nn.Module):
    """Records its inputs; answers with a fixed per-pixel map."""

    def __init__(self):
        super().__init__()
        self.seen, self.weight = [], torch.nn.Parameter(torch.ones(()))

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.weight * F.avg_pool2d(x, 4)


def test_lab_dropout_input_feeds_lab_frames_with_one_chromatic_channel_neutral_per_step(videos):
    method = VideoColorization(build_backbone("convnet", in_channels=3, image_size=32, width=8), references=2,
                               input="lab_dropout", seed=3)
    x = torch.rand(2, 3, 32, 32)
    spy = _Spy()
    method.net = spy
    method.dense_encoder()(x)  # evaluation: whole Lab frames
    torch.testing.assert_close(spy.seen[-1], _skimage_lab_input(x), atol=2e-4, rtol=0)
    # training: every frame of the step's batch loses the same channel, the one the step's coin names
    batch, progress = _clip_batch(videos, method, count=2)
    drops = []
    for step in range(4):
        progress.step = step
        method.training_step(batch, progress)
        seen, drop = spy.seen[-1], method.dropped_channel(step)
        kept = 3 - drop
        frames = batch.views[0].flatten(0, 1).float() / 255
        reference = _skimage_lab_input(frames)
        assert bool((seen[:, drop] == 0.5).all()), step
        torch.testing.assert_close(seen[:, [0, kept]], reference[:, [0, kept]], atol=2e-4, rtol=0)
        drops.append(drop)
    # the coin: fair, the same for a seed and step (a resume draws alike), another seed another sequence
    coins = [method.dropped_channel(step) for step in range(2000)]
    assert set(coins) == {1, 2} and abs(coins.count(1) - 1000) <= 4.5 * math.sqrt(500)
    assert drops == coins[:4]
    other = VideoColorization(build_backbone("convnet", in_channels=3, image_size=32, width=8), seed=4)
    assert [other.dropped_channel(step) for step in range(50)] != coins[:50]
    with pytest.raises(ValueError, match="input must be one of gray, lab_dropout"):
        VideoColorization(build_backbone("convnet", in_channels=3, image_size=32, width=8), input="rgb")


def test_lab_dropout_asks_for_the_dropped_channel_alone(videos, monkeypatch):
    # MAST (zlai0/MAST main.py compute_lphoto): the target is the channel the network cannot see; the
    # other one is in its input. Here that channel's level: its grid-cell mean (skimage's Lab) nearest
    # among the levels k-means found for it alone.
    color = pytest.importorskip("skimage.color")
    torch.manual_seed(0)
    method = VideoColorization(build_backbone("convnet", in_channels=3, image_size=32, width=8), references=2,
                               input="lab_dropout", seed=3)
    batch, progress = _clip_batch(videos, method, count=2)
    targets = []
    original = F.nll_loss
    monkeypatch.setattr(F, "nll_loss", lambda logp, target, **k: (targets.append(target), original(logp, target, **k))[1])
    frames = batch.views[0].flatten(0, 1).float() / 255
    lab = torch.from_numpy(color.rgb2lab(frames.permute(0, 2, 3, 1).double().numpy())).permute(0, 3, 1, 2).float()
    for step in range(4):
        progress.step = step
        method.training_step(batch, progress)
        drop = method.dropped_channel(step)
        levels = method.channel_centres[drop - 1]
        assert len(set(levels.tolist())) > 1 and levels.min() >= lab[:, drop].min() - 1e-3
        means = F.adaptive_avg_pool2d(lab[:, drop:drop + 1], 8).view(2, 3, -1)[:, -1]  # the target frames' cells
        expected = (means[..., None] - levels).abs().argmin(dim=-1)
        agree = (targets[-1] == expected).float().mean()
        assert agree > 0.97, (step, agree)  # a cell within rounding of two levels' midpoint may go either way
    assert {method.dropped_channel(step) for step in range(4)} == {1, 2}
    # A checkpoint of the earlier both-channel target is refused with the way to load it.
    state = {k: v for k, v in method.state_dict().items() if k != "channel_centres"}
    with pytest.raises(RuntimeError, match="method_args.dropout_target=ab"):
        method.load_state_dict(state)
    earlier = VideoColorization(build_backbone("convnet", in_channels=3, image_size=32, width=8), references=2,
                                input="lab_dropout", dropout_target="ab")
    earlier.load_state_dict(state)
    assert "channel_centres" not in earlier.state_dict()


# ----------------------------------------------------------------------------- end to end


def test_keypoint_maps_peak_at_the_point_and_sum_to_one():
    maps = video.keypoint_maps(torch.tensor([[7.0, 3.0], [0.5, 15.5], [6.0, 2.0]]), (16, 16), (8, 8), sigma=0.5)
    assert maps.shape == (3, 8, 8) and torch.allclose(maps.sum(dim=(1, 2)), torch.ones(3))
    assert divmod(int(maps[0].argmax()), 8) == (1, 3) and divmod(int(maps[1].argmax()), 8) == (7, 0)
    # Gaussian weights by hand: a cell one cell away weighs exp(-1 / (2 sigma^2)) of the centre's
    assert float(maps[0, 1, 4] / maps[0, 1, 3]) == pytest.approx(math.exp(-2.0), rel=1e-5)
    # (6, 2) px lies at the corner of cells (row 0-1, col 2-3): the four cells around it weigh the same
    assert torch.allclose(maps[2, 0:2, 2:4], maps[2, 1, 3].expand(2, 2))


def test_pck_counts_visible_later_points_within_alpha_times_their_scale_by_hand():
    truth = torch.tensor([[[0.0, 0, 1], [0, 0, 1]], [[10, 0, 1], [10, 0, 0]], [[0, 10, 1], [0, 0, 1]]])
    predicted = torch.tensor([[[0.0, 0], [0, 0]], [[12, 0], [0, 0]], [[0, 13], [5, 0]]])
    scale = torch.tensor([20.0, 40.0])
    # frame 1: point 0 off by 2 (<= 0.1 * 20), point 1 invisible; frame 2: point 0 off by 3, point 1 by 5 (> 4)
    assert video.pck(predicted, truth, scale, 0.1) == (1, 3)
    assert video.pck(predicted, truth, scale, 0.2) == (3, 3)


def test_davis_void_pixels_are_no_object_and_are_left_out_and_short_videos_give_no_score():
    # DAVIS-2017's get_all_masks reads 255 as void: no object (background), and db_eval_iou / f_measure leave
    # its pixels out. Object 1 fills rows 0-3, cols 0-3; a void band covers cols 4-5; the prediction spills
    # onto the band: with the band left out J = F = 1 (counted, J would be 16/24).
    truth = torch.zeros(4, 8, 8, dtype=torch.long)
    truth[:, 0:4, 0:4] = 1
    truth[:, 0:4, 4:6] = 255
    prediction = torch.zeros(4, 8, 8, dtype=torch.long)
    prediction[:, 0:4, 0:6] = 1
    scores = video.davis_scores(truth, prediction)
    assert list(scores) == [1]  # 255 is not an object
    assert scores[1] == pytest.approx((1.0, 1.0))
    counted = truth.masked_fill(truth == 255, 0)
    assert video.davis_scores(counted, prediction)[1][0] == pytest.approx(16 / 24)
    # Frames 1 .. T-2 are scored: a video of 2 frames has none (DAVIS: an empty set), so no score at all.
    assert video.davis_scores(truth[:2], prediction[:2]) == {}


def test_without_a_scale_pck_uses_crws_per_frame_person_box_by_hand():
    # CRW's / UVC's eval_pck.py: per frame, 0.6 x the diagonal of the box around the visible true joints.
    # Frame 1: joints at (0, 0), (30, 40) and an invisible one far away: box diagonal 50, scale 30, threshold
    # 3 at alpha 0.1; frame 2: joints at (0, 0), (60, 80): scale 60, threshold 6.
    truth = torch.tensor([[[0.0, 0, 1], [30, 40, 1], [500, 500, 1]],
                          [[0, 0, 1], [30, 40, 1], [500, 500, 0]],
                          [[0, 0, 1], [60, 80, 1], [0, 0, 0]]])
    predicted = truth[:, :, :2] + torch.tensor([[0.0, 0], [0, 0], [0, 0]]).expand(3, -1, -1)
    predicted = predicted.clone()
    predicted[1, 0] += torch.tensor([2.9, 0.0])   # within 3
    predicted[1, 1] += torch.tensor([0.0, 3.1])   # beyond 3
    predicted[2, 0] += torch.tensor([5.9, 0.0])   # within 6
    predicted[2, 1] += torch.tensor([0.0, 6.1])   # beyond 6
    assert video.person_scale(truth)[1:].flatten().tolist() == pytest.approx([30.0, 60.0])
    assert video.pck(predicted, truth, None, 0.1) == (2, 4)
    assert video.pck(predicted, truth, None, 0.2) == (4, 4)


def test_keypoints_propagate_with_features_that_move_with_the_scene():
    """A noise texture shifting one grid cell (2 px) right per frame (cyclically, so every cell has its
    match): each keypoint must follow it, to within the half pixel of reading a peak off a 2x upsampling."""
    texture = torch.randn(16, 8, 8, generator=torch.Generator().manual_seed(0))
    features = torch.stack([texture.roll(t, dims=-1) for t in range(5)])  # (T, 16, 8, 8), content moves right
    first = torch.tensor([[5.0, 7.0], [3.0, 13.0]])  # (x, y) px of a 16 x 16 frame, at cell centres
    moved = video.propagate_keypoints(features, first, (16, 16), topk=1, temperature=0.01, radius=2)
    expected = first[None] + torch.tensor([2.0, 0.0]) * torch.arange(5)[:, None, None]
    assert bool(((moved - expected).abs() <= 0.5).all()), moved
    truth = torch.cat([expected, torch.ones(5, 2, 1)], dim=2)
    assert video.pck(moved, truth, torch.tensor([16.0, 16.0]), 0.1) == (8, 8)


@pytest.fixture(scope="module")
def colorization_run(videos, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "vc"
    cmd = [sys.executable, "-m", "selfsup", "pretrain", "recipes/video_colorization_synthetic_videos.yaml",
           f"data.root={videos}", "data.size=32", "data.clips_per_video=4", "train.batch_size=9",
           "train.epochs=2", "backbone.width=8", "method_args.dim=8", "method_args.references=2",
           "train.progress=false", "eval.plots=false", "eval.save_embeddings=false", f"train.out_dir={out}"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_a_video_recipe_trains_and_reports_propagation_and_temporal_measures_with_floors(colorization_run):
    results = json.loads((colorization_run / "results.json").read_text())
    assert results["steps"] == 8  # 9 videos x 4 clips, batch 9
    for key in ("propagation", "temporal", "linear", "knn"):
        entry = results["evaluations"][key]
        assert "random_init" in entry and entry["data"] == "video", key
    propagation = results["evaluations"]["propagation"]
    assert propagation["j_and_f"] == pytest.approx((propagation["j"] + propagation["f"]) / 2)
    assert propagation["objects"] >= 3 and propagation["videos"] == 3
    assert 0 <= propagation["pck@0.1"] <= propagation["pck@0.2"] <= 1 and propagation["keypoints"] > 10
    assert "pck@0.2" in propagation["random_init"]
    # the baselines beside it (the network's grid: 32 px / 4), not repeated in the floor
    assert set(propagation["baselines"]) == {"copy", "lab"} and "baselines" not in propagation["random_init"]
    test = load_video_split(json.loads((colorization_run / "results.json").read_text())["command"].split(
        "data.root=")[1].split()[0], "test", size=32)
    lab = video.propagation_entry(test, None, data="x", baseline="lab", lab_stride=4)
    assert propagation["baselines"]["lab"]["j_and_f"] == pytest.approx(lab["j_and_f"])


def test_evaluate_propagate_prints_the_baselines_and_draws_the_masks(colorization_run):
    ckpt = colorization_run / "checkpoints" / "last.ckpt"
    result = subprocess.run([sys.executable, "-m", "selfsup", "evaluate", "propagate", str(ckpt)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "random init J&F" in result.stdout and "copy J&F" in result.stdout and "lab J&F" in result.stdout
    entry = json.loads((colorization_run / "evaluations" / "propagation.json").read_text())
    assert set(entry["baselines"]) == {"copy", "lab"} and (colorization_run / "propagation.png").is_file()
    test = load_video_split(json.loads((colorization_run / "results.json").read_text())["command"].split(
        "data.root=")[1].split()[0], "test", size=32)
    copy = video.propagation_entry(test, None, data="x", baseline="copy")
    assert entry["baselines"]["copy"]["j_and_f"] == pytest.approx(copy["j_and_f"])
    # the copy baseline's PCK by hand: the first frame's visible points against every later frame
    hits = counted = 0
    for track, scale in test.keypoints.values():
        seen = track[0, :, 2] > 0
        later = track[1:, seen]
        near = (later[:, :, :2] - track[:1, seen, :2]).norm(dim=2) <= 0.2 * scale[seen]
        hits += int((near & (later[:, :, 2] > 0)).sum())
        counted += int((later[:, :, 2] > 0).sum())
    assert entry["baselines"]["copy"]["pck@0.2"] == pytest.approx(hits / counted)
    result = subprocess.run([sys.executable, "-m", "selfsup", "evaluate", "temporal", str(ckpt)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "temporal-order tau" in result.stdout


def test_an_image_method_cannot_train_on_videos(videos, tmp_path):
    from selfsup.config import load_config
    from selfsup.engine import pretrain
    from selfsup.errors import ConfigError

    cfg = load_config(None, ["method=simclr", "data.name=video", f"data.root={videos}", "data.size=32",
                             "train.batch_size=4", f"train.out_dir={tmp_path}", "train.progress=false"])
    with pytest.raises(ConfigError, match="method simclr learns from images, but data.name=video gives video"):
        pretrain(cfg)


def test_a_video_run_resumed_ends_where_the_straight_run_ends(videos, tmp_path):
    """R3M with its language term (the fixture's videos have captions.csv): its shuffles resume too."""
    from selfsup.cli.common import load_method
    from selfsup.config import load_config
    from selfsup.engine import pretrain

    def run(out, epochs, resume=False):  # a constant lr, so that extending the run keeps the first epoch's
        cfg = load_config(None, [
            "method=r3m", "data.name=video", f"data.root={videos}", "data.size=32", "data.clips_per_video=2",
            "method_args.language_weight=1", "method_args.text_tower=transformer", "method_args.reward_hidden=16",
            "backbone.width=4", "train.batch_size=6", f"train.epochs={epochs}", "optim.min_lr_ratio=1.0",
            "optim.warmup_epochs=0", "train.knn_every=0", f"train.out_dir={out}", "train.progress=false",
            "eval.plots=false", "eval.floor=false", "eval.save_embeddings=false", "train.precision=32-true"])
        return pretrain(cfg, resume=resume)

    run(tmp_path / "a", 2)
    run(tmp_path / "b", 1)
    run(tmp_path / "b", 2, resume=True)
    a = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["step"] == b["step"] == 6  # 9 videos x 2 clips, batch 6: 3 steps an epoch
    assert a["model"].keys() == b["model"].keys() and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert any(k.startswith("reward.") for k in a["model"]) and any(k.startswith("text.") for k in a["model"])
    _, method, *_ = load_method(str(tmp_path / "a" / "checkpoints" / "last.ckpt"))  # rebuilt without captions
    assert torch.equal(method.reward[0].weight, a["model"]["reward.0.weight"])
