"""Blinks: measured from a clip's blendshapes, derived per eye, synthesised, set at render time.

**Measuring** (``measure_blinks``): the eye closure signal is the mean of MediaPipe's
eyeBlinkLeft and eyeBlinkRight (people blink with both eyes). A blink is a peak of it that
rises at least ``PROMINENCE`` above its surroundings (``scipy.signal.find_peaks``); its
duration is the peak's full width at half prominence. From the blinks of a clip come the
speaker's rate (blinks per minute), durations, intervals between blinks (peak to peak,
within stretches the clip really covers), the peak heights relative to the typical one, and the
mean shape of a blink (closure against time in units of its duration). The eye columns' levels
with the eyes open (median away from blinks) and closed (median at the peaks) map a closure
value in [0, 1] to blendshape values and back.

**Per-eye blink** (``derived_blink``): ``(eyeBlink - open) / (closed - open)`` per eye, clipped
to [0, 1]: 0 is the speaker's usual open eye, 1 the usual closed eye of a blink.

**Render-time blinks** (``blink_closure``): ``clip`` keeps the source's curves, ``none`` holds
both eyes open, ``natural`` synthesises blinks as a renewal process: intervals drawn from the
speaker's measured ones (or, with fewer than 5 measured, a gamma distribution of shape 2 and
the measured mean), durations and heights drawn from the measured ones, each blink the speaker's
mean shape; a file gives per-frame ``blink_left``/``blink_right`` (or ``blink``) in [0, 1], or
onset times ``blink_at_s``. ``apply_closure`` writes a closure curve into every eye column the
model might read (eyeBlink, eyeSquint, eyeWide), each moved between its open and closed level,
so a blink looks to the model like the blinks it was trained on.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from nerfhead.motion.table import BLENDSHAPES, MotionFileError, _parse_columns, _ranges

log = logging.getLogger("nerfhead.motion")

PROMINENCE = 0.15  #: a blink rises at least this much above its surroundings (eyeBlink units)
MIN_SEPARATION_S = 0.12  #: peaks closer than this are one blink
MIN_INTERVALS_FOR_EMPIRICAL = 5  #: fewer measured intervals: gamma(shape 2) with their mean
GAMMA_SHAPE = 2.0
REFRACTORY_S = 0.25  #: no synthesised blink starts sooner than this after the previous one
SHAPE_SPAN = 1.5  #: the blink shape is sampled over +-SHAPE_SPAN durations around the peak
SHAPE_SAMPLES = 31
EYE_COLUMNS = {"left": ("eyeBlinkLeft", "eyeSquintLeft", "eyeWideLeft"),
               "right": ("eyeBlinkRight", "eyeSquintRight", "eyeWideRight")}
MODES = ("clip", "natural", "none")


class BlinkError(ValueError):
    """Blinks cannot be measured or set as asked (the message says why and what to do)."""


@dataclass
class BlinkProfile:
    """A speaker's blinking, measured from a clip (see the module docstring)."""

    fps: float
    seconds: float  #: length of the analysed frames
    count: int  #: blinks found
    rate_per_min: float
    durations_s: list = field(default_factory=list)  #: full width at half closure, per blink
    intervals_s: list = field(default_factory=list)  #: peak to peak, consecutive blinks
    heights: list = field(default_factory=list)  #: peak closure of each blink (median = 1)
    shape: list = field(default_factory=list)  #: mean closure over +-SHAPE_SPAN durations
    open_level: dict = field(default_factory=dict)  #: eye column -> value with the eyes open
    closed_level: dict = field(default_factory=dict)  #: eye column -> value at a blink's peak

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("durations_s", "intervals_s", "heights", "shape"):
            d[k] = [round(float(v), 4) for v in d[k]]
        d["open_level"] = {k: round(float(v), 4) for k, v in self.open_level.items()}
        d["closed_level"] = {k: round(float(v), 4) for k, v in self.closed_level.items()}
        return d

    def summary(self) -> str:
        if not self.count:
            return f"no blinks in {self.seconds:.1f} s"
        return (f"{self.count} blinks in {self.seconds:.1f} s ({self.rate_per_min:.1f}/min), "
                f"median duration {1000 * np.median(self.durations_s):.0f} ms")


def _col(name: str) -> int:
    return BLENDSHAPES.index(name)


def closure_signal(bs: np.ndarray) -> np.ndarray:
    """Mean of eyeBlinkLeft and eyeBlinkRight per frame."""
    bs = np.asarray(bs, np.float64)
    return 0.5 * (bs[:, _col("eyeBlinkLeft")] + bs[:, _col("eyeBlinkRight")])


def find_blinks(signal: np.ndarray, fps: float = 25.0) -> tuple[np.ndarray, np.ndarray, dict]:
    """Peaks (frame indices), their widths in frames (at half prominence) and find_peaks'
    properties of one contiguous closure signal."""
    from scipy.signal import find_peaks, peak_widths

    if len(signal) < 3:
        return np.zeros(0, int), np.zeros(0), {}
    peaks, props = find_peaks(signal, prominence=PROMINENCE,
                              distance=max(1, int(round(MIN_SEPARATION_S * fps))))
    widths = peak_widths(signal, peaks, rel_height=0.5)[0] if len(peaks) else np.zeros(0)
    return peaks, widths, props


