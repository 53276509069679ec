"""Motion for a live stream: head poses and expressions one frame at a time, while listening
and while speaking, never a frozen head.

``LiveMotion.frame(i, samples)`` returns the camera-to-world pose and the 52 blendshapes of
video frame ``i`` given that frame's 40 ms of audio. Frames must be asked for in order (each
once); a live renderer that drops frames still steps the motion through them, which costs
microseconds.

**Head poses.** With the speaker's head-motion model (``nerfhead.motion.generator``: the one
in RUN/motion/, else fitted on the dataset now and saved there, as ``render --poses audio``
does) the keyframe recursion of ``HeadMotionModel.sample`` is run forward as the stream goes:
one keyframe every ``keyframe_step`` frames, its noise scaled by the prosody of the audio heard
so far (causal: the offline sampler averages the features around the keyframe, which would
need 100 ms more look-ahead; the features only scale the noise, so a keyframe or two of delay
changes how lively the head is a fraction of a second late, not where it goes). Between
keyframes a Catmull-Rom spline (C1, like the offline cubic spline) needs the two keyframes
after the frame, so keyframes are rolled out two ahead. The soft range limit is the sampler's.
When no model can be fitted (a clip with too little continuous motion), the clip's own poses
play, smoothed (``--poses smooth``) and mirrored back and forth so there is never a jump.

**Prosody, live** (the features the model was fitted on, from ``prosody_features``): speech
is the frame's RMS above ``vad.ENERGY_DBFS`` (the energy detector; Silero needs whole
chunks of context), loudness is the RMS in dB relative to a running average over speech
frames (the offline median over the whole clip), the speech envelope an exponential average
of the speech flag over 0.5 s (the offline Gaussian).

**Expressions and blinks.** The train frames' blendshapes, cycled as ``render`` cycles them,
with natural blinks (``--blink natural``: the speaker's measured rate, durations and closed
eyes) synthesised in blocks of two minutes; a clip without a measurable blink keeps its own
eye curves. Frames use the mean per-frame latent (the poses belong to no training frame).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger("nerfhead.motion")

BLINK_BLOCK = 3000  #: frames of natural blinks synthesised at a time (2 min at 25 fps)


class LiveProsody:
    """The per-frame (speech, loudness, speech_envelope) of ``prosody_features``, causally."""

    def __init__(self, fps: float = 25.0):
        from nerfhead.audio.vad import ENERGY_DBFS

        self.threshold = ENERGY_DBFS
        self.ref_db: float | None = None  #: running average level of speech frames
        self.env = 0.0
        self.env_alpha = 1.0 / (0.5 * fps)

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        x = np.asarray(samples, np.float64)
        rms = np.sqrt(np.mean(x ** 2)) if x.size else 0.0
        db = 20 * np.log10(rms + 1e-6)
        speech = float(db > self.threshold)
        if speech:
            self.ref_db = db if self.ref_db is None else 0.98 * self.ref_db + 0.02 * db
        ref = self.ref_db if self.ref_db is not None else self.threshold + 20.0
        loud = float(np.clip((db - ref) / 10.0, -4.0, 2.0))
        self.env += self.env_alpha * (speech - self.env)
        return np.array([speech, loud, self.env])


class _KeyframeRollout:
    """``HeadMotionModel.sample``'s keyframe recursion, one keyframe at a time."""

    def __init__(self, model, seed: int):
        self.model = model
        cfg = model.config
        self.K, self.p = cfg.keyframe_step, cfg.order
        self.A, self.kappa = np.asarray(model.A), np.asarray(model.kappa)
        self.scale = np.asarray(model.scale)
        self.rng = np.random.default_rng(seed)
        self.y = np.zeros(6)
        self.hist = np.zeros((self.p, 6))
        self.keys = [np.zeros(6)]  #: keyframes 0.. (canonical units), key k at frame k*K

    def step(self, features: np.ndarray) -> None:
        cfg = self.model.config
        f = np.asarray(features, np.float64) - np.asarray(self.model.feature_mean)
        sig = np.exp(self.model.log_sigma(f[None]))[0]
        x = np.concatenate([self.hist.ravel(), f]) if cfg.audio_drift else self.hist.ravel()
        v = x @ self.A - self.kappa * self.y + sig * self.rng.standard_normal(6)
        self.y = self.y + v
        self.hist = np.vstack([v[None], self.hist[:-1]])
        self.keys.append(self.y * self.scale)

    def pose(self, t: int) -> np.ndarray:
        """Catmull-Rom between the keyframes around frame ``t`` (needs keys up to t//K + 2)."""
        k, u = divmod(t, self.K)
        u = u / self.K
        p0 = self.keys[max(k - 1, 0)]
        p1, p2, p3 = self.keys[k], self.keys[k + 1], self.keys[k + 2]
        return 0.5 * (2 * p1 + (p2 - p0) * u + (2 * p0 - 5 * p1 + 4 * p2 - p3) * u ** 2
                      + (3 * p1 - p0 - 3 * p2 + p3) * u ** 3)


