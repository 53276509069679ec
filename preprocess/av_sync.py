"""Step ``av_sync``: does the sound follow the mouth? Measured window by window, before any
model learns from a clip whose audio slides against the face.

Signals, per video frame: the mouth opening (outer-lip gap, MediaPipe points 0-17, over the
outer eye-corner distance 33-263, from ``landmarks.npy``) and the speech energy (log RMS of
the 300-3000 Hz band of ``aud.wav`` in an 80 ms window centred on the frame). Both are
differentiated: the lips' opening speed and the rise of the sound peak together at syllable
onsets, which gives a correlation peak about a frame wide, where the raw curves (syllables
several frames long) give a broad one that drifts onto neighbouring syllables.

In each window (``window_seconds`` long, every ``hop_seconds``) the lag ``d`` that maximises
corr(opening'[t], energy'[t - d]) is searched and refined to a fraction of a frame with a
parabola through the peak. The search starts from the lag of the clip's first minute taken as
a whole (a minute gives a clear peak where a window may not), searched over ``search_frames``
either way of ``expected_lag_frames``; each window then looks ``max_lag_frames`` either way
of the median lag of the last reliable windows, so the search follows a drift of many frames
without wandering onto the side peaks of the syllable rhythm. Without a clear first-minute
lag, and after 3 inconclusive windows in a row, windows search wide again. ``d`` is how far
the mouth trails the sound; in footage known to be in sync it is about
``expected_lag_frames`` (GRID s1 with its audio on the video's clock: +1.0, the lips open
fastest just after the sound starts), so the step reports ``offset = d -
expected_lag_frames``: how many frames the audio runs AHEAD of the video (negative: behind);
``--set decode.audio_offset=<offset/fps>`` delays the audio by that much.

A window is unreliable, and left out, when it holds too little speech
(``min_speech_fraction`` of its frames 12 dB above the clip's silence level and within 35 dB
of its loud speech), when its best correlation is below ``min_correlation``, when that
correlation is not clearly above chance (``min_confidence`` standard deviations above the
best correlations the same search finds against surrogate audio: the speech energy's rhythm
with its phases randomised), or when the best lag sits at the edge of the search. A robust
line (Theil-Sen) through the reliable windows' offsets against time gives the clip's offset
(at its middle) and drift (frames per minute); the worst case is the line's largest |offset|
over the clip. With fewer than ``min_windows`` reliable windows, or fewer than
``min_reliable_fraction`` of the windows with speech, the first minute's lag as a whole gives
the offset (no drift) if it was clear, else the sync is reported unmeasured, with a warning,
never as in sync (clips under ``min_seconds``; the 8-s HDTF clip, whose fluent speech does
not correlate with the lips above chance). Above ``warn_frames``: a warning; above
``fail_frames``: the step refuses (StepError naming the way forward) unless ``on_fail`` is
``proceed``.

Writes ``previews/av_sync.png`` (offset per window against time, reliable windows coloured by
their correlation, the fitted line and the bounds) and the numbers in the manifest, as the
step's stats (``steps.av_sync.stats``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from preprocess.steps import Step, StepContext, StepError, atomic_path

STEP = "av_sync"
PLOT = "previews/av_sync.png"
ON_FAIL = ("refuse", "proceed")
UPPER_LIP, LOWER_LIP, EYE_R, EYE_L = 0, 17, 33, 263  # MediaPipe face-mesh indices
SPEECH_DB = 12.0  #: a frame is speech when its band energy is this far above the silence level
SPEECH_RANGE_DB = 35.0  #: ... and no further than this below the clip's loud speech
LOCK_SECONDS = 60.0  #: the stretch at the start whose overall lag seeds the window search
CHANCE_SERIES = 40  #: surrogate audio series that measure chance (see ``surrogates``)


@dataclass
class AvSyncConfig:
    """The audio-visual sync check (see the module docstring for the method)."""

    window_seconds: float = 10.0  #: length of each analysis window
    hop_seconds: float = 5.0  #: step between window starts
    #: lags searched either way of expected_lag_frames for the first minute's lag (and by
    #: windows without a lock to follow), frames: the largest offset that can be found
    search_frames: int = 50
    #: lags searched either way of the recent reliable windows' lag once locked on, frames:
    #: follows a drift of up to this much per window
    max_lag_frames: int = 8
    #: how many frames the mouth trails the speech energy in footage known to be in sync
    #: (measured on GRID s1 with its audio on the video's clock: +1.0)
    expected_lag_frames: float = 1.0
    min_correlation: float = 0.2  #: windows whose best correlation is lower are unreliable
    #: windows whose best correlation stands fewer standard deviations above chance (the best
    #: correlations of the same search against phase-randomised audio) are unreliable
    min_confidence: float = 3.0
    min_speech_fraction: float = 0.2  #: windows with a smaller share of speech frames are unreliable
    #: shorter clips are not measured (reported unmeasured): one shorter window is too
    #: little evidence (on 8-s pieces of GRID, 1 in 37 found a wrong lag above chance)
    min_seconds: float = 10.0
    min_windows: int = 1  #: fewer reliable windows: the sync is reported unmeasured
    #: a smaller share of reliable windows among those with speech: the sync is reported
    #: unmeasured (the peaks found are then as likely chance as the sync)
    min_reliable_fraction: float = 0.5
    #: warn when the fitted offset departs from 0 by more than this anywhere in the clip
    #: (frames; 1 frame = 40 ms, about where viewers start to notice sound ahead of lips)
    warn_frames: float = 1.0
    #: refuse above this (frames; 3 frames = 120 ms: a lip-synced model would learn the lag)
    fail_frames: float = 3.0
    #: 'refuse' (StepError above fail_frames) or 'proceed' (warn and keep the data as it is)
    on_fail: str = "refuse"


# ------------------------------------------------------------------------------- signals
def mouth_opening(landmarks: np.ndarray) -> np.ndarray:
    """[N] outer-lip gap over the outer eye-corner distance from [N, 478, >=2] landmarks."""
    lm = np.asarray(landmarks, np.float64)
    gap = np.linalg.norm(lm[:, UPPER_LIP, :2] - lm[:, LOWER_LIP, :2], axis=1)
    eyes = np.linalg.norm(lm[:, EYE_R, :2] - lm[:, EYE_L, :2], axis=1)
    return gap / np.maximum(eyes, 1e-9)


def speech_energy(samples: np.ndarray, num_frames: int, sr: int = 16000, fps: float = 25.0,
                  window_s: float = 0.08) -> np.ndarray:
    """[num_frames] log RMS of the 300-3000 Hz band in ``window_s`` centred on each frame."""
    from scipy.signal import butter, sosfiltfilt

    x = np.asarray(samples, np.float64).reshape(-1)
    if x.size > 64:
        x = sosfiltfilt(butter(4, (300.0, 3000.0), btype="band", fs=sr, output="sos"), x)
    power = np.concatenate([[0.0], np.cumsum(x * x)])
    centres = np.round((np.arange(num_frames) + 0.5) * sr / fps).astype(np.int64)
    half = int(round(window_s * sr / 2))
    lo, hi = np.clip(centres - half, 0, x.size), np.clip(centres + half, 0, x.size)
    rms = np.sqrt((power[hi] - power[lo]) / np.maximum(hi - lo, 1))
    return np.log(rms + 1e-5)


def corr_at_lags(a: np.ndarray, b: np.ndarray, lo: int, hi: int, lags: np.ndarray) -> np.ndarray:
    """Pearson corr(a[t], b[t - d]) over t in [lo, hi) for each lag d: [len(lags)]. Pairs
    whose ``b`` index falls outside ``b`` are left out (nan below 16 pairs or for a constant
    series)."""
    t = np.arange(lo, hi)
    idx = t[None, :] - np.asarray(lags)[:, None]  # [L, W]
    valid = (idx >= 0) & (idx < len(b))
    x = np.broadcast_to(a[lo:hi], idx.shape)
    y = b[np.clip(idx, 0, len(b) - 1)]
    cnt = valid.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mx = np.where(valid, x, 0).sum(-1) / cnt
        my = np.where(valid, y, 0).sum(-1) / cnt
        dx, dy = np.where(valid, x - mx[:, None], 0), np.where(valid, y - my[:, None], 0)
        sxy, sxx, syy = (dx * dy).sum(-1), (dx * dx).sum(-1), (dy * dy).sum(-1)
        r = sxy / np.sqrt(sxx * syy)
    r[(cnt < 16) | (sxx <= 1e-12 * cnt) | (syy <= 1e-12 * cnt)] = np.nan
    return r


def peak(corr: np.ndarray, lags: np.ndarray) -> tuple[int, float]:
    """Index of the best correlation and its lag refined by a parabola through it."""
    k = int(np.nanargmax(corr))
    lag = float(lags[k])
    if 0 < k < len(lags) - 1 and np.isfinite(corr[[k - 1, k + 1]]).all():
        den = corr[k - 1] - 2 * corr[k] + corr[k + 1]
        if den < 0:
            lag += 0.5 * (corr[k - 1] - corr[k + 1]) / den
    return k, float(lag)


def surrogates(x: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """[count, len(x)] series with the power spectrum of ``x`` and random phases: the same
    rhythm and smoothness, no alignment with anything (a fixed seed keeps the step
    deterministic)."""
    spec = np.fft.rfft(x - x.mean())
    phase = np.random.default_rng(seed).uniform(0, 2 * np.pi, (count, spec.size))
    phase[:, 0] = 0.0
    if x.size % 2 == 0:
        phase[:, -1] = 0.0
    return np.fft.irfft(np.abs(spec) * np.exp(1j * phase), n=x.size)


def chance_peaks(vel_o: np.ndarray, chance: np.ndarray, lo: int, hi: int,
                 lags: np.ndarray) -> np.ndarray:
    """The best correlation the same search finds between the window's mouth and each
    surrogate audio series in ``chance`` [S, N]: what it finds where there is nothing."""
    peaks = []
    for sur in chance:
        r = corr_at_lags(vel_o, sur, lo, hi, lags)
        if np.isfinite(r).any():
            peaks.append(np.nanmax(r))
    return np.asarray(peaks)


def confidence(best: float, null: np.ndarray) -> float:
    """Standard deviations by which ``best`` exceeds the chance peaks (0 without them)."""
    return float((best - null.mean()) / null.std()) if null.size > 2 and null.std() > 0 else 0.0


# ------------------------------------------------------------------------------- measure
def measure(opening: np.ndarray, energy: np.ndarray, cfg: AvSyncConfig, fps: float = 25.0) -> dict:
    """Window-by-window lags, the fitted offset and drift, and the verdict's numbers."""
    n = min(len(opening), len(energy))
    vel_o, vel_e = np.gradient(opening[:n]), np.gradient(energy[:n])
    db = np.log(10) / 20  # one decibel in natural-log amplitude
    floor, loud = np.percentile(energy[:n], [10, 95])
    speech = energy[:n] > max(floor + SPEECH_DB * db, loud - SPEECH_RANGE_DB * db)
    win = max(int(round(cfg.window_seconds * fps)), 1)
    hop = max(int(round(cfg.hop_seconds * fps)), 1)
    # a clip shorter than a window is one window, unless it is shorter than min_seconds
    starts = (list(range(0, n - win + 1, hop)) if n >= win else
              [0] if n >= cfg.min_seconds * fps else [])
    expected = cfg.expected_lag_frames
    chance = surrogates(vel_e, CHANCE_SERIES)
    lock = lock_on(vel_o, vel_e, chance, cfg, fps) if starts else None
    windows, found, misses = [], [] if lock is None else [lock["lag_frames"]], 0
    for s in starts:
        e = min(s + win, n)
        if found and misses < 3:  # locked on: follow the recent lag
            centre, reach = int(round(np.median(found[-3:]))), cfg.max_lag_frames
        else:  # search wide around the expected lag
            centre, reach = int(round(expected)), max(cfg.search_frames, cfg.max_lag_frames)
            found = []
        lags = np.arange(centre - reach, centre + reach + 1)
        corr = corr_at_lags(vel_o, vel_e, s, e, lags)
        w = {"start_s": s / fps, "end_s": e / fps, "centre_s": (s + e) / 2 / fps,
             "speech_fraction": round(float(speech[s:e].mean()), 3),
             "lag_frames": None, "offset_frames": None, "correlation": None, "confidence": None,
             "reliable": False}
        if np.isfinite(corr).any():
            k, lag = peak(corr, lags)
            z = confidence(corr[k], chance_peaks(vel_o, chance, s, e, lags))
            w.update(lag_frames=round(lag, 3), offset_frames=round(lag - expected, 3),
                     correlation=round(float(corr[k]), 3), confidence=round(float(z), 2))
            why = ("too little speech" if w["speech_fraction"] < cfg.min_speech_fraction else
                   "weak correlation" if corr[k] < cfg.min_correlation else
                   "not above chance" if z < cfg.min_confidence else
                   "peak at the edge of the search" if k in (0, len(lags) - 1) else None)
        else:
            why = "no mouth motion or no sound"
        w["reliable"] = why is None
        if why:
            w["unreliable"] = why
            misses += why != "too little speech"
        else:
            found.append(w["lag_frames"])
            misses = 0
        windows.append(w)
    return {"windows": windows, "lock": lock, **fit_line(windows, n / fps, cfg, lock)}


