#!/usr/bin/env python3
"""How well `nerfhead words` times a clip's words, against reference timings of the same clip.

    python3 scripts/words_accuracy.py CLIP REFERENCE_WORDS [--seconds S]

CLIP: a dataset folder (its aud.wav) or an audio/video file; REFERENCE_WORDS: timings on the
same clock (e.g. the `train_words.txt` that scripts/lipsync_bench.sh writes from GRID's .align
files). Prints, for the reference's words aligned as a transcript: the boundary differences
(median, 90th percentile, share within 50 ms); for the recognised words: the word error rate
and how much of the reference's word time they cover and how much of theirs lies outside it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def word_errors(ref: list[str], hyp: list[str]) -> int:
    """Levenshtein distance over words (substitutions, insertions, deletions)."""
    row = np.arange(len(hyp) + 1)
    for i, r in enumerate(ref, 1):
        new = np.empty_like(row)
        new[0] = i
        for j, h in enumerate(hyp, 1):
            new[j] = min(row[j] + 1, new[j - 1] + 1, row[j - 1] + (r != h))
        row = new
    return int(row[-1])


def word_time(words, seconds: float) -> np.ndarray:
    m = np.zeros(int(np.ceil(seconds * 100)) + 1, bool)
    for w in words:
        m[int(w.start * 100):int(w.end * 100)] = True
    return m


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("clip")
    p.add_argument("reference")
    p.add_argument("--seconds", type=float, default=None, help="only the first S seconds")
    args = p.parse_args()

    from nerfhead.audio.features import SAMPLE_RATE, load_audio
    from nerfhead.audio.respeak import read_word_timings
    from nerfhead.audio.words import align_transcript, recognize_words

    clip = Path(args.clip)
    samples = load_audio(clip / "aud.wav" if clip.is_dir() else clip)
    if args.seconds:
        samples = samples[: int(args.seconds * SAMPLE_RATE)]
    seconds = len(samples) / SAMPLE_RATE
    ref = [w for w in read_word_timings(args.reference) if w.end <= seconds]

    t = time.perf_counter()
    aligned = align_transcript(samples, " ".join(w.word for w in ref))
    t_align = time.perf_counter() - t
    err = np.abs([[a.start - r.start, a.end - r.end] for a, r in zip(aligned, ref)]).ravel()
    print(f"aligned transcript: {len(aligned)} words in {t_align:.1f} s; boundary difference "
          f"median {1000 * np.median(err):.0f} ms, 90th percentile {1000 * np.percentile(err, 90):.0f} ms, "
          f"{100 * (err <= 0.05).mean():.1f}% within 50 ms")

    t = time.perf_counter()
    found = recognize_words(samples)
    t_rec = time.perf_counter() - t
    wer = word_errors([w.word.lower() for w in ref], [w.word.lower() for w in found]) / len(ref)
    r, f = word_time(ref, seconds), word_time(found, seconds)
    print(f"recognised: {len(found)} words (reference {len(ref)}) in {t_rec:.1f} s; word error "
          f"rate {100 * wer:.1f}%; reference word time covered {100 * (r & f).sum() / r.sum():.1f}%, "
          f"recognised word time outside it {100 * (f & ~r).sum() / f.sum():.1f}%")


if __name__ == "__main__":
    main()
