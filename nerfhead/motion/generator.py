"""Head motion from audio: a per-speaker stochastic model learned from the clip's own poses.

**Model** (``HeadMotionModel``): an autoregressive model of head-pose *velocities* at
keyframes every ``keyframe_step`` video frames (200 ms by default), conditioned on prosody
features of the audio, with a learned, audio-dependent Gaussian noise, a mean reversion that
keeps the head in the speaker's range, and a cubic spline through the keyframes::

    v_k = sum_j A_j v_{k-j} - kappa * y_{k-1} + sigma(f_k) * eps_k,     y_k = y_{k-1} + v_k
    log sigma(f) = U f + c

``y`` is the 6-D pose (yaw, pitch, roll, tx, ty, tz in the canonical frame of
``nerfhead.motion.pose``) standardised per axis; ``f`` the audio features (below), centred on
their training mean; ``eps`` standard normal noise from the seed.

**Fitting** (``fit``, seconds on a CPU): the training split's bundle-adjusted poses are cut into
stretches without jumps (frames missing from the transforms, ``scenes.json`` cuts when the
preprocessing wrote one, and pose jumps: a 6-frame displacement over ``jump_factor`` times its
median, as at the joins of a clip assembled from takes), with ``cut_margin`` frames dropped at
each side of a cut; lightly smoothed in time (``smooth_sigma`` frames: the tracking noise is
not head motion); subsampled at every phase of the keyframe grid. ``A`` by least
squares (ridge ``ridge``); ``U``, ``c`` by maximum likelihood of the residuals (L-BFGS; the
negative log-likelihood is convex in them); ``kappa`` per axis so that long simulations spread
as widely as the training poses (for an Ornstein-Uhlenbeck process the variance scales as
1/kappa, iterated to a fixed point). Working at 5 Hz keyframes matters: at 25 fps the
bundle-adjusted poses are so smooth that one-step velocities are almost perfectly predictable,
and a model fitted there piles up its small errors when run freely (measured: 2-3 times the
real angular speed on the 300-s GRID clip); at 5 Hz it runs true.

**Audio features** (``prosody_features``), per video frame: voice activity (0/1; Silero VAD,
else energy; ``nerfhead.audio.vad``), loudness (RMS dB relative to the median over the
speech of the same audio, /10, so recordings at any level compare), and the voice activity
smoothed over 0.5 s (being inside speech rather than at its edge). Pitch is not used.

**Sampling** (``sample``): keyframes rolled out from the rest pose with the seed's noise,
a cubic spline through them at 25 fps, then a soft limit into the training pose range: each
axis is left alone within 80% of its half-range from the centre and compressed smoothly
(tanh, continuous slope) beyond, so the head never leaves the range the NeRF was trained on.

**Limits.** The model knows the speaker's rhythm and spread of motion and how speech changes
them, not what is said: no nods on "yes", no emphasis on stressed words, no gaze. It learns
from the clip, so a clip with little motion gives little motion. A few seconds of training
poses give a crude model (few keyframes); minutes are better.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger("nerfhead.motion")

FEATURES = ("speech", "loudness", "speech_envelope")
AXES = ("yaw_deg", "pitch_deg", "roll_deg", "tx_m", "ty_m", "tz_m")
FORMAT = "nerfhead-head-motion"
VERSION = 1


@dataclass
class MotionModelConfig:
    """How the head-motion model is fitted and sampled."""

    keyframe_step: int = 5
    """Video frames between keyframes (5 at 25 fps: 5 Hz)."""
    order: int = 2
    """Past keyframe velocities the next one depends on."""
    smooth_sigma: float = 2.0
    """Gaussian smoothing of the training poses before fitting, frames."""
    jump_factor: float = 6.0
    """A 6-frame pose displacement above this many times its median is a cut."""
    cut_margin: int = 5
    """Frames dropped at each side of a cut."""
    max_gap: int = 3
    """Frames missing from the transforms in runs this short are interpolated, not cuts."""
    ridge: float = 1e-3
    """Ridge weight of the least-squares fit (relative to the mean squared regressor)."""
    limit_start: float = 0.8
    """Soft range limit: fraction of the half-range left untouched."""
    noise_ridge: float = 0.01
    """L2 penalty on how strongly the audio features scale the noise (guards short clips)."""
    reversion_iters: int = 12
    """Fixed-point iterations fitting the mean reversion to the training spread."""
    audio_drift: bool = False
    """Let the audio features push the velocity too (``B f``), not only scale the noise. Off:
    on the 300-s GRID clip it moved the bench statistics by a few percent either way, and on
    audio unlike the clip's a push integrates into drift."""
    fps: float = 25.0
    """Video frame rate."""


