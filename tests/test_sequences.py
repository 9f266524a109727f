"""The WAV sequence source: exact windows, resampling, skipped files, determinism, flat memory, training."""

import json
import subprocess
import sys
import textwrap
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from selfsup.data import WavFolder
from selfsup.data.sequences import read_window, scan_wav_folder
from selfsup.errors import DataError


def write_wav(path: Path, samples: np.ndarray, rate: int, width: int = 2, channels: int = 1) -> None:
    """``samples`` (frames, channels) or (frames,) integers in the width's range."""
    path.parent.mkdir(parents=True, exist_ok=True)
    dtype = {1: np.uint8, 2: "<i2", 4: "<i4"}[width]
    with wave.open(str(path), "wb") as f:
        f.setnchannels(channels)
        f.setsampwidth(width)
        f.setframerate(rate)
        f.writeframes(np.asarray(samples).astype(dtype).tobytes())


def tone(freq: float, seconds: float, rate: int) -> np.ndarray:
    return np.round(8000 * np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate)).astype(np.int16)


@pytest.fixture()
def speech(tmp_path):
    root = tmp_path / "speech"
    for s, freq in enumerate((220.0, 330.0)):
        for i in range(5):
            write_wav(root / f"spk{s}" / f"{i}.wav", tone(freq * (1 + 0.05 * i), 0.5, 8000), 8000)
    return root


def test_windows_are_the_samples_at_their_positions(tmp_path):
    ramp = (np.arange(5000) - 2500).astype(np.int16)
    write_wav(tmp_path / "a" / "ramp.wav", ramp, 8000)
    (info,), classes, skipped = scan_wav_folder(tmp_path, "train", 8000)
    assert classes == ["a"] and not skipped and info.frames == 5000
    window = read_window(info, 1234, 100, 8000)
    assert np.array_equal(window, ramp[1234:1334].astype(np.float32) / 32768)
    tail = read_window(info, 4950, 100, 8000)                                   # zero-padded past the end
    assert np.array_equal(tail[:50], ramp[4950:].astype(np.float32) / 32768) and not tail[50:].any()


def test_stereo_and_8_bit_are_decoded(tmp_path):
    left, right = np.array([100, -300, 500], np.int16), np.array([300, 100, -500], np.int16)
    write_wav(tmp_path / "a" / "stereo.wav", np.stack([left, right], 1), 8000, channels=2)
    write_wav(tmp_path / "a" / "eight.wav", np.array([0, 128, 255]), 8000, width=1)
    files, _, _ = scan_wav_folder(tmp_path, "train", 8000)
    by_name = {f.path.name: f for f in files}
    assert np.allclose(read_window(by_name["stereo.wav"], 0, 3, 8000), (left + right) / 2 / 32768)
    assert np.allclose(read_window(by_name["eight.wav"], 0, 3, 8000), [-1.0, 0.0, 127 / 128])


def _riff(fmt: bytes, data: bytes, before: bytes = b"", after: bytes = b"") -> bytes:
    """A RIFF/WAVE file by hand: optional chunks before fmt and after data (odd sizes padded)."""
    def chunk(name: bytes, body: bytes) -> bytes:
        return name + len(body).to_bytes(4, "little") + body + b"\0" * (len(body) % 2)
    body = b"WAVE" + before + chunk(b"fmt ", fmt) + chunk(b"data", data) + after
    return b"RIFF" + len(body).to_bytes(4, "little") + body


