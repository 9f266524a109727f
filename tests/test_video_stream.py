"""Streamed video (selfsup.data.video_stream): the in-memory source's batches, decoded clip by clip."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.data import StreamedVideoClips, VideoClips, load_video_split, streamed_video_split
from selfsup.data.folder import SkippedImageWarning
from selfsup.data.synthetic_video import write_synthetic_videos
from selfsup.data.video import window_times
from selfsup.data.video_stream import count_frames
from selfsup.methods import R3M
from selfsup.nn import build_backbone


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """8 two-camera scenes of 7 frames at 32x32 with captions (16 sequences, 4 held out)."""
    return write_synthetic_videos(tmp_path_factory.mktemp("stream") / "synthetic", videos=8, frames=7, size=32,
                                  sprites="digits", views=2, seed=1)


def _pair(root, *, world_size=1, rank=0, workers=0, clip_views=1, **kwargs):
    memory = VideoClips(load_video_split(root, "train", size=32, **kwargs), batch_size=6, world_size=world_size,
                        seed=4, clips_per_video=3)
    streamed = StreamedVideoClips(streamed_video_split(root, "train", size=32, workers=workers, **kwargs),
                                  batch_size=6, world_size=world_size, seed=4, clips_per_video=3, workers=workers,
                                  rank=rank)
    times = R3M(build_backbone("convnet", in_channels=3, image_size=32, width=4)).clip_times
    for source in (memory, streamed):
        source.clip_times, source.clip_views = times, clip_views
    return memory, streamed


def _same(a, b):
    assert torch.equal(a.images, b.images) and torch.equal(a.index, b.index)
    assert (a.labels is None and b.labels is None) or torch.equal(a.labels, b.labels)
    assert a.extra.keys() == b.extra.keys() and all(torch.equal(a.extra[k], b.extra[k]) for k in a.extra)


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_clips_are_the_in_memory_clips(videos, workers):
    memory, streamed = _pair(videos, workers=workers)
    assert streamed.captions == memory.captions and len(streamed) == len(memory) == 36
    assert torch.equal(streamed.dataset.lengths, memory.dataset.lengths)
    assert torch.equal(streamed.dataset.video, memory.dataset.video) and torch.equal(streamed.dataset.time,
                                                                                    memory.dataset.time)
    for epoch, position in ((0, 0), (0, 1), (0, 2), (1, 4), (0, 3)):  # in order, then a jump (a resume)
        _same(memory.batch(epoch, position, 0), streamed.batch(epoch, position, 0))
    streamed.close()
    # The frames for evaluation and statistics: every frame of every training video, in order.
    assert torch.equal(streamed.inputs[:], memory.inputs)
    assert torch.equal(streamed.dataset.labels, memory.dataset.labels)


def test_streamed_partner_views_and_ranks_match_in_memory(videos):
    for rank in range(2):
        memory, streamed = _pair(videos, world_size=2, rank=rank, clip_views=2)
        for epoch, position in ((0, 0), (1, 3)):
            got = streamed.batch(epoch, position, rank)
            assert got.images.shape[:2] == (3, 10)  # 3 clips a rank, 5 frames of the video then 5 of its partner
            _same(memory.batch(epoch, position, rank), got)
        streamed.close()


def test_video_files_are_counted_without_decoding_and_streamed_as_decoded(tmp_path):
    av = pytest.importorskip("av")
    root = tmp_path / "clips"
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    ys, xs = np.mgrid[0:32, 0:32]
    for name, count in (("a", 9), ("b", 12), ("c", 7)):
        with av.open(str(root / "train" / f"{name}.mp4"), "w") as container:
            stream = container.add_stream("mpeg4", rate=10)
            stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
            for t in range(count):
                image = np.stack([(xs * 8 + 10 * t) % 256, ys * 8, np.full_like(xs, 128)], -1).astype(np.uint8)
                container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
            container.mux(stream.encode(None))
    (root / "train" / "broken.mp4").write_bytes(b"not a video" * 20)
    (root / "test" / "x").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "test" / "x" / "0.png")
    assert [count_frames(root / "train" / f"{n}.mp4") for n in "abc"] == [9, 12, 7]
    assert count_frames(root / "train" / "b.mp4", max_frames=5) == 5
    memory, streamed = _pair(root, max_frames=10)
    assert streamed.dataset.lengths.tolist() == [9, 10, 7] == memory.dataset.lengths.tolist()
    assert list(streamed.skipped) == list(memory.skipped) == [str(root / "train" / "broken.mp4")]
    assert streamed.steps_per_epoch() == 1  # 3 videos x 3 clips, batch 6
    for epoch in range(3):
        _same(memory.batch(epoch, 0, 0), streamed.batch(epoch, 0, 0))


def test_an_unreadable_clip_names_its_video_once_and_takes_the_next_videos_frames(tmp_path):
    root = write_synthetic_videos(tmp_path / "v", videos=6, frames=5, size=16, sprites="digits", seed=2)
    reference = load_video_split(root, "train", size=16)  # before the damage
    train = streamed_video_split(root, "train", size=16, workers=0)
    frames = root / "JPEGImages" / "480p" / train.names[1]
    (frames / "00003.jpg").write_bytes(b"truncated")  # counted at the scan, unreadable when a clip needs it
    for workers in (0, 2):
        source = StreamedVideoClips(streamed_video_split(root, "train", size=16, workers=workers), batch_size=4,
                                    seed=0, clips_per_video=4, workers=workers)
        source.clip_times = window_times(3)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            batches = [source.batch(0, position, 0) for position in range(source.steps_per_epoch())]
        source.close()
        named = [w for w in caught if issubclass(w.category, SkippedImageWarning)]
        assert len(named) == 1 and str(frames) in str(named[0].message) and list(source.skipped) == [str(frames)]
        kinds = set()
        for position, batch in enumerate(batches):
            plan = source.plan(0, position)
            for row, video in enumerate(plan.videos.tolist()):
                times = plan.times[row]
                damaged = video == 1 and 3 in times.tolist()
                kinds.add(damaged)
                # A clip with the bad frame holds the next video's frames at the same times, and is that
                # video's clip in all the batch says of it; any other, its own.
                read = 2 if damaged else video
                assert batch.extra["video"][row] == read and batch.index[row] % len(train.names) == read
                assert torch.equal(batch.extra["times"][row], times)
                assert torch.equal(batch.images[row], reference.images[reference.frames(read)][times])
        assert kinds == {True, False}
    for f in (root / "JPEGImages" / "480p" / train.names[0]).iterdir():
        f.unlink()
    scanned = streamed_video_split(root, "train", size=16)
    assert train.names[0] not in scanned.names  # no frame to count: left out at the scan, and named
    assert str(root / "JPEGImages" / "480p" / train.names[0]) in scanned.skipped


def test_a_substituted_clip_and_partner_carry_their_own_label_scene_and_caption(tmp_path):
    root = write_synthetic_videos(tmp_path / "v", videos=5, frames=5, size=16, sprites="digits", views=2, seed=2)
    reference = load_video_split(root, "train", size=16)  # before the damage
    train = streamed_video_split(root, "train", size=16, workers=0)
    assert train.names[:3] == ["video0000_view0", "video0000_view1", "video0001_view0"]
    written = dict(line.split(",") for line in (root / "labels.csv").read_text().split()[1:])
    assert written["video0000_view1"] != written["video0001_view0"]  # the substitute's label tells
    (root / "JPEGImages" / "480p" / train.names[1] / "00003.jpg").write_bytes(b"truncated")
    source = StreamedVideoClips(train, batch_size=5, seed=0, clips_per_video=6, workers=0)
    source.clip_times, source.clip_views = window_times(3), 2
    first_caption = {name: texts[0] for name, texts in zip(train.names, train.captions)}
    kinds = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedImageWarning)
        for position in range(source.steps_per_epoch()):
            batch, plan = source.batch(0, position, 0), source.plan(0, position)
            for row, (video, partner) in enumerate(zip(plan.videos.tolist(), plan.partners.tolist())):
                times = plan.times[row]
                if 3 in times.tolist() and video == 1:
                    kind, video, partner = "video", 2, 2  # the next video, its own partner
                elif 3 in times.tolist() and partner == 1:
                    kind, partner = "partner", video  # the clip's own video stands in for its partner
                else:
                    kind = "none"
                kinds.add(kind)
                got = {key: int(batch.extra[key][row]) for key in ("video", "partner", "scene")}
                assert got == {"video": video, "partner": partner, "scene": int(source.scenes[video])}
                assert source.scenes[partner] == source.scenes[video]  # the two views share a scene
                assert train.classes[int(batch.labels[row])] == written[train.names[video]]
                assert batch.index[row] % len(train.names) == video
                assert torch.equal(batch.images[row, :3], reference.images[reference.frames(video)][times])
                assert torch.equal(batch.images[row, 3:], reference.images[reference.frames(partner)][times])
                if kind == "video":
                    assert source.captions[int(batch.extra["caption_ids"][row])] == first_caption[train.names[2]]
    source.close()
    assert kinds == {"video", "partner", "none"}


def test_a_streamed_video_run_trains_exactly_as_the_in_memory_run(videos, tmp_path):
    from selfsup.config import load_config
    from selfsup.engine import pretrain

    def run(out, *extra):
        return pretrain(load_config(None, [
            "method=r3m", "data.name=video", f"data.root={videos}", "data.size=32", "data.clips_per_video=2",
            "backbone.width=4", "train.batch_size=6", "train.epochs=2", "train.knn_every=0", f"train.out_dir={out}",
            "train.progress=false", "eval.plots=false", "eval.floor=false", "eval.save_embeddings=false",
            "train.precision=32-true", *extra]))

    run(tmp_path / "memory")
    run(tmp_path / "stream", "data.stream=true", "data.workers=1")
    a = torch.load(tmp_path / "memory" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "stream" / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["step"] == b["step"] == 8  # 12 videos x 2 clips, batch 6: 4 steps an epoch
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_a_video_root_under_the_home_folder_may_be_written_with_a_tilde(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    for v in range(5):
        (tmp_path / "clips" / f"v{v}").mkdir(parents=True)
        for t in range(2):
            Image.fromarray(np.full((8, 8, 3), 10 * v + t, np.uint8)).save(tmp_path / "clips" / f"v{v}" / f"{t}.png")
    assert load_video_split("~/clips", "train", size=8).names == ["v0", "v1", "v2", "v3"]
    assert streamed_video_split("~/clips", "test", size=8).reader.clip(0, [1])[0, 0, 0, 0] == 41