@dataclass
class HeadMotionModel:
    """A fitted head-motion model (arrays as nested lists so it saves as JSON)."""

    config: MotionModelConfig
    scale: list  #: per-axis standard deviation of the training poses (degrees / metres)
    feature_mean: list  #: training mean of each audio feature
    A: list  #: [order*6 (+ F with audio_drift), 6] regression of the keyframe velocity
    kappa: list  #: [6] mean reversion per keyframe step (standardised units)
    U: list  #: [F, 6] log-noise slope per feature
    c: list  #: [6] log-noise intercept
    lo: list  #: [6] training pose minimum (canonical units)
    hi: list  #: [6] training pose maximum
    info: dict = field(default_factory=dict)  #: what it was fitted on, fit statistics
    log_sigma_range: list = field(default_factory=list)  #: [lo[6], hi[6]] seen in training

    def log_sigma(self, f: np.ndarray) -> np.ndarray:
        """Log noise scale [K, 6] for centred features [K, F], held to the training range
        (audio unlike the clip's must not blow the noise up)."""
        s = f @ np.asarray(self.U) + np.asarray(self.c)
        if self.log_sigma_range:
            s = np.clip(s, self.log_sigma_range[0], self.log_sigma_range[1])
        return s

    # ------------------------------------------------------------------ persistence
    def save(self, path) -> Path:
        from nerfhead.fileio import atomic_path

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"format": FORMAT, "version": VERSION, "axes": list(AXES), "features": list(FEATURES),
               **asdict(self)}
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(doc, indent=1))
        return path

    @classmethod
    def load(cls, path) -> "HeadMotionModel":
        path = Path(path)
        try:
            doc = json.loads(path.read_text())
            if doc.get("format") != FORMAT:
                raise ValueError(f"format is {doc.get('format')!r}, not {FORMAT!r}")
            cfg = MotionModelConfig(**doc.pop("config"))
            keys = ("scale", "feature_mean", "A", "kappa", "U", "c", "lo", "hi", "info",
                    "log_sigma_range")
            return cls(cfg, **{k: doc[k] for k in keys})
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"head-motion model {path}: unreadable ({e}); delete it to refit "
                             f"(`nerfhead motion fit`)") from None

    # ------------------------------------------------------------------ sampling
    def sample(self, features: np.ndarray, seed: int = 0) -> tuple[np.ndarray, dict]:
        """Poses [N, 6] (canonical: degrees, metres) for per-frame features [N, F], and a
        summary (frames softly limited, seed)."""
        from scipy.interpolate import CubicSpline
        from scipy.ndimage import uniform_filter1d

        cfg = self.config
        f = np.asarray(features, np.float64) - np.asarray(self.feature_mean)
        n, K, p = len(f), cfg.keyframe_step, cfg.order
        A = np.asarray(self.A)
        kappa = np.asarray(self.kappa)
        nk = n // K + 3  # keyframes past the end so the spline is not extrapolated
        fk = uniform_filter1d(f, K, axis=0, mode="nearest")[np.minimum(np.arange(nk) * K, n - 1)]
        rng = np.random.default_rng(seed)
        sig = np.exp(self.log_sigma(fk))
        y = np.zeros(6)
        hist = np.zeros((p, 6))
        keys = [y.copy()]
        for k in range(1, nk):
            x = np.concatenate([hist.ravel(), fk[k]]) if cfg.audio_drift else hist.ravel()
            v = x @ A - kappa * y + sig[k] * rng.standard_normal(6)
            y = y + v
            hist = np.vstack([v[None], hist[:-1]])
            keys.append(y.copy())
        keys = np.asarray(keys) * np.asarray(self.scale)
        poses = CubicSpline(np.arange(nk) * K, keys, axis=0)(np.arange(n))
        limited, frac = soft_limit(poses, np.asarray(self.lo), np.asarray(self.hi), cfg.limit_start)
        return limited, {"seed": seed, "frames": n, "limited_fraction": frac}


