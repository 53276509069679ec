"""Head-pose sequences for rendering.

All poses are camera-to-world matrices [N, 4, 4] in the transforms-file convention (OpenGL,
metres), exactly what ``TalkingHead.render_frame`` takes. Sources:

- ``train`` / ``val``: the tracked poses of this speaker's frames, in order.
- ``smooth``: the train poses low-pass filtered in time (Gaussian, ``sigma`` frames; rotations
  are filtered element-wise and projected back onto SO(3) with an SVD), removing tracking jitter.
- ``static``: one frontal pose repeated: the mean train pose (chordal L2 mean rotation, mean
  translation), i.e. the speaker's average head orientation and camera distance.
- ``file``: a transforms JSON (``frames[].transform_matrix``) or an ``.npy`` [N, 4, 4].
- ``from`` (another preprocessed clip, DATA2): each DATA2 pose P_i is written relative to DATA2's
  mean pose M2, D_i = M2^-1 P_i (the head motion seen from DATA2's average camera), and re-applied
  to this speaker's mean pose M1: P'_i = M1 D_i. The motion pattern transfers while the framing
  (camera distance, average orientation) stays this speaker's.

Every sequence also carries ``frame_ids``: the frames of *this* dataset that supply what a pose
alone cannot (blendshapes for blinks, per-frame latent, the original image for Portrait-Sync).
For train/val/smooth they are the frames the poses came from; for the other sources the train
frames are cycled alongside, and ``tied_to_frames`` is False (Portrait-Sync needs True).

Lengths: audio longer than the poses -> the pose sequence is extended by ``mirror``
(ping-pong: 0..L-1, L-2..1, 0.. so there is never a jump) or ``loop`` (0..L-1, 0..); shorter
-> truncated.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.spatial.transform import Rotation

log = logging.getLogger("nerfhead.render")

SOURCES = ("train", "val", "smooth", "static")


@dataclass
class PoseSequence:
    c2w: np.ndarray  #: [N, 4, 4] float32 camera-to-world, transforms-file convention
    frame_ids: np.ndarray  #: [N] int, this dataset's frame supplying expression/latent/image
    tied_to_frames: bool  #: c2w[i] is (close to) the tracked pose of frame_ids[i]
    source: str  #: human-readable description of where the poses came from

    def __len__(self) -> int:
        return len(self.c2w)


#: what a pose file holds, for messages
POSE_FILE_KINDS = ("a transforms .json (frames[].transform_matrix, 4x4 camera-to-world) or an "
                   ".npy [N, 4, 4] array (numpy.save)")


def read_transforms_json(path) -> tuple[np.ndarray, np.ndarray]:
    """(c2w [N, 4, 4], img_ids [N]) from a transforms JSON; clear error on a bad file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except UnicodeDecodeError:
        raise ValueError(f"pose file {path}: not text, so not a transforms JSON; a pose file is "
                         f"{POSE_FILE_KINDS}") from None
    except ValueError as e:
        raise ValueError(f"pose file {path}: not valid JSON ({e}); a pose file is "
                         f"{POSE_FILE_KINDS}") from None
    frames = data.get("frames") if isinstance(data, dict) else None
    if not isinstance(frames, list):
        found = (f"its keys are {sorted(data)[:8]}" if isinstance(data, dict) else
                 f"its top level is a {type(data).__name__}, not an object")
        # bad file content: a ValueError, as every pose-file error (render reports those)
        raise ValueError(f"pose file {path}: no 'frames' list ({found}); a transforms JSON is "  # noqa: TRY004
                         '{"frames": [{"transform_matrix": [[...4 rows of 4...]]}, ...]}, as '
                         "transforms_train.json of a dataset")
    for i, f in enumerate(frames):
        if not isinstance(f, dict) or "transform_matrix" not in f:
            raise ValueError(f"pose file {path}: frame {i} (counting from 0) has no "
                             "'transform_matrix'")
    try:
        c2w = np.array([f["transform_matrix"] for f in frames], np.float32)
        ids = np.array([f.get("img_id", i) for i, f in enumerate(frames)], np.int64)
    except (ValueError, TypeError) as e:
        raise ValueError(f"pose file {path}: its transform_matrix entries are not all 4x4 "
                         f"matrices of numbers ({e})") from None
    return check_pose_array(c2w, path), ids


