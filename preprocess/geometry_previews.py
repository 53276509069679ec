"""PNG previews of the geometry steps, for a person to check at a glance.

``previews/face_fit.png``: detected (green) vs projected model landmarks (red) on four frames,
and the focal search curve. ``previews/keypoints.png``: the selected keypoints on the reference
frame over the rigid region, with a few tracks. ``previews/pose_curves.png``: Euler angles and
translation per frame, face fit vs bundle adjustment.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from preprocess.steps import atomic_path


def _figure(ncols: int, nrows: int = 1, size: float = 4.0):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    return plt, fig, axes


def _save(plt, fig, path: Path) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)


def _rgb(data_dir: Path, i: int) -> np.ndarray | None:
    img = cv2.imread(str(data_dir / "ori_imgs" / f"{i}.jpg"))
    return None if img is None else img[:, :, ::-1]


def face_fit_preview(data_dir, lms: np.ndarray, proj: np.ndarray, err: np.ndarray, focal: float,
                     choice: dict) -> Path:
    """Detected vs model landmarks on four frames, and the focal error curve: how much worse
    (RMS pixels) each focal fits the rigid upper face than the best one, the tolerance, the
    interval it leaves, the estimate and the focal used."""
    data_dir = Path(data_dir)
    n = len(lms)
    frames = np.unique(np.linspace(0, n - 1, 4).round().astype(int))
    plt, fig, axes = _figure(len(frames) + 1)
    for ax, i in zip(axes[0], frames):
        img = _rgb(data_dir, int(i))
        if img is not None:
            ax.imshow(img)
        ax.scatter(lms[i, :, 0], lms[i, :, 1], s=8, c="lime", label="detected")
        ax.scatter(proj[i, :, 0], proj[i, :, 1], s=8, c="red", marker="x", label="model")
        ax.set_title(f"frame {i}: {err[i]:.2f} px (rigid)")
        ax.axis("off")
    axes[0, 0].legend(loc="lower left", fontsize=8)
    ax = axes[0, -1]
    prof = choice.get("profile")
    if prof is not None:
        ax.semilogx(prof.focals, prof.excess_px, "o-", ms=3, label="fit excess over the best")
        ax.axhline(prof.tolerance_px, color="grey", ls=":", label=f"tolerance {prof.tolerance_px:.2f} px")
        ax.axvspan(*prof.interval, color="green" if prof.determined else "orange", alpha=0.15,
                   label="interval")
        ax.axvline(prof.best, color="blue", ls="--", label=f"estimate {prof.best:.0f}")
        ax.set_ylim(0, max(3 * prof.tolerance_px, min(float(np.max(prof.excess_px)), 1.0)))
        from matplotlib.ticker import NullFormatter, ScalarFormatter

        ticks = [t for t in (300, 500, 1000, 2000, 4000, 8000)
                 if prof.focals.min() <= t <= prof.focals.max()]
        ax.set_xticks(ticks)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.axvline(focal, color="red", lw=2, label=f"used {focal:.0f} ({choice['source']})")
    verdict = {"user": "given by the user", "estimated": "estimated",
               "reference": "from face_fit.reference",
               "default": "UNDETERMINED: default"}[choice["source"]]
    ax.set_title(f"focal {focal:.0f} px, {verdict}", fontsize=10)
    ax.set_xlabel("focal (px)")
    ax.set_ylabel("RMS px worse than the best focal")
    ax.legend(fontsize=7, loc="upper center")
    out = data_dir / "previews" / "face_fit.png"
    _save(plt, fig, out)
    return out


def scenes_preview(data_dir, change: np.ndarray, cuts: np.ndarray, shots: list[dict],
                   reference: dict, max_foreign: int = 5) -> Path:
    """Top: frame-to-frame change with the detected cuts, and each shot's background / torso
    colour difference from the main scene (foreign shots in red). Bottom: a main-scene frame
    beside the first frame of up to ``max_foreign`` foreign shots."""
    data_dir = Path(data_dir)
    foreign = [s for s in shots if s["scene"] == "foreign"]
    ncols = 1 + min(len(foreign), max_foreign)
    plt = _figure(1)[0]
    plt.close("all")
    fig = plt.figure(figsize=(max(12, 2.6 * ncols), 7))
    grid = fig.add_gridspec(2, ncols, height_ratios=[1.1, 1])
    ax = fig.add_subplot(grid[0, :])
    ax.plot(change, lw=0.6, color="k", label="frame-to-frame change (grey levels)")
    for c in cuts:
        ax.axvline(c, color="tab:blue", lw=0.4, alpha=0.6)
    ax2 = ax.twinx()
    for s in shots:
        a, b = s["frames"]
        col = "red" if s["scene"] == "foreign" else "tab:green"
        if s["background_delta_e"] is not None:
            ax2.hlines(s["background_delta_e"], a, b, color=col, lw=2)
        if s["torso_delta_e"] is not None:
            ax2.hlines(s["torso_delta_e"], a, b, color=col, lw=1, linestyle="--")
    ax2.set_ylabel("Delta E vs main scene (bg solid, torso dashed)")
    ax.set_title(f"{len(cuts)} cuts (blue), {len(shots)} shots, {len(foreign)} foreign (red)")
    ax.set_xlabel("frame")
    ax.legend(loc="upper left", fontsize=8)
    main = next((s for s in shots if s["scene"] == "main"), shots[0])
    tiles = [(main, "main scene")] + [(s, "foreign") for s in foreign[:max_foreign]]
    for k, (s, label) in enumerate(tiles):
        ax = fig.add_subplot(grid[1, k])
        i = s["frames"][0] + (s["frames"][1] - s["frames"][0]) // 2
        img = _rgb(data_dir, i)
        if img is not None:
            ax.imshow(img)
        de = s["background_delta_e"]
        ax.set_title(f"{label}: frames {s['frames'][0]}-{s['frames'][1] - 1}"
                     + (f"\nbg dE {de:.0f}, scale x{s['scale']:.2f}" if de is not None else ""),
                     fontsize=8)
        ax.axis("off")
    out = data_dir / "previews" / "scenes.png"
    _save(plt, fig, out)
    return out


def keypoints_preview(data_dir, ref: int, tracks: np.ndarray, valid: np.ndarray,
                      mask: np.ndarray | None = None, num_tracks: int = 8) -> Path:
    data_dir = Path(data_dir)
    plt, fig, axes = _figure(2, size=5.0)
    img = _rgb(data_dir, ref)
    ax = axes[0, 0]
    if img is not None:
        ax.imshow(img)
    if mask is not None:
        ax.imshow(np.ma.masked_where(~mask, mask), alpha=0.25, cmap="autumn")
    ax.scatter(tracks[ref, :, 0], tracks[ref, :, 1], s=10, c="cyan")
    ax.set_title(f"{tracks.shape[1]} keypoints on reference frame {ref}")
    ax.axis("off")
    ax = axes[0, 1]
    pick = np.linspace(0, tracks.shape[1] - 1, min(num_tracks, tracks.shape[1])).round().astype(int)
    t = np.arange(len(tracks))
    for k in pick:
        x = np.where(valid[:, k], tracks[:, k, 0] - tracks[ref, k, 0], np.nan)
        y = np.where(valid[:, k], tracks[:, k, 1] - tracks[ref, k, 1], np.nan)
        ax.plot(t, x, lw=0.8)
        ax.plot(t, y, lw=0.8, ls="--")
    ax.set_title("tracks: displacement from the reference (x solid, y dashed)")
    ax.set_xlabel("frame")
    ax.set_ylabel("pixels")
    out = data_dir / "previews" / "keypoints.png"
    _save(plt, fig, out)
    return out


def pose_curves_preview(data_dir, euler_before, trans_before, euler_after, trans_after) -> Path:
    data_dir = Path(data_dir)
    plt, fig, axes = _figure(3, 2, size=3.5)
    t = np.arange(len(euler_before))
    names = ("pitch (deg)", "yaw (deg)", "roll (deg)", "x (mm)", "y (mm)", "z (mm)")
    before = np.c_[np.degrees(euler_before), 1000 * np.asarray(trans_before)]
    after = np.c_[np.degrees(euler_after), 1000 * np.asarray(trans_after)]
    for j, ax in enumerate(axes.flat):
        ax.plot(t, before[:, j], lw=0.8, label="face fit")
        ax.plot(t, after[:, j], lw=0.8, label="bundle adjustment")
        ax.set_title(names[j])
        ax.set_xlabel("frame")
    axes[0, 0].legend(fontsize=8)
    out = data_dir / "previews" / "pose_curves.png"
    _save(plt, fig, out)
    return out