def soft_limit(poses: np.ndarray, lo: np.ndarray, hi: np.ndarray, start: float = 0.8):
    """Keep every axis inside [lo, hi]: identity within ``start`` of the half-range around the
    centre, a tanh knee beyond (continuous value and slope). Returns (poses, fraction of
    values that reached the knee)."""
    centre, half = (lo + hi) / 2, np.maximum((hi - lo) / 2, 1e-9)
    z = (poses - centre) / half
    a = np.abs(z)
    room = 1.0 - start
    knee = np.where(a > start, start + room * np.tanh((a - start) / room), a)
    return centre + np.sign(z) * knee * half, float((a > start).mean())


# ------------------------------------------------------------------------------ features
def prosody_features(samples: np.ndarray, num_frames: int, fps: float = 25.0,
                     sr: int = 16000) -> tuple[np.ndarray, str]:
    """[num_frames, 3] (speech, loudness, speech_envelope) and the speech detector used."""
    from scipy.ndimage import gaussian_filter1d

    from nerfhead.audio.vad import find_speech

    x = np.asarray(samples, np.float32).reshape(-1)
    report = find_speech(x, sr)
    speech = np.zeros(num_frames)
    for a, b in report.speech:
        speech[int(np.floor(a * fps)):int(np.ceil(b * fps))] = 1.0
    hop = sr / fps
    rms = np.empty(num_frames)
    for i in range(num_frames):
        seg = x[int(i * hop):int((i + 1) * hop)]
        rms[i] = np.sqrt(np.mean(seg.astype(np.float64) ** 2)) if seg.size else 0.0
    db = 20 * np.log10(rms + 1e-6)
    ref = np.median(db[speech > 0]) if (speech > 0).any() else np.median(db)
    loud = gaussian_filter1d(np.clip((db - ref) / 10.0, -4.0, 2.0), 2.0)
    env = gaussian_filter1d(speech, 0.5 * fps)
    return np.column_stack([speech, loud, env]), report.detector


# ------------------------------------------------------------------------------ training data
def find_cuts(pose6: np.ndarray, frame_ids: np.ndarray, factor: float, known=()) -> np.ndarray:
    """Positions (into the sequence) where the motion is not continuous: gaps in the frame
    ids, ``known`` cut frames, and pose jumps (6-frame displacement > factor x median)."""
    from scipy.signal import find_peaks

    ids = np.asarray(frame_ids)
    cuts = set((np.flatnonzero(np.diff(ids) != 1) + 1).tolist())
    known = np.asarray(sorted(known), int)
    if known.size:
        cuts |= set(np.searchsorted(ids, known).tolist())
    x = np.column_stack([pose6[:, :3], pose6[:, 3:] * 100.0])  # 1 cm ~ 1 degree
    h = 3
    if len(x) > 2 * h + 1:
        d = np.zeros(len(x))
        d[h:-h] = np.linalg.norm(x[2 * h:] - x[:-2 * h], axis=1)
        med = np.median(d[h:-h])
        if med > 0:
            peaks, _ = find_peaks(d, height=factor * med, distance=10)
            cuts |= set(peaks.tolist())
    return np.asarray(sorted(c for c in cuts if 0 < c < len(ids)), int)