def lock_on(vel_o: np.ndarray, vel_e: np.ndarray, chance: np.ndarray, cfg: AvSyncConfig,
            fps: float) -> dict | None:
    """Where the first windows' search starts: the lag of the first ``LOCK_SECONDS`` of the
    clip as a whole, searched wide; None when it is not clearly above chance (then each
    window searches wide). A long stretch gives a clear peak where one window would not, and
    a window then needs to beat chance only over the narrow search around it."""
    m = min(len(vel_o), int(round(LOCK_SECONDS * fps)))
    reach = max(cfg.search_frames, cfg.max_lag_frames)
    lags = np.arange(int(round(cfg.expected_lag_frames)) - reach,
                     int(round(cfg.expected_lag_frames)) + reach + 1)
    corr = corr_at_lags(vel_o, vel_e, 0, m, lags)
    if not np.isfinite(corr).any():
        return None
    k, lag = peak(corr, lags)
    z = confidence(corr[k], chance_peaks(vel_o, chance, 0, m, lags))
    if z < cfg.min_confidence or corr[k] < cfg.min_correlation or k in (0, len(lags) - 1):
        return None
    return {"lag_frames": round(float(lag), 3),
            "offset_frames": round(float(lag - cfg.expected_lag_frames), 3),
            "correlation": round(float(corr[k]), 3), "confidence": round(float(z), 2),
            "seconds": m / fps}


