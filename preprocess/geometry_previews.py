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


def face_fit_preview(data_dir, lms: np.ndarray, proj: np.ndarray, err: np.ndarray,
                     candidates: np.ndarray, errors: np.ndarray, focal: float) -> Path:
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
    if len(candidates):
        ax.plot(candidates, errors, "o-", ms=3)
        ax.axvline(focal, color="red", ls="--")
    ax.set_title(f"focal search: {focal:.0f} px")
    ax.set_xlabel("focal (px)")
    ax.set_ylabel("fit objective (robust px^2 + priors)")
    out = data_dir / "previews" / "face_fit.png"
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
