"""A clip's words said again by a speech synthesiser, each word on its own time span.

Lip sync for a voice other than the speaker's needs ground truth, and footage of other people
has none for this speaker's face. Given the word timings of a held-out clip of the speaker
(start, end, word), ``respeak`` has a synthesiser say every word in another voice and fits it
into the word's span: the same words start and end at the same times, so the clip's real
mouth stays the reference (``nerfhead evaluate --audio-from CLIP --speech SPEECH.wav``). The
voices are other speakers in every way the audio features see (pitch, formants, spectral
tilt, rhythm within a word, recording chain), not a shift of the speaker's own recording.

Agreement holds at the scale of words: inside a word the synthesiser's phoneme timing is its
own (a vowel may be longer, a closure shorter), so a perfect model scores below its score on
the speaker's own speech. Compare voices and runs with each other, not with that number.

Fitting: each word is synthesised alone, its leading and trailing silence trimmed (10-ms
frames 35 dB under the word's loudest), then synthesised again with the duration setting
scaled by the ratio of span to length (flite's ``duration_stretch``, espeak-ng's words per
minute; up to three tries, stopping within 3%), and finally resampled to the span exactly
(a 3% resampling moves the pitch half a semitone). A word that cannot be slowed or sped
enough is resampled by at most a factor 1.5 and centred in its span (counted in the result).
The whole track is scaled to the reference's speech loudness when a reference is given.

Engines: ``flite`` (voices kal, kal16, awb, rms, slt: CMU's voices, three of them statistical
voices of real speakers) and ``espeak-ng`` (any voice and variant, e.g. ``en-us+f3``), run as
programs: Debian/Ubuntu ``apt install flite espeak-ng``. Voices are named ``ENGINE:VOICE``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import wave
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np

from nerfhead.audio.features import SAMPLE_RATE, AudioError
from nerfhead.audio.level import HOP, frame_power
from nerfhead.audio.level import speech_rms as _speech_rms  # the loudness voices are scaled by

#: tokens of word-timing files that mark silence, not words
SILENCE_TOKENS = frozenset({"", "sil", "sp", "spn", "<sil>", "<sp>", "<eps>", "sil.", "#"})
#: GRID .align files count time in 1/25000 s
GRID_ALIGN_UNITS = 25000.0
ENGINES = ("flite", "espeak-ng")
#: espeak-ng's own speed range, words per minute (its default 175)
ESPEAK_WPM = (80.0, 450.0)
#: flite duration_stretch range tried (1 = the voice's own speed)
FLITE_STRETCH = (0.3, 3.0)
FIT_TOLERANCE = 0.03
MAX_RESAMPLE = 1.5
TRIM_DB = 35.0
FADE_SECONDS = 0.005
#: peak under which a synthesised word counts as said not at all (-40 dBFS; flite's output
#: for a word in another alphabet peaks at -52 dBFS, a spoken word at -6 dBFS)
SILENT_PEAK = 0.01
PREVIEW_SECONDS = 10.0


@dataclass(frozen=True)
class WordTiming:
    start: float  #: seconds from the clip's first sample
    end: float
    word: str


@dataclass(frozen=True)
class Voice:
    engine: str  #: flite or espeak-ng
    name: str  #: the engine's voice name

    @property
    def label(self) -> str:
        return f"{self.engine}:{self.name}"


# ------------------------------------------------------------------------------ word timings
def read_word_timings(path: str | Path, offset: float = 0.0) -> list[WordTiming]:
    """Words with their spans in seconds, in order, silences left out, shifted by ``offset``.

    Formats, by content and extension: GRID ``.align`` (``start end word`` in 1/25000 s);
    JSON from whisper / whisperX / WhisperX-style aligners (``{"segments": [{"words": [...]}]}``
    or a list of ``{"word", "start", "end"}``); text lines ``start end word`` in seconds
    (spaces, tabs or commas; ``#`` comments). Raises ``AudioError`` naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"word timings {path}: not found")
    text = path.read_text(errors="replace")
    if path.suffix == ".json" or text.lstrip()[:1] in ("{", "["):
        words = _json_words(path, text)
    else:
        scale = 1.0 / GRID_ALIGN_UNITS if path.suffix == ".align" else 1.0
        words = []
        for n, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.replace(",", " ").replace("\t", " ").split()
            try:
                start, end = float(parts[0]) * scale, float(parts[1]) * scale
            except (ValueError, IndexError):
                raise AudioError(f"word timings {path}, line {n}: expected 'start end word' "
                                 f"(seconds; GRID .align: 1/25000 s), got {line!r}") from None
            words.append((start, end, " ".join(parts[2:]), f"line {n}"))
    out: list[WordTiming] = []
    for start, end, word, where in words:
        if word.strip().lower() in SILENCE_TOKENS:
            continue
        if not (np.isfinite(start) and np.isfinite(end)) or start < 0 or end <= start:
            raise AudioError(f"word timings {path}, {where}: {word!r} spans {start:g} to {end:g} s; "
                             "a word needs 0 <= start < end")
        if out and start + offset < out[-1].end - 1e-6:
            raise AudioError(f"word timings {path}, {where}: {word!r} starts at {start:g} s, before "
                             f"the previous word {out[-1].word!r} ends ({out[-1].end - offset:g} s): words "
                             "must be in order and must not overlap")
        out.append(WordTiming(start + offset, end + offset, word.strip()))
    if not out:
        raise AudioError(f"word timings {path}: no words (only silence tokens or nothing)")
    return out


def words_in_clip(path: str | Path, start: float, seconds: float) -> list[WordTiming]:
    """The words of a timings file on the source video's clock that lie wholly inside a clip
    cut from ``start`` for ``seconds``, on the clip's clock (preprocessing's ``--start-seconds``
    and ``--max-seconds``)."""
    return [w for w in read_word_timings(path, offset=-start) if w.start >= 0 and w.end <= seconds]


def _json_words(path: Path, text: str) -> list[tuple[float, float, str, str]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise AudioError(f"word timings {path}: not valid JSON ({e})") from None
    items = data
    if isinstance(data, dict):
        items = [w for seg in data.get("segments", []) for w in seg.get("words", [])] \
            or data.get("words", [])
    words = []
    for k, w in enumerate(items if isinstance(items, list) else []):
        try:
            words.append((float(w["start"]), float(w["end"]), str(w.get("word", w.get("text", ""))),
                          f"word {k}"))
        except (KeyError, TypeError, ValueError):
            raise AudioError(f"word timings {path}: word {k} has no numeric start/end ({w!r}); "
                             "words without timing (whisperX leaves some) must be aligned "
                             "or removed") from None
    if not words:
        raise AudioError(f"word timings {path}: no words found (expected segments[].words[] "
                         "or a list of {word, start, end})")
    return words


# ------------------------------------------------------------------------------ synthesisers
def parse_voice(text: str) -> Voice:
    engine, _, name = text.partition(":")
    if engine not in ENGINES or not name:
        raise AudioError(f"voice {text!r}: name it ENGINE:VOICE with ENGINE one of "
                         f"{', '.join(ENGINES)}, e.g. flite:slt or espeak-ng:en-us+f3")
    return Voice(engine, name)


def engine_available(engine: str) -> bool:
    return shutil.which(engine) is not None


@lru_cache(maxsize=1)
def flite_voices() -> tuple[str, ...]:
    """The voices built into the installed flite (``flite -lv``)."""
    out = subprocess.run(["flite", "-lv"], capture_output=True, text=True, timeout=30)
    return tuple(out.stdout.split(":", 1)[-1].split())


def available_voices() -> list[Voice]:
    """The voices the installed engines offer (flite's built-in list; a few espeak-ng
    English voices and variants, of the many it has)."""
    voices: list[Voice] = []
    if engine_available("flite"):
        voices += [Voice("flite", n) for n in flite_voices() if n != "awb_time"]
    if engine_available("espeak-ng"):
        voices += [Voice("espeak-ng", n) for n in ("en-us", "en-us+f3", "en+m3", "en-gb-x-rp+f2")]
    return voices


def _read_wav(path: Path) -> np.ndarray:
    from scipy.signal import resample_poly

    with wave.open(str(path)) as w:
        sr, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
        raw = w.readframes(w.getnframes())
    if width != 2:
        raise AudioError(f"{path}: expected 16-bit PCM from the synthesiser, got {8 * width}-bit")
    x = np.frombuffer(raw, "<i2").astype(np.float32).reshape(-1, channels).mean(1) / 32768.0
    if sr != SAMPLE_RATE:
        g = np.gcd(sr, SAMPLE_RATE)
        x = resample_poly(x, SAMPLE_RATE // g, sr // g).astype(np.float32)
    return x


def voice_unavailable(voice: Voice) -> str | None:
    """Why ``voice`` cannot speak here (its program is missing, flite lacks the voice), or
    None. espeak-ng's voices are checked only when they speak."""
    if not engine_available(voice.engine):
        return (f"the speech synthesiser {voice.engine!r} is not installed (Debian/Ubuntu: "
                f"apt install {voice.engine}); it makes the other voices of `respeak`")
    if (voice.engine == "flite" and voice.name not in flite_voices()
            and not (voice.name.endswith(".flitevox") and Path(voice.name).is_file())):
        # flite says the words in its default voice when it has no such voice: refuse instead
        return (f"{voice.label}: flite has no voice {voice.name!r} (its voices: "
                f"{', '.join(flite_voices())}; or a .flitevox file)")
    return None


def synthesize(word: str, voice: Voice, speed: float = 1.0) -> np.ndarray:
    """``word`` said by ``voice`` at ``speed`` times its own pace: float32 at 16 kHz."""
    reason = voice_unavailable(voice)
    if reason:
        raise AudioError(reason)
    text = None
    with tempfile.TemporaryDirectory(prefix="nerfhead_tts_") as tmp:
        wav = Path(tmp) / "w.wav"
        if voice.engine == "flite":
            stretch = float(np.clip(1.0 / speed, *FLITE_STRETCH))
            cmd = ["flite", "-voice", voice.name, "--setf", f"duration_stretch={stretch:.4f}",
                   "-t", word, "-o", str(wav)]
        else:
            wpm = float(np.clip(175.0 * speed, *ESPEAK_WPM))
            # the word on stdin: a word starting with '-' is not an option
            cmd = ["espeak-ng", "-v", voice.name, "-s", f"{wpm:.0f}", "-w", str(wav), "--stdin"]
            text = word
        try:
            out = subprocess.run(cmd, input=text, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as e:
            raise AudioError(f"{voice.label}: could not run {cmd[0]}: {e}") from e
        if out.returncode != 0 or not wav.is_file() or wav.stat().st_size <= 44:
            msg = (out.stderr or out.stdout).strip().splitlines()
            raise AudioError(f"{voice.label}: {cmd[0]} made no audio for {word!r} "
                             f"({msg[-1] if msg else f'exit {out.returncode}'}); is "
                             f"{voice.name!r} one of its voices?")
        return _read_wav(wav)




def trim_silence(x: np.ndarray, db: float = TRIM_DB) -> np.ndarray:
    """``x`` without its leading and trailing 10-ms frames quieter than ``db`` under its loudest."""
    p = frame_power(x)
    if p.size == 0:
        return x
    level = 10 * np.log10(p + 1e-12)
    loud = np.flatnonzero(level > level.max() - db)
    return x[loud[0] * HOP:min(len(x), (loud[-1] + 1) * HOP)]


def _resample_to(x: np.ndarray, n: int) -> np.ndarray:
    from scipy.signal import resample

    return x.astype(np.float32) if len(x) == n else resample(x, n).astype(np.float32)


Synthesizer = Callable[[str, float], np.ndarray]


def fit_word(say: Synthesizer, word: str, n: int, tries: int = 6) -> tuple[np.ndarray, float, bool]:
    """``word`` from ``say(word, speed)`` fitted into ``n`` samples: (samples [n], the speed
    used, whether it fitted; an unfitted word is resampled by at most MAX_RESAMPLE and centred).

    The length falls with the speed, but not in proportion (espeak-ng speeds up short words
    by more than asked above about 300 words per minute): the speed is searched within a
    bracket, proportionally while the steps stay inside it, by halving (in log speed) when
    they would not."""
    speed, x = 1.0, trim_silence(say(word, 1.0))
    slow, fast = 0.0, np.inf  # speeds known to be too slow (too long) and too fast
    miss = lambda y: abs(np.log(max(len(y), 1) / n))  # noqa: E731
    best = (x, speed)
    for _ in range(tries):
        if len(x) and abs(len(x) / n - 1.0) <= FIT_TOLERANCE:
            break
        if len(x) > n:
            slow = max(slow, speed)
        else:
            fast = min(fast, speed)
        guess = speed * len(x) / n if len(x) else speed * 0.5
        if not slow < guess < fast:
            guess = np.sqrt(slow * fast) if slow > 0 and np.isfinite(fast) else guess
        if guess == speed:
            break
        speed = guess
        x = trim_silence(say(word, speed))
        if miss(x) < miss(best[0]):
            best = (x, speed)
    x, speed = best
    ratio = len(x) / n if len(x) else 1.0
    fits = 1.0 / MAX_RESAMPLE <= ratio <= MAX_RESAMPLE
    if fits:
        return _resample_to(x, n), speed, True
    m = max(1, int(round(len(x) / np.clip(ratio, 1.0 / MAX_RESAMPLE, MAX_RESAMPLE))))
    y, out = _resample_to(x, m), np.zeros(n, np.float32)
    lo = (n - m) // 2
    if lo >= 0:
        out[lo:lo + m] = y
    else:
        out[:] = y[-lo:-lo + n]
    return out, speed, False


def _floor_rms(x: np.ndarray) -> float:
    """RMS of the quietest tenth of the 10-ms frames: the recording's noise floor."""
    p = frame_power(x)
    if p.size == 0:
        return 0.0
    return float(np.sqrt(np.percentile(p, 10)))


@dataclass
class Respoken:
    samples: np.ndarray  #: float32 [num_samples] at 16 kHz
    voice: str
    words: int
    unfitted: list[str]  #: words resampled by the MAX_RESAMPLE limit and centred
    gain_db: float  #: applied to meet the reference's speech loudness (0 without one)
    #: words the voice said nothing for (flite, for a word in another alphabet): left silent
    unsaid: list[str] = field(default_factory=list)


def respeak(words: list[WordTiming], voice: Voice | Synthesizer, num_samples: int,
            reference: np.ndarray | None = None, label: str | None = None,
            seed: int = 0) -> Respoken:
    """The ``words`` said by ``voice`` (a Voice, or ``say(word, speed) -> samples`` at 16 kHz),
    each in its span, in a track of ``num_samples`` at 16 kHz (words past its end are cut),
    scaled to the speech loudness of ``reference`` when given, over a noise floor (its
    quietest tenth's level; ``seed`` draws the noise)."""
    if isinstance(voice, Voice):
        say: Synthesizer = lambda w, s: synthesize(w, voice, s)  # noqa: E731
        label = label or voice.label
    else:
        say = voice
    track = np.zeros(num_samples, np.float32)
    fade = max(1, int(FADE_SECONDS * SAMPLE_RATE))
    ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
    unfitted, unsaid = [], []
    for w in words:
        a, b = int(round(w.start * SAMPLE_RATE)), int(round(w.end * SAMPLE_RATE))
        if a >= num_samples or b - a < 2 * fade:
            continue
        x, _, fits = fit_word(say, w.word, b - a)
        if float(np.abs(x).max(initial=0.0)) < SILENT_PEAK:
            unsaid.append(w.word)
            continue
        if not fits:
            unfitted.append(w.word)
        x[:fade] *= ramp
        x[-fade:] *= ramp[::-1]
        b = min(b, num_samples)
        track[a:b] += x[:b - a]
    if unsaid and not track.any():
        # the track would be silent where the clip speaks: no voice at all, without an error
        named = ", ".join(repr(w) for w in unsaid[:5]) + (" ..." if len(unsaid) > 5 else "")
        raise AudioError(f"{label or 'the voice'} said nothing for any of the words ({named}): "
                         "words it cannot read (another alphabet, only symbols?); write them as "
                         "they are said in the voice's language (flite: US English)")
    gain_db = 0.0
    if reference is not None:
        have, want = _speech_rms(track), _speech_rms(np.asarray(reference, np.float32))
        if have > 0 and want > 0:
            gain_db = 20 * np.log10(want / have)
            track *= want / have
    peak = float(np.abs(track).max(initial=0.0))
    if peak > 0.99:  # keep the loudness match from clipping: scale down, never clip
        track *= 0.99 / peak
        gain_db += 20 * np.log10(0.99 / peak)
    # a synthesiser's pauses are digital silence, which no microphone records (the log-mel
    # of zeros sits at its floor, far outside any training clip): white noise at the level of
    # the reference's quietest tenth (-60 dBFS without one)
    floor = _floor_rms(reference) if reference is not None else 10 ** (-60 / 20)
    track += np.random.default_rng(seed).normal(0.0, floor, num_samples).astype(np.float32)
    return Respoken(track, label or "custom", len(words), unfitted, gain_db, unsaid)


def write_preview(path: Path, reference: np.ndarray | None, tracks: dict[str, np.ndarray],
                  words: list[WordTiming]) -> None:
    """A PNG of the loudness of ``reference`` (the clip) and of each respoken track over the
    first PREVIEW_SECONDS, word spans shaded: the words of every track should sit in them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nerfhead.fileio import atomic_path

    rows = ([("the clip", reference)] if reference is not None else []) + list(tracks.items())
    fig, axes = plt.subplots(len(rows), 1, figsize=(12, 1.6 * len(rows) + 0.6), sharex=True,
                             squeeze=False)
    end = int(PREVIEW_SECONDS * 100)
    for ax, (name, x) in zip(axes[:, 0], rows):
        db = 10 * np.log10(frame_power(x)[:end] + 1e-10)
        ax.plot(np.arange(len(db)) / 100, db, lw=0.8)
        ax.set_ylabel(name, fontsize=8)
        ax.set_ylim(-80, 0)
        for w in words:
            if w.start < PREVIEW_SECONDS:
                ax.axvspan(w.start, w.end, color="tab:green", alpha=0.12)
    for w in words:
        if w.start < PREVIEW_SECONDS:
            axes[0, 0].text(w.start, -8, w.word, fontsize=7)
    axes[-1, 0].set_xlabel("seconds (loudness in dB per 10 ms; word spans shaded)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)