def fit_line(windows: list[dict], duration: float, cfg: AvSyncConfig,
             lock: dict | None = None) -> dict:
    """Offset (frames, at the clip's middle), drift (frames/minute) and the worst |offset|
    over the clip, from a Theil-Sen line through the reliable windows' offsets; with too
    few of those, the offset of the first minute as a whole (``lock``, no drift) if it was
    clear, else unmeasured."""
    good = [w for w in windows if w["reliable"]]
    speech = [w for w in windows if w["speech_fraction"] >= cfg.min_speech_fraction]
    out = {"windows_total": len(windows), "windows_with_speech": len(speech),
           "windows_reliable": len(good), "duration_s": duration, "basis": "windows"}
    if len(good) < max(cfg.min_windows, 1) or len(good) < cfg.min_reliable_fraction * len(speech):
        if lock is None:
            return {**out, "status": "unmeasured", "basis": None, "offset_frames": None,
                    "drift_frames_per_minute": None, "worst_offset_frames": None,
                    "max_window_offset_frames": None}
        out["basis"] = f"the first {lock['seconds']:g} s as a whole (drift not measured)"
        t, y = np.array([lock["seconds"] / 2]), np.array([lock["offset_frames"]])
    else:
        t = np.array([w["centre_s"] for w in good])
        y = np.array([w["offset_frames"] for w in good])
    if len(t) >= 3 and np.ptp(t) > 0:
        from scipy.stats import theilslopes

        slope, intercept = theilslopes(y, t, method="joint")[:2]  # median(y - slope t)
    else:  # one or two windows: an offset, no drift
        slope, intercept = 0.0, float(np.median(y))
    line = lambda x: intercept + slope * x  # noqa: E731
    worst = max(abs(line(0.0)), abs(line(duration)))
    status = ("fail" if worst > cfg.fail_frames else "warn" if worst > cfg.warn_frames else "pass")
    return {**out, "status": status, "offset_frames": round(float(line(duration / 2)), 3),
            "drift_frames_per_minute": round(float(slope * 60), 3) if out["basis"] == "windows"
            else None,
            "start_offset_frames": round(float(line(0.0)), 3),
            "end_offset_frames": round(float(line(duration)), 3),
            "worst_offset_frames": round(float(worst), 3),
            "max_window_offset_frames": round(max(abs(w["offset_frames"]) for w in good), 3)
            if good else None,
            "median_correlation": round(float(np.median([w["correlation"] for w in good])), 3)
            if good else lock["correlation"]}


