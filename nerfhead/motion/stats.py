"""Statistics of head motion, to judge generated motion against held-out real motion.

Per sequence of canonical poses [N, 6] (degrees, metres) at 25 fps:

- **angular speed** (deg/s): magnitude of the angular velocity (rotation vector of
  consecutive head rotations, ``pose.angular_velocity``), one value per frame step;
- **angular acceleration** (deg/s^2): magnitude of the change of the angular velocity vector;
- **amplitude** (deg): per frame, the angle of the head from the mean of its 2-s window
  (non-overlapping windows; local, so a clip assembled from takes with different average
  poses is judged by its motion, not by the offsets between takes);
- **translation speed** (mm/s) of the head centre.

Steps and windows touching a cut (``generator.find_cuts``) are left out. Distributions are
compared with the Wasserstein-1 distance (``scipy.stats.wasserstein_distance``, in the
statistic's own unit: the mean shift needed to turn one histogram into the other) and the
two-sample Kolmogorov-Smirnov statistic. Speech against silence: the ratio of the mean angular
speed in frames with voice activity to that in frames without. Copying: each generated 2-s
window (mean removed) against every training window (stride 1), root-mean-square angle
difference of the nearest; a copy of training motion scores 0.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.stats import ks_2samp, wasserstein_distance

from nerfhead.motion.pose import angular_velocity

WINDOW = 50  #: 2 s at 25 fps: amplitude windows and copy-check windows
STATS = ("angular_speed", "angular_acceleration", "amplitude", "translation_speed")
UNITS = {"angular_speed": "deg/s", "angular_acceleration": "deg/s^2", "amplitude": "deg",
         "translation_speed": "mm/s"}


def valid_steps(n: int, stretches) -> np.ndarray:
    """bool [n]: frame i lies inside a continuous stretch."""
    ok = np.zeros(n, bool)
    for a, b in stretches:
        ok[a:b] = True
    return ok


def motion_stats(pose6: np.ndarray, ok: np.ndarray | None = None, speech: np.ndarray | None = None,
                 fps: float = 25.0, smooth_sigma: float = 0.0) -> dict:
    """Per-step values of every statistic (arrays) and the speech/silence speed ratio.

    ``ok`` [N] bool marks frames inside continuous stretches (None: all); ``speech`` [N]
    voice activity; ``smooth_sigma`` Gaussian smoothing in frames before measuring.
    """
    p = np.asarray(pose6, np.float64)
    n = len(p)
    ok = np.ones(n, bool) if ok is None else np.asarray(ok, bool)
    if smooth_sigma > 0:
        p = p.copy()
        runs = np.split(np.arange(n), np.flatnonzero(np.diff(ok.astype(int)) != 0) + 1)
        for r in runs:
            if ok[r[0]] and len(r) > 1:
                p[r] = gaussian_filter1d(p[r], smooth_sigma, axis=0, mode="nearest")
    w = angular_velocity(p, fps)  # [N-1, 3], step i -> i+1
    step_ok = ok[1:] & ok[:-1]
    speed = np.linalg.norm(w, axis=1)
    acc = np.linalg.norm(np.diff(w, axis=0), axis=1) * fps
    acc_ok = step_ok[1:] & step_ok[:-1]
    tspeed = np.linalg.norm(np.diff(p[:, 3:], axis=0), axis=1) * fps * 1000.0
    amp = []
    for k in range(0, n - WINDOW + 1, WINDOW):
        if ok[k:k + WINDOW].all():
            seg = p[k:k + WINDOW, :3]
            amp.append(np.linalg.norm(seg - seg.mean(0), axis=1))
    out = {"angular_speed": speed[step_ok], "angular_acceleration": acc[acc_ok],
           "amplitude": np.concatenate(amp) if amp else np.zeros(0),
           "translation_speed": tspeed[step_ok]}
    if speech is not None:
        s = np.asarray(speech, bool)[1:][step_ok]
        sp = speed[step_ok]
        out["speech_over_silence"] = (float(sp[s].mean() / sp[~s].mean())
                                      if s.any() and (~s).any() and sp[~s].mean() > 0 else None)
        out["speed_in_speech"] = float(sp[s].mean()) if s.any() else None
        out["speed_in_silence"] = float(sp[~s].mean()) if (~s).any() else None
    return out


def summarize(values: np.ndarray) -> dict:
    v = np.asarray(values, np.float64)
    if v.size == 0:
        return {"count": 0}
    return {"count": int(v.size), "mean": float(v.mean()), "median": float(np.median(v)),
            "p90": float(np.percentile(v, 90)), "p99": float(np.percentile(v, 99))}


def compare(real: dict, other: dict) -> dict:
    """W1 and KS of every statistic of ``other`` against ``real`` (both from motion_stats)."""
    out = {}
    for k in STATS:
        a, b = real[k], other[k]
        if len(a) == 0 or len(b) == 0:
            out[k] = {"w1": None, "ks": None}
            continue
        out[k] = {"w1": float(wasserstein_distance(a, b)), "ks": float(ks_2samp(a, b).statistic),
                  "w1_relative": float(wasserstein_distance(a, b) / max(np.mean(a), 1e-9))}
    return out


def windows(pose6: np.ndarray, ok: np.ndarray, stride: int = 1, length: int = WINDOW) -> np.ndarray:
    """[W, length*3] mean-removed angle windows lying inside continuous stretches."""
    p = np.asarray(pose6, np.float64)[:, :3]
    out = []
    for k in range(0, len(p) - length + 1, stride):
        if ok[k:k + length].all():
            w = p[k:k + length]
            out.append((w - w.mean(0)).ravel())
    return np.asarray(out).reshape(-1, length * 3)


def nearest_window_distance(query: np.ndarray, reference: np.ndarray, length: int = WINDOW,
                            chunk: int = 256) -> np.ndarray:
    """For each query window, the RMS angle difference (deg) to the nearest reference window."""
    if len(query) == 0 or len(reference) == 0:
        return np.zeros(0)
    rr = (reference ** 2).sum(1)
    out = []
    for i in range(0, len(query), chunk):
        q = query[i:i + chunk]
        d2 = (q ** 2).sum(1)[:, None] + rr[None] - 2 * q @ reference.T
        out.append(np.sqrt(np.maximum(d2.min(1), 0.0) / length))
    return np.concatenate(out)