def measure_blinks(bs: np.ndarray, fps: float = 25.0, frame_ids=None) -> BlinkProfile:
    """The speaker's blinking from blendshapes ``bs`` [N, 52] of frames ``frame_ids`` (default
    0..N-1; a jump in the ids splits the clip so no interval spans a gap)."""
    bs = np.asarray(bs, np.float64)
    ids = np.arange(len(bs)) if frame_ids is None else np.asarray(frame_ids)
    sig = closure_signal(bs)
    runs = np.split(np.arange(len(ids)), np.flatnonzero(np.diff(ids) != 1) + 1)
    peaks, widths, heights, intervals, shapes = [], [], [], [], []
    u = np.linspace(-SHAPE_SPAN, SHAPE_SPAN, SHAPE_SAMPLES)
    for run in runs:
        s = sig[run]
        p, w, props = find_blinks(s, fps)
        for k, (pk, wd) in enumerate(zip(p, w)):
            base = s[pk] - props["prominences"][k]
            t = pk + u * max(wd, 1.0)
            shapes.append((np.interp(t, np.arange(len(s)), s) - base) / max(s[pk] - base, 1e-6))
        peaks.extend(run[p].tolist())
        widths.extend(w.tolist())
        heights.extend(s[p].tolist())
        intervals.extend((np.diff(p) / fps).tolist())
    seconds = len(ids) / fps
    peaks = np.asarray(peaks, int)
    near = np.zeros(len(bs), bool)
    for pk, wd in zip(peaks, widths):
        near[max(0, int(pk - wd)):int(pk + wd) + 1] = True
    cols = EYE_COLUMNS["left"] + EYE_COLUMNS["right"]
    open_level = {c: float(np.median(bs[~near, _col(c)] if (~near).any() else bs[:, _col(c)]))
                  for c in cols}
    closed_level = {c: float(np.median(bs[peaks, _col(c)])) for c in cols} if len(peaks) else {}
    h = np.asarray(heights)
    rel = []
    if len(h):
        base = 0.5 * (open_level["eyeBlinkLeft"] + open_level["eyeBlinkRight"])
        rel = ((h - base) / max(np.median(h) - base, 1e-6)).tolist()
    return BlinkProfile(fps=fps, seconds=seconds, count=len(peaks),
                        rate_per_min=60.0 * len(peaks) / seconds if seconds else 0.0,
                        durations_s=(np.asarray(widths) / fps).tolist(), intervals_s=intervals,
                        heights=rel, shape=np.mean(shapes, 0).tolist() if shapes else [],
                        open_level=open_level, closed_level=closed_level)


