"""``nerfhead evaluate RUN --drive AUDIO``: lip sync of the model driven by any speech, with
no ground-truth video (another speaker, a TTS voice).

The run renders the audio (features of its kind) with this speaker's poses (``--drive-poses``,
default ``val``; extended by mirroring when the audio is longer), as ``nerfhead render`` does;
MediaPipe finds the mouth in every rendered frame and the energy proxy of
``nerfhead.eval.lipsync`` correlates its opening with the driving audio. Without a GT video the
amplitude reference is the speaker's own footage: the spread (std) of the mouth opening in the
dataset's ``landmarks.npy`` (all its frames); the report gives the render's
spread over it, and the mean opening on speech and on silence frames (a mouth that follows
speech opens more on speech).

When the driving file is a video of someone speaking (another speaker's footage, say), the
footage is a reference for this very audio: MediaPipe measures that speaker's mouth opening
frame by frame, on the same clock as the audio (``nerfhead.audio.clock``), and the report adds
the correlation of the rendered opening with it, the ratio of their spreads (both are
normalised by the inter-ocular distance, but they are two faces), and the energy proxy of
the footage itself, the proxy's ceiling for this audio.

Writes into ``--out``: ``drive.mp4`` (the render with the driving audio), ``metrics.json``,
``report.md``, ``mouth_opening.png`` (opening and audio energy against time) and
``mouth_strip.png`` (rendered mouth over one second of speech).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np

from nerfhead.eval import lipsync as L
from nerfhead.fileio import atomic_write

log = logging.getLogger("nerfhead.eval")

#: offsets (frames either way) searched between the rendered mouth and the driving footage's
FOOTAGE_MAX_OFFSET = 8
#: a best offset this far from 0 is reported: the driving video's sound and picture may be
#: out of step (the 8-s HDTF clip: every model's mouth peaks 3-4 frames after its speaker's)
FOOTAGE_OFFSET_NOTE = 2


def dataset_opening(data_dir: Path) -> np.ndarray | None:
    """Mouth opening of every real frame of the dataset, from its landmarks.npy (detected on
    the full-resolution crops and lightly smoothed in time by preprocessing, so its spread is
    a slightly low reference)."""
    p = Path(data_dir) / "landmarks.npy"
    if not p.is_file():
        return None
    lm = np.load(p, mmap_mode="r")
    return np.array([L.mouth_opening(np.asarray(lm[i])[:, :2]) for i in range(len(lm))])


def footage_opening(video_path, num_frames: int, detector) -> np.ndarray | None:
    """Mouth opening per frame of a driving video (25 fps, on the audio's clock), nan where no
    face is found; None when the file has no picture or no face in half of its frames."""
    from nerfhead.render.video import probe, read_frames

    if detector is None or not probe(video_path)["has_video"]:
        return None
    opening = np.full(num_frames, np.nan)
    for i, rgb in enumerate(read_frames(video_path, max_frames=num_frames)):
        opening[i] = L.mouth_opening(detector(rgb))
    if np.isfinite(opening).sum() < num_frames / 2:
        log.warning("%s: a face in only %d of %d frames; its footage is not used as a reference",
                    video_path, int(np.isfinite(opening).sum()), num_frames)
        return None
    return opening


def drive(run, audio_path, data_dir, out_dir, poses: str = "val", max_frames: int | None = None,
          detector=None, level: str = "match") -> dict:
    """Render ``run`` speaking ``audio_path`` and measure how its mouth follows the audio."""
    from nerfhead.eval.report import json_safe, mouth_strip
    from nerfhead.render.cli import DatasetFrames, driving_features, render_sequence
    from nerfhead.render.poses import build_sequence
    from nerfhead.render.video import VideoWriter

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    heard = {}
    feats, samples = driving_features(run, audio_path, None, max_frames, level=level,
                                      data_dir=data_dir, report=heard)
    seq = build_sequence(data_dir, len(feats), poses)
    frames = DatasetFrames(data_dir)
    n = min(len(seq), len(feats))
    samples = samples[:n * 16000 // L.FPS]
    energy = L.audio_energy_per_frame(samples, n)
    speech = L.speech_frames(energy)
    start = L.speech_window(energy, speech, min(L.FPS, n))
    strip_ids = set(range(start, start + L.FPS)) if start is not None else set()
    landmarks, strip = [], {}
    with VideoWriter(out_dir / "drive.mp4", fps=L.FPS, audio=samples, sr=16000) as writer:
        for i, rgb, _ in render_sequence(run, feats, seq, frames, with_torso=True):
            writer.write(rgb)
            s = 512.0 / rgb.shape[0]
            big = cv2.resize(rgb, (512, 512), interpolation=cv2.INTER_LINEAR)
            lm = detector(big) if detector is not None else None
            landmarks.append(lm)
            if i in strip_ids:
                strip[i] = (rgb, rgb, None if lm is None else lm / s)
    opening = np.array([L.mouth_opening(lm) for lm in landmarks])
    proxy = L.sync_proxy(landmarks, samples)
    real = dataset_opening(data_dir)
    valid = np.isfinite(opening)
    result = {
        "run": str(run.run_dir), "step": run.step, "stage": run.stage, "audio": str(audio_path),
        "poses": seq.source, "data": str(data_dir), "frames": n, "audio_kind": run.model.audio_kind,
        "audio_encoder": run.audio_encoder_note(), "floaters": run.floaters_note(),
        "audio_level": heard.get("note"), "lipsync_proxy": proxy, "faces_missing": int((~valid).sum()),
        "speech_frames": int(speech.sum()),
        "render_opening": {
            "std": float(opening[valid].std()) if valid.any() else None,
            "mean_speech": float(np.nanmean(opening[speech])) if (valid & speech).any() else None,
            "mean_silence": float(np.nanmean(opening[~speech])) if (valid & ~speech).any() else None},
        # landmarks.npy without a face in them (a synthetic dataset) give no reference
        "speaker_opening_std": (float(np.nanstd(real)) if real is not None
                                and np.isfinite(real).sum() > 1 else None),
        "per_frame": {"mouth_opening": opening.tolist(), "speech": speech.astype(int).tolist(),
                      "audio_energy": energy.tolist()}}
    ro, ref = result["render_opening"], result["speaker_opening_std"]
    result["amplitude_vs_speaker"] = ro["std"] / ref if ro["std"] is not None and ref else None
    driver = footage_opening(audio_path, n, detector)
    if driver is not None:
        agree = L.opening_agreement(opening, driver)
        energy_ref = L.offset_correlation(driver, energy)
        result["footage"] = {
            "frames_with_face": int(np.isfinite(driver).sum()),
            "opening_correlation": agree["correlation"],
            "opening_correlation_interval": agree["correlation_interval"],
            "amplitude_vs_footage": agree["amplitude_ratio"],
            "footage_proxy": energy_ref,
            "opening_by_offset": L.offset_correlation(opening, driver, FOOTAGE_MAX_OFFSET),
            # speech frames only (by the driving audio's energy): articulation, without the
            # pauses, where one speaker rests the mouth open and another closes it
            "speech_opening_by_offset": L.offset_correlation(np.where(speech, opening, np.nan),
                                                             driver, FOOTAGE_MAX_OFFSET),
            "per_frame_opening": driver.tolist()}
    img = mouth_strip(strip) if strip else None
    if img is not None:  # one row only: the two rows of mouth_strip are the same render
        img = img[: (img.shape[0] - 2) // 2]
        atomic_write(out_dir / "mouth_strip.png",
                     lambda t: cv2.imwrite(t, cv2.cvtColor(img, cv2.COLOR_RGB2BGR)))
    plot_drive(result, out_dir / "mouth_opening.png")
    result = json_safe(result)
    atomic_write(out_dir / "report.md", lambda t: Path(t).write_text(drive_markdown(result)))
    atomic_write(out_dir / "metrics.json",
                 lambda t: Path(t).write_text(json.dumps(result, indent=1, allow_nan=False)))
    return result


def drive_markdown(r: dict) -> str:
    p = r["lipsync_proxy"]
    z = p.get("zero_offset_correlation")
    ro = r["render_opening"]
    fmt = lambda v, d=3: "n/a" if v is None else f"{v:.{d}f}"  # noqa: E731
    best = ("n/a" if p.get("best_offset") is None else
            f"at the search edge ({p['best_offset']:+d})" if p.get("best_at_edge") else
            f"{p['best_offset']:+d} (r = {p['best_correlation']:.3f})")
    return "\n".join([
        f"# {r['run']} driven by {r['audio']}", "",
        f"- checkpoint step {r['step']} ({r['stage']}), audio features {r['audio_kind']}, "
        f"poses: {r['poses']} of `{r['data']}`, {r['frames']} frames ({r['speech_frames']} "
        "speech frames by audio energy); no GT video, so no LMD or PSNR",
        f"- audio encoder: {r.get('audio_encoder', 'n/a')}; floaters: {r.get('floaters', 'n/a')}", "",
        "| measure | value |", "|---|---|",
        f"| energy proxy at offset 0 | {fmt(z)} |",
        f"| energy proxy best offset (frames, + = mouth lags) | {best} |",
        f"| mouth-opening spread (std), render | {fmt(ro['std'], 4)} |",
        f"| mouth-opening spread of the speaker's real footage (dataset landmarks) | "
        f"{fmt(r['speaker_opening_std'], 4)} |",
        f"| amplitude against the speaker's footage (ratio of spreads) | "
        f"{fmt(r['amplitude_vs_speaker'], 2)} |",
        f"| mean opening on speech / silence frames | {fmt(ro['mean_speech'], 4)} / "
        f"{fmt(ro['mean_silence'], 4)} |",
        f"| frames without a detected face | {r['faces_missing']} |",
        *footage_rows(r), "",
        "The energy proxy is the Pearson r of the rendered mouth opening with the log energy of "
        "the driving audio's 300-3000 Hz band; on the speaker's own held-out speech the real "
        "footage scores about 0.6-0.7 at offset 0 (GRID s1), the reference for these values. "
        "Higher is not better past that: a mouth that follows loudness instead of articulation "
        "scores above the real footage (a model driven by a voice it never heard rose from "
        "0.76 to 0.84-0.88 while its correlation with the real mouth fell; docs/benchmarks.md, "
        "\"Lip sync driven by other voices\"). Footage of the driving speaker, when given, is "
        "the better reference: the mouth-opening correlation with it.", "",
        "![rendered mouth over one second of speech](mouth_strip.png)", "",
        "![mouth opening and audio energy](mouth_opening.png)", ""])


def footage_rows(r: dict) -> list[str]:
    """Report rows measured against the driving video's own speaker, when there is one."""
    f = r.get("footage")
    if not f:
        return []
    fmt = lambda v, d=3: "n/a" if v is None else f"{v:.{d}f}"  # noqa: E731
    return [
        f"| mouth-opening correlation with the driving footage's speaker ({f['frames_with_face']} "
        f"frames) ↑ | {fmt(f['opening_correlation'])}"
        f"{L.format_interval(f.get('opening_correlation_interval'))} |",
        f"| amplitude against the driving footage (ratio of spreads; two faces) | "
        f"{fmt(f['amplitude_vs_footage'], 2)} |",
        f"| energy proxy at offset 0 of the driving footage itself (this audio's reference) | "
        f"{fmt(f['footage_proxy'].get('zero_offset_correlation'))} |",
        *footage_offset_rows(f)]


def footage_offset_rows(f: dict) -> list[str]:
    """The correlation with the driving footage at the best offset, and why it matters when
    that offset is not 0: no model can follow a speaker's mouth that is out of step with the
    speaker's own sound, so the figure at offset 0 then says as much about the video as
    about the model. Compare models at the same offset."""
    o = f.get("opening_by_offset")
    if not o or o.get("best_offset") is None:
        return []
    d = o["best_offset"]
    where = (f"at the search edge ({d:+d}: a bound, not a lag)" if o["best_at_edge"] else f"{d:+d}")
    rows = [f"| mouth-opening correlation with the driving footage at its best offset "
            f"(frames, + = the render trails the footage) | {o['best_correlation']:.3f} at {where} |"]
    sp = f.get("speech_opening_by_offset") or {}
    corrs = dict(zip(sp.get("offsets", []), sp.get("correlations", [])))
    if corrs.get(d) is not None:
        rows.append(f"| the same on speech frames only (articulation, without the pauses) | "
                    f"{corrs[d]:.3f} at {d:+d} |")
    if abs(d) >= FOOTAGE_OFFSET_NOTE and not o["best_at_edge"]:
        side = "after" if d > 0 else "before"
        rows += ["", f"The rendered mouth follows the driving speaker's best {abs(d)} frames "
                 f"{side} that speaker's own mouth. Driven by their own speaker's held-out speech "
                 "nerfhead's heads peak at 0 (GRID s1), so an offset this size usually means the driving "
                 "video's sound and picture are out of step (a model can only follow the "
                 "sound): compare models at this offset, and measure the video's sync with "
                 "`nerfhead preprocess VIDEO --out DIR --steps decode,landmarks,av_sync` where "
                 "it is long enough (about a minute of speech)."]
    return rows


def plot_drive(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pf = result["per_frame"]
    o = np.array([np.nan if v is None else v for v in pf["mouth_opening"]], float)
    t = np.arange(len(o)) / L.FPS
    fig, ax = plt.subplots(figsize=(12, 3.2))
    ax.fill_between(t, 0, 1, where=np.asarray(pf["speech"], bool), transform=ax.get_xaxis_transform(),
                    color="0.9", step="mid", label="speech (audio energy)")
    ax.plot(t, o, color="tab:red", lw=1, label="rendered mouth opening")
    if result.get("footage"):
        d = np.array([np.nan if v is None else v for v in result["footage"]["per_frame_opening"]], float)
        ax.plot(t[:len(d)], d[:len(t)], color="tab:blue", lw=1, label="driving footage's mouth opening")
    ax2 = ax.twinx()
    ax2.plot(t, pf["audio_energy"], color="0.4", lw=0.7, alpha=0.7, label="audio log energy")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("mouth opening")
    ax2.set_ylabel("log band energy")
    z = result["lipsync_proxy"].get("zero_offset_correlation")
    ax.set_title(f"driven by {Path(result['audio']).name}: energy proxy at offset 0 = "
                 f"{'n/a' if z is None else f'{z:.3f}'}")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
