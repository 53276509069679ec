"""The audio step's synthetic voices: the clip's words said by speech synthesisers, each word
in the span the speaker took (``nerfhead.audio.respeak``), for ``train.voice_augment``.

The words come from a timings file on the source video's clock (``audio.respeak_words``), or
from aud.wav itself (``nerfhead.audio.words``): a transcript aligned (``audio.transcript``) or
the words recognised (``respeak_words=auto``), written to ``words.txt``. With
``audio.respeak_optional`` (``nerfhead run``'s default) what cannot be made here is warned
about and left out. ``previews/respeak.png`` shows where the voices' words fall.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from preprocess.steps import StepContext, StepError

if TYPE_CHECKING:
    from preprocess.audio import AudioConfig

STEP = "audio"

RESPEAK_PREVIEW = "previews/respeak.png"


def respoken(ctx: StepContext, cfg: AudioConfig, samples: np.ndarray) -> list:
    """The clip's words said by ``cfg.respeak_voices`` (``nerfhead.audio.respeak``), on the
    clip's clock: the words file counts from the source's start, the clip from
    ``--start-seconds``; words not wholly inside the clip are left out. With
    ``respeak_optional``, what cannot be made here is warned about and left out."""
    if respeaks(cfg):
        try:
            return _respeak_voices(ctx, cfg, samples)
        except StepError as e:
            if not cfg.respeak_optional:
                raise
            if not cfg.respeak_voices:  # only the words were asked for
                ctx.log.warning("audio: no word timings (audio.respeak_optional): %s", e)
            else:
                ctx.log.warning("audio: no synthetic voices (audio.respeak_optional): %s. "
                                "Training mixes in the other voices only; the mouth follows "
                                "other speakers less well (docs/benchmarks.md)", e)
    # nor the picture of voices or the words an earlier run wrote
    ctx.path(RESPEAK_PREVIEW).unlink(missing_ok=True)
    ctx.path(WORDS_FILE).unlink(missing_ok=True)
    return []


def _respeak_voices(ctx: StepContext, cfg: AudioConfig, samples: np.ndarray) -> list:
    from pathlib import Path

    from nerfhead.audio.features import SAMPLE_RATE, AudioError
    from nerfhead.audio.respeak import (parse_voice, respeak, voice_unavailable, words_in_clip,
                                        write_preview)

    try:
        voices = [parse_voice(v) for v in cfg.respeak_voices]
    except AudioError as e:
        raise StepError(STEP, f"audio.respeak_voices: {e}") from e
    if not voices:
        if cfg.transcript or cfg.respeak_words == "auto":  # the words alone (words.txt): what
            _words_from_audio(ctx, cfg, samples)  # `nerfhead run --audio-feature hubert` scores with
            ctx.path(RESPEAK_PREVIEW).unlink(missing_ok=True)  # an earlier run's voices
            ctx.log.info("audio: no synthetic voices (audio.respeak_voices is empty): %s only",
                         WORDS_FILE)
            return []
        raise StepError(STEP, "audio.respeak_words is set but audio.respeak_voices is empty: name "
                              "voices (e.g. flite:kal16) or unset audio.respeak_words")
    unavailable = [r for r in map(voice_unavailable, voices) if r]
    if unavailable:  # before the minutes of finding the words
        raise StepError(STEP, f"audio.respeak_voices: {'; '.join(dict.fromkeys(unavailable))}")
    start = float(ctx.manifest.get("video", {}).get("start_seconds", 0.0) or 0.0)
    seconds = len(samples) / SAMPLE_RATE
    if cfg.transcript or cfg.respeak_words == "auto":
        words, path = _words_from_audio(ctx, cfg, samples), ctx.path(WORDS_FILE)
    else:
        ctx.path(WORDS_FILE).unlink(missing_ok=True)
        path = Path(cfg.respeak_words)
        try:
            words = words_in_clip(path, start, seconds)
        except AudioError as e:
            raise StepError(STEP, f"audio.respeak_words: {e}", path) from e
        if not words:
            raise StepError(STEP, f"audio.respeak_words: none of its words lies within this clip "
                                  f"({start:g} to {start + seconds:g} s of the source): the timings of "
                                  "another video, or of another clock?", path)
    out = []
    for voice in voices:
        try:
            r = respeak(words, voice, len(samples), reference=samples)
        except AudioError as e:
            raise StepError(STEP, f"audio.respeak_voices: {e}", path) from e
        ctx.log.info("audio: %d words of the clip said by %s%s", r.words, voice.label,
                     f" ({len(r.unfitted)} did not fit their span)" if r.unfitted else "")
        out.append(r)
    write_preview(ctx.path(RESPEAK_PREVIEW), samples, {r.voice: r.samples for r in out}, words)
    return out


WORDS_FILE = "words.txt"


def respeaks(cfg: AudioConfig) -> bool:
    return bool(cfg.respeak_words or cfg.transcript)


def _words_from_audio(ctx: StepContext, cfg: AudioConfig, samples: np.ndarray) -> list:
    """The clip's word timings made from aud.wav (``nerfhead.audio.words``): the transcript
    aligned, or the words recognised; written to words.txt for the user to read or reuse."""
    from pathlib import Path

    from nerfhead.audio.features import AudioError
    from nerfhead.audio.vad import format_ranges
    from nerfhead.audio.words import (align_transcript, recognize_words, speech_spans,
                                      unworded_speech, write_word_timings)

    if cfg.transcript and cfg.respeak_words not in (None, "auto"):
        raise StepError(STEP, f"audio.transcript and audio.respeak_words={cfg.respeak_words} both "
                              "give the words: unset one (a transcript is aligned to aud.wav, a "
                              "timings file is used as it is)", Path(cfg.transcript))
    speech = speech_spans(samples)  # once, for the recogniser and the check below
    if cfg.transcript:
        path = Path(cfg.transcript)
        try:
            text = path.read_text(errors="replace")
        except OSError as e:
            raise StepError(STEP, f"audio.transcript: cannot read it ({e.strerror or e})", path) from e
        try:
            words = align_transcript(samples, text, source=f"audio.transcript {path}")
        except AudioError as e:
            raise StepError(STEP, str(e), path) from e
        how = f"the words of {path.name} aligned to aud.wav"
    else:
        ctx.log.info("audio: recognising the clip's words (respeak_words=auto; about a quarter "
                     "of the clip's length on one core)")
        try:
            words = recognize_words(samples, speech)
        except AudioError as e:
            raise StepError(STEP, f"audio.respeak_words=auto: {e}", ctx.path("aud.wav")) from e
        how = "the words recognised in aud.wav (PocketSphinx, US English: right spans, often wrong words)"
    if not words:
        raise StepError(STEP, "audio.respeak_words=auto: the recogniser found no words in aud.wav "
                              "(is the speech English?); give a transcript (audio.transcript) or "
                              "word timings, or unset audio.respeak_words", ctx.path("aud.wav"))
    gaps = unworded_speech(samples, words, speech)
    if gaps:
        ctx.log.warning("audio: speech with no word over it at %s (%s): %s", format_ranges(gaps), how,
                        "does the transcript leave words out? The synthetic voices are silent there"
                        if cfg.transcript else "the recogniser found no words there")
    write_word_timings(ctx.path(WORDS_FILE), words,
                       header=f"{how}\non aud.wav's clock (seconds from the clip's first sample)")
    ctx.log.info("audio: %d words (%s) -> %s", len(words), how, ctx.path(WORDS_FILE))
    return words


def missing(cfg: AudioConfig) -> list[str]:
    """What the optional synthetic voices lack here (programs, voices, the recogniser)."""
    from nerfhead.audio.features import AudioError
    from nerfhead.audio.respeak import parse_voice, voice_unavailable
    from nerfhead.audio.words import unavailable_reason

    missing = []
    for v in cfg.respeak_voices:
        try:
            missing.append(voice_unavailable(parse_voice(v)))
        except (AudioError, OSError) as e:
            missing.append(str(e))
    if cfg.transcript or cfg.respeak_words == "auto":
        missing.append(unavailable_reason())
    return sorted({m for m in missing if m})