def segments(n: int, cuts: np.ndarray, margin: int, min_len: int) -> list[tuple[int, int]]:
    """[start, end) stretches between cuts, ``margin`` frames trimmed at each cut."""
    bounds = [0, *cuts.tolist(), n]
    out = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        a2 = a + (margin if a > 0 else 0)
        b2 = b - (margin if b < n else 0)
        if b2 - a2 >= min_len:
            out.append((a2, b2))
    return out


def fill_short_gaps(pose: np.ndarray, ids: np.ndarray, max_gap: int):
    """Frames missing from the transforms in gaps of at most ``max_gap`` get interpolated
    poses (longer gaps stay, and become cuts)."""
    ids = np.asarray(ids)
    order = np.argsort(ids, kind="stable")
    pose, ids = pose[order], ids[order]
    fill = [np.arange(a + 1, b) for a, b in zip(ids[:-1], ids[1:]) if 1 < b - a <= max_gap + 1]
    if not fill:
        return pose, ids
    new_ids = np.union1d(ids, np.concatenate(fill))
    new_pose = np.column_stack([np.interp(new_ids, ids, pose[:, j]) for j in range(pose.shape[1])])
    return new_pose, new_ids


def known_cuts(data_dir) -> list[int]:
    """Cut frames a preprocessing recorded in ``scenes.json`` (absent: none)."""
    p = Path(data_dir) / "scenes.json"
    try:
        return [int(c) for c in json.loads(p.read_text()).get("cuts", [])]
    except (OSError, ValueError, TypeError, AttributeError):
        return []


@dataclass
class TrainingMotion:
    """The training poses and audio features of a dataset, cut into continuous stretches."""

    pose: np.ndarray  #: [N, 6] canonical poses of the training frames
    frame_ids: np.ndarray  #: [N]
    features: np.ndarray  #: [N, F] audio features of those frames
    stretches: list  #: [(start, end)] continuous stretches (indices into pose)
    cuts: np.ndarray  #: positions of the cuts found
    detector: str = ""


def training_motion(data_dir, cfg: MotionModelConfig, split: str = "train",
                    samples: np.ndarray | None = None) -> TrainingMotion:
    """Poses of ``split`` relative to the train rest pose, with the clip's audio features."""
    from nerfhead.audio.features import load_audio
    from nerfhead.motion.pose import c2w_to_canonical, rest_pose
    from nerfhead.render.poses import dataset_poses

    data_dir = Path(data_dir)
    rest = rest_pose(dataset_poses(data_dir, "train")[0])
    c2w, ids = dataset_poses(data_dir, split)
    if samples is None:
        wav = data_dir / "aud.wav"
        if not wav.is_file():
            from nerfhead.data.dataset import DatasetError

            raise DatasetError(f"dataset: {wav} not found; the head-motion model learns from the "
                               "clip's audio (rerun `nerfhead preprocess` to write it)")
        samples = load_audio(wav)
    return motion_from_arrays(c2w_to_canonical(c2w, rest), ids, samples, cfg, known_cuts(data_dir))


def motion_from_arrays(pose6: np.ndarray, frame_ids: np.ndarray, samples: np.ndarray,
                       cfg: MotionModelConfig, known=(), features=None) -> TrainingMotion:
    """TrainingMotion of canonical poses [N, 6] of frames ``frame_ids`` of a clip whose audio
    is ``samples`` (16 kHz, from the clip's first frame); ``features`` [frames, F] skips the
    feature extraction (the clip's, computed once)."""
    pose, ids = fill_short_gaps(np.asarray(pose6, np.float64), np.asarray(frame_ids), cfg.max_gap)
    detector = ""
    if features is None:
        total = max(int(ids.max()) + 1, int(np.ceil(len(samples) / 16000 * cfg.fps)))
        features, detector = prosody_features(samples, total, cfg.fps)
    cuts = find_cuts(pose, ids, cfg.jump_factor, known)
    stretches = segments(len(ids), cuts, cfg.cut_margin, min_len=(cfg.order + 3) * cfg.keyframe_step)
    return TrainingMotion(pose, ids, features[ids], stretches, cuts, detector)


