"""``nerfhead respeak WORDS --like CLIP --voice ENGINE:VOICE --out DIR``: a clip's words in
other voices, on the clip's clock (``nerfhead.audio.respeak``).

For each ``--voice``, ``DIR/<engine>_<voice>.wav`` (16 kHz, the clip's length and speech
loudness); ``DIR/respeak.json`` (what was made, words that did not fit); ``DIR/respeak.png``
(the clip's loudness and each voice's over the first seconds, word spans shaded: the words
should sit in the same places). Then ``nerfhead evaluate RUN --audio-from CLIP --speech
DIR/<voice>.wav`` scores lip sync in that voice against the clip's real mouth.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path

import numpy as np

log = logging.getLogger("nerfhead.respeak")
ON_INTERRUPT = "interrupted; the voices written so far are complete, rerunning remakes all"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("words", nargs="?", metavar="WORDS",
                   help="word timings of the clip: text lines 'start end word' in seconds, a GRID "
                        ".align file, or whisper/whisperX JSON with word timestamps")
    p.add_argument("--like", metavar="CLIP",
                   help="the clip the words belong to: a dataset folder (its aud.wav) or an "
                        "audio/video file; sets the length, the speech loudness and the noise floor")
    p.add_argument("--seconds", type=float, default=None,
                   help="length without --like (default: the last word's end + 0.5 s)")
    p.add_argument("--voice", action="append", default=[], metavar="ENGINE:VOICE",
                   help="e.g. flite:slt, flite:awb, espeak-ng:en-us+f3 (repeat for several)")
    p.add_argument("--offset", type=float, default=0.0,
                   help="seconds added to every timing (words timed on another clock)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise floor")
    p.add_argument("--out", default=None, metavar="DIR", help="output folder")
    p.add_argument("--list-voices", action="store_true", help="the voices installed here, then exit")


def _file_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", label.replace(":", "_")) + ".wav"


def reference_audio(like: str) -> tuple[np.ndarray, Path]:
    from nerfhead.audio.features import load_audio

    path = Path(like)
    wav = path / "aud.wav" if path.is_dir() else path
    if path.is_dir() and not wav.is_file():
        raise SystemExit(f"nerfhead respeak --like {like}: a folder without aud.wav; give a "
                         "dataset folder or an audio/video file")
    return load_audio(wav), wav


#: the longest track said without --like (the words' length sets it; a track is a float
#: array in memory): timings in milliseconds or frames read as seconds run far past it
MAX_SECONDS = 3600.0


def length_problem(words, seconds: float | None) -> str | None:
    """Why a track of ``seconds`` (None: the words' end + 0.5 s) cannot hold ``words``."""
    if seconds is not None:
        if not 0 < seconds < float("inf"):
            return f"--seconds {seconds:g}: give a positive number of seconds"
        if seconds < words[-1].end:
            return (f"the words run to {words[-1].end:.2f} s but --seconds is {seconds:g}: give "
                    "a length that holds them (or leave --seconds out)")
    if (seconds or words[-1].end) > MAX_SECONDS:
        return (f"the words run to {words[-1].end:g} s, over {MAX_SECONDS / 3600:g} hour: are the "
                "timings in milliseconds or video frames? They are read as seconds (a GRID "
                ".align file's as 1/25000 s)")
    return None


class _Failed(Exception):
    """A voice that could not be said or written: ``rc`` is the command's exit status."""

    def __init__(self, cause: Exception, rc: int):
        super().__init__(str(cause))
        self.cause, self.rc = cause, rc


def _speak(words, voices, num: int, reference, seed: int, out: Path) -> tuple[list, dict]:
    """Say ``words`` in each voice into ``out``/<voice>.wav; returns the records and tracks."""
    from nerfhead.audio.features import SAMPLE_RATE, AudioError
    from nerfhead.audio.respeak import respeak
    from nerfhead.fileio import atomic_path
    from nerfhead.render.video import write_wav

    made, tracks = [], {}
    for voice in voices:
        try:
            r = respeak(words, voice, num, reference=reference, seed=seed)
        except AudioError as e:
            raise _Failed(e, 2) from e
        wav = out / _file_name(voice.label)
        try:
            with atomic_path(wav) as tmp:
                write_wav(tmp, r.samples, SAMPLE_RATE)
        except OSError as e:  # DiskFullError names the file and the space needed
            raise _Failed(e, 1) from e
        tracks[voice.label] = r.samples
        made.append({"voice": voice.label, "file": wav.name, "words": r.words,
                     "unfitted_words": r.unfitted, "gain_db": round(r.gain_db, 2)})
        note = f", {len(r.unfitted)} word(s) did not fit their span" if r.unfitted else ""
        print(f"{voice.label}: {r.words} words -> {wav}{note}")
        if r.unsaid:
            print(f"warning: {voice.label} said nothing for {len(r.unsaid)} word(s) ("
                  f"{', '.join(map(repr, r.unsaid[:5]))}{' ...' if len(r.unsaid) > 5 else ''}): "
                  "silent in the track where the clip speaks; words in another alphabet or "
                  "only symbols? Write them as they are said", file=sys.stderr)
            made[-1]["unsaid_words"] = r.unsaid
    return made, tracks


def run(args) -> int:
    from nerfhead.audio.features import SAMPLE_RATE, AudioError
    from nerfhead.audio.respeak import available_voices, parse_voice, read_word_timings, write_preview
    from nerfhead.fileio import atomic_path, output_dir

    if args.list_voices:
        voices = available_voices()
        print("\n".join(v.label for v in voices) if voices else
              "no speech synthesiser installed: apt install flite espeak-ng (Debian/Ubuntu)")
        return 0
    if not args.words or not args.voice or not args.out:
        print("nerfhead respeak: give WORDS, at least one --voice and --out (or --list-voices)",
              file=sys.stderr)
        return 2
    try:
        voices = [parse_voice(v) for v in args.voice]
        words = read_word_timings(args.words, offset=args.offset)
        reference, ref_path = reference_audio(args.like) if args.like else (None, None)
    except AudioError as e:
        print(f"nerfhead respeak: {e}", file=sys.stderr)
        return 2
    if reference is not None:
        num = len(reference)
        if words[-1].end > num / SAMPLE_RATE + 0.04:
            print(f"nerfhead respeak: the words run to {words[-1].end:.2f} s but {ref_path} lasts "
                  f"{num / SAMPLE_RATE:.2f} s: are they the timings of another clip (or on another "
                  "clock: --offset)?", file=sys.stderr)
            return 2
    else:
        problem = length_problem(words, args.seconds)
        if problem:
            print(f"nerfhead respeak: {args.words}: {problem}", file=sys.stderr)
            return 2
        num = int(round((args.seconds or words[-1].end + 0.5) * SAMPLE_RATE))
    if words[0].start < 0:
        print(f"nerfhead respeak: --offset {args.offset:g} moves the word {words[0].word!r} of "
              f"{args.words} to {words[0].start:.2f} s, before the clip's start: give the offset "
              "that puts the words on the clip's clock", file=sys.stderr)
        return 2
    try:
        with output_dir(args.out, "nerfhead respeak --out") as out:  # no empty folder on failure
            made, tracks = _speak(words, voices, num, reference, args.seed, out)
    except _Failed as e:
        print(f"nerfhead respeak: {e.cause}", file=sys.stderr)
        return e.rc
    except OSError as e:  # OutputLocationError: not a folder, not writable
        print(f"nerfhead respeak: {e}", file=sys.stderr)
        return 2
    write_preview(out / "respeak.png", reference, tracks, words)
    summary = {"words": str(args.words), "offset": args.offset, "like": str(ref_path) if ref_path else None,
               "seconds": num / SAMPLE_RATE, "voices": made}
    with atomic_path(out / "respeak.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    if args.like and Path(args.like).is_dir():
        print(f"next: nerfhead evaluate RUN --audio-from {args.like} --speech {out / made[0]['file']}")
    return 0