class LiveMotion:
    """Poses and expressions of a live stream for the run trained on ``data_dir``.

    ``model``: a ``HeadMotionModel`` already loaded (a server loads it once for all sessions);
    else the run's, or one fitted now; ``use_model=False``: the clip's poses.
    """

    def __init__(self, data_dir, run_dir=None, seed: int = 0, fps: float = 25.0,
                 use_model: bool = True, model=None):
        from nerfhead.motion.export import load_blendshapes, speaker_blinks
        from nerfhead.motion.pose import rest_pose
        from nerfhead.render.poses import dataset_poses, smooth_poses

        self.fps, self.seed = fps, seed
        data_dir = Path(data_dir)
        train_c2w, self.train_ids = dataset_poses(data_dir, "train")
        self.rest = rest_pose(train_c2w)
        self.prosody = LiveProsody(fps)
        self.features: list[np.ndarray] = []
        self.rollout = None
        self.source = "clip poses, smoothed and mirrored"
        if model is not None:
            self.rollout = _KeyframeRollout(model, seed)
            self.source = f"head-motion model of {data_dir.name} (seed {seed})"
        elif use_model:
            from nerfhead.data.dataset import DatasetError
            from nerfhead.motion.generator import load_or_fit

            try:
                model = load_or_fit(data_dir, run_dir)
                self.rollout = _KeyframeRollout(model, seed)
                self.source = f"head-motion model of {data_dir.name} (seed {seed})"
            except (ValueError, DatasetError) as e:  # too little motion to learn from, no aud.wav
                log.warning("live motion: no head-motion model (%s); the clip's own poses play, "
                            "smoothed and mirrored", e)
        self.clip_c2w = smooth_poses(train_c2w, 2.0)
        bs = load_blendshapes(data_dir)
        self.blendshapes = None if bs is None else np.asarray(bs, np.float32)
        profile = speaker_blinks(data_dir, fps) if bs is not None else None
        self.profile = profile if profile is not None and profile.count else None
        self.blink_source = ("natural blinks at the speaker's rate" if self.profile is not None
                             else "the clip's own eye curves")
        self._blinks: dict[int, np.ndarray] = {}
        self.next = 0

    # ------------------------------------------------------------------ pieces
    def _mirror(self, i: int, length: int) -> int:
        if length == 1:
            return 0
        k = i % (2 * length - 2)
        return k if k < length else 2 * length - 2 - k

    def _closure(self, i: int) -> float:
        from nerfhead.motion.blink import synthesize

        block = i // BLINK_BLOCK
        if block not in self._blinks:
            c, _ = synthesize(BLINK_BLOCK, self.profile, self.fps, seed=self.seed * 1000 + block)
            self._blinks = {block: c}  # one block at a time: frames only move forward
        return float(self._blinks[block][i % BLINK_BLOCK])

    def _pose(self, i: int) -> np.ndarray:
        if self.rollout is None:
            return self.clip_c2w[self._mirror(i, len(self.clip_c2w))].astype(np.float32)
        from nerfhead.motion.generator import soft_limit
        from nerfhead.motion.pose import canonical_to_c2w

        r = self.rollout
        K = r.K
        while len(r.keys) < i // K + 3:  # keys up to k + 2, features of the audio heard so far
            recent = np.mean(self.features[-K:], 0)
            r.step(recent)
        pose6, _ = soft_limit(r.pose(i)[None], np.asarray(r.model.lo), np.asarray(r.model.hi),
                              r.model.config.limit_start)
        return canonical_to_c2w(pose6, self.rest)[0].astype(np.float32)

    def _expression(self, i: int) -> np.ndarray:
        if self.blendshapes is None:
            return np.zeros(52, np.float32)
        fid = int(self.train_ids[self._mirror(i, len(self.train_ids))])
        expr = self.blendshapes[min(fid, len(self.blendshapes) - 1)][None]
        if self.profile is None:
            return expr[0].copy()
        from nerfhead.motion.blink import apply_closure

        c = self._closure(i)
        return apply_closure(expr, np.array([[c, c]]), self.profile)[0]

    # ------------------------------------------------------------------ API
    def frame(self, i: int, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(c2w [4, 4], blendshapes [52]) of frame ``i`` (``i`` = the previous call's + 1)
        from ``samples``, the frame's 40 ms of 16 kHz audio."""
        if i != self.next:
            raise ValueError(f"LiveMotion.frame: frames go in order; expected {self.next}, got {i}")
        self.next += 1
        self.features.append(self.prosody(samples))
        if len(self.features) > 64:
            del self.features[:-64]
        return self._pose(i), self._expression(i)
