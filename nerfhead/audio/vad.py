"""Where the speech is in a waveform (voice activity), to refuse or warn about silent input.

Detector: Silero VAD, the ONNX model the ``openwakeword`` wheel ships, run with onnxruntime
(no download; the same optional dependency as the ``ow`` audio feature), on 30 ms chunks with
its recurrent state carried over. Without it, an energy detector: a 30 ms chunk whose RMS
level is above ``ENERGY_DBFS`` counts as speech. The energy detector cannot tell speech from
loud noise or music; the report names the detector used.

Both are smoothed the same way: runs of speech shorter than 0.1 s are dropped (clicks) and
gaps shorter than 0.3 s are closed (pauses between words). A trailing run of exact zeros is
reported apart: that is the silence ffmpeg pads a track with when it ends before the video.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

SAMPLE_RATE = 16000
CHUNK = 480  #: 30 ms at 16 kHz (Silero's recommended frame)
ENERGY_DBFS = -40.0  #: energy detector: speech when a chunk's RMS is above this level
MIN_SPEECH_S = 0.1  #: shorter speech runs are dropped
MAX_PAUSE_S = 0.3  #: shorter gaps between speech runs are closed
MIN_PADDING_S = 0.2  #: trailing exact zeros at least this long are reported as padding


@dataclass
class SpeechReport:
    """Voice activity of a waveform; times in seconds from its start."""

    detector: str  #: "silero-vad" or "energy"
    seconds: float  #: length of the waveform
    speech_seconds: float  #: total time with speech
    speech: list = field(default_factory=list)  #: [start, end] of each speech run
    silent: list = field(default_factory=list)  #: [start, end] of each gap without speech
    padded_from: float | None = None  #: start of the trailing exact zeros (audio ended early)

    @property
    def fraction(self) -> float:
        return self.speech_seconds / self.seconds if self.seconds else 0.0

    def silent_longer_than(self, seconds: float) -> list:
        return [r for r in self.silent if r[1] - r[0] >= seconds]


def format_ranges(ranges, limit: int = 6) -> str:
    """``0.0-2.4 s, 6.1-8.0 s`` (at most ``limit`` ranges, then how many more)."""
    text = ", ".join(f"{a:.1f}-{b:.1f}" for a, b in ranges[:limit])
    more = f" and {len(ranges) - limit} more" if len(ranges) > limit else ""
    return f"{text} s{more}" if ranges else "none"


def _silero_path() -> str | None:
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None:
        return None
    spec = importlib.util.find_spec("openwakeword")
    if spec is None or not spec.origin:
        return None
    p = os.path.join(os.path.dirname(spec.origin), "resources", "models", "silero_vad.onnx")
    return p if os.path.isfile(p) else None


@lru_cache(maxsize=1)
def _silero_session():
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.inter_op_num_threads = opts.intra_op_num_threads = 1
    return ort.InferenceSession(_silero_path(), sess_options=opts, providers=["CPUExecutionProvider"])


def chunk_speech(samples: np.ndarray, detector: str = "auto") -> tuple[np.ndarray, str]:
    """Per 30 ms chunk: whether it holds speech (bool array), and the detector used."""
    x = np.asarray(samples, np.float32).reshape(-1)
    n = len(x) // CHUNK
    if detector == "auto":
        detector = "silero-vad" if _silero_path() else "energy"
    if n == 0:
        return np.zeros(0, bool), detector
    if detector == "silero-vad":
        sess = _silero_session()
        h = np.zeros((2, 1, 64), np.float32)
        c = np.zeros((2, 1, 64), np.float32)
        sr = np.array(SAMPLE_RATE, np.int64)
        prob = np.empty(n, np.float32)
        for i in range(n):
            out, h, c = sess.run(None, {"input": x[None, i * CHUNK:(i + 1) * CHUNK], "h": h,
                                        "c": c, "sr": sr})
            prob[i] = out[0][0]
        return prob > 0.5, detector
    if detector != "energy":
        raise ValueError(f"unknown speech detector {detector!r} (auto, silero-vad, energy)")
    rms = np.sqrt(np.mean(x[: n * CHUNK].reshape(n, CHUNK).astype(np.float64) ** 2, axis=1))
    return 20 * np.log10(rms + 1e-10) > ENERGY_DBFS, detector


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) index runs where ``mask`` is True."""
    d = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist()))


def smooth(mask: np.ndarray, chunk_s: float = CHUNK / SAMPLE_RATE) -> np.ndarray:
    """Drop speech runs shorter than MIN_SPEECH_S, then close gaps shorter than MAX_PAUSE_S."""
    out = mask.copy()
    for a, b in _runs(out):
        if (b - a) * chunk_s < MIN_SPEECH_S:
            out[a:b] = False
    runs = _runs(out)
    for (_, b), (a2, _) in zip(runs, runs[1:]):
        if (a2 - b) * chunk_s < MAX_PAUSE_S:
            out[b:a2] = True
    return out


def find_speech(samples: np.ndarray, sr: int = SAMPLE_RATE, detector: str = "auto") -> SpeechReport:
    """Speech and silence of mono float ``samples`` at ``sr`` (must be 16 kHz)."""
    if sr != SAMPLE_RATE:
        raise ValueError(f"find_speech needs {SAMPLE_RATE} Hz audio, got {sr}")
    x = np.asarray(samples, np.float32).reshape(-1)
    total = len(x) / sr
    nonzero = np.flatnonzero(x != 0)
    end = (nonzero[-1] + 1) if nonzero.size else 0
    padded_from = end / sr if total - end / sr >= MIN_PADDING_S else None
    mask, used = chunk_speech(x, detector)
    mask = smooth(mask)
    cs = CHUNK / sr
    speech = [[round(a * cs, 3), round(min(b * cs, total), 3)] for a, b in _runs(mask)]
    silent, t = [], 0.0
    for a, b in speech:
        if a > t:
            silent.append([round(t, 3), a])
        t = b
    if total - t > 1e-6:
        silent.append([round(t, 3), round(total, 3)])
    return SpeechReport(used, round(total, 3), round(sum(b - a for a, b in speech), 3), speech,
                        silent, None if padded_from is None else round(padded_from, 3))