# ---------------------------------------------------------------------------------- plot
def plot(result: dict, cfg: AvSyncConfig, path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.6))
    wins = [w for w in result["windows"] if w["offset_frames"] is not None]
    good = [w for w in wins if w["reliable"]]
    bad = [w for w in wins if not w["reliable"]]
    ax.axhspan(-cfg.warn_frames, cfg.warn_frames, color="tab:green", alpha=0.12, label="in sync")
    for sign in (-1, 1):
        ax.axhline(sign * cfg.fail_frames, color="tab:red", ls="--", lw=1)
    if good:
        sc = ax.scatter([w["centre_s"] for w in good], [w["offset_frames"] for w in good],
                        c=[w["correlation"] for w in good], cmap="viridis", vmin=0, vmax=1,
                        s=28, zorder=3, label="window (colour: correlation)")
        fig.colorbar(sc, ax=ax, pad=0.01).set_label("correlation")
    if bad:
        ax.scatter([w["centre_s"] for w in bad], [w["offset_frames"] for w in bad], marker="x",
                   c="grey", s=24, zorder=2, label="unreliable (left out)")
    if result.get("offset_frames") is not None:
        d = result["duration_s"]
        ax.plot([0, d], [result["start_offset_frames"], result["end_offset_frames"]], "k-", lw=1.2,
                label=f"fit: {result['offset_frames']:+.2f} frames, "
                      f"{result['drift_frames_per_minute']:+.2f} frames/min"
                if result["drift_frames_per_minute"] is not None else
                f"{result['offset_frames']:+.2f} frames over {result['basis']}")
    ax.set_xlabel("time in the clip (s)")
    ax.set_ylabel("audio ahead of video (frames)")
    verdict = result["status"].upper()
    ax.set_title(f"A/V sync: {verdict}" + (f" - {title}" if title else ""), fontsize=10)
    ax.legend(loc="best", fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)


