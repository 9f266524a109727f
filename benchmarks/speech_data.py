"""Generate a multi-speaker speech set with espeak-ng (synthetic speech, offline).

Each "speaker" is an espeak-ng voice (accent) with a voice variant (timbre, pitch), a speaking rate
and a base pitch; every speaker reads the same sentences, so speaker identity is the only thing
a probe can use across them. The sentences are drawn from a fixed vocabulary with a seeded RNG.
espeak-ng writes 22,050 Hz WAV; ``selfsup`` resamples to 16 kHz when it reads them.

The set is synthetic: formant-synthesised voices, far more regular than people (the paper's
LibriSpeech has 251 real speakers). Numbers on it say that CPC learns speaker features, not how
well it does on real speech.

    python benchmarks/speech_data.py /tmp/speech --speakers 12 --sentences 40

Layout: ``<out>/<speaker>/<sentence>.wav`` and ``<out>/speakers.json`` (the voice of each).
Needs the ``espeak-ng`` program (Debian/Ubuntu: ``apt-get install espeak-ng``).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029")
VARIANTS = ("m1", "f2", "m3", "f4", "m7", "f1")
WORDS = ("the", "a", "small", "red", "boat", "drifted", "over", "quiet", "lake", "while", "birds", "sang", "in",
         "tall", "green", "trees", "every", "morning", "she", "walks", "to", "old", "market", "buys", "fresh",
         "bread", "and", "cheese", "from", "friendly", "baker", "near", "station", "he", "painted", "blue", "door",
         "yellow", "stripes", "after", "rain", "stopped", "children", "played", "with", "kites", "on", "windy",
         "hill", "behind", "school", "our", "neighbour", "fixed", "broken", "fence", "last", "summer", "river",
         "runs", "past", "mill", "towards", "sea", "cold", "wind", "blew", "across", "empty", "field", "at", "night")


def speakers(count: int, seed: int) -> list[dict]:
    """``count`` distinct (voice, variant, rate, pitch) settings."""
    rng = random.Random(seed)
    combos = [(voice, variant) for voice in dict.fromkeys(VOICES) for variant in VARIANTS]
    rng.shuffle(combos)
    if count > len(combos):
        raise SystemExit(f"at most {len(combos)} speakers, asked for {count}")
    return [{"name": f"speaker{i:02d}", "voice": f"{voice}+{variant}", "rate": rng.randrange(140, 200, 5),
             "pitch": rng.randrange(25, 75, 5)} for i, (voice, variant) in enumerate(combos[:count])]


def sentences(count: int, seed: int) -> list[str]:
    rng = random.Random(seed + 1)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(7, 12))) for _ in range(count)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--speakers", type=int, default=12)
    parser.add_argument("--sentences", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if shutil.which("espeak-ng") is None:
        print("speech_data.py: espeak-ng is not installed (apt-get install espeak-ng)", file=sys.stderr)
        return 2
    voices, texts = speakers(args.speakers, args.seed), sentences(args.sentences, args.seed)
    for speaker in voices:
        folder = args.out / speaker["name"]
        folder.mkdir(parents=True, exist_ok=True)
        for i, text in enumerate(texts):
            subprocess.run(["espeak-ng", "-v", speaker["voice"], "-s", str(speaker["rate"]), "-p",
                            str(speaker["pitch"]), "-w", str(folder / f"{i:03d}.wav"), text], check=True)
        print(f"{speaker['name']}: {speaker['voice']} rate {speaker['rate']} pitch {speaker['pitch']}", flush=True)
    (args.out / "speakers.json").write_text(json.dumps({"synthetic": True, "generator": "espeak-ng",
                                                        "speakers": voices, "sentences": texts}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
