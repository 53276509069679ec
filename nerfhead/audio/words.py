"""A clip's word timings from its own audio: a transcript aligned to it, or its words recognised.

``respeak`` (other voices saying the clip's words, for training and for measuring lip sync)
needs each word's span. Users rarely have them; this makes them with PocketSphinx, whose
wheel carries CMU's US-English acoustic model, pronouncing dictionary and language model
(``pip install pocketsphinx``; nothing to download):

- ``align_transcript(samples, text)``: the words said, in order (plain text), forced-aligned
  to the audio. Measured on GRID's s1 (240 s, 480 words) against GRID's own alignments:
  median boundary difference 10 ms, 92% within 50 ms, 5 s on one CPU core. A transcript of
  other words, or with words the audio does not have, finds no alignment and is refused; one
  that leaves speech out shows as speech without words (``unworded_speech``).
- ``recognize_words(samples)``: no transcript, the recogniser's words (US-English language
  model), each stretch of speech decoded as one utterance. The spans are where speech is (95%
  of GRID's word time covered, under 1% of the words' time outside it); the words themselves
  are often wrong: 84% word error rate on GRID's unusual sentences ("bin blue at f two now"),
  far better on ordinary English. 52 s for those 240 s on one core. Respeak says the
  recognised words, so a wrong word gives the mouth other sounds: prefer a transcript.

Words come back as ``nerfhead.audio.respeak.WordTiming`` on the audio's clock, silences and
noises left out; ``write_word_timings`` writes the ``start end word`` text that
``read_word_timings`` reads.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from pathlib import Path

import numpy as np

from nerfhead.audio.features import SAMPLE_RATE, AudioError
from nerfhead.audio.respeak import WordTiming

#: PocketSphinx counts time in 10-ms frames
FRAME_SECONDS = 0.01
#: speech at least this long with no word over it is reported (a transcript leaving words out)
UNWORDED_SECONDS = 1.0
#: silence kept around each stretch of speech decoded (the recogniser needs some on each side)
UTTERANCE_PAD = 0.3
#: at most this many unknown words are named in an error
NAMED_WORDS = 12

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
         "fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def unavailable_reason() -> str | None:
    """Why word timings cannot be made here, or None when they can."""
    import importlib.util

    if importlib.util.find_spec("pocketsphinx") is None:
        return ("PocketSphinx is not installed: pip install pocketsphinx (its wheel carries the "
                "US-English model; part of nerfhead's [preprocess] extra)")
    return None


def _require() -> None:
    reason = unavailable_reason()
    if reason:
        raise AudioError(f"word timings from audio: {reason}")


def spell_number(n: int) -> list[str]:
    """An integer below a million as the words a speaker says (``105`` -> one hundred five)."""
    if n < 20:
        return [_ONES[n]]
    if n < 100:
        return [_TENS[n // 10]] + (spell_number(n % 10) if n % 10 else [])
    if n < 1000:
        return [_ONES[n // 100], "hundred"] + (spell_number(n % 100) if n % 100 else [])
    if n < 1_000_000:
        return spell_number(n // 1000) + ["thousand"] + (spell_number(n % 1000) if n % 1000 else [])
    raise ValueError(f"{n}: spell numbers of a million or more as they are said")


def transcript_words(text: str) -> list[str]:
    """The words of a plain-text transcript as the dictionary spells them: lower case,
    punctuation dropped (apostrophes inside words kept), hyphenated words split, whole numbers
    below a million spelled out."""
    text = text.replace("\u2019", "'").replace("\u2018", "'").lower()
    # accents off (naive, cafe), not the letters: [^a-z] dropped "naïve" to the word "nave"
    text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    words = []
    for token in re.split(r"[\s\-\u2013\u2014/]+", text):
        token = re.sub(r"[^a-z0-9']", "", token).strip("'")
        if not token:
            continue
        if token.isdigit():
            words += spell_number(int(token)) if len(token) < 7 else [token]
        else:
            words.append(token)
    return words


@lru_cache(maxsize=1)
def _model_paths() -> dict:
    import pocketsphinx

    model = Path(pocketsphinx.get_model_path()) / "en-us"
    return {"hmm": str(model / "en-us"), "lm": str(model / "en-us.lm.bin"),
            "dict": str(model / "cmudict-en-us.dict")}


def _decoder(**options):
    from pocketsphinx import Decoder

    return Decoder(samprate=SAMPLE_RATE, loglevel="FATAL", **{**_model_paths(), **options})


def _pcm16(samples: np.ndarray) -> bytes:
    # 16-bit samples decoded as i / 32768 come back exactly
    x = np.round(np.asarray(samples, np.float64).reshape(-1) * 32768.0)
    return np.clip(x, -32768, 32767).astype("<i2").tobytes()


def _words_of(segments, offset: float = 0.0) -> list[WordTiming]:
    """Recogniser segments -> words: sentence marks, silences and noises ([NOISE], <sil>) left
    out, alternative pronunciations (``to(2)``) named by their word."""
    out = []
    for seg in segments:
        word = re.sub(r"\(\d+\)$", "", seg.word)
        if not word or word[0] in "<[":
            continue
        out.append(WordTiming(round(offset + seg.start_frame * FRAME_SECONDS, 3),
                              round(offset + (seg.end_frame + 1) * FRAME_SECONDS, 3), word))
    return out


def foreign_words(text: str) -> set[str]:
    """The tokens of ``text`` with letters outside the Latin alphabet (accents aside), which
    ``transcript_words`` drops: Cyrillic, CJK, Greek ... words."""
    text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    tokens = (re.sub(r"[^\w']", "", t) for t in re.split(r"[\s\-\u2013\u2014/]+", text))
    return {t for t in tokens if any(c.isalpha() and not "a" <= c.lower() <= "z" for c in t)}


def _script(letter: str) -> str:
    """The script of a letter as Unicode names it: CYRILLIC, CJK, ARABIC ..."""
    script = unicodedata.name(letter, "other").split()[0]
    return script if len(script) <= 3 else script.title()


def align_transcript(samples: np.ndarray, text: str, source: str = "transcript") -> list[WordTiming]:
    """The transcript's words, in order, each with its span in ``samples`` (16 kHz mono).
    Raises ``AudioError`` naming ``source`` for words the dictionary lacks and for a
    transcript that cannot be aligned to this audio."""
    _require()
    words = transcript_words(text)
    if not words:
        other = list(dict.fromkeys(c for c in text if c.isalpha() and not "a" <= c.lower() <= "z"))
        if other:
            raise AudioError(f"{source}: no words in the Latin alphabet (it is written in "
                             f"{_script(other[0])} letters: {''.join(other[:8])}...); the "
                             "aligner knows US English words only (CMUdict): give the English "
                             "words said, or leave the transcript out to use recognised words")
        raise AudioError(f"{source}: no words in the transcript (it is empty, or holds only "
                         "punctuation); give the words said, or leave the transcript out")
    decoder = _decoder()
    # words in another script vanish from ``words`` (their letters are not a-z): aligning the
    # rest to audio that says them too would misplace every word after them
    unknown = sorted({w for w in words if decoder.lookup_word(w) is None} | foreign_words(text))
    if unknown:
        named = ", ".join(unknown[:NAMED_WORDS]) + (f" and {len(unknown) - NAMED_WORDS} more"
                                                     if len(unknown) > NAMED_WORDS else "")
        raise AudioError(f"{source}: {len(unknown)} word(s) not in the pronouncing dictionary "
                         f"(CMUdict, US English): {named}. Write them as they sound with "
                         "dictionary words (e.g. 'nerfhead' -> 'nerf head'), or leave the "
                         "transcript out to use recognised words")
    decoder.set_align_text(" ".join(words))
    decoder.start_utt()
    decoder.process_raw(_pcm16(samples), full_utt=True)
    decoder.end_utt()
    if decoder.hyp() is None:
        raise AudioError(f"{source}: the transcript cannot be aligned to the audio ({len(words)} "
                         f"words, {len(samples) / SAMPLE_RATE:.1f} s): are these the words of "
                         "this clip, all of them and no more, from its start? (A clip cut with "
                         "--start-seconds/--max-seconds needs the words of that cut.)")
    found = _words_of(decoder.seg())
    if [w.word for w in found] != words:  # the aligner returns exactly the words it was given
        raise AudioError(f"{source}: the aligner returned {len(found)} words for the "
                         f"transcript's {len(words)}")
    return found


def speech_spans(samples: np.ndarray) -> list[list[float]]:
    """[start, end] seconds of each stretch of speech (``nerfhead.audio.vad.find_speech``):
    what recognition decodes and ``unworded_speech`` checks; compute once, pass to both."""
    from nerfhead.audio.vad import find_speech

    return find_speech(samples).speech


def recognize_words(samples: np.ndarray, speech: list | None = None,
                    progress=None) -> list[WordTiming]:
    """Words recognised in ``samples`` (16 kHz mono) with their spans: each stretch of speech
    (``speech``, from ``speech_spans`` when not given; PocketSphinx's own segmenter drops
    speech running to the end of the audio), widened by ``UTTERANCE_PAD`` each side, decoded
    as one utterance with the US-English language model. ``progress(done_seconds,
    total_seconds)`` is called per utterance."""
    _require()
    decoder = _decoder()
    total = len(samples) / SAMPLE_RATE
    pad = int(UTTERANCE_PAD * SAMPLE_RATE)
    runs: list[tuple[int, int]] = []  # sample ranges, merged where the padding joins them
    for a, b in speech_spans(samples) if speech is None else speech:
        a, b = max(0, int(a * SAMPLE_RATE) - pad), min(len(samples), int(b * SAMPLE_RATE) + pad)
        if runs and a <= runs[-1][1]:
            runs[-1] = (runs[-1][0], b)
        else:
            runs.append((a, b))
    out: list[WordTiming] = []
    for a, b in runs:
        decoder.start_utt()
        decoder.process_raw(_pcm16(samples[a:b]), full_utt=True)
        decoder.end_utt()
        out += _words_of(decoder.seg(), offset=a / SAMPLE_RATE)
        if progress is not None:
            progress(b / SAMPLE_RATE, total)
    return out


def unworded_speech(samples: np.ndarray, words: list[WordTiming], speech: list | None = None,
                    min_seconds: float = UNWORDED_SECONDS) -> list[list[float]]:
    """Stretches of at least ``min_seconds`` of speech (``speech``, from ``speech_spans``
    when not given) with no word over them: words the transcript left out (or the
    recogniser missed)."""
    gaps = []
    for a, b in speech_spans(samples) if speech is None else speech:
        t = a
        for w in words:  # in order: the parts of [a, b] before, between and after the words
            if w.end <= t or w.start >= b:
                continue
            if w.start - t >= min_seconds:
                gaps.append([round(t, 2), round(w.start, 2)])
            t = max(t, w.end)
        if b - t >= min_seconds:
            gaps.append([round(t, 2), round(b, 2)])
    return gaps


def write_word_timings(path: str | Path, words: list[WordTiming], header: str = "") -> None:
    """``start end word`` lines in seconds (``read_word_timings``' text format), written
    atomically; ``header`` lines become ``#`` comments."""
    from nerfhead.fileio import atomic_path

    lines = [f"# {line}" for line in header.splitlines()]
    lines += [f"{w.start:.3f} {w.end:.3f} {w.word}" for w in words]
    with atomic_path(Path(path)) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
