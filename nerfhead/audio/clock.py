"""Audio on the clock of its container: sample ``t`` is the sound a player plays at time ``t``.

Joined, cut or streamed recordings often carry audio packets whose timestamps jump (gaps) or
step back (overlaps); a player follows the timestamps, but concatenating the decoded samples
slides the sound against the picture by every jump (issue 9: 2.2 s by the end of the 300-s
GRID clip). ``decode_audio_frames`` decodes with ffmpeg's ``ashowinfo`` filter, which logs the
presentation time and length of every decoded (resampled) frame, and ``place_on_clock`` lays
the samples out by those times: gaps become silence, repeated audio is dropped.

Used by preprocessing (``aud.wav``, recorded in the manifest) and by every reader of a
driving file (``nerfhead.audio.load_audio``: render, evaluate, serve, motion), so a video
given as the driving audio is heard as its player plays it, in step with its own frames.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np

_FRAME_LOG = re.compile(r"\bn:\s*\d+\s+pts:\s*(-?\d+)\s.*?\bnb_samples:\s*(\d+)")
# a picture stream that is not a cover image: the file has a clock shared with frames
_VIDEO_STREAM = re.compile(r"Stream #\d+:\d+.*?: Video: (?!.*attached pic)")


class ClockError(RuntimeError):
    """The audio could not be decoded, or its timing could not be read; names the file."""


def _ffmpeg() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _seek(start: float) -> list[str]:
    # only seek when asked: an input seek to 0 still drops the AAC priming samples
    return ["-ss", f"{start:.3f}"] if start > 0 else []


def decode_audio_frames(path, start: float, seconds: float | None, sr: int,
                        ) -> tuple[np.ndarray, np.ndarray, bool]:
    """The first audio stream of ``path`` as mono float32 at ``sr``; per decoded audio frame
    its presentation time and length ``[K, 2]`` (int64, in samples at ``sr``); and whether the
    file also holds a video stream (not a cover picture).

    Times are on the container's clock from ``start`` (ffmpeg shifts all streams of an input
    by one amount, the container's start plus ``-ss``, so frame 0 of the picture decoded the
    same way is at time 0). ``ashowinfo`` logs each frame after resampling, i.e. exactly the
    frames whose samples reach the pipe, so the log and the samples are checked against each
    other. ``seconds``: how much to decode (None: to the end).
    """
    af = f"aresample={sr},aformat=sample_fmts=flt:channel_layouts=mono,ashowinfo"
    limit = [] if seconds is None else ["-t", f"{seconds:.3f}"]
    cmd = [_ffmpeg(), "-nostdin", "-hide_banner", "-loglevel", "info", *_seek(start), *limit,
           "-i", str(path), "-map", "0:a:0", "-vn", "-af", af, "-f", "f32le", "-"]
    proc = subprocess.run(cmd, capture_output=True)
    err = proc.stderr.decode(errors="replace")
    if proc.returncode != 0:
        lines = [ln for ln in err.strip().splitlines() if "ashowinfo" not in ln]
        if any("matches no streams" in ln or "does not contain any stream" in ln for ln in lines):
            raise ClockError(f"{path} has no audio stream (a video without sound, or a picture); "
                             "give a file with the speech: a WAV, MP3, M4A, or a video with sound")
        empty = Path(path).is_file() and Path(path).stat().st_size == 0
        raise ClockError(f"cannot decode audio from {path}: "
                         + ("the file is empty (0 bytes)" if empty else
                            lines[-1][-300:] if lines else f"ffmpeg exit {proc.returncode}")
                         + ". Is it an audio or video file? Check that it plays, or export it again")
    samples = np.frombuffer(proc.stdout, "<f4")
    frames = np.array([(int(m.group(1)), int(m.group(2))) for m in _FRAME_LOG.finditer(err)],
                      np.int64).reshape(-1, 2)
    if samples.size == 0:
        raise ClockError(f"{path}: the audio stream decodes to no samples")
    if int(frames[:, 1].sum()) != samples.size:
        raise ClockError(f"{path}: ffmpeg's frame log covers {int(frames[:, 1].sum())} samples "
                         f"but {samples.size} were decoded; cannot place the audio on its clock")
    return samples, frames, bool(_VIDEO_STREAM.search(err))


def place_on_clock(samples: np.ndarray, frames: np.ndarray, n_out: int, jitter: int,
                   shift: int = 0) -> tuple[np.ndarray, dict]:
    """Samples laid out by presentation time: ``out[t]`` is the sound at sample time ``t``.

    ``frames`` [K, 2] = (pts, length) per decoded frame in samples, in decode order;
    ``shift`` is added to every pts. A frame that starts within ``jitter`` samples of where
    the previous one ended continues it seamlessly (timestamp rounding); a later start is a
    gap, left silent; an earlier one an overlap, whose repeated samples are dropped (the
    audio already placed is kept). Audio before time 0 or past ``n_out`` is cut. Returns the
    waveform [n_out] and what was found, in samples: the first frame's start, the gaps
    ``(where, length)`` and the overlaps ``(where, samples dropped)``; consecutive frames
    that all repeat placed audio (a muxer that squeezed an overlap into rising timestamps)
    count as one overlap.
    """
    out = np.zeros(n_out, np.float32)
    gaps: list[list[int]] = []
    overlaps: list[list[int]] = []
    end = written = None  # where the previous frame ended; the furthest sample placed
    src, repeating = 0, False
    for pts, length in frames.tolist():
        pts += shift
        jump = end is not None and abs(pts - end) > jitter
        target = pts if end is None or jump else end
        if jump and pts > end:
            gaps.append([end, pts - end])
        dropped = 0 if written is None else max(0, min(written, target + length) - target)
        if dropped and (jump or repeating):
            if repeating:
                overlaps[-1][1] += dropped
            else:
                overlaps.append([target, dropped])
        repeating = dropped > 0 and (jump or repeating)
        first = target + dropped
        lo, hi = max(first, 0), min(target + length, n_out)
        if hi > lo:
            out[lo:hi] = samples[src + lo - target:src + hi - target]
        src += length
        end = target + length
        written = end if written is None else max(written, end)
    return out, {"start": int(frames[0, 0]) + shift if len(frames) else 0,
                 "gaps": [tuple(g) for g in gaps], "overlaps": [tuple(o) for o in overlaps]}


def end_on_clock(frames: np.ndarray, jitter: int, shift: int = 0) -> int:
    """Where the last audio placed by ``place_on_clock`` ends (samples): the length that
    keeps every decoded sample, gaps included."""
    end = None
    for pts, length in frames.tolist():
        pts += shift
        start = pts if end is None or abs(pts - end) > jitter else end
        end = start + length if end is None else max(end, start + length)
    return max(0, end or 0)


def load_on_clock(path, sr: int, jitter_ms: float = 2.0) -> tuple[np.ndarray, dict]:
    """The whole first audio stream of ``path`` as its player plays it, and what was found.

    A video file keeps its container clock, so sample ``t`` is heard with the picture shown at
    ``t`` (audio that starts late is led in by silence; audio before the picture is cut); an
    audio-only file starts at its first sample. Gaps in the timestamps become silence and
    repeated audio is dropped either way. ``found``: ``has_video``, ``start`` (seconds of the
    first sample against time 0), and the number and total seconds of gaps and overlaps.
    """
    samples, frames, has_video = decode_audio_frames(Path(path), 0.0, None, sr)
    jitter = int(round(jitter_ms * sr / 1000))
    shift = 0 if has_video else -int(frames[0, 0])
    placed, found = place_on_clock(samples, frames, end_on_clock(frames, jitter, shift), jitter,
                                   shift)
    return placed, {"has_video": has_video, "start": round(int(frames[0, 0]) / sr, 4),
                    "num_gaps": len(found["gaps"]),
                    "gap_seconds": round(sum(k for _, k in found["gaps"]) / sr, 4),
                    "num_overlaps": len(found["overlaps"]),
                    "overlap_seconds": round(sum(k for _, k in found["overlaps"]) / sr, 4)}