def test_extensible_24_bit_float_and_upper_case_files_read_as_scipy_reads_them(tmp_path):
    # ffmpeg writes WAVE_FORMAT_EXTENSIBLE for 24-bit audio and above 48 kHz (Python 3.11's wave refuses it);
    # float WAV (format 3) from soundfile and librosa. scipy.io.wavfile is the reference reader.
    import struct

    from scipy.io import wavfile

    rng = np.random.default_rng(0)
    pcm24 = rng.integers(-(1 << 23), 1 << 23, (50, 2))
    packed = b"".join(int(v).to_bytes(3, "little", signed=True) for v in pcm24.ravel())
    guid_pcm = struct.pack("<H", 1) + bytes.fromhex("000000001000800000aa00389b71")
    extensible = struct.pack("<HHIIHHHHI", 0xFFFE, 2, 8000, 8000 * 6, 6, 24, 22, 24, 3) + guid_pcm
    odd = b"LIST" + (3).to_bytes(4, "little") + b"abc\0"  # an odd-sized chunk before fmt, padded
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "ext24.wav").write_bytes(_riff(extensible, packed, before=odd,
                                                     after=b"LIST" + (4).to_bytes(4, "little") + b"\x7f" * 4))
    floats = rng.uniform(-1, 1, 40).astype("<f4")
    (tmp_path / "a" / "LOUD.WAV").write_bytes(_riff(struct.pack("<HHIIHH", 3, 1, 8000, 32000, 4, 32), floats.tobytes()))
    (tmp_path / "a" / "zero_rate.wav").write_bytes(_riff(struct.pack("<HHIIHH", 1, 1, 0, 0, 2, 16), b"\0\0" * 8))
    files, _, skipped = scan_wav_folder(tmp_path, "train", 8000)
    by_name = {f.path.name: f for f in files}
    assert sorted(by_name) == ["LOUD.WAV", "ext24.wav"]  # .WAV was neither read nor reported before
    assert "zero_rate.wav" in next(iter(skipped)) and "0 Hz" in next(iter(skipped.values()))
    rate, reference = wavfile.read(tmp_path / "a" / "ext24.wav")  # int32, the 24 bits left-justified
    assert rate == 8000 and np.array_equal(reference >> 8, pcm24)
    window = read_window(by_name["ext24.wav"], 0, 60, 8000)  # 50 frames, then zeros (the LIST chunk is not data)
    assert np.allclose(window[:50], (reference.astype(np.float64) / 2 ** 31).mean(1), atol=1e-7)
    assert not window[50:].any()
    rate, reference = wavfile.read(tmp_path / "a" / "LOUD.WAV")
    assert np.array_equal(read_window(by_name["LOUD.WAV"], 5, 10, 8000), reference[5:15])


def test_other_rates_are_resampled_or_refused(tmp_path):
    write_wav(tmp_path / "a" / "fast.wav", tone(440.0, 1.0, 22050), 22050)
    (info,), _, _ = scan_wav_folder(tmp_path, "train", 16000)
    window = read_window(info, 3000, 4000, 16000)
    expected = 8000 / 32768 * np.sin(2 * np.pi * 440 * np.arange(3000, 7000) / 16000)
    assert np.abs(window - expected).max() < 2e-3                              # the same tone, at 16 kHz
    source = WavFolder(tmp_path, sample_rate=16000, window=4000, batch_size=1)
    assert source.frames_at_rate(info) == 16000 and len(source) == 4
    with pytest.raises(DataError, match=r"fast\.wav is sampled at 22050 Hz, not data\.sample_rate=16000"):
        scan_wav_folder(tmp_path, "train", 16000, resample=False)


