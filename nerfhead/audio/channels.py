"""Why a track that plays loud can decode to silence: stereo channels that cancel.

nerfhead hears every file as mono (ffmpeg's downmix averages the channels). A recording whose
two channels are each other's inverse (a microphone wired out of phase on one side, a "wide
stereo" effect, a badly made split track) plays loud on headphones and mixes to nothing, so
preprocessing says "digital silence" and a render "no speech found" about a file the user can
hear. :func:`cancelling_channels` looks at the channels themselves when the mix has no speech
and names that cause, with the way out (keep one channel).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

#: below this level (dBFS) the channels themselves count as silent: nothing cancelled
CHANNEL_FLOOR_DB = -60.0
#: the mix this far (dB) or more below its loudest channel: the channels cancel
CANCEL_DB = 20.0


def _db(rms: float) -> float:
    return 20.0 * np.log10(max(rms, 1e-12))


def cancelling_channels(path, seconds: float = 30.0, sr: int = 16000) -> str | None:
    """When the first two audio channels of ``path`` (its first ``seconds``) are loud but
    their mono mix is ``CANCEL_DB`` quieter, a sentence naming that and the fix; else None
    (one channel, channels that are silent too, or a file ffmpeg cannot read: the caller's
    own error covers those)."""
    from nerfhead.audio.clock import _ffmpeg

    path = Path(path)
    if not path.is_file():
        return None
    # two channels kept: a mono source comes out duplicated (its mix is itself, never cancels)
    cmd = [_ffmpeg(), "-nostdin", "-hide_banner", "-loglevel", "error", "-t", f"{seconds:.3f}",
           "-i", str(path), "-map", "0:a:0", "-vn", "-af",
           f"aresample={sr},aformat=sample_fmts=flt:channel_layouts=stereo", "-f", "f32le", "-"]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    x = np.frombuffer(proc.stdout, "<f4")
    if proc.returncode != 0 or x.size < 2:
        return None
    x = x[: x.size // 2 * 2].reshape(-1, 2).astype(np.float64)
    left, right = (float(np.sqrt(np.mean(x[:, c] ** 2))) for c in (0, 1))
    mix = float(np.sqrt(np.mean(((x[:, 0] + x[:, 1]) / 2) ** 2)))
    loudest = max(left, right)
    if _db(loudest) < CHANNEL_FLOOR_DB or _db(loudest) - _db(mix) < CANCEL_DB:
        return None
    return (f"its two audio channels cancel each other in the mono mix that nerfhead listens to "
            f"(left {_db(left):.0f} dBFS, right {_db(right):.0f} dBFS, their mix "
            f"{_db(mix):.0f} dBFS): one channel is the other inverted (a microphone wired out of "
            f"phase, or a stereo effect). Make a file of one channel and use that, e.g. "
            f"`ffmpeg -i {path} -af \"pan=mono|c0=c0\" -c:v copy {path.stem}_left{path.suffix}`")
