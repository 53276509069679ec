"""``nerfhead motion export DATA|RUN``: a clip's motion as a motion file (``table``).

Poses come from the transforms files (bundle-adjusted), written relative to the speaker's
rest pose (``pose``); blendshapes from ``bs.npy``; blinks derived with the blink levels
measured on the training frames (``blink``). Frames the preprocessing left out (no face found,
no tracks) get poses interpolated from their neighbours, so the file has one row per frame;
the metadata lists them. Given a RUN, the condition columns are the ones its model reads.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from nerfhead.motion.blink import derived_blink, measure_blinks
from nerfhead.motion.pose import c2w_to_canonical, rest_pose, rest_pose_in_camera
from nerfhead.motion.table import BLENDSHAPES, MotionTable

log = logging.getLogger("nerfhead.motion")


def resolve_source(path, checkpoint=None):
    """(dataset folder, loaded run or None) for a DATA or RUN argument."""
    from nerfhead.data.dataset import check_dataset_dir, is_dataset_dir

    path = Path(path)
    if path.is_dir() and is_dataset_dir(path):
        return check_dataset_dir(path), None
    from nerfhead.train.checkpoint import CheckpointError, load_run, run_dataset

    if path.is_dir() and not (path / "checkpoints").is_dir():
        check_dataset_dir(path)  # names what the folder is (unfinished preprocess, ...)
    try:
        run = load_run(path, device="cpu", checkpoint=checkpoint)
    except CheckpointError as e:
        raise CheckpointError(f"{path} is neither a dataset folder (no transforms_train.json) "
                              f"nor a training run: {e}") from None
    return run_dataset(run), run


def dataset_fps(data_dir) -> float:
    try:
        return float(json.loads((Path(data_dir) / "manifest.json").read_text())
                     .get("video", {}).get("fps", 25.0))
    except (OSError, ValueError):
        return 25.0


def load_blendshapes(data_dir) -> np.ndarray | None:
    p = Path(data_dir) / "bs.npy"
    if not p.is_file():
        return None
    from nerfhead.data.dataset import DatasetError, read_array

    bs = np.asarray(read_array(p), np.float64)
    if bs.ndim != 2 or bs.shape[1] != len(BLENDSHAPES):
        raise DatasetError(f"dataset: {p} must be [N, 52] MediaPipe blendshapes, got {bs.shape}")
    return bs


def speaker_blinks(data_dir, fps: float | None = None):
    """BlinkProfile of the training frames of ``data_dir`` (None without bs.npy)."""
    from nerfhead.render.poses import dataset_poses

    bs = load_blendshapes(data_dir)
    if bs is None:
        return None
    _, ids = dataset_poses(data_dir, "train")
    ids = ids[ids < len(bs)]
    return measure_blinks(bs[ids], fps or dataset_fps(data_dir), ids)


def condition_columns(run=None) -> tuple[list[str], str]:
    """The blendshapes the model reads, and whose model that is."""
    from nerfhead.models.config import ModelConfig

    if run is not None:
        return list(run.configs["model"].expression), f"run {run.run_dir}, step {run.step}"
    return list(ModelConfig().expression), "default model config (no run given)"


def export_table(data_dir, split: str = "all", run=None) -> MotionTable:
    """The motion of ``split`` (train, val or all) of a dataset as a MotionTable."""
    from nerfhead.render.poses import dataset_poses

    data_dir = Path(data_dir)
    fps = dataset_fps(data_dir)
    train_c2w, _ = dataset_poses(data_dir, "train")
    rest = rest_pose(train_c2w)
    c2w, ids = dataset_poses(data_dir, split)
    order = np.argsort(ids, kind="stable")
    c2w, ids = c2w[order], ids[order]
    pose = c2w_to_canonical(c2w, rest)
    frames = np.arange(int(ids[0]), int(ids[-1]) + 1)
    missing = np.setdiff1d(frames, ids)
    if missing.size:  # one row per frame: left-out frames get interpolated poses
        pose = np.column_stack([np.interp(frames, ids, pose[:, j]) for j in range(6)])
    bs = load_blendshapes(data_dir)
    if bs is None:
        log.warning("%s has no bs.npy: blendshape columns are written as 0", data_dir)
        expr = np.zeros((len(frames), len(BLENDSHAPES)))
    else:
        if frames[-1] >= len(bs):
            from nerfhead.data.dataset import DatasetError

            raise DatasetError(f"dataset: {data_dir / 'bs.npy'} has {len(bs)} frames but the "
                               f"transforms reach frame {frames[-1]}")
        expr = bs[frames]
    profile = speaker_blinks(data_dir, fps)
    blink = derived_blink(expr, profile) if profile is not None else np.full((len(frames), 2), np.nan)
    cond, cond_src = condition_columns(run)
    meta = {
        "source": str(data_dir.resolve()) + (f" (run {run.run_dir})" if run is not None else ""),
        "split": split, "first_frame": int(frames[0]),
        "interpolated_frames": missing.astype(int).tolist(),
        "condition_columns": cond, "condition_source": cond_src,
        "rest_pose": {**rest_pose_in_camera(rest), "c2w": np.round(rest, 6).tolist()},
        "blinks": profile.to_dict() if profile is not None else None,
        "conventions": "docs/motion.md",
    }
    if profile is not None and profile.count == 0:
        log.warning("%s: no blink in the training frames; blink_left/right are empty", data_dir)
    # the exported frame numbers start at 0 so a file renders from its first row; the clip's
    # own frame number is first_frame + frame
    return MotionTable(pose=pose, blendshapes=expr, blink=np.nan_to_num(blink, nan=0.0) if
                       profile is not None and profile.count else np.zeros((len(frames), 2)),
                       fps=fps, meta=meta)