def check_pose_array(c2w: np.ndarray, path) -> np.ndarray:
    """Poses [N, 4, 4] from a file's array: [N, 3, 4] (the last row left out) and a single
    [4, 4] / [3, 4] matrix are completed; other shapes, NaN / infinity, and matrices that are
    no rigid camera-to-world transform (transposed, scaled) are refused, naming the file."""
    if c2w.ndim == 2 and c2w.shape in ((4, 4), (3, 4)):
        c2w = c2w[None]
    if c2w.ndim == 3 and c2w.shape[1:] == (3, 4):
        bottom = np.broadcast_to(np.array([0, 0, 0, 1], np.float32), (len(c2w), 1, 4))
        c2w = np.concatenate([c2w, bottom], axis=1)
    if c2w.size == 0:
        raise ValueError(f"pose file {path} holds no poses")
    if c2w.ndim != 3 or c2w.shape[1:] != (4, 4):
        hint = (" (flattened matrices? reshape them to [N, 4, 4] before saving)"
                if c2w.ndim >= 1 and c2w.shape[-1] == 16 else "")
        raise ValueError(f"pose file {path}: expected [N, 4, 4] camera-to-world matrices, got an "
                         f"array of shape {c2w.shape}{hint}")
    check_finite_poses(c2w, path)
    check_rigid_poses(c2w, path)
    return c2w


def check_rigid_poses(c2w: np.ndarray, path, tol: float = 1e-2) -> None:
    """Refuse matrices that are no rigid transform: a last row other than [0, 0, 0, 1] (a
    transposed, row-major file puts the translation there) or a 3x3 block that is no rotation
    (scaled, sheared, mirrored): either renders a wrong or empty head without an error."""
    bottom = np.abs(c2w[:, 3] - np.array([0, 0, 0, 1], np.float32)).max(axis=1)
    if (bad := np.flatnonzero(bottom > tol)).size:
        i = int(bad[0])
        raise ValueError(f"pose file {path}: the last row of pose {i} (counting from 0) is "
                         f"{[round(float(v), 4) for v in c2w[i, 3]]}, not [0, 0, 0, 1] ({bad.size} such "
                         "pose(s)): are the matrices transposed (translation in the last row)? "
                         "Save camera-to-world matrices with the translation in the last column "
                         "(numpy: c2w.transpose(0, 2, 1))")
    r = c2w[:, :3, :3].astype(np.float64)
    err = np.abs(r @ r.transpose(0, 2, 1) - np.eye(3)).max(axis=(1, 2))
    det = np.linalg.det(r)
    if (bad := np.flatnonzero((err > 10 * tol) | (det < 0))).size:
        i = int(bad[0])
        raise ValueError(f"pose file {path}: the 3x3 rotation block of pose {i} (counting from 0) "
                         f"is no rotation (determinant {det[i]:.3g}; {bad.size} such pose(s)): "
                         "scaled, sheared or mirrored matrices? A pose is a camera-to-world "
                         "rotation and translation in metres, as in transforms_train.json")


def check_finite_poses(c2w: np.ndarray, path) -> None:
    """Refuse matrices holding NaN or infinity: a camera nowhere renders nothing sensible
    (with infinity the ray marcher never returned), and nothing downstream notices."""
    bad = np.flatnonzero(~np.isfinite(c2w).reshape(len(c2w), -1).all(axis=1))
    if bad.size:
        shown = ", ".join(map(str, bad[:10])) + (", ..." if bad.size > 10 else "")
        raise ValueError(f"pose file {path}: the matrices of {bad.size} pose(s) hold NaN or "
                         f"infinite values (pose index {shown}, counting from 0); fix or remove "
                         "those poses")


def load_pose_file(path) -> np.ndarray:
    """Poses [N, 4, 4] from a transforms .json or an .npy array."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"pose file {path} is a folder; a pose file is {POSE_FILE_KINDS} "
                         "(for another dataset's poses use --pose-from DATA2)")
    if not path.is_file():
        raise FileNotFoundError(f"pose file not found: {path}")
    if path.suffix == ".npy":
        try:
            c2w = np.load(path).astype(np.float32)
        except (OSError, ValueError, EOFError, TypeError) as e:
            raise ValueError(f"pose file {path}: not a readable .npy array ({e}); save the poses "
                             "with numpy.save as an [N, 4, 4] array") from None
        return check_pose_array(c2w, path)
    if path.suffix.lower() != ".json" and not path.read_bytes()[:64].lstrip().startswith(b"{"):
        raise ValueError(f"pose file {path}: neither .npy nor JSON; a pose file is "
                         f"{POSE_FILE_KINDS} (text or CSV matrices: numpy.save them as [N, 4, 4])")
    return read_transforms_json(path)[0]


def dataset_poses(data_dir, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(c2w, img_ids) of ``split`` ("train", "val" or "all" = train then val)."""
    data_dir = Path(data_dir)
    if split == "all":
        parts = [dataset_poses(data_dir, s) for s in ("train", "val")]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    path = data_dir / f"transforms_{split}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {data_dir} a preprocessed dataset?")
    return read_transforms_json(path)


def other_dataset_poses(data_dir) -> np.ndarray:
    """``--pose-from DATA2``: all its tracked poses (train, then val when it has any)."""
    from nerfhead.data.dataset import DatasetError, check_dataset_dir

    try:
        data_dir = check_dataset_dir(data_dir)
    except DatasetError as e:
        raise ValueError(f"--pose-from {e}") from None
    parts = [dataset_poses(data_dir, "train")[0]]
    val = data_dir / "transforms_val.json"
    # a short clip has no validation frames (preprocessing holds out 1 in 11)
    try:
        has_val = bool(json.loads(val.read_text()).get("frames")) if val.is_file() else False
    except (OSError, ValueError, AttributeError):
        has_val = True  # damaged: read_transforms_json names it
    if has_val:
        parts.append(dataset_poses(data_dir, "val")[0])
    return np.concatenate(parts)


