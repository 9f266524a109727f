"""Speaker-identification baselines on a WAV folder that a CPC run (recipes/cpc_speech.yaml) must beat.

The same windows the run evaluates (``data.eval_windows`` evenly spaced windows of every file, the
test split's files held out), the same linear probe (multinomial logistic regression, L2 chosen
on a held-out split) and weighted kNN, on:

* log-mel spectrogram: 40 mel bands of 25 ms frames every 10 ms (Hann window), log, then the mean
  and standard deviation of each band over the window (80 values);
* MFCC: the first 13 DCT-II coefficients of those log-mel frames, mean and standard deviation over
  the window (26 values), the classic speaker-ID front end;
* random weights: the recipe's evaluation encoder (context vectors averaged over time) with its
  random initialisation, same seed as a run of the recipe.

    .venv/bin/python benchmarks/speech_baselines.py recipes/cpc_speech.yaml data.root=/tmp/speech
"""

from __future__ import annotations

import time

import numpy as np
import torch
from scipy.fft import dct
from scipy.signal import stft

from selfsup import data, evaluate
from selfsup.engine import build_method

from _baseline import probe_all, recipe_from_command_line, report


def mel_filterbank(bands: int, n_fft: int, rate: int) -> np.ndarray:
    """``(bands, n_fft // 2 + 1)`` triangular filters equally spaced on the mel scale (HTK formula)."""
    mel = lambda hz: 2595 * np.log10(1 + hz / 700)  # noqa: E731
    hz = lambda m: 700 * (10 ** (m / 2595) - 1)  # noqa: E731
    edges = hz(np.linspace(mel(0), mel(rate / 2), bands + 2))
    freqs = np.linspace(0, rate / 2, n_fft // 2 + 1)
    rising = (freqs[None] - edges[:-2, None]) / (edges[1:-1, None] - edges[:-2, None])
    falling = (edges[2:, None] - freqs[None]) / (edges[2:, None] - edges[1:-1, None])
    return np.clip(np.minimum(rising, falling), 0, None)


def spectral_features(signals: torch.Tensor, rate: int, bands: int = 40, coefficients: int = 13) -> tuple:
    """(log-mel mean+std, MFCC mean+std) of ``(N, 1, T)`` signals."""
    frame, hop = int(0.025 * rate), int(0.010 * rate)
    _, _, spec = stft(signals[:, 0].numpy(), fs=rate, window="hann", nperseg=frame, noverlap=frame - hop,
                      boundary=None, padded=False)
    power = np.abs(spec) ** 2                                                # (N, F, frames)
    logmel = np.log(np.einsum("bf,nft->nbt", mel_filterbank(bands, frame, rate), power) + 1e-10)
    mfcc = dct(logmel, type=2, axis=1, norm="ortho")[:, :coefficients]
    summary = lambda x: torch.from_numpy(np.concatenate([x.mean(2), x.std(2)], 1)).float()  # noqa: E731
    return summary(logmel), summary(mfcc)


def main() -> None:
    cfg = recipe_from_command_line(__doc__)
    d = cfg.data
    train, test = (data.WavFolder.from_config(d, split).dataset for split in ("train", "test"))
    start = time.perf_counter()
    features = {}
    features["log_mel"], features["mfcc"] = zip(*(spectral_features(s.inputs, d.sample_rate) for s in (train, test)))
    torch.manual_seed(cfg.train.seed)
    method = build_method(cfg, in_channels=1, image_size=d.window, mean=train.mean().tolist(),
                          std=train.std().tolist(), num_samples=len(train))
    encoder = method.eval_encoder()
    features["random_weights"] = tuple(evaluate.extract_features(encoder, s.inputs, kind="sequences")
                                       for s in (train, test))
    results = probe_all(cfg, features, train.labels, test.labels)
    report(**{"data": str(d.root), "train_windows": len(train), "test_windows": len(test),
              "speakers": len(train.classes), "chance": round(1 / len(train.classes), 4),
              **results,
              "seconds": round(time.perf_counter() - start, 1)})


if __name__ == "__main__":
    main()