# ---------------------------------------------------------------------------------- step
def _cfg(ctx: StepContext) -> AvSyncConfig:
    from preprocess.focal import section

    cfg = section(ctx.cfg, STEP, AvSyncConfig)
    if cfg.on_fail not in ON_FAIL:
        raise StepError(STEP, f"av_sync.on_fail must be one of {ON_FAIL}, got {cfg.on_fail!r}")
    return cfg


def run(ctx: StepContext) -> dict:
    from nerfhead.audio.features import AudioError, load_audio

    cfg = _cfg(ctx)
    n = ctx.num_frames()
    fps = float(ctx.manifest["video"].get("fps", 25.0))
    try:
        lms = np.load(ctx.path("landmarks.npy"), mmap_mode="r")
    except (OSError, ValueError) as e:
        raise StepError(STEP, f"unreadable ({e}); run the landmarks step first",
                        ctx.path("landmarks.npy")) from e
    if lms.ndim != 3 or lms.shape[0] != n or lms.shape[1] <= EYE_L:
        raise StepError(STEP, f"expected [{n}, 478, 3] landmarks, got {list(lms.shape)}; rerun "
                              "the landmarks step", ctx.path("landmarks.npy"))
    try:
        samples = load_audio(ctx.path("aud.wav"))
    except AudioError as e:
        raise StepError(STEP, str(e), ctx.path("aud.wav")) from e
    result = measure(mouth_opening(lms), speech_energy(samples, n, fps=fps), cfg, fps)
    timing = (ctx.manifest.get("audio") or {}).get("timing", "unknown")
    plot(result, cfg, ctx.path(PLOT), f"aud.wav decoded with audio_timing={timing}")
    _report(ctx, cfg, result, fps, timing)
    # the step's stats only, no top-level manifest section: steps that read manifest.json
    # hash its sections, and a new verdict must not make the geometry steps run again
    return {**result, "expected_lag_frames": cfg.expected_lag_frames, "plot": PLOT,
            "audio_timing": timing}


