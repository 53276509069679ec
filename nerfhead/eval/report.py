"""Per-frame evaluation of a rendered sequence and the report written from it.

``SequenceEvaluator.add`` takes, per frame, the render, the GT frame, the original crop and the
soft face mask (all the same size) and computes, in two modes:

- ``full`` (without parsing masks): the whole rendered frame against the GT frame;
- ``portrait`` (with them): the render blended into the original crop with the face mask
  (Portrait-Sync) against the original crop;

PSNR, SSIM, LPIPS (when its weights exist), LMD (mouth landmarks detected by MediaPipe on both
images at 512x512), plus PSNR inside the face mask and inside the mouth box. A frame where no
face is detected gets no LMD/mouth value and is counted, never an error. ``finish`` adds the
lip-sync proxy and returns the ``metrics.json`` dict; ``write_report`` writes the files.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from nerfhead.eval import metrics as M
from nerfhead.eval.lipsync import sync_proxy
from nerfhead.fileio import atomic_write
from nerfhead.render.compositing import portrait_blend

MODES = ("full", "portrait")
DETECT_SIZE = 512  # landmarks are detected (and LMD measured) on frames resized to 512x512


class SequenceEvaluator:
    def __init__(self, detector=None, lpips=None, lpips_reason: str | None = None,
                 preview_frames: tuple[int, ...] = (), detector_reason: str | None = None):
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
            face_mask: np.ndarray) -> None:
        """One frame; images uint8 [H, W, 3] of one size, face_mask uint8 [H, W]."""
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
        if fid in self.preview_frames:
            self.previews[fid] = (gt, render)

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
        if self.detector is None:
            out["lipsync_proxy"] = {"unavailable": f"no landmark detector: {self.detector_reason}"}
        elif audio_samples is None:
            out["lipsync_proxy"] = {"unavailable": "the driving audio (aud.wav) was not found"}
        else:
            out["lipsync_proxy"] = {"render": sync_proxy(self.render_landmarks, audio_samples),
                                    "gt": sync_proxy(self.gt_landmarks, audio_samples)}
        out["per_frame"] = {"frame_ids": self.frame_ids, **self.per_frame}
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


def markdown(result: dict) -> str:
    lines = [f"# Evaluation of {result.get('run', '?')}", "",
             f"- checkpoint step {result.get('step')} ({result.get('stage')}), split "
             f"`{result.get('split')}` of `{result.get('data')}`: {result['frames']} frames at "
             f"{result.get('resolution')}", f"- driving audio: {result.get('audio')}",
             f"- torso: {result.get('torso', 'rendered')}", "",
             "| metric | without masks (full frame) | with masks (portrait) |", "|---|---|---|"]
    rows = [("PSNR (dB) ↑", "psnr", 2), ("SSIM ↑", "ssim", 4), ("LPIPS ↓", "lpips", 4),
            ("LMD (px @512) ↓", "lmd", 3), ("face PSNR (dB) ↑", "face_psnr", 2),
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
    lines += ["", "## Lip sync", ""]
    sync = result.get("syncnet", {})
    lines.append("SyncNet LSE-C / LSE-D: " + (f"LSE-C {sync['lse_c']:.3f}, LSE-D {sync['lse_d']:.3f}"
                 if sync.get("available") else f"unavailable ({sync.get('reason', 'not run')})"))
    proxy = result["lipsync_proxy"]
    lines += ["", "Audio-visual proxy: per frame, mouth opening (outer-lip gap / inter-ocular "
              "distance from the landmarks) against the log RMS energy of the driving audio's "
              "300-3000 Hz band in an 80 ms window; Pearson correlation at offset 0 and maximised "
              "over offsets of ±min(10, N/5) frames (positive: mouth lags). The GT row (real "
              "footage with the same audio) is the reference a render should approach.", "",
              "| sequence | best offset (frames) | correlation there | at offset 0 |", "|---|---|---|---|"]
    for k in ("render", "gt"):
        p = proxy.get(k)
        if not p or p.get("best_offset") is None:
            lines.append(f"| {k} | n/a | {(p or proxy).get('unavailable', 'n/a')} | |")
        else:
            z = p["zero_offset_correlation"]
            lines.append(f"| {k} | {p['best_offset']} | {p['best_correlation']:.3f} | "
                         f"{'n/a' if z is None else f'{z:.3f}'} |")
    from nerfhead.motion.jitter import markdown_lines as jitter_lines

    lines += jitter_lines(result.get("jitter"))
    lines += ["", "Mode definitions: *without masks* compares the whole rendered frame (head, torso, "
              "background plate) with `gt_imgs`; *with masks* pastes the rendered face into the "
              "original frame with the soft parsing face mask (hair excluded) and compares with "
              "`ori_imgs`. Face PSNR is inside the face mask, mouth PSNR inside the GT lip box "
              "grown by 25%.", "", "![per-frame metrics](per_frame.png)", ""]
    lines += [f"![frame {p.stem}]({p.name})" for p in result.get("_preview_paths", [])]
    return "\n".join(lines) + "\n"


def write_report(result: dict, previews: dict, out_dir) -> dict:
    """Write metrics.json, report.md, per_frame.png and GT|render|error PNGs into out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fid, (gt, render) in sorted(previews.items()):
        p = out_dir / f"frame_{fid:05d}.png"
        img = cv2.cvtColor(side_by_side(gt, render), cv2.COLOR_RGB2BGR)
        atomic_write(p, lambda t, img=img: _write_png(t, img))
        paths.append(p)
    plot_per_frame(result, out_dir / "per_frame.png")
    result["_preview_paths"] = paths
    md = markdown(result)
    result.pop("_preview_paths")
    result["previews"] = [p.name for p in paths]
    result = json_safe(result)
    atomic_write(out_dir / "report.md", lambda t: Path(t).write_text(md))
    atomic_write(out_dir / "metrics.json",
                  lambda t: Path(t).write_text(json.dumps(result, indent=1, allow_nan=False)))
    return result
