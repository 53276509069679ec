#!/usr/bin/env python3
"""How far the audio (and optionally the mouth) of a preprocessed GRID clip sits from the
corpus' word timings, sentence by sentence.

GRID ships, per sentence, the time of every word (``grid_s1_align/<name>.align``, units of
1/25000 s from the sentence's start); ``grid_s1_300s.mp4`` joins the sentences listed in
``grid_s1_300s.clips.txt`` at 3 s (75 frames) each. For each sentence this script
cross-correlates a speech indicator built from the word timings (1 inside a word, 0 in
``sil``/``sp``) with the log energy of the 300-3000 Hz band of ``aud.wav`` (20 ms windows,
5 ms hop) over lags of +-0.4 s around the recent sentences' lag and refines the peak with a parabola: the lag is where the
sound is against where the labels put it (positive: the audio comes late, negative: it runs
ahead of the video). With ``--landmarks`` it does the same for the mouth opening (outer-lip
gap / eye distance, 25 Hz, linear interpolation to the 5 ms grid): only its median means
something (the opening is a poor match for the word boxes sentence by sentence). The level of
the lags depends on the estimator by up to a frame (``--smooth-ms``); their slope and spread
do not.

Usage:
  python3 scripts/grid_av_lag.py DATA/aud.wav [--landmarks DATA/landmarks.npy]
      [--clips ../shared/data/video/grid_s1_300s.clips.txt] [--json out.json] [--plot out.png]
Prints a line per sentence and a summary (max and mean |lag|, the slope per sentence).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "video"
HOP = 0.005  #: analysis step, seconds
SENTENCE = 3.0  #: seconds per sentence in grid_s1_300s.mp4
MAX_LAG = 0.4  #: searched lags, seconds either way of the previous sentence's lag


def read_sentences(clips: Path, align_dir: Path) -> list[tuple[str, list[tuple[float, float]]]]:
    """[(name, [(word start, word end) in seconds from the sentence start])] in clip order."""
    out = []
    for line in clips.read_text().split("\n"):
        if not line.strip():
            continue
        name = Path(line.split()[1]).stem
        words = []
        for row in (align_dir / f"{name}.align").read_text().split("\n"):
            parts = row.split()
            if len(parts) == 3 and parts[2] not in ("sil", "sp"):
                words.append((int(parts[0]) / 25000, int(parts[1]) / 25000))
        out.append((name, words))
    return out


def band_log_energy(samples: np.ndarray, sr: int, win: float = 0.02) -> np.ndarray:
    """log RMS of the 300-3000 Hz band in ``win``-second windows every HOP seconds."""
    from scipy.signal import butter, sosfiltfilt

    x = sosfiltfilt(butter(4, (300, 3000), btype="band", fs=sr, output="sos"), samples)
    hop, half = int(round(HOP * sr)), int(round(win * sr / 2))
    power = np.concatenate([[0.0], np.cumsum(x.astype(np.float64) ** 2)])
    centres = np.arange(0, len(x), hop)
    lo, hi = np.clip(centres - half, 0, len(x)), np.clip(centres + half, 0, len(x))
    return np.log(np.sqrt((power[hi] - power[lo]) / np.maximum(hi - lo, 1)) + 1e-4)


def best_lag(label: np.ndarray, signal: np.ndarray, start: int, max_lag: int) -> float | None:
    """Lag (in hops) maximising corr(label[t], signal[start + t + lag]), parabola-refined."""
    n = len(label)
    lags = np.arange(-max_lag, max_lag + 1)
    corr = np.full(len(lags), np.nan)
    for k, lag in enumerate(lags):
        a = start + lag
        if a < 0 or a + n > len(signal):
            continue
        seg = signal[a:a + n]
        if seg.std() > 0 and label.std() > 0:
            corr[k] = np.corrcoef(label, seg)[0, 1]
    if not np.isfinite(corr).any():
        return None
    k = int(np.nanargmax(corr))
    if 0 < k < len(lags) - 1 and np.isfinite(corr[k - 1]) and np.isfinite(corr[k + 1]):
        den = corr[k - 1] - 2 * corr[k] + corr[k + 1]
        frac = 0.5 * (corr[k - 1] - corr[k + 1]) / den if den < 0 else 0.0
        return float(lags[k] + frac)
    return float(lags[k])


def sentence_lags(sentences, track: np.ndarray, smooth_ms: float = 0.0) -> list[float | None]:
    """Per sentence, the lag (seconds) of ``track`` (sampled every HOP s) against the words.

    The search is centred on the median lag of the previous 5 sentences: a drifting track
    can end up seconds away, and every GRID sentence has the same shape, so a search around
    0 would lock onto a neighbouring sentence once the drift passes half a sentence; the
    median keeps one bad sentence from moving the search."""
    per = int(round(SENTENCE / HOP))
    out, found, centre = [], [], 0
    for i, (_, words) in enumerate(sentences):
        t = np.arange(per) * HOP
        label = np.zeros(per)
        for a, b in words:
            label[(t >= a) & (t < b)] = 1.0
        if smooth_ms > 0:
            from scipy.ndimage import gaussian_filter1d

            label = gaussian_filter1d(label, smooth_ms / 1000 / HOP)
        lag = best_lag(label, track, i * per + centre, int(round(MAX_LAG / HOP)))
        if lag is None:
            out.append(None)
            continue
        out.append((lag + centre) * HOP)
        found.append(lag + centre)
        centre = int(round(np.median(found[-5:])))
    return out


def mouth_track(landmarks: Path, fps: float = 25.0) -> np.ndarray:
    from nerfhead.eval.lipsync import mouth_opening

    lms = np.load(landmarks)
    opening = np.array([mouth_opening(lm) for lm in lms])
    t = np.arange(0, len(lms) / fps, HOP)
    return np.interp(t, (np.arange(len(lms)) + 0.5) / fps, opening)


def summarise(lags: list[float | None], fps: float = 25.0) -> dict:
    v = np.array([x for x in lags if x is not None])
    idx = np.array([i for i, x in enumerate(lags) if x is not None])
    slope = float(np.polyfit(idx, v, 1)[0]) if len(v) > 1 else float("nan")
    med = float(np.median(v))
    return {"sentences": len(v), "max_abs_lag_frames": float(np.abs(v).max() * fps),
            "median_lag_frames": med * fps,
            "max_abs_from_median_frames": float(np.abs(v - med).max() * fps),
            "mean_abs_from_median_frames": float(np.abs(v - med).mean() * fps),
            "mean_abs_lag_frames": float(np.abs(v).mean() * fps),
            "mean_lag_frames": float(v.mean() * fps), "first_lag_frames": float(v[0] * fps),
            "last_lag_frames": float(v[-1] * fps),
            "slope_frames_per_sentence": slope * fps}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("wav", type=Path, help="aud.wav of the preprocessed grid_s1_300s.mp4")
    p.add_argument("--landmarks", type=Path, help="landmarks.npy of the same dataset")
    p.add_argument("--clips", type=Path, default=SHARED / "grid_s1_300s.clips.txt")
    p.add_argument("--align", type=Path, default=None, help="default: grid_s1_align beside --clips")
    p.add_argument("--smooth-ms", type=float, default=0.0,
                   help="smooth the word indicator with a Gaussian of this sigma (the level of "
                        "the lag moves by up to a frame with it; slope and spread do not)")
    p.add_argument("--json", type=Path, help="write per-sentence lags and the summary here")
    p.add_argument("--plot", type=Path, help="PNG of the lag per sentence")
    args = p.parse_args(argv)
    from nerfhead.audio.features import load_audio

    sentences = read_sentences(args.clips, args.align or args.clips.parent / "grid_s1_align")
    samples = load_audio(args.wav).astype(np.float64)
    result = {"audio": sentence_lags(sentences, band_log_energy(samples, 16000), args.smooth_ms)}
    if args.landmarks:
        result["mouth"] = sentence_lags(sentences, mouth_track(args.landmarks), args.smooth_ms)
    summary = {k: summarise(v) for k, v in result.items()}
    for i, (name, _) in enumerate(sentences):
        cells = "  ".join(f"{k} {'-' if v[i] is None else f'{v[i] * 25:+6.2f}'}"
                          for k, v in result.items())
        print(f"{i:3d} {name}  lag in frames: {cells}")
    for k, s in summary.items():
        print(f"{k}: max |lag| {s['max_abs_lag_frames']:.2f} frames, mean |lag| "
              f"{s['mean_abs_lag_frames']:.2f}, median {s['median_lag_frames']:+.2f} "
              f"(max / mean distance from it {s['max_abs_from_median_frames']:.2f} / "
              f"{s['mean_abs_from_median_frames']:.2f}), {s['slope_frames_per_sentence']:+.3f} "
              f"frames per sentence ({s['sentences']} sentences)")
    if args.json:
        args.json.write_text(json.dumps({"lags_seconds": result, "summary": summary}, indent=1))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 3.2))
        for k, v in result.items():  # the mouth is noisy sentence by sentence: faint dots
            ax.plot([i for i, x in enumerate(v) if x is not None],
                    [x * 25 for x in v if x is not None], ".-" if k == "audio" else ".",
                    alpha=1.0 if k == "audio" else 0.4, label=k)
        ax.axhspan(-1, 1, color="green", alpha=0.1, label="within a frame")
        ax.set_xlabel("sentence (3 s each)")
        ax.set_ylabel("lag vs word timings (frames)")
        ax.set_title(str(args.wav))
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=100)
    return 0


if __name__ == "__main__":
    sys.exit(main())