def project_to_rotation(m: np.ndarray) -> np.ndarray:
    """Nearest rotation matrices (polar decomposition via SVD) of [N, 3, 3] matrices."""
    u, _, vt = np.linalg.svd(m)
    d = np.sign(np.linalg.det(u @ vt))
    u[:, :, -1] *= d[:, None]
    return u @ vt


def smooth_poses(c2w: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    """Gaussian temporal smoothing of rotations (then re-orthonormalised) and translations."""
    if sigma <= 0 or len(c2w) < 2:
        return c2w.copy()
    out = c2w.astype(np.float64).copy()
    out[:, :3, :3] = project_to_rotation(gaussian_filter1d(out[:, :3, :3], sigma, axis=0,
                                                           mode="nearest"))
    out[:, :3, 3] = gaussian_filter1d(out[:, :3, 3], sigma, axis=0, mode="nearest")
    return out.astype(np.float32)


def mean_pose(c2w: np.ndarray) -> np.ndarray:
    """Mean rotation (chordal L2, scipy Rotation.mean) and mean translation, [4, 4]."""
    m = np.eye(4)
    m[:3, :3] = Rotation.from_matrix(c2w[:, :3, :3].astype(np.float64)).mean().as_matrix()
    m[:3, 3] = c2w[:, :3, 3].mean(0)
    return m.astype(np.float32)


def transfer_poses(src_c2w: np.ndarray, target_c2w: np.ndarray) -> np.ndarray:
    """DATA2's poses re-expressed around this speaker's mean pose: M1 @ inv(M2) @ P_i."""
    m2 = mean_pose(src_c2w).astype(np.float64)
    m1 = mean_pose(target_c2w).astype(np.float64)
    rel = np.linalg.inv(m2)[None] @ src_c2w.astype(np.float64)
    out = m1[None] @ rel
    out[:, :3, :3] = project_to_rotation(out[:, :3, :3])
    return out.astype(np.float32)


def extend_indices(length: int, n: int, mode: str = "mirror") -> np.ndarray:
    """Indices into a sequence of ``length`` giving ``n`` items: truncation when n <= length,
    else ping-pong (``mirror``) or wrap-around (``loop``)."""
    if length <= 0:
        raise ValueError("cannot extend an empty pose sequence")
    if mode not in ("mirror", "loop"):
        raise ValueError(f"unknown pose mode {mode!r} (mirror, loop)")
    i = np.arange(n)
    if mode == "loop" or length == 1:
        return i % length
    period = 2 * length - 2
    k = i % period
    return np.where(k < length, k, period - k)


def build_sequence(data_dir, num_frames: int, source: str = "train", pose_file=None,
                   pose_from=None, mode: str = "mirror", smooth_sigma: float = 2.0) -> PoseSequence:
    """The pose sequence of ``num_frames`` for rendering from dataset ``data_dir``.

    ``pose_file`` or ``pose_from`` (a second dataset folder) override ``source``.
    """
    train_c2w, train_ids = dataset_poses(data_dir, "train")
    if pose_file is not None:
        c2w, ids, tied, desc = load_pose_file(pose_file), None, False, f"file {pose_file}"
    elif pose_from is not None:
        src = other_dataset_poses(pose_from)
        c2w, ids, tied, desc = transfer_poses(src, train_c2w), None, False, f"from {pose_from}"
    elif source in ("train", "val"):
        c2w, ids = dataset_poses(data_dir, source)
        tied, desc = True, source
    elif source == "smooth":
        c2w, ids, tied = smooth_poses(train_c2w, smooth_sigma), train_ids, True
        desc = f"smoothed train poses (sigma {smooth_sigma} frames)"
    elif source == "static":
        c2w, ids, tied, desc = mean_pose(train_c2w)[None], None, False, "static mean train pose"
    else:
        raise ValueError(f"unknown pose source {source!r}; choose one of {SOURCES}")
    if pose_file is not None and 1 < len(c2w) < num_frames:  # (one pose: a still head)
        log.warning("pose file %s holds %d pose(s) for %d frames of audio: the poses are %s to "
                    "fill them (--pose-mode); give one pose per frame to avoid that", pose_file,
                    len(c2w), num_frames, "mirrored back and forth" if mode == "mirror" else "looped")
    idx = extend_indices(len(c2w), num_frames, mode)
    if ids is None:  # expression/latent frames: this speaker's train frames, cycled the same way
        frame_ids = train_ids[extend_indices(len(train_ids), num_frames, mode)]
    else:
        frame_ids = ids[idx]
    return PoseSequence(c2w[idx].astype(np.float32), frame_ids.astype(np.int64), tied, desc)
