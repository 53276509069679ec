"""Speech loudness: the level a model was trained at, and new audio brought to it.

The log-mel features are levels against full scale: the same speech 20 dB quieter moves every
mel value by 1.6, a fifth of the features' range, into sounds the model never heard (the
speech embedding, ``ow``, barely moves; HuBERT normalises its input). A recording made at
another level, a quiet phone memo or a text-to-speech file, would drive the mouth as if the
speaker were whispering or shouting. So ``render``, ``evaluate`` and ``serve`` scale the
driving audio, for the features only, to the speech level of the training clip's ``aud.wav``
(``match_speech_level``); the soundtrack of the video keeps the audio as given.

The level is the RMS over the 10-ms frames within 20 dB of the loud ones (the 99th
percentile) and 10 dB clear of the noise floor (the quietest tenth): the speech, not the
pauses, however long they are. ``nerfhead respeak`` matches its voices to a clip by a simpler
rule (``speech_rms``), so a voice made ``--like`` a clip needs a dB or two at most.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

log = logging.getLogger("nerfhead.audio")

SAMPLE_RATE = 16000
HOP = SAMPLE_RATE // 100  #: 10-ms frames for every loudness measure here
SPEECH_RANGE_DB = 20.0  #: frames within this of the loud ones count as speech
#: below this no speech level is measured (digital silence, or a track of hum)
SILENT_DB = -70.0
#: nor where the loudest 10-ms frames stand less than this above the quietest tenth: noise
#: alone (white noise: 2 dB), which matching would raise to the level of speech and the mouth
#: would mouth (speech: 31-42 dB in every clip and voice of docs/benchmarks.md)
SPEECH_CONTRAST_DB = 15.0
#: frames counted as speech stand at least this above the quietest tenth (the noise floor)
FLOOR_MARGIN_DB = 10.0
#: share of samples at full scale above which audio is called clipped (a loud but clean
#: recording has a few: 0.2% of the 8-s radio sample, 0.05% of the 300-s GRID clip; the radio
#: sample 40 dB louder: 77%)
CLIPPED_FRACTION = 0.01
#: the most gain applied either way: beyond it the audio is mostly noise, or clipped
MAX_GAIN_DB = 40.0
#: gains smaller than this are not applied (the training clip's own audio, a respoken voice)
MIN_GAIN_DB = 1.0
#: the choices of ``--audio-level``
LEVEL_CHOICES = ("match", "keep")


def clipped_fraction(samples) -> float:
    """The share of ``samples`` (floats, full scale 1) at full scale: above
    ``CLIPPED_FRACTION`` the sound was recorded or amplified too loud and is distorted."""
    samples = np.asarray(samples)
    return float(np.mean(np.abs(samples) >= 0.999)) if samples.size else 0.0


def frame_power(x: np.ndarray) -> np.ndarray:
    """Mean square of each whole 10-ms frame of ``x`` (float64 [len(x) // HOP])."""
    n = len(x) // HOP
    return (np.asarray(x[:n * HOP], np.float64).reshape(n, HOP) ** 2).mean(1)


def speech_rms(x: np.ndarray) -> float:
    """RMS over the 10-ms frames within 30 dB of the loudest: the loudness ``nerfhead respeak``
    matches its voices to (on a clean recording within a dB of ``speech_level_db``)."""
    p = frame_power(x)
    if p.size == 0:
        return 0.0
    db = 10 * np.log10(p + 1e-12)
    return float(np.sqrt(p[db > db.max() - 30.0].mean()))


def speech_level_db(x: np.ndarray) -> float | None:
    """The speech level of ``x`` in dB against full scale, or None when it is silent or no
    speech stands out of its noise."""
    return level_of_powers(frame_power(np.asarray(x, np.float32).reshape(-1)))


def level_of_powers(p: np.ndarray) -> float | None:
    """``speech_level_db`` from the 10-ms frame powers ``p``."""
    if p.size == 0:
        return None
    db = 10 * np.log10(p + 1e-12)
    floor = np.percentile(db, 10)
    if db.max() <= SILENT_DB or db.max() - floor < SPEECH_CONTRAST_DB:
        return None
    # the speech: within SPEECH_RANGE_DB of the loud frames (the 99th percentile: a click does
    # not move it), and clear of the noise floor (in a noisy recording the pauses' noise would
    # otherwise count as quiet speech, and how much of it there is would move the level)
    top = np.percentile(db, 99)
    level = 10 * np.log10(p[db > max(top - SPEECH_RANGE_DB, floor + FLOOR_MARGIN_DB)].mean())
    return float(level) if level > SILENT_DB else None


@dataclass(frozen=True)
class LevelMatch:
    """What ``match_speech_level`` did."""

    gain_db: float  #: applied to the samples (0 when not applied)
    level_db: float | None  #: the audio's speech level before (None: silent)
    target_db: float | None  #: the training clip's (None: unknown)
    note: str  #: one line for the log: what was done and why

    @property
    def applied(self) -> bool:
        return self.gain_db != 0.0


def match_speech_level(samples: np.ndarray, target_db: float | None, *, source: str = "the audio",
                       max_gain_db: float = MAX_GAIN_DB) -> tuple[np.ndarray, LevelMatch]:
    """``samples`` scaled so that their speech level is ``target_db`` (float32; may exceed
    full scale: the features read floats), and what was done. Not scaled: a silent track, an
    unknown target, or a gain under ``MIN_GAIN_DB``; a gain beyond ``max_gain_db`` is capped."""
    x = np.asarray(samples, np.float32).reshape(-1)
    level = speech_level_db(x)
    if target_db is None:
        return x, LevelMatch(0.0, level, None, f"{source}: speech level not matched (the "
                                                "training clip's level is unknown)")
    if level is None:
        return x, LevelMatch(0.0, None, target_db, f"{source}: no speech level to match (silent, "
                                                   "or no speech stands out of the noise): as given")
    gain = float(np.clip(target_db - level, -max_gain_db, max_gain_db))
    if abs(gain) < MIN_GAIN_DB:
        return x, LevelMatch(0.0, level, target_db,
                             f"{source}: speech at {level:.1f} dBFS, the training clip's level")
    capped = " (capped)" if abs(target_db - level) > max_gain_db else ""
    note = (f"{source}: speech at {level:.1f} dBFS, the training clip's at {target_db:.1f}: "
            f"{'raised' if gain > 0 else 'lowered'} by {abs(gain):.1f} dB{capped} for the "
            "features (the soundtrack is kept as given; --audio-level keep: as given)")
    return (x * np.float32(10 ** (gain / 20))).astype(np.float32), LevelMatch(gain, level, target_db, note)


def training_level_db(data_dir: str | os.PathLike | None) -> float | None:
    """The speech level of a dataset's ``aud.wav`` (the clip the model was trained on), or
    None when it cannot be read (said in the log)."""
    if data_dir is None:
        return None
    wav = Path(data_dir) / "aud.wav"
    try:
        st = wav.stat()
    except OSError:
        log.warning("%s not found: the driving audio's speech level cannot be matched to the "
                    "training clip's", wav)
        return None
    return _level_of(str(wav.resolve()), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=8)
def _level_of(path: str, size: int, mtime_ns: int) -> float | None:
    from nerfhead.audio.features import AudioError, load_audio

    try:
        return speech_level_db(load_audio(path))
    except AudioError as e:
        log.warning("%s: %s; the driving audio's speech level is not matched", path, e)
        return None


def bring_to_training_level(samples: np.ndarray, data_dir, mode: str = "match", *,
                            source: str = "the audio") -> tuple[np.ndarray, LevelMatch]:
    """``match_speech_level`` against ``data_dir``'s aud.wav (``mode`` "match"), or the
    samples as given ("keep"); the note is logged (a warning when the gain is 10 dB or more)."""
    if mode not in LEVEL_CHOICES:
        raise ValueError(f"audio level {mode!r}: choose one of {', '.join(LEVEL_CHOICES)}")
    if mode == "keep":
        x = np.asarray(samples, np.float32).reshape(-1)
        return x, LevelMatch(0.0, speech_level_db(x), None, f"{source}: level kept as given")
    x, match = match_speech_level(samples, training_level_db(data_dir), source=source)
    (log.warning if abs(match.gain_db) >= 10 else log.info)("%s", match.note)
    return x, match


class LiveLevelMatch:
    """``match_speech_level`` for a stream (``nerfhead serve``): the gain that brings the speech
    of the last ``history_seconds`` to ``target_db``. It starts at 0 dB, takes the first measured
    gain at once (before it there was no speech to mouth), then follows at most
    ``slew_db_per_second`` of audio, so that the features do not jump within a sentence; while
    no speech stands out of the noise it holds."""

    def __init__(self, target_db: float, history_seconds: float = 10.0,
                 slew_db_per_second: float = 6.0, max_gain_db: float = MAX_GAIN_DB):
        from collections import deque

        self.target_db = float(target_db)
        self.slew, self.max_gain = float(slew_db_per_second), float(max_gain_db)
        self.powers: deque[float] = deque(maxlen=int(history_seconds * 100))
        self.rest = np.zeros(0, np.float32)  #: samples short of a whole 10-ms frame
        self.gain_db = 0.0
        self.measured = False  #: a speech level was measured once

    def apply(self, x: np.ndarray) -> np.ndarray:
        """``x`` (the next samples of the stream) at the current gain, after updating it."""
        x = np.asarray(x, np.float32).reshape(-1)
        joined = np.concatenate([self.rest, x])
        whole = len(joined) // HOP * HOP
        self.powers.extend(frame_power(joined[:whole]).tolist())
        self.rest = joined[whole:]
        level = level_of_powers(np.fromiter(self.powers, np.float64, len(self.powers)))
        if level is not None:
            want = float(np.clip(self.target_db - level, -self.max_gain, self.max_gain))
            if not self.measured:
                self.gain_db, self.measured = want, True
            else:
                step = self.slew * len(x) / SAMPLE_RATE
                self.gain_db += float(np.clip(want - self.gain_db, -step, step))
        if abs(self.gain_db) < 1e-9:
            return x
        return (x * np.float32(10 ** (self.gain_db / 20))).astype(np.float32)
