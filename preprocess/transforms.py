"""Head poses <-> camera matrices, projection, and writing ``transforms_{train,val}.json``.

Camera convention of the geometry steps (``CAMERA_CONVENTION``, stored in track_params.pt):

* World = the head-model frame of ``preprocess.face_model``: metres, origin at the head centre,
  x towards the subject's left, y up, z out of the face.
* A per-frame pose ``(euler, trans)`` maps world points into the camera frame,
  ``X_cam = R(euler) @ X + trans``, where the camera frame is OpenGL's (x right, y up, looking
  down -z), so a visible point has ``Z_cam < 0`` and a frontal head has ``trans ~ (0, 0, -0.6)``.
* ``R(euler) = Rz(e2) @ Ry(e1) @ Rx(e0)`` with ``euler = (pitch about x, yaw about y, roll
  about z)`` in radians.
* Pinhole projection in continuous pixel coordinates (pixel (i, j) covers [i, i+1) x [j, j+1),
  its centre is at i + 0.5): ``u = cx + f * X_cam / -Z_cam``, ``v = cy - f * Y_cam / -Z_cam``
  with ``cx = W/2, cy = H/2``.

The transforms contract (COMMON.md) wants camera-to-world matrices in the OpenGL convention, in
metres: that is exactly the inverse of the pose, ``c2w = [[R^T, -R^T t], [0, 0, 0, 1]]``. The
trainer's ``nerf_matrix_to_ngp`` + OpenCV ray directions ``((u+0.5-cx)/f, (v+0.5-cy)/f, 1)``
then reproduce this projection (its pixel index u has continuous coordinate u + 0.5).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from preprocess.steps import atomic_path

CAMERA_CONVENTION = ("X_cam = Rz(e2) Ry(e1) Rx(e0) X_world + trans; OpenGL camera (x right, y up, "
                     "looks down -z); u = cx + f X/-Z, v = cy - f Y/-Z (continuous pixels); "
                     "world = SFM head frame in metres (x subject's left, y up, z out of face); "
                     "c2w (OpenGL) = inverse(pose)")


def euler_to_matrix(euler: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [..., 3, 3] = Rz(e2) Ry(e1) Rx(e0) for ``euler`` [..., 3] (radians)."""
    cx, cy, cz = torch.cos(euler).unbind(-1)
    sx, sy, sz = torch.sin(euler).unbind(-1)
    row0 = torch.stack([cz * cy, cz * sy * sx - sz * cx, cz * sy * cx + sz * sx], -1)
    row1 = torch.stack([sz * cy, sz * sy * sx + cz * cx, sz * sy * cx - cz * sx], -1)
    row2 = torch.stack([-sy, cy * sx, cy * cx], -1)
    return torch.stack([row0, row1, row2], -2)


def matrix_to_euler(rot: np.ndarray) -> np.ndarray:
    """Inverse of ``euler_to_matrix`` for rotations [..., 3, 3] (|yaw| < 90 degrees)."""
    zyx = Rotation.from_matrix(np.asarray(rot, np.float64).reshape(-1, 3, 3)).as_euler("ZYX")
    return zyx[:, ::-1].reshape(np.shape(rot)[:-2] + (3,)).copy()


def transform_points(points: torch.Tensor, euler: torch.Tensor, trans: torch.Tensor) -> torch.Tensor:
    """World points [..., P, 3] -> camera frame, with ``euler``/``trans`` [..., 3]."""
    rot = euler_to_matrix(euler)
    return torch.einsum("...ij,...pj->...pi", rot, points) + trans[..., None, :]


def project(points_cam: torch.Tensor, focal, cx: float, cy: float) -> torch.Tensor:
    """Camera-frame points [..., P, 3] -> pixels [..., P, 2]. ``focal`` broadcasts as [..., 1, 1].

    Depth is clamped just in front of the camera so a bad optimiser step cannot divide by ~0.
    """
    depth = (-points_cam[..., 2:3]).clamp_min(1e-3)
    uv = points_cam[..., :2] / depth * focal
    return torch.stack([cx + uv[..., 0], cy - uv[..., 1]], -1)


