"""``nerfhead words CLIP --out WORDS.txt [--transcript TEXT]``: a clip's word timings from its
own audio (``nerfhead.audio.words``), as the ``start end word`` text that ``nerfhead respeak``,
``preprocess --set audio.respeak_words=`` and ``nerfhead run --words`` read.

With ``--transcript`` (the words said, plain text) they are aligned to the audio: right words,
spans within tens of milliseconds. Without, the words are recognised: right spans, often wrong
words (PocketSphinx's US-English model). CLIP is a dataset folder (its aud.wav; the timings are
written on the source video's clock, as preprocessing reads them) or an audio/video file (on
its own clock).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ON_INTERRUPT = "interrupted; nothing was written (the words file is written whole at the end)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("clip", metavar="CLIP",
                   help="a dataset folder (its aud.wav) or an audio/video file")
    p.add_argument("--transcript", metavar="TEXT",
                   help="the words said in CLIP, in order (plain text file, or - for standard "
                        "input): aligned instead of recognised")
    p.add_argument("--out", required=True, metavar="WORDS.txt", help="the word timings to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")


def _clip_audio(clip: str):
    """(samples, wav path, seconds to add for the source video's clock)."""
    from nerfhead.audio.features import load_audio

    path = Path(clip)
    if path.is_dir():
        wav = path / "aud.wav"
        if not wav.is_file():
            raise SystemExit(f"nerfhead words {clip}: a folder without aud.wav; give a dataset "
                             "folder or an audio/video file")
        start = 0.0
        manifest = path / "manifest.json"
        if manifest.is_file():
            start = float(json.loads(manifest.read_text()).get("video", {}).get("start_seconds")
                          or 0.0)
        return load_audio(wav), wav, start
    return load_audio(path), path, 0.0


def run(args) -> int:
    from nerfhead.audio.features import AudioError
    from nerfhead.audio.respeak import WordTiming
    from nerfhead.audio.vad import format_ranges
    from nerfhead.audio.words import (align_transcript, recognize_words, speech_spans,
                                      unavailable_reason, unworded_speech, write_word_timings)

    reason = unavailable_reason()
    if reason:
        print(f"nerfhead words: unavailable: {reason}", file=sys.stderr)
        return 1
    out = Path(args.out)
    if out.is_dir() or (out.exists() and not args.overwrite):
        print(f"nerfhead words: {out} {'is a folder' if out.is_dir() else 'exists'}: name a new "
              "file" + ("" if out.is_dir() else " or pass --overwrite"), file=sys.stderr)
        return 2
    try:
        text = None
        if args.transcript:
            text = (sys.stdin.read() if args.transcript == "-"
                    else Path(args.transcript).read_text(errors="replace"))
        samples, wav, start = _clip_audio(args.clip)
        speech = speech_spans(samples)
        if text is not None:
            words = align_transcript(samples, text, source=f"transcript {args.transcript}")
            how = f"the words of {args.transcript} aligned to {wav}"
        else:
            words = recognize_words(samples, speech)
            how = f"the words recognised in {wav} (PocketSphinx, US English: right spans, often wrong words)"
    except OSError as e:
        print(f"nerfhead words: {getattr(e, 'filename', None) or args.transcript}: "
              f"{e.strerror or e}", file=sys.stderr)
        return 2
    except AudioError as e:
        print(f"nerfhead words: {e}", file=sys.stderr)
        return 2
    if not words:
        print(f"nerfhead words: no words recognised in {wav} (is the speech English?); give "
              "--transcript", file=sys.stderr)
        return 1
    gaps = unworded_speech(samples, words, speech)
    clock = "the source video's clock" if start else f"{wav.name}'s clock"
    shifted = [WordTiming(round(w.start + start, 3), round(w.end + start, 3), w.word) for w in words]
    try:
        write_word_timings(out, shifted, header=f"{how}\non {clock} (seconds)")
    except OSError as e:
        print(f"nerfhead words: {e}", file=sys.stderr)
        return 1
    print(f"{len(words)} words ({how}) -> {out}")
    if gaps:
        print(f"warning: speech with no word over it at {format_ranges(gaps)}: "
              + ("does the transcript leave words out?" if text is not None
                 else "the recogniser found no words there"), file=sys.stderr)
    return 0