# ------------------------------------------------------------------------------ fitting
def _keyframe_rows(y: np.ndarray, f: np.ndarray, stretches, K: int, p: int):
    """Regression rows over every phase of the keyframe grid inside every stretch: past
    velocities [R, p*6], target velocity [R, 6], audio features of the target keyframe [R, F]."""
    from scipy.ndimage import uniform_filter1d

    X, T, F = [], [], []
    for a, b in stretches:
        fs = uniform_filter1d(f[a:b], K, axis=0, mode="nearest")
        for ph in range(K):
            idx = np.arange(a + ph, b, K)
            if len(idx) < p + 2:
                continue
            yk = y[idx]
            v = np.diff(yk, axis=0)  # v[j] = y[j+1] - y[j]
            for t in range(p, len(v)):
                X.append(v[t - p:t][::-1].ravel())
                T.append(v[t])
                F.append(fs[idx[t + 1] - a])
    return np.asarray(X), np.asarray(T), np.asarray(F)


def _fit_noise(res: np.ndarray, f: np.ndarray, ridge: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """Maximum likelihood log sigma = U f + c per axis, with an L2 penalty ``ridge`` on U
    (convex; L-BFGS)."""
    from scipy.optimize import minimize

    n, F = f.shape
    U, c = np.zeros((F, res.shape[1])), np.zeros(res.shape[1])
    for d in range(res.shape[1]):
        r2 = res[:, d] ** 2

        def nll(w):
            s = f @ w[:F] + w[F]
            e = r2 * np.exp(-2 * s)
            gu = (f * (1 - e)[:, None]).mean(0) + 2 * ridge * w[:F]
            return (0.5 * e + s).mean() + ridge * (w[:F] ** 2).sum(), np.concatenate([gu, [(1 - e).mean()]])

        w0 = np.concatenate([np.zeros(F), [0.5 * np.log(r2.mean() + 1e-12)]])
        w = minimize(nll, w0, jac=True, method="L-BFGS-B").x
        U[:, d], c[d] = w[:F], w[F]
    return U, c


MAX_VELOCITY_RADIUS = 0.95  #: velocities alone must die out faster than this per keyframe
MAX_RADIUS = 0.99  #: largest allowed modulus of the keyframe recursion's eigenvalues


def spectral_radius(A: np.ndarray, order: int, kappa=None) -> float:
    """Largest |eigenvalue| of the noise-free keyframe recursion: velocities
    v_k = sum_j A_j^T v_{k-j} - kappa y_{k-1} and positions y_k = y_{k-1} + v_k (audio
    features left out; without ``kappa`` the velocities alone). Below 1 the motion dies out
    without new noise; at or above 1 it grows without bound."""
    blocks = np.concatenate([np.asarray(A)[j * 6:(j + 1) * 6].T for j in range(order)], 1)
    n = 6 * order
    if kappa is None:
        comp = np.zeros((n, n))
        comp[:6] = blocks
        comp[6:, :-6] = np.eye(n - 6)
    else:
        k = np.diag(np.asarray(kappa, np.float64))
        comp = np.zeros((n + 6, n + 6))
        comp[:6, :n], comp[:6, n:] = blocks, -k
        comp[6:n, :n - 6] = np.eye(n - 6)
        comp[n:, :n], comp[n:, n:] = blocks, np.eye(6) - k
    return float(np.abs(np.linalg.eigvals(comp)).max())


def stable_kappa(A: np.ndarray, order: int, kappa: np.ndarray) -> np.ndarray:
    """``kappa`` shrunk (x0.8 steps) while that lowers the recursion's spectral radius above
    MAX_RADIUS: a strong pull on a lightly damped velocity overshoots and oscillates ever
    wider (radius > 1); a weak one only returns slowly (radius just under 1)."""
    kappa = np.asarray(kappa, np.float64)
    for _ in range(60):
        r = spectral_radius(A, order, kappa)
        # a weak pull is slow (radius just under 1), not unstable: shrink only while that helps
        if r <= MAX_RADIUS or spectral_radius(A, order, 0.8 * kappa) >= r:
            break
        kappa = kappa * 0.8
    return kappa


def _stationary_std(model: HeadMotionModel, feats: np.ndarray, seeds=(0, 1)) -> np.ndarray:
    """Spread (std per axis, standardised units) of long keyframe simulations."""
    cfg = model.config
    A, kappa = np.asarray(model.A), np.asarray(model.kappa)
    f = feats - np.asarray(model.feature_mean)
    out = []
    for s in seeds:
        rng = np.random.default_rng(1000 + s)
        y, hist = np.zeros(6), np.zeros((cfg.order, 6))
        ys = np.empty((len(f), 6))
        noise = rng.standard_normal((len(f), 6))
        sig = np.exp(model.log_sigma(f))
        for k in range(len(f)):
            x = np.concatenate([hist.ravel(), f[k]]) if cfg.audio_drift else hist.ravel()
            v = x @ A - kappa * y + sig[k] * noise[k]
            y = y + v
            hist = np.vstack([v[None], hist[:-1]])
            ys[k] = y
        out.append(ys[len(f) // 10:].std(0))  # burn-in dropped
    return np.mean(out, 0)


def fit(data: TrainingMotion, cfg: MotionModelConfig | None = None) -> HeadMotionModel:
    """Fit the model to a dataset's training motion (see the module docstring)."""
    from scipy.ndimage import gaussian_filter1d, uniform_filter1d

    cfg = cfg or MotionModelConfig()
    t0 = time.perf_counter()
    K, p = cfg.keyframe_step, cfg.order
    if not data.stretches:
        raise ValueError(f"too little continuous motion to learn from ({len(data.pose)} frames, "
                         f"{len(data.cuts)} cuts); the model needs stretches of at least "
                         f"{(p + 3) * K} frames")
    scale = np.maximum(data.pose.std(0), np.array([1e-3] * 3 + [1e-5] * 3))
    y = data.pose / scale
    if cfg.smooth_sigma > 0:  # within stretches only: a cut must not be smoothed into motion
        y = y.copy()
        for a, b in data.stretches:
            y[a:b] = gaussian_filter1d(y[a:b], cfg.smooth_sigma, axis=0, mode="nearest")
    fmean = data.features.mean(0)
    f = data.features - fmean
    X, T, fx = _keyframe_rows(y, f, data.stretches, K, p)
    if cfg.audio_drift:
        X = np.concatenate([X, fx], 1)
    if len(X) < 4 * X.shape[1]:
        raise ValueError(f"too few keyframe steps ({len(X)}) to fit {X.shape[1]} coefficients "
                         "per axis; give a longer clip")
    lam = cfg.ridge * float((X ** 2).mean()) * len(X)
    for _ in range(8):  # a short clip can give explosive dynamics: shrink until stable
        A = np.linalg.solve(X.T @ X + lam * np.eye(X.shape[1]), X.T @ T)
        radius = spectral_radius(A, p)
        if radius <= MAX_VELOCITY_RADIUS:
            break
        lam *= 10.0
    res = T - X @ A
    U, c = _fit_noise(res, fx, cfg.noise_ridge)
    log_sigma = fx @ U + c
    model = HeadMotionModel(cfg, scale.tolist(), fmean.tolist(), A.tolist(), [0.05] * 6,
                            U.tolist(), c.tolist(), data.pose.min(0).tolist(),
                            data.pose.max(0).tolist(),
                            log_sigma_range=[log_sigma.min(0).tolist(), log_sigma.max(0).tolist()])
    # kappa: long simulations (training audio features, cycled) spread as the training poses do
    fk = uniform_filter1d(data.features, K, axis=0)[::K]
    sim = np.concatenate([fk] * max(1, int(np.ceil(4000 / max(len(fk), 1)))))[:4000]
    target = y.std(0)
    kappa = stable_kappa(A, p, np.full(6, 0.01))
    for _ in range(cfg.reversion_iters):
        model.kappa = kappa.tolist()
        spread = _stationary_std(model, sim)
        ratio = np.where(np.isfinite(spread), spread / np.maximum(target, 1e-6), 4.0)
        kappa = stable_kappa(A, p, np.clip(kappa * np.clip(ratio, 0.5, 2.0) ** 2, 1e-4, 0.9))
    model.kappa = kappa.tolist()
    spread = _stationary_std(model, sim)
    # a short clip may need more pull than a stable recursion allows: then the noise is
    # lowered instead, so the spread still matches (the process is linear in the noise)
    over = np.where(np.isfinite(spread), spread / np.maximum(target, 1e-6), 4.0)
    noise_cut = np.log(np.maximum(over, 1.0))
    if (over > 1.1).any():
        c = c - noise_cut
        model.c = c.tolist()
        model.log_sigma_range = [(np.asarray(r) - noise_cut).tolist() for r in model.log_sigma_range]
        spread = _stationary_std(model, sim)
    speech = fx[:, 0] + fmean[0] > 0.5
    sig = np.exp(fx @ U + c)
    model.info = {
        "frames": int(len(data.pose)), "seconds": round(len(data.pose) / cfg.fps, 2),
        "stretches": len(data.stretches), "cuts_found": int(len(data.cuts)),
        "frames_used": int(sum(b - a for a, b in data.stretches)),
        "keyframe_steps": int(len(X)), "speech_detector": data.detector,
        "r2_velocity": float(1 - res.var(0).sum() / T.var(0).sum()),
        "spectral_radius": round(float(radius), 4),
        "noise_speech_over_silence": (np.round(sig[speech].mean(0) / sig[~speech].mean(0), 3)
                                      .tolist() if speech.any() and (~speech).any() else None),
        "spread_fitted_over_target": np.round(spread / np.maximum(target, 1e-6), 3).tolist(),
        "noise_lowered_by": np.round(np.exp(noise_cut), 3).tolist(),
        "fit_seconds": round(time.perf_counter() - t0, 2),
    }

    return model


# ------------------------------------------------------------------------------ run-level API
def model_path(run_dir) -> Path:
    return Path(run_dir) / "motion" / "head_motion.json"


def fit_dataset(data_dir, cfg: MotionModelConfig | None = None) -> HeadMotionModel:
    from nerfhead.data.dataset import content_hash

    cfg = cfg or MotionModelConfig()
    data = training_motion(data_dir, cfg)
    model = fit(data, cfg)
    model.info.update(dataset=str(Path(data_dir).resolve()), dataset_content=content_hash(data_dir))
    log.info("head-motion model fitted on %s: %.0f s of training poses in %d stretches "
             "(%d cuts), %.1f s", data_dir, model.info["seconds"], model.info["stretches"],
             model.info["cuts_found"], model.info["fit_seconds"])
    return model


def load_or_fit(data_dir, run_dir=None, path=None) -> HeadMotionModel:
    """The speaker's head-motion model: ``path``, else RUN/motion/head_motion.json when it was
    fitted on this dataset, else fitted now (seconds) and saved there when a run is given."""
    from nerfhead.data.dataset import content_hash

    if path is not None:
        return HeadMotionModel.load(path)
    if run_dir is not None and model_path(run_dir).is_file():
        model = HeadMotionModel.load(model_path(run_dir))
        if model.info.get("dataset_content") == content_hash(data_dir):
            return model
        log.warning("%s was fitted on other data; refitting on %s", model_path(run_dir), data_dir)
    model = fit_dataset(data_dir)
    if run_dir is not None:
        model.save(model_path(run_dir))
    return model


def generate(model: HeadMotionModel, samples: np.ndarray, num_frames: int, seed: int = 0):
    """Poses [num_frames, 6] (canonical) for driving audio ``samples`` (16 kHz mono)."""
    feats, _ = prosody_features(samples, num_frames, model.config.fps)
    return model.sample(feats, seed)