def test_unreadable_files_are_reported_and_skipped(tmp_path, speech):
    (speech / "spk0" / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    (speech / "spk1" / "notes.wav").write_text("not audio")
    source = WavFolder(speech, sample_rate=8000, window=1000, batch_size=2)
    assert sorted(Path(p).name for p in source.skipped) == ["broken.wav", "notes.wav"]
    assert all(source.skipped.values())
    empty = tmp_path / "empty" / "x"
    empty.mkdir(parents=True)
    (empty / "bad.wav").write_text("nope")
    with pytest.raises(DataError, match="no readable WAV file"):
        WavFolder(tmp_path / "empty", sample_rate=8000)


def test_a_file_cut_short_of_its_header_is_skipped_naming_both_counts(tmp_path):
    write_wav(tmp_path / "a" / "whole.wav", tone(220.0, 2.0, 8000), 8000)
    write_wav(tmp_path / "a" / "cut.wav", tone(330.0, 2.0, 8000), 8000)          # header: 16,000 frames
    cut = tmp_path / "a" / "cut.wav"
    cut.write_bytes(cut.read_bytes()[:44 + 2 * 2000])                             # 44-byte header, 2,000 frames
    files, _, skipped = scan_wav_folder(tmp_path, "train", 8000)
    assert [f.path.name for f in files] == ["whole.wav"] and files[0].frames == 16000
    assert skipped == {str(cut): "truncated: header says 16000 frames, file holds 2000"}
    source = WavFolder(tmp_path, sample_rate=8000, window=4000, batch_size=1)
    assert all(window.abs().amax() > 0.1 for window in source.dataset.inputs)   # no window of padding


def test_split_and_labels(speech):
    train = WavFolder(speech, "train", sample_rate=8000, window=1000, batch_size=2)
    test = WavFolder(speech, "test", sample_rate=8000, window=1000, batch_size=2)
    assert [f.path.name for f in test.files] == ["4.wav", "4.wav"]             # every fifth file per label
    assert len(train.files) == 8 and train.classes == test.classes == ["spk0", "spk1"]
    assert len(train) == 8 * 4 and train.steps_per_epoch() == 16                # 4000 samples: 4 windows each
    assert train.dataset.inputs.shape == (8 * 4, 1, 1000) and train.dataset.labels.tolist() == [0] * 16 + [1] * 16


def test_batches_are_a_function_of_epoch_position_rank(speech):
    make = lambda world: WavFolder(speech, sample_rate=8000, window=900, batch_size=4, world_size=world, seed=3)  # noqa: E731
    one, two = make(1), make(2)
    whole = one.batch(2, 5, 0)
    assert torch.equal(whole.images, make(1).batch(2, 5, 0).images)               # a fresh source: the same batch
    halves = [two.batch(2, 5, r) for r in (0, 1)]
    assert torch.equal(torch.cat([h.images for h in halves]), whole.images)
    assert torch.equal(torch.cat([h.labels for h in halves]), whole.labels)
    assert not torch.equal(one.batch(3, 5, 0).images, whole.images)               # another epoch: other windows
    # Each window is the file's samples from its start.
    slot = int(whole.index[0])
    info = one.files[int(one.slots[slot, 0])]
    assert np.array_equal(whole.images[0, 0].numpy(), read_window(info, one.start(2, slot), 900, 8000))


def test_memory_stays_flat_on_a_file_far_larger_than_the_growth_allowed(tmp_path):
    big = tmp_path / "big" / "a" / "long.wav"
    big.parent.mkdir(parents=True)
    frames = 64 * 1024 * 1024                                                  # 128 MB of 16-bit samples
    with wave.open(str(big), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(16000)
        chunk = (np.arange(1 << 20) % 2000 - 1000).astype("<i2").tobytes()
        for _ in range(frames >> 20):
            f.writeframes(chunk)
    script = textwrap.dedent(f"""
        import json, resource
        from selfsup.data import WavFolder
        source = WavFolder({str(tmp_path / 'big')!r}, sample_rate=16000, window=20480, batch_size=16)
        source.batch(0, 0, 0)
        start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for position in range(0, source.steps_per_epoch(), source.steps_per_epoch() // 20):
            source.batch(0, position, 0)
        print(json.dumps([start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, len(source)]))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    start_kb, end_kb, windows = json.loads(done.stdout)
    assert windows == frames // 20480
    assert end_kb - start_kb < 16 * 1024                                        # < 16 MB growth for a 128 MB file


def test_pretrain_cpc_on_a_wav_folder_and_resume_exactly(tmp_path, speech, monkeypatch, recheck_knn):
    from selfsup.config import load_config
    from selfsup.engine import pretrain

    def run(out, epochs, resume=False):  # a constant lr, so that extending the run keeps the first epoch's
        cfg = load_config(Path(__file__).resolve().parent.parent / "recipes" / "cpc_speech.yaml", [
            f"data.root={speech}", "data.sample_rate=8000", "data.window=1600", "data.eval_windows=2",
            "backbone.width=2", "method_args.hidden=8", "method_args.prediction_steps=[1,2]", "train.batch_size=4",
            f"train.epochs={epochs}", "train.knn_every=1", "optim.min_lr_ratio=1.0", f"train.out_dir={out}", "train.progress=false",
            "eval.plots=false"])
        return pretrain(cfg, resume=resume)

    straight = run(tmp_path / "a", 2)
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    assert results["data"] == "wav"
    reported, by_hand = recheck_knn(tmp_path / "a")  # the eval windows embedded afresh from the checkpoint
    assert reported == pytest.approx(by_hand, abs=1e-6)
    test_x = np.load(tmp_path / "a" / "test_embeddings.npy")
    assert test_x.shape == (2 * 2, 8)                # 2 test files (one per label) x 2 windows, 8 context values
    run(tmp_path / "b", 1)
    run(tmp_path / "b", 2, resume=True)
    a = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # The command line re-evaluates a sequence checkpoint on the same windows: the same probe accuracy.
    from selfsup import cli

    monkeypatch.setattr(cli.common, "tune_allocator", lambda: None)  # process-wide malloc settings: the CLI's, not a test's
    main = cli.main

    assert main(["evaluate", "linear", str(tmp_path / "a" / "checkpoints" / "last.ckpt")]) == 0
    again = json.loads((tmp_path / "a" / "evaluations" / "linear.json").read_text())["accuracy"]
    assert again == pytest.approx(results["linear_accuracy"]) and straight is not None


def test_a_root_under_the_home_folder_may_be_written_with_a_tilde(tmp_path, monkeypatch):
    # A shell leaves `data.root=~/speech` as it is: the folder is the home folder's, not one named "~".
    monkeypatch.setenv("HOME", str(tmp_path))
    write_wav(tmp_path / "speech" / "a" / "one.wav", tone(440.0, 1.0, 8000), 8000)
    source = WavFolder("~/speech", sample_rate=8000, window=4000, batch_size=1)
    assert source.root == tmp_path / "speech" and len(source) == 2