def derived_blink(bs: np.ndarray, profile: BlinkProfile) -> np.ndarray:
    """Per-eye closure [N, 2] (subject's left, right) in [0, 1]; NaN when the clip has no
    blink to calibrate the closed level."""
    bs = np.asarray(bs, np.float64)
    out = np.full((len(bs), 2), np.nan)
    if not profile.closed_level:
        return out
    for j, eye in enumerate(("left", "right")):
        c = EYE_COLUMNS[eye][0]
        lo, hi = profile.open_level[c], profile.closed_level[c]
        out[:, j] = np.clip((bs[:, _col(c)] - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    return out


def blink_shape(profile: BlinkProfile, u: np.ndarray) -> np.ndarray:
    """The speaker's mean blink at ``u`` durations from the peak (0 outside the span)."""
    shape = np.asarray(profile.shape, np.float64)
    if shape.size == 0:  # no measured blink: a raised cosine of the same half-width
        return np.where(np.abs(u) < 1.0, 0.5 * (1 + np.cos(np.pi * u)), 0.0)
    grid = np.linspace(-SHAPE_SPAN, SHAPE_SPAN, len(shape))
    shape = np.clip(shape - min(shape[0], shape[-1]), 0.0, None)
    shape /= max(shape.max(), 1e-6)
    return np.interp(u, grid, shape, left=0.0, right=0.0)


def blinks_at(times_s, num_frames: int, profile: BlinkProfile, fps: float = 25.0,
              durations_s=None, heights=None) -> np.ndarray:
    """Closure [num_frames] with a blink peaking at each of ``times_s`` (seconds)."""
    t = np.arange(num_frames) / fps
    out = np.zeros(num_frames)
    med = float(np.median(profile.durations_s)) if profile.durations_s else 0.16
    for k, t0 in enumerate(times_s):
        d = med if durations_s is None else float(durations_s[k])
        h = 1.0 if heights is None else float(heights[k])
        out = np.maximum(out, h * blink_shape(profile, (t - t0) / max(d, 1e-3)))
    return np.clip(out, 0.0, 1.0)


def synthesize(num_frames: int, profile: BlinkProfile, fps: float = 25.0,
               seed: int = 0) -> tuple[np.ndarray, list[float]]:
    """Natural blinks for ``num_frames``: closure [num_frames] and the peak times (s)."""
    if profile.count == 0 or not profile.closed_level:
        raise BlinkError(f"--blink natural: no blink found in the clip's {profile.seconds:.1f} s, "
                         "so the speaker's blink rate and closed eyes cannot be measured (the "
                         "model never saw them closed); use --blink clip or none")
    rng = np.random.default_rng(seed)
    measured = np.asarray(profile.intervals_s, np.float64)
    mean_iv = 60.0 / profile.rate_per_min

    def interval() -> float:
        if len(measured) >= MIN_INTERVALS_FOR_EMPIRICAL:
            v = rng.choice(measured)
        else:
            v = rng.gamma(GAMMA_SHAPE, mean_iv / GAMMA_SHAPE)
        return max(float(v), REFRACTORY_S)

    total = num_frames / fps
    times, t = [], rng.uniform(0.0, interval())  # the first blink anywhere in a first interval
    while t < total + 1.0:
        times.append(t)
        t += interval()
    k = len(times)
    durs = rng.choice(np.asarray(profile.durations_s), k) if k else []
    heights = np.clip(rng.choice(np.asarray(profile.heights), k), 0.3, 1.0) if k else []
    return blinks_at(times, num_frames, profile, fps, durs, heights), [round(x, 3) for x in times]


def load_blink_file(path, num_frames: int, profile: BlinkProfile, fps: float = 25.0) -> np.ndarray:
    """Closure [num_frames, 2] from a file: per-frame ``blink_left``/``blink_right`` (any motion
    file) or ``blink`` columns in [0, 1], or a ``blink_at_s`` column of blink times."""
    path = Path(path)
    try:
        cols, meta = _parse_columns(path)
    except MotionFileError as e:
        raise BlinkError(f"--blink {path}: {e}") from None
    if "blink_left" in cols or "blink_right" in cols or "blink" in cols:
        if "blink" in cols:
            curve = np.column_stack([cols["blink"], cols["blink"]])
        elif "blink_left" in cols and "blink_right" in cols:
            curve = np.column_stack([cols["blink_left"], cols["blink_right"]])
        else:
            raise BlinkError(f"--blink {path}: has only one of blink_left/blink_right; give both "
                             "(or one 'blink' column for both eyes)")
        bad = np.flatnonzero(((curve < -1e-6) | (curve > 1 + 1e-6)).any(1))
        if bad.size:
            raise BlinkError(f"--blink {path}: blink values outside [0, 1] at frame(s) "
                             f"{_ranges(bad)} (0 = open, 1 = closed)")
        n = len(curve)
        if n < num_frames:
            log.warning("--blink %s: %d frames for %d frames of audio; the eyes stay open after "
                        "frame %d", path, n, num_frames, n - 1)
            curve = np.vstack([curve, np.zeros((num_frames - n, 2))])
        return np.clip(curve[:num_frames], 0.0, 1.0)
    if "blink_at_s" in cols:
        times = np.sort(cols["blink_at_s"])
        late = times[times > num_frames / fps]
        if len(late):
            log.warning("--blink %s: %d blink time(s) after the audio ends (%.2f s) are ignored",
                        path, len(late), num_frames / fps)
        c = blinks_at(times, num_frames, profile, fps)
        return np.column_stack([c, c])
    raise BlinkError(f"--blink {path}: no blink_left/blink_right, blink or blink_at_s column "
                     f"(found: {', '.join(cols) or 'none'})")


def blink_closure(mode: str, num_frames: int, profile: BlinkProfile, fps: float = 25.0,
                  seed: int = 0) -> np.ndarray | None:
    """Closure [N, 2] for ``--blink mode`` (``none``, ``natural`` or a file); None for clip."""
    if mode == "clip":
        return None
    if mode == "none":
        return np.zeros((num_frames, 2))
    if mode == "natural":
        c, times = synthesize(num_frames, profile, fps, seed)
        log.info("--blink natural: %d blinks in %.1f s (speaker: %s)", len(times),
                 num_frames / fps, profile.summary())
        return np.column_stack([c, c])
    if not Path(mode).exists():
        raise BlinkError(f"--blink {mode}: not one of {', '.join(MODES)} and no such file")
    return load_blink_file(mode, num_frames, profile, fps)


def apply_closure(expr: np.ndarray, closure: np.ndarray, profile: BlinkProfile) -> np.ndarray:
    """``expr`` [N, 52] with every eye column set from ``closure`` [N, 2] (0 open .. 1 closed)
    between the speaker's open and closed levels."""
    out = np.array(expr, np.float32, copy=True)
    closed = profile.closed_level
    if not closed and np.any(closure > 0):
        raise BlinkError("blinks were asked for but the clip has none, so the closed eye's "
                         "blendshapes are unknown; use --blink clip or none")
    for j, eye in enumerate(("left", "right")):
        for c in EYE_COLUMNS[eye]:
            lo = profile.open_level[c]
            hi = closed.get(c, lo)
            out[:, _col(c)] = lo + closure[:, j] * (hi - lo)
    return np.clip(out, 0.0, 1.0)
