"""Per-frame evaluation of a rendered sequence and the report written from it.

``SequenceEvaluator.add`` takes, per frame, the render, the GT frame, the original crop and the
soft face mask (all the same size) and computes, in two modes:

- ``full`` (without parsing masks): the whole rendered frame against the GT frame;
- ``portrait`` (with them): the render blended into the original crop with the face mask
  (Portrait-Sync) against the original crop;

PSNR, SSIM, LPIPS (when its weights exist), LMD (mouth landmarks detected by MediaPipe on both
images at 512x512), plus PSNR inside the face mask and inside the mouth box. A frame where no
face is detected gets no LMD/mouth value and is counted, never an error.

``add`` may also take the frame as ``nerfhead render`` delivers it (``delivered``: for a run
without a trained torso, the head over the background plate, no body), scored with PSNR /
SSIM / LPIPS against the same GT, so the report says what a user receives as well as the
composite measured.

``finish`` adds the lip-sync measures (``nerfhead.eval.lipsync``): render/GT mouth-opening
correlation and amplitude ratio, the energy proxy of render and GT, LMD on speech and on
silence frames; it returns the ``metrics.json`` dict. ``write_report`` writes report.md (lip
sync first), metrics.json, per_frame.png, GT|render|error PNGs, ``mouth_strip.png`` (mouth
crops over one second of speech, GT above render) and ``mouth_opening.png`` (the two opening
curves against time, speech frames shaded).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from nerfhead.eval import metrics as M
from nerfhead.eval import lipsync as L
from nerfhead.fileio import atomic_write
from nerfhead.render.compositing import portrait_blend

MODES = ("full", "portrait")
DETECT_SIZE = 512  # landmarks are detected (and LMD measured) on frames resized to 512x512


class SequenceEvaluator:
    def __init__(self, detector=None, lpips=None, lpips_reason: str | None = None,
                 preview_frames: tuple[int, ...] = (), detector_reason: str | None = None,
                 strip_frames: tuple[int, ...] = ()):
        """``preview_frames``: frame ids kept for GT|render|error PNGs; ``strip_frames``:
        frame ids (about one second of speech, in order) kept for the mouth strip."""
        self.detector, self.lpips = detector, lpips
        self.detector_reason = detector_reason or "no landmark detector given"
        self.lpips_reason = lpips_reason
        self.preview_frames = set(preview_frames)
        self.previews: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.per_frame: dict[str, dict[str, list]] = {m: {} for m in MODES}
        self.frame_ids: list[int] = []
        self.no_face = {"gt": [], "render": [], "original": [], "portrait": []}
        self.render_landmarks: list = []
        self.gt_landmarks: list = []
        self.delivered: dict[str, list] = {}
        self.strip_frames = tuple(int(f) for f in strip_frames)
        self.strip: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray | None]] = {}

    def _landmarks(self, img: np.ndarray, kind: str, fid: int):
        if self.detector is None:
            return None
        lm = self.detector(cv2.resize(img, (DETECT_SIZE, DETECT_SIZE), interpolation=cv2.INTER_AREA
                                      if img.shape[0] > DETECT_SIZE else cv2.INTER_LINEAR))
        if lm is None:
            self.no_face[kind].append(fid)
        return lm

    def _record(self, mode: str, name: str, value) -> None:
        self.per_frame[mode].setdefault(name, []).append(None if value is None else float(value))

    def add(self, fid: int, render: np.ndarray, gt: np.ndarray, original: np.ndarray,
            face_mask: np.ndarray, delivered: np.ndarray | None = None) -> None:
        """One frame; images uint8 [H, W, 3] of one size, face_mask uint8 [H, W].
        ``delivered``: the frame as ``nerfhead render`` outputs it when that differs from
        ``render`` (scored with PSNR / SSIM / LPIPS against ``gt``)."""
        self.frame_ids.append(int(fid))
        portrait = portrait_blend(render, original, face_mask)
        pairs = {"full": (render, gt, "render", "gt"),
                 "portrait": (portrait, original, "portrait", "original")}
        h, w = gt.shape[:2]
        for mode, (pred, ref, pk, rk) in pairs.items():
            self._record(mode, "psnr", M.psnr(pred, ref))
            self._record(mode, "ssim", M.ssim(pred, ref))
            if self.lpips is not None:
                self._record(mode, "lpips", self.lpips.distance(pred, ref))
            lp, lr = self._landmarks(pred, pk, fid), self._landmarks(ref, rk, fid)
            mouth = list(M.MOUTH_LANDMARKS)
            self._record(mode, "lmd", M.lmd(lp[mouth], lr[mouth], DETECT_SIZE)
                         if lp is not None and lr is not None else None)
            self._record(mode, "face_psnr", M.psnr(pred, ref, face_mask))
            mm = M.mouth_mask(lr * [w / DETECT_SIZE, h / DETECT_SIZE], h, w) if lr is not None else None
            self._record(mode, "mouth_psnr", M.psnr(pred, ref, mm) if mm is not None else None)
            if mode == "full":
                self.render_landmarks.append(lp)
                self.gt_landmarks.append(lr)
        if delivered is not None:
            scores = {"psnr": M.psnr(delivered, gt), "ssim": M.ssim(delivered, gt)}
            if self.lpips is not None:
                scores["lpips"] = self.lpips.distance(delivered, gt)
            for name, value in scores.items():
                self.delivered.setdefault(name, []).append(float(value))
        if fid in self.preview_frames:
            self.previews[fid] = (gt, render)
        if fid in self.strip_frames:
            lr = self.gt_landmarks[-1]
            self.strip[fid] = (gt, render, None if lr is None else
                               np.asarray(lr)[:, :2] * [w / DETECT_SIZE, h / DETECT_SIZE])

    def finish(self, audio_samples: np.ndarray | None, info: dict) -> dict:
        """The metrics.json content; ``info`` (run, split, resolution...) is copied in."""
        out = dict(info)
        out["frames"] = len(self.frame_ids)
        out["modes"] = {m: {k: M.summarize(v) for k, v in self.per_frame[m].items()} for m in MODES}
        out["lpips"] = ({"available": True} if self.lpips is not None
                        else {"available": False, "reason": self.lpips_reason})
        out["faces_not_found"] = {k: {"count": len(v), "frames": v[:50]} for k, v in self.no_face.items()}
        if self.detector is None:
            out["faces_not_found"]["note"] = (f"landmark detector unavailable, LMD, mouth PSNR "
                                              f"and the sync proxy not computed: {self.detector_reason}")
        if self.delivered:
            out["delivered"] = {k: M.summarize(v) for k, v in self.delivered.items()}
        n = len(self.frame_ids)
        speech = energy = None
        if audio_samples is not None and n:
            energy = L.audio_energy_per_frame(audio_samples, n)
            speech = L.speech_frames(energy)
        if self.detector is None:
            out["lipsync_proxy"] = {"unavailable": f"no landmark detector: {self.detector_reason}"}
        elif audio_samples is None:
            out["lipsync_proxy"] = {"unavailable": "the driving audio (aud.wav) was not found"}
        else:
            out["lipsync_proxy"] = {"render": L.sync_proxy(self.render_landmarks, audio_samples),
                                    "gt": L.sync_proxy(self.gt_landmarks, audio_samples)}
            out["lipsync_proxy"]["reference"] = L.proxy_reference(out["lipsync_proxy"]["gt"])
        opening = {"render": [L.mouth_opening(lm) for lm in self.render_landmarks],
                   "gt": [L.mouth_opening(lm) for lm in self.gt_landmarks]}
        out["mouth_opening"] = (L.opening_agreement(opening["render"], opening["gt"])
                                if self.detector is not None else
                                {"unavailable": f"no landmark detector: {self.detector_reason}"})
        if self.detector is not None:  # a lag between render and footage shows as an offset
            out["mouth_opening"]["by_offset"] = L.offset_correlation(
                [np.nan if v is None else v for v in opening["render"]],
                [np.nan if v is None else v for v in opening["gt"]],
                min(OPENING_MAX_OFFSET, n // 5))  # short sequences: fewer offsets
        if speech is not None:
            out["speech_frames"] = {"count": int(speech.sum()), "of": n,
                                    "method": "band-energy detector (nerfhead.eval.lipsync.speech_frames)"}
            for mode in MODES:
                lmd = self.per_frame[mode].get("lmd", [])
                for key, sel in (("lmd_speech", speech), ("lmd_silence", ~speech)):
                    out["modes"][mode][key] = M.summarize([v for v, s in zip(lmd, sel) if s])
        out["per_frame"] = {"frame_ids": self.frame_ids, **self.per_frame,
                            "mouth_opening": opening,
                            "speech": None if speech is None else speech.astype(int).tolist(),
                            "audio_energy": None if energy is None else energy.tolist()}
        return out


# ------------------------------------------------------------------------------ writing

def _write_png(path: str, img: np.ndarray) -> None:
    if not cv2.imwrite(path, img):
        raise OSError(f"cannot write image {path}")


def json_safe(obj):
    """Standard JSON: nan -> null, +-inf -> "inf"/"-inf" (PSNR of identical frames)."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return None if np.isnan(f) else ("inf" if f > 0 else "-inf") if np.isinf(f) else f
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def side_by_side(gt: np.ndarray, render: np.ndarray, min_height: int = 256) -> np.ndarray:
    """GT | render | error (|diff| x4, JET colour map) as one uint8 RGB image; small frames
    are enlarged (nearest neighbour, so pixels stay visible) to ``min_height``."""
    err = np.abs(gt.astype(np.int16) - render.astype(np.int16)).mean(-1)
    heat = cv2.applyColorMap(np.clip(err * 4, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    img = np.concatenate([gt, render, cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)], axis=1)
    k = int(np.ceil(min_height / img.shape[0]))
    if k > 1:
        img = cv2.resize(img, (img.shape[1] * k, img.shape[0] * k), interpolation=cv2.INTER_NEAREST)
    return img


def plot_per_frame(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in ("psnr", "ssim", "lpips", "lmd") if n in result["per_frame"]["full"]]
    fig, axes = plt.subplots(len(names), 1, figsize=(9, 2.2 * len(names)), sharex=True, squeeze=False)
    x = np.asarray(result["per_frame"]["frame_ids"])
    for ax, name in zip(axes[:, 0], names):
        for mode in MODES:
            y = np.array([np.nan if v is None else v for v in result["per_frame"][mode][name]], float)
            y[~np.isfinite(y)] = np.nan
            ax.plot(x, y, label=mode, lw=1, marker="." if len(x) < 60 else None)
        if not np.isfinite([v for m in MODES for v in result["per_frame"][m][name]
                            if v is not None]).any():
            ax.text(0.5, 0.5, "no value: no face found / metric unavailable",
                    transform=ax.transAxes, ha="center", va="center", color="gray")
        ax.set_ylabel(name.upper())
        ax.grid(alpha=0.3)
    axes[0, 0].legend(loc="best", fontsize=8)
    axes[-1, 0].set_xlabel("frame id")
    fig.tight_layout()
    atomic_write(path, lambda t: fig.savefig(t, dpi=100, format="png"))
    plt.close(fig)


def _fmt(s: dict | None, digits: int = 3) -> str:
    if not s or s.get("mean") is None:
        return "n/a"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def _num(v, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _offset(p: dict) -> str:
    """Best offset of a proxy result, or the edge it hit (not a measured lag)."""
    if p.get("best_offset") is None:
        return "n/a"
    if p.get("best_at_edge"):
        return f"at the search edge ({p['best_offset']:+d}): no peak inside ±{max(p['offsets'])}"
    return f"{p['best_offset']:+d} (r = {p['best_correlation']:.3f})"


#: offsets (frames either way) searched between the rendered and the real mouth opening
OPENING_MAX_OFFSET = 5


def _opening_offset_note(mo: dict) -> list[str]:
    """A note when the rendered mouth follows the real one best 2+ frames off: the model (or
    the clip it is compared with) is out of step, which the figure at offset 0 hides."""
    o = mo.get("by_offset") or {}
    d = o.get("best_offset")
    if d is None or abs(d) < 2 or o.get("best_at_edge"):
        return []
    side = "after" if d > 0 else "before"
    return [f"The rendered mouth follows the real one best {abs(d)} frames {side} it (r "
            f"{o['best_correlation']:.3f} there, {_num(o.get('zero_offset_correlation'))} at 0): "
            "the sound and picture of this clip are out of step relative to the training "
            "clip's, or the model learnt a lag from its training clip. Check the `av_sync` "
            "step of both datasets (previews/av_sync.png; `--set decode.audio_offset=S` "
            "moves the sound).", ""]


def lipsync_lines(result: dict) -> list[str]:
    """The report's first section: does the mouth follow the speech?"""
    mo = result.get("mouth_opening", {})
    proxy = result.get("lipsync_proxy", {})
    pr, pg = proxy.get("render") or {}, proxy.get("gt") or {}
    full = result["modes"]["full"]
    sync = result.get("syncnet", {})
    z_r, z_g = pr.get("zero_offset_correlation"), pg.get("zero_offset_correlation")
    share = f" ({100 * z_r / z_g:.0f}% of GT)" if z_r and z_g and z_r > 0 and z_g > 0 else ""
    amp = _num(mo.get("amplitude_ratio"), 2)
    if mo.get("range_ratio") is not None:
        amp += f" (p5-p95 range ratio {mo['range_ratio']:.2f})"
    spread = (f"{_num(mo.get('render_std'), 4)} vs {_num(mo.get('gt_std'), 4)}"
              if mo.get("gt_std") is not None else "n/a")
    sp = result.get("speech_frames")
    lines = ["## Lip sync", "",
             "| measure | render | ground truth / ideal |", "|---|---|---|",
             f"| mouth-opening correlation with the GT, per frame ↑ | "
             f"{_num(mo.get('correlation'))}{L.format_interval(mo.get('correlation_interval'))} | 1 |",
             f"| mouth-opening correlation at its best offset (frames, + = render trails the GT) | "
             f"{_offset(mo.get('by_offset') or {})} | 0 |",
             f"| mouth-opening amplitude ratio, std render / std GT | {amp} | 1 |",
             f"| mouth-opening spread (std), render vs GT | {spread} | |",
             f"| energy proxy at offset 0 (as the GT's is best) | {_num(z_r)}{share} | {_num(z_g)} |",
             f"| energy proxy best offset (frames, + = mouth lags) | {_offset(pr)} | {_offset(pg)} |",
             f"| LMD on speech frames (px @512) ↓ | {_fmt(full.get('lmd_speech'))} | 0 |",
             f"| LMD on silence frames (px @512) ↓ | {_fmt(full.get('lmd_silence'))} | 0 |",
             "| SyncNet LSE-C ↑ / LSE-D ↓ | " + (f"{sync['lse_c']:.3f} / {sync['lse_d']:.3f}"
                                                if sync.get("available") else
                                                f"unavailable ({sync.get('reason', 'not run')})")
             + " | |", ""]
    lines += _opening_offset_note(mo)
    if "unavailable" in mo:
        lines += [f"Mouth opening not compared: {mo['unavailable']}", ""]
    elif mo.get("correlation") is None:
        lines += [f"Mouth opening compared on {mo.get('frames_used', 0)} frames with a face in "
                  "both: too few, or one series never moves.", ""]
    if "unavailable" in proxy:
        lines += [f"Energy proxy unavailable: {proxy['unavailable']}", ""]
    elif not proxy.get("reference", {}).get("meaningful", True):
        lines += [f"**The energy proxy cannot judge this sequence**: {proxy['reference']['reason']}. "
                  "Judge lip sync by the mouth-opening correlation with the GT.", ""]
    for k, p in (("render", pr), ("gt", pg)):
        if p and p.get("best_offset") is None and p.get("unavailable"):
            lines += [f"Energy proxy of the {k}: {p['unavailable']}", ""]
    lines += [
        "Mouth opening: outer-lip gap over inter-ocular distance (MediaPipe landmarks), per "
        f"frame, over the {mo.get('frames_used', 'n/a')} frames with a face found in both the "
        "render and the GT. Correlation: Pearson r of the two series. Amplitude ratio: their "
        "standard deviations, render over GT (0.5 = the rendered mouth opens half as far). "
        "Energy proxy: Pearson r of the mouth opening with the log energy of the driving "
        "audio's 300-3000 Hz band (80 ms window), at offset 0 and at the best offset within "
        "±min(10, N/5) frames; the GT row (real footage, same audio) is the reference, and a "
        "GT far from offset 0 means the audio is not on the video's clock. "
        + (f"Speech frames: {sp['count']} of {sp['of']}, from the audio band energy "
           "(threshold 35% from the quiet to the loud level); LMD is split by them because a "
           "closed mouth scores well on silence only." if sp else ""), ""]
    figs = result.get("_figures", ())
    if "mouth_strip.png" in figs:
        lines += ["Mouth crops over one second of speech, GT (top) above render (bottom):", "",
                  "![mouth crops, GT above render](mouth_strip.png)", ""]
    if "mouth_opening.png" in figs:
        lines += ["![mouth opening against time](mouth_opening.png)", ""]
    return lines


def markdown(result: dict) -> str:
    deliv = result.get("delivered")
    lines = [f"# Evaluation of {result.get('run', '?')}", "",
             f"- checkpoint step {result.get('step')} ({result.get('stage')}), split "
             f"`{result.get('split')}` of `{result.get('data')}`: {result['frames']} frames at "
             f"{result.get('resolution')}", f"- driving audio: {result.get('audio')}"]
    if result.get("audio_encoder"):
        lines.append(f"- audio encoder: {result['audio_encoder']}")
    if result.get("floaters"):
        lines.append(f"- floaters: {result['floaters']}")
    lines.append("")
    lines += lipsync_lines(result)
    lines += ["## Image quality", "",
              f"- composite measured below: {result.get('composite', result.get('torso', 'rendered'))}",
              f"- as `nerfhead render` delivers it: {result.get('delivered_composite', 'the same image')}"]
    if deliv:
        lines.append(f"  - scored against the same GT frames: PSNR {_fmt(deliv.get('psnr'), 2)} dB, "
                     f"SSIM {_fmt(deliv.get('ssim'), 4)}"
                     + (f", LPIPS {_fmt(deliv.get('lpips'), 4)}" if deliv.get("lpips") else ""))
    lines += ["", "| metric | without masks (full frame) | with masks (portrait) |", "|---|---|---|"]
    rows = [("PSNR (dB) ↑", "psnr", 2), ("SSIM ↑", "ssim", 4), ("LPIPS ↓", "lpips", 4),
            ("LMD (px @512) ↓", "lmd", 3), ("LMD speech frames ↓", "lmd_speech", 3),
            ("LMD silence frames ↓", "lmd_silence", 3), ("face PSNR (dB) ↑", "face_psnr", 2),
            ("mouth PSNR (dB) ↑", "mouth_psnr", 2)]
    for label, key, d in rows:
        cells = [_fmt(result["modes"][m].get(key), d) for m in MODES]
        lines.append(f"| {label} | {cells[0]} | {cells[1]} |")
    lines.append("")
    if not result["lpips"]["available"]:
        lines.append(f"LPIPS unavailable: {result['lpips']['reason']}")
    nf = result["faces_not_found"]
    if "note" in nf:
        lines += ["", nf["note"]]
    else:
        lines += ["", "Frames where no face was found (no LMD / mouth value for them): "
                  + ", ".join(f"{k} {v['count']}" for k, v in nf.items())]
    inf = {m: result["modes"][m]["psnr"]["infinite"] for m in MODES}
    if any(inf.values()):
        lines.append(f"Identical frames (PSNR = inf, left out of the mean): {inf}")
    from nerfhead.motion.jitter import markdown_lines as jitter_lines

    lines += jitter_lines(result.get("jitter"))
    lines += ["", "Mode definitions: *without masks* compares the whole composite described above "
              "with `gt_imgs`; *with masks* pastes the rendered face into the "
              "original frame with the soft parsing face mask (hair excluded) and compares with "
              "`ori_imgs`. Face PSNR is inside the face mask, mouth PSNR inside the GT lip box "
              "grown by 25%.", "", "![per-frame metrics](per_frame.png)", ""]
    lines += [f"![frame {p.stem}]({p.name})" for p in result.get("_preview_paths", [])]
    return "\n".join(lines) + "\n"


def mouth_strip(frames: dict, tile: int = 64) -> np.ndarray | None:
    """Mouth crops of ``frames`` {fid: (gt, render, gt_landmarks | None)} in frame order:
    GT in the top row, render below, one column per frame. Each column's box is centred on
    that frame's GT lips and is the same size in every column (1.8 x the widest lip extent of
    the window), so both rows show the same pixels. None when no GT frame had landmarks."""
    items = sorted(frames.items())
    lips = [np.asarray(lm)[list(M.MOUTH_LANDMARKS)] for _, (_, _, lm) in items if lm is not None]
    if not lips:
        return None
    half = 0.9 * max(float(np.ptp(p, axis=0).max()) for p in lips)
    half = max(half, 4.0)
    cols, centre = [], None
    for _, (gt, render, lm) in items:
        if lm is not None:
            centre = np.asarray(lm)[list(M.MOUTH_LANDMARKS)].mean(0)
        if centre is None:
            centre = lips[0].mean(0)
        m = cv2.getAffineTransform(
            np.float32([centre + [-half, -half], centre + [half, -half], centre + [-half, half]]),
            np.float32([[0, 0], [tile, 0], [0, tile]]))
        crop = [cv2.warpAffine(img, m, (tile, tile), flags=cv2.INTER_NEAREST,
                               borderMode=cv2.BORDER_REPLICATE) for img in (gt, render)]
        col = np.concatenate([crop[0], np.full((2, tile, 3), 255, np.uint8), crop[1]], 0)
        cols += [col, np.full((col.shape[0], 2, 3), 255, np.uint8)]
    return np.concatenate(cols[:-1], 1)


def plot_mouth_opening(result: dict, path: Path, strip_ids=()) -> None:
    """The rendered and GT mouth-opening curves against time (frame position / 25 s), speech
    frames shaded; a second panel zooms on 4 s around the mouth strip's second."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pf = result["per_frame"]
    ids = list(pf["frame_ids"])
    t = np.arange(len(ids)) / L.FPS
    curves = {k: np.array([np.nan if v is None else v for v in pf["mouth_opening"][k]], float)
              for k in ("gt", "render")}
    speech = pf.get("speech")
    pos = [ids.index(f) for f in strip_ids if f in ids]
    zoom = (max(0, pos[0] - 38), min(len(ids), pos[-1] + 38)) if pos else (0, min(len(ids), 100))
    fig, axes = plt.subplots(2, 1, figsize=(12, 5.5))
    mo = result.get("mouth_opening", {})
    for ax, (a, b) in zip(axes, ((0, len(ids)), zoom)):
        if speech is not None:
            sp = np.asarray(speech[a:b], bool)
            ax.fill_between(t[a:b], 0, 1, where=sp, transform=ax.get_xaxis_transform(),
                            color="0.9", step="mid", label="speech (audio energy)")
        ax.plot(t[a:b], curves["gt"][a:b], color="k", lw=1, label="GT")
        ax.plot(t[a:b], curves["render"][a:b], color="tab:red", lw=1, label="render")
        if pos:
            ax.axvspan(t[pos[0]], t[pos[-1]], facecolor="none", edgecolor="tab:blue", lw=1.5,
                       label="mouth strip")
        ax.set_xlim(t[a], t[max(a, b - 1)] + 1e-6)
        ax.set_ylabel("mouth opening")
        ax.grid(alpha=0.3)
    axes[0].set_title(f"mouth opening (lip gap / inter-ocular distance): r = "
                      f"{_num(mo.get('correlation'))}, amplitude ratio {_num(mo.get('amplitude_ratio'), 2)}")
    axes[0].legend(loc="upper right", fontsize=8, ncol=4)
    axes[1].set_xlabel("time in the evaluated sequence (s)")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)


def write_report(result: dict, previews: dict, out_dir, strip: dict | None = None) -> dict:
    """Write metrics.json, report.md, per_frame.png, GT|render|error PNGs, mouth_opening.png
    and, given ``strip`` (``SequenceEvaluator.strip``), mouth_strip.png into out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fid, (gt, render) in sorted(previews.items()):
        p = out_dir / f"frame_{fid:05d}.png"
        img = cv2.cvtColor(side_by_side(gt, render), cv2.COLOR_RGB2BGR)
        atomic_write(p, lambda t, img=img: _write_png(t, img))
        paths.append(p)
    plot_per_frame(result, out_dir / "per_frame.png")
    figures = []
    strip_img = mouth_strip(strip) if strip else None
    if strip_img is not None:
        img = cv2.cvtColor(strip_img, cv2.COLOR_RGB2BGR)
        atomic_write(out_dir / "mouth_strip.png", lambda t: _write_png(t, img))
        figures.append("mouth_strip.png")
        result["mouth_strip"] = {"file": "mouth_strip.png", "frame_ids": sorted(strip)}
    if "mouth_opening" in result["per_frame"] and result["frames"]:
        plot_mouth_opening(result, out_dir / "mouth_opening.png", sorted(strip or ()))
        figures.append("mouth_opening.png")
    result["_preview_paths"], result["_figures"] = paths, figures
    md = markdown(result)
    result.pop("_preview_paths"), result.pop("_figures")
    result["previews"] = [p.name for p in paths]
    result = json_safe(result)
    atomic_write(out_dir / "report.md", lambda t: Path(t).write_text(md))
    atomic_write(out_dir / "metrics.json",
                  lambda t: Path(t).write_text(json.dumps(result, indent=1, allow_nan=False)))
    return result