def pose_to_c2w(euler: np.ndarray, trans: np.ndarray) -> np.ndarray:
    """OpenGL camera-to-world [N, 4, 4] (metres) from poses ``euler`` [N, 3], ``trans`` [N, 3]."""
    rot = euler_to_matrix(torch.as_tensor(np.asarray(euler), dtype=torch.float64)).numpy()
    trans = np.asarray(trans, np.float64)
    c2w = np.tile(np.eye(4), (len(rot), 1, 1))
    c2w[:, :3, :3] = rot.transpose(0, 2, 1)
    c2w[:, :3, 3] = -np.einsum("nji,nj->ni", rot, trans)
    return c2w


def c2w_to_pose(c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of ``pose_to_c2w``: (euler [N, 3], trans [N, 3])."""
    c2w = np.asarray(c2w, np.float64)
    rot = c2w[:, :3, :3].transpose(0, 2, 1)
    trans = -np.einsum("nij,nj->ni", rot, c2w[:, :3, 3])
    return matrix_to_euler(rot), trans


def split_frames(num_frames: int) -> tuple[list[int], list[int]]:
    """Train / val frame indices: the last ``num_frames // 11`` frames are val (SyncTalk)."""
    n_val = num_frames // 11
    return list(range(num_frames - n_val)), list(range(num_frames - n_val, num_frames))


def write_transforms(data_dir: str | Path, c2w: np.ndarray, focal: float, height: int, width: int,
                     keep: np.ndarray | None = None) -> dict:
    """Write ``transforms_train.json`` / ``transforms_val.json`` (contract in COMMON.md).

    ``c2w`` [N, 4, 4] for every decoded frame; ``keep`` [N] bool drops frames (e.g. failed
    tracking) from both files after the split, which is made on frame indices so the val set
    stays the tail of the clip. Returns {"train": n, "val": n}.
    """
    data_dir = Path(data_dir)
    n = len(c2w)
    keep = np.ones(n, bool) if keep is None else np.asarray(keep, bool)
    counts = {}
    for name, ids in zip(("train", "val"), split_frames(n)):
        frames = [{"img_id": int(i), "aud_id": int(i), "transform_matrix": c2w[i].tolist()}
                  for i in ids if keep[i]]
        doc = {"focal_len": float(focal), "cx": width / 2.0, "cy": height / 2.0,
               "h": int(height), "w": int(width), "frames": frames}
        with atomic_path(data_dir / f"transforms_{name}.json") as tmp:
            tmp.write_text(json.dumps(doc, indent=1))
        counts[name] = len(frames)
    return counts


def pose_jitter(euler: np.ndarray, trans: np.ndarray, cuts=()) -> dict:
    """Frame-to-frame jitter: mean norm of the second temporal difference of the rotation
    (degrees) and the translation (millimetres). Smooth motion scores ~0. Triples of frames that
    span a cut (``cuts``: first frames of shots) are left out: a jump between shots is not
    jitter, and counting it rewarded fits that smear poses across cuts."""
    euler, trans = np.asarray(euler, np.float64), np.asarray(trans, np.float64)
    if len(euler) < 3:
        return {"rot_deg": 0.0, "trans_mm": 0.0}
    keep = np.ones(len(euler) - 2, bool)
    for c in cuts:  # triples centred on c-1 and c hold the jump
        for t in (c - 1, c):
            if 1 <= t <= len(euler) - 2:
                keep[t - 1] = False
    if not keep.any():
        return {"rot_deg": 0.0, "trans_mm": 0.0}
    d2r = np.degrees(euler[2:] - 2 * euler[1:-1] + euler[:-2])[keep]
    d2t = 1000.0 * (trans[2:] - 2 * trans[1:-1] + trans[:-2])[keep]
    return {"rot_deg": float(np.linalg.norm(d2r, axis=-1).mean()),
            "trans_mm": float(np.linalg.norm(d2t, axis=-1).mean())}
