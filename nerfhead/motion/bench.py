"""``nerfhead bench motion DATA|RUN``: head motion generated from audio, judged against the
held-out part of the clip (the validation split, the last 1/11, never seen by the model).

The head-motion model is fitted on the training split's poses and audio; it then generates
``seeds`` sequences for the held-out audio. Each statistic of ``nerfhead.motion.stats`` is
compared with the held-out poses, raw and smoothed as the training poses are
(``smooth_sigma``: the tracking noise left in bundle-adjusted poses is not head motion, and
the generator does not reproduce it). For scale, the same distances are given for the
training part of the clip (real against real: the floor), a static head (no motion: the
ceiling) and a replay of the training poses (what ``--poses train`` shows: a copy).

Verdicts (thresholds stated in docs/motion.md):

- ``distributions_close``: for angular speed, acceleration and amplitude, W1 / mean of the
  smoothed held-out statistic <= ``CLOSE``, or W1 within ``FLOOR_FACTOR`` times that of the
  clip's own training part (when the clip's two parts differ that much, generated motion cannot
  be asked to be closer);
- ``speech_motion_like_speaker``: generated angular speed in speech / in silence (mean over
  seeds) within ``SPEECH_RATIO_TOL`` (relative) of the same ratio in the speaker's training
  poses: some speakers move more while talking, some in the pauses (GRID s1's training part
  1.05, its held-out part 0.84, once the audio is on the video's clock), so "more motion in
  speech" is not a property to demand of every speaker's model;
- ``not_a_copy``: the median distance of generated 2-s windows to their nearest training window
  is at least ``NOVEL`` times that of the held-out real windows, and no generated window comes
  closer than ``MIN_COPY_DEG``;
- ``within_trained_range``: every generated pose inside the training poses' range.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from nerfhead.motion import stats as S
from nerfhead.motion.generator import (MotionModelConfig, TrainingMotion, fit, prosody_features,
                                       training_motion)

log = logging.getLogger("nerfhead.motion")

CLOSE = 0.3
FLOOR_FACTOR = 1.5
NOVEL = 0.5
SHORT_HELDOUT_S = 20.0
MIN_COPY_DEG = 0.05
#: generated speech/silence speed ratio within this relative distance of the training poses'
SPEECH_RATIO_TOL = 0.25


def _ok(tm: TrainingMotion) -> np.ndarray:
    return S.valid_steps(len(tm.pose), tm.stretches)


def evaluate_generator(train: TrainingMotion, heldout: TrainingMotion, heldout_samples: np.ndarray,
                       cfg: MotionModelConfig | None = None, seeds: int = 5) -> tuple[dict, dict]:
    """Fit on ``train``, generate for ``heldout_samples`` (the held-out frames' audio), compare.
    Returns (result dict, arrays for plotting)."""
    cfg = cfg or MotionModelConfig()
    t0 = time.perf_counter()
    model = fit(train, cfg)
    n = len(heldout.pose)
    feats, detector = prosody_features(heldout_samples, n, cfg.fps)
    speech = feats[:, 0] > 0.5
    gens, infos = [], []
    for s in range(seeds):
        g, info = model.sample(feats, s)
        gens.append(g)
        infos.append(info)
    ok_h, ok_t = _ok(heldout), _ok(train)
    real_raw = S.motion_stats(heldout.pose, ok_h, speech)
    real_smooth = S.motion_stats(heldout.pose, ok_h, speech, smooth_sigma=cfg.smooth_sigma)
    train_raw = S.motion_stats(train.pose, ok_t, train.features[:, 0] > 0.5)
    train_smooth = S.motion_stats(train.pose, ok_t, train.features[:, 0] > 0.5,
                                  smooth_sigma=cfg.smooth_sigma)
    gen_stats = [S.motion_stats(g, None, speech) for g in gens]
    pooled = {k: np.concatenate([g[k] for g in gen_stats]) for k in S.STATS}
    static = {k: np.zeros(8) for k in S.STATS}
    replay_pose = train.pose[:n]
    replay = S.motion_stats(replay_pose, ok_t[:n])
    distances = {}
    for name, real, tr in (("raw", real_raw, train_raw), ("smoothed", real_smooth, train_smooth)):
        distances[name] = {"generated": S.compare(real, pooled), "train_part": S.compare(real, tr),
                           "static": S.compare(real, static), "replay": S.compare(real, replay)}
    ref = S.windows(train.pose, ok_t)
    near_real = S.nearest_window_distance(S.windows(heldout.pose, ok_h, stride=10), ref)
    near_gen = [S.nearest_window_distance(S.windows(g, np.ones(n, bool), stride=10), ref)
                for g in gens]
    near_replay = S.nearest_window_distance(S.windows(replay_pose, ok_t[:n], stride=10), ref)
    lo, hi = np.asarray(model.lo), np.asarray(model.hi)
    inside = all(bool(((g >= lo - 1e-9) & (g <= hi + 1e-9)).all()) for g in gens)
    ratios = [g["speech_over_silence"] for g in gen_stats]
    gen_near_all = np.concatenate(near_gen) if near_gen else np.zeros(0)
    close = {}
    for k in ("angular_speed", "angular_acceleration", "amplitude"):
        g, floor = distances["smoothed"]["generated"][k], distances["smoothed"]["train_part"][k]
        close[k] = g["w1"] is not None and (g["w1_relative"] <= CLOSE or
                                            g["w1"] <= FLOOR_FACTOR * floor["w1"])
    real_med = float(np.median(near_real)) if near_real.size else None
    verdict = {
        "distributions_close": bool(all(close.values())),
        "speech_motion_like_speaker": bool(
            all(r is not None for r in ratios) and train_raw.get("speech_over_silence")
            and abs(np.mean(ratios) / train_raw["speech_over_silence"] - 1.0) <= SPEECH_RATIO_TOL),
        "not_a_copy": bool(gen_near_all.size and real_med is not None
                           and np.median(gen_near_all) >= NOVEL * real_med
                           and gen_near_all.min() > MIN_COPY_DEG),
        "within_trained_range": inside,
    }
    result = {
        "train_seconds": round(len(train.pose) / cfg.fps, 2),
        "heldout_seconds": round(n / cfg.fps, 2), "seeds": seeds, "speech_detector": detector,
        "fit": model.info, "config": vars(cfg).copy(),
        "statistics": {"heldout_raw": {k: S.summarize(real_raw[k]) for k in S.STATS},
                       "heldout_smoothed": {k: S.summarize(real_smooth[k]) for k in S.STATS},
                       "train_raw": {k: S.summarize(train_raw[k]) for k in S.STATS},
                       "generated": {k: S.summarize(pooled[k]) for k in S.STATS}},
        "units": S.UNITS, "distances": distances,
        "speech_over_silence": {"heldout": real_raw.get("speech_over_silence"),
                                "train": train_raw.get("speech_over_silence"),
                                "generated": ratios, "generated_mean": float(np.mean(ratios))
                                if all(r is not None for r in ratios) else None},
        "nearest_train_window_deg": {
            "heldout": _near_summary(near_real), "generated": _near_summary(gen_near_all),
            "replay_of_train": _near_summary(near_replay)},
        "limited_fraction": [i["limited_fraction"] for i in infos],
        "verdict": verdict, "seconds": round(time.perf_counter() - t0, 2),
    }
    arrays = {"heldout": heldout.pose, "generated": gens, "speech": speech, "real_raw": real_raw,
              "real_smooth": real_smooth, "pooled": pooled, "near_real": near_real,
              "near_gen": gen_near_all, "lo": lo, "hi": hi}
    return result, arrays


def _near_summary(d: np.ndarray) -> dict:
    if d.size == 0:
        return {"count": 0}
    return {"count": int(d.size), "median": float(np.median(d)), "min": float(d.min()),
            "mean": float(d.mean())}


def run_bench(data_dir, out_dir, seeds: int = 5, cfg: MotionModelConfig | None = None) -> dict:
    """Fit, generate and compare on a dataset folder; writes motion_bench.{json,md,png}."""
    from nerfhead.audio.features import load_audio
    from nerfhead.fileio import check_output_dir

    cfg = cfg or MotionModelConfig()
    data_dir, out_dir = Path(data_dir), check_output_dir(out_dir, "nerfhead bench motion --out")
    samples = load_audio(data_dir / "aud.wav")
    train = training_motion(data_dir, cfg, "train", samples)
    heldout = training_motion(data_dir, cfg, "val", samples)
    if len(heldout.pose) < 2 * S.WINDOW:
        raise ValueError(f"{data_dir}: the held-out part has {len(heldout.pose)} frames; judging "
                         f"motion needs at least {2 * S.WINDOW} (a clip of about "
                         f"{2 * S.WINDOW * 11 / cfg.fps:.0f} s or more)")
    per = int(round(16000 / cfg.fps))
    ids = heldout.frame_ids
    result, arrays = evaluate_generator(train, heldout, samples[ids[0] * per:(ids[-1] + 1) * per],
                                        cfg, seeds)
    result["data"] = str(data_dir)
    result["summary"] = summary_line(result)
    write_report(result, arrays, out_dir)
    return result


def summary_line(r: dict) -> str:
    d = r["distances"]["smoothed"]["generated"]
    v = r["verdict"]
    near = r["nearest_train_window_deg"]
    return (f"generated vs held-out ({r['heldout_seconds']:.0f} s, {r['seeds']} seeds): W1/mean "
            f"speed {d['angular_speed']['w1_relative']:.2f}, acceleration "
            f"{d['angular_acceleration']['w1_relative']:.2f}, amplitude "
            f"{d['amplitude']['w1_relative']:.2f}; speech/silence speed "
            f"{r['speech_over_silence']['generated_mean']:.2f} (held-out "
            f"{r['speech_over_silence']['heldout'] or float('nan'):.2f}); nearest training window "
            f"{near['generated'].get('median', float('nan')):.2f} deg (held-out real "
            f"{near['heldout'].get('median', float('nan')):.2f}); "
            + ", ".join(f"{k}: {'yes' if ok else 'NO'}" for k, ok in v.items()))


def markdown(r: dict) -> str:
    lines = [f"# Head motion from audio: generated vs held-out ({r.get('data', '')})", "",
             f"Model fitted on {r['train_seconds']} s of training poses ({r['fit']['stretches']} "
             f"continuous stretches, {r['fit']['cuts_found']} cuts) in {r['fit']['fit_seconds']} s; "
             f"{r['seeds']} generated sequences for the {r['heldout_seconds']} s of held-out audio.",
             "", "W1 = Wasserstein-1 distance between the distributions (in the statistic's unit); "
             "W1/mean = relative to the held-out mean; KS = Kolmogorov-Smirnov statistic. "
             "Reference: held-out poses smoothed as the training poses are "
             f"(sigma {r['config']['smooth_sigma']} frames); raw in brackets.", "",
             "| statistic | held-out mean | generated mean | W1 generated | W1/mean | KS | "
             "W1 train part (floor) | W1 static (ceiling) |", "|---|---|---|---|---|---|---|---|"]
    st = r["statistics"]
    for k in S.STATS:
        ds, dr = r["distances"]["smoothed"], r["distances"]["raw"]
        u = r["units"][k]
        g = ds["generated"][k]
        lines.append(f"| {k} ({u}) | {st['heldout_smoothed'][k].get('mean', 0):.3f} "
                     f"({st['heldout_raw'][k].get('mean', 0):.3f}) | "
                     f"{st['generated'][k].get('mean', 0):.3f} | {g['w1']:.3f} "
                     f"({dr['generated'][k]['w1']:.3f}) | {g['w1_relative']:.2f} | {g['ks']:.2f} | "
                     f"{ds['train_part'][k]['w1']:.3f} | {ds['static'][k]['w1']:.3f} |")
    so, near = r["speech_over_silence"], r["nearest_train_window_deg"]
    fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
    lines += ["", "Angular speed in speech / in silence: generated "
              + ", ".join(fmt(x) for x in so["generated"]) + f" (mean {fmt(so['generated_mean'])}); "
              f"held-out real {fmt(so['heldout'])}; training part {fmt(so['train'])}.", "",
              "Nearest training window (2 s, mean removed, RMS angle): generated median "
              f"{fmt(near['generated'].get('median'))} deg, min {fmt(near['generated'].get('min'))}; "
              f"held-out real median {fmt(near['heldout'].get('median'))}; replay of the training "
              f"poses {fmt(near['replay_of_train'].get('median'))} (a copy).", "",
              "Softly limited values (fraction, per seed): "
              + ", ".join(f"{x:.3f}" for x in r["limited_fraction"]), "", "Verdicts:", ""]
    lines += [f"- {k}: {'yes' if ok else 'NO'}" for k, ok in r["verdict"].items()]
    if r["heldout_seconds"] < SHORT_HELDOUT_S:
        lines += ["", f"Note: the held-out part is short ({r['heldout_seconds']:.0f} s); its motion "
                  "may not represent the speaker (compare the W1 of the training part against it)."]
    lines += ["", "![curves and histograms](motion_bench.png)", ""]
    return "\n".join(lines)


def write_report(result: dict, arrays: dict, out_dir: Path) -> None:
    from nerfhead.fileio import atomic_path

    with atomic_path(out_dir / "motion_bench.json") as tmp:
        tmp.write_text(json.dumps(result, indent=1, default=float))
    with atomic_path(out_dir / "motion_bench.md") as tmp:
        tmp.write_text(markdown(result))
    plot(arrays, out_dir / "motion_bench.png")


def plot(a: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nerfhead.fileio import atomic_path

    fig = plt.figure(figsize=(15, 10))
    n = len(a["heldout"])
    t = np.arange(n) / 25.0
    for j, name in enumerate(("yaw", "pitch", "roll")):
        ax = fig.add_subplot(4, 3, (j * 3 + 1, j * 3 + 2))
        ax.plot(t, a["heldout"][:, j], "k", lw=1.5, label="held-out real")
        for s, g in enumerate(a["generated"][:3]):
            ax.plot(t, g[:, j], lw=1, label=f"generated, seed {s}")
        ax.axhline(a["lo"][j], color="r", ls=":", lw=0.8)
        ax.axhline(a["hi"][j], color="r", ls=":", lw=0.8, label="trained range")
        y0, y1 = ax.get_ylim()
        ax.fill_between(t, y0, y1, where=a["speech"], color="y", alpha=0.15, lw=0,
                        label="speech")
        ax.set_ylim(y0, y1)
        ax.set_ylabel(f"{name} (deg)")
        if j == 0:
            ax.legend(ncol=6, fontsize=7, loc="upper left")
    ax = fig.add_subplot(4, 3, (10, 11))
    ax.hist(a["near_real"], bins=30, alpha=0.6, density=True, label="held-out real")
    ax.hist(a["near_gen"], bins=30, alpha=0.6, density=True, label="generated")
    ax.set_xlabel("nearest training window: RMS angle difference (deg); a copy scores 0")
    ax.legend(fontsize=8)
    for j, k in enumerate(("angular_speed", "angular_acceleration", "amplitude")):
        ax = fig.add_subplot(4, 3, 3 * j + 3)
        hi = np.percentile(np.concatenate([a["real_raw"][k], a["pooled"][k]]), 99)
        bins = np.linspace(0, hi, 40)
        ax.hist(a["real_raw"][k], bins, density=True, histtype="step", color="0.5", label="held-out raw")
        ax.hist(a["real_smooth"][k], bins, density=True, histtype="step", color="k",
                label="held-out smoothed")
        ax.hist(a["pooled"][k], bins, density=True, alpha=0.5, label="generated")
        ax.set_xlabel(f"{k} ({S.UNITS[k]})")
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=70, format="png")
    plt.close(fig)
