"""Other voices saying the same words: pitch and formants shifted, timing kept.

A model trained on one person's speech learns that person's voice as much as the words: the
audio features of another speaker (higher pitch, shorter vocal tract, another microphone) fall
outside what it has seen, and the mouth follows them badly (docs/benchmarks.md, "Lip sync
driven by other voices"). Training on the clip's own speech shifted to other voices, frame for
frame on the same clock, teaches the audio path what stays the same across voices: the
articulation.

``shift_voice`` runs the Rubber Band pitch shifter through the ffmpeg that imageio-ffmpeg
bundles (its ``rubberband`` filter; no other dependency): the spectrum (pitch and formants
together, as a resampling would, but with the duration kept) is scaled by ``2 ** (semitones
/ 12)``. The output has exactly as many samples as the input and stays on its clock: the loudness
contour of real speech stays within one mel frame (10 ms) of the original's, and a sharp
onset comes 12-14 ms early (the analysis window smearing it), under half a video frame at
25 fps (tests/test_audio_voice.py).
"""

from __future__ import annotations

import subprocess
from functools import lru_cache

import numpy as np

from nerfhead.audio.features import SAMPLE_RATE, AudioError

#: the shifts preprocessing renders by default, semitones: about the spread of adult voices
#: around a speaker's own (a man's to a woman's formants is about +3, pitch about +10)
DEFAULT_SHIFTS = (-4.0, -2.0, 2.0, 4.0)


def _ffmpeg() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


@lru_cache(maxsize=1)
def rubberband_available() -> bool:
    """True when the bundled ffmpeg has the rubberband filter (asked once per process)."""
    try:
        out = subprocess.run([_ffmpeg(), "-hide_banner", "-h", "filter=rubberband"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and "Unknown filter" not in out.stdout + out.stderr


def shift_voice(samples: np.ndarray, semitones: float, sr: int = SAMPLE_RATE) -> np.ndarray:
    """``samples`` (float mono) with pitch and formants shifted by ``semitones``: float32,
    the same length, the same clock. 0 returns a copy."""
    x = np.ascontiguousarray(np.asarray(samples, dtype=np.float32))
    if x.ndim != 1:
        raise ValueError(f"shift_voice expects mono samples [S], got shape {x.shape}")
    if semitones == 0 or x.size == 0:
        return x.copy()
    if not -12.0 <= semitones <= 12.0:
        raise ValueError(f"shift_voice: {semitones} semitones is outside the +-12 of a voice; "
                         "give a shift between -12 and 12 (a man's formants to a woman's are "
                         "about +3)")
    ratio = 2.0 ** (semitones / 12.0)
    cmd = [_ffmpeg(), "-hide_banner", "-loglevel", "error", "-f", "f32le", "-ar", str(sr),
           "-ac", "1", "-i", "pipe:0", "-af", f"rubberband=pitch={ratio:.6f}",
           "-f", "f32le", "-ar", str(sr), "-ac", "1", "pipe:1"]
    try:
        out = subprocess.run(cmd, input=x.tobytes(), capture_output=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as e:
        raise AudioError(f"shift_voice: could not run ffmpeg ({cmd[0]}): {e}") from e
    if out.returncode != 0:
        err = out.stderr.decode(errors="replace").strip().splitlines()
        raise AudioError(f"shift_voice: ffmpeg's rubberband filter failed ({cmd[0]}): "
                         f"{err[-1] if err else 'no message'}; an ffmpeg without rubberband "
                         "cannot make voice-shifted features (set audio.voice_shifts=[] to "
                         "preprocess without them)")
    y = np.frombuffer(out.stdout, dtype=np.float32)
    # the filter flushes its tail in whole blocks: cut or pad to the input's length
    if y.size >= x.size:
        y = y[:x.size]
    else:
        y = np.concatenate([y, np.zeros(x.size - y.size, np.float32)])
    return np.clip(y, -1.0, 1.0).astype(np.float32)