def _report(ctx: StepContext, cfg: AvSyncConfig, r: dict, fps: float, timing: str) -> None:
    status = r["status"]
    if status == "unmeasured" and r["windows_total"] == 0:
        ctx.log.warning("av_sync: A/V sync not measured: the clip is %.1f s long, shorter than "
                        "av_sync.min_seconds (%g s), too little speech to tell its sync from "
                        "chance. Preprocess a longer clip of the speaker to have it checked; "
                        "or, with footage of the speaker's mouth, train and check the model's "
                        "mouth against it (`nerfhead evaluate RUN --drive VIDEO` gives the "
                        "offset at which it follows best)", r["duration_s"], cfg.min_seconds)
        return
    if status == "unmeasured":
        ctx.log.warning("av_sync: A/V sync not measured: %d of %d windows reliable, %d with "
                        "speech (need %d and %.0f%% of those with speech; a window needs speech "
                        "and a mouth that moves with it, clearly above chance); see %s",
                        r["windows_reliable"], r["windows_total"], r["windows_with_speech"],
                        cfg.min_windows, 100 * cfg.min_reliable_fraction, ctx.path(PLOT))
        return
    lead = (f"audio {'ahead of' if r['offset_frames'] >= 0 else 'behind'} the video by "
            f"{abs(r['offset_frames']):.2f} frames ({abs(r['offset_frames']) / fps * 1000:.0f} ms)")
    if r["drift_frames_per_minute"] is None:
        text = (f"{lead} over {r['basis']}; {r['windows_reliable']}/{r['windows_total']} "
                "windows reliable")
    else:
        text = (f"{lead} at mid-clip, drift {r['drift_frames_per_minute']:+.2f} frames/minute, "
                f"{r['start_offset_frames']:+.2f} at the start and {r['end_offset_frames']:+.2f} "
                f"at the end ({r['windows_reliable']}/{r['windows_total']} windows reliable)")
    if status == "pass":
        ctx.log.info("av_sync: in sync: %s", text)
        return
    if status == "warn" or cfg.on_fail == "proceed":
        ctx.log.warning("av_sync: %s: %s (bounds: warn %.1f, refuse %.1f frames); see %s",
                        "OUT OF SYNC, kept (on_fail=proceed)" if status == "fail" else "slightly off",
                        text, cfg.warn_frames, cfg.fail_frames, ctx.path(PLOT))
        return
    drifting = abs(r["end_offset_frames"] - r["start_offset_frames"]) > cfg.warn_frames
    if timing == "ignore_timestamps":
        fix = ("the audio was decoded ignoring its timestamps: rerun with "
               "--set decode.audio_timing=timestamps")
    elif drifting:
        fix = ("the audio drifts against the video, which a constant offset cannot correct: cut "
               "the clip to a part that stays in sync (--start-seconds / --max-seconds), or "
               "--set av_sync.on_fail=proceed to keep it as it is")
    else:
        fix = (f"if the source itself is out of sync, delay the audio with --set "
               f"decode.audio_offset={r['offset_frames'] / fps:+.3f} (decode and landmarks run "
               "again), or --set av_sync.on_fail=proceed to keep it as it is")
    raise StepError(STEP, f"audio and mouth out of sync: {text}; the bound is {cfg.fail_frames:g} "
                          f"frames (av_sync.fail_frames). Look at {PLOT}. Way forward: {fix}",
                    ctx.path("aud.wav"))


def check(ctx: StepContext) -> None:
    # the verdict itself is enforced in run (a refusal leaves no record); a change of bounds
    # or on_fail changes the step's settings, so it runs again
    import cv2

    img = cv2.imread(str(ctx.path(PLOT)))
    if img is None or min(img.shape[:2]) < 100:
        raise StepError(STEP, "plot missing or unreadable", ctx.path(PLOT))


def settings(cfg) -> dict:
    from nerfhead.config import to_dict
    from preprocess.focal import section

    return to_dict(section(cfg, STEP, AvSyncConfig))


AV_SYNC = Step(STEP, inputs=("landmarks.npy", "aud.wav"), outputs=(PLOT,), run=run, check=check,
               settings=settings, doc="audio-visual sync: mouth opening vs speech energy, "
                                      "window by window (offset, drift)")
