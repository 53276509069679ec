"""Head poses in the speaker's canonical frame <-> camera-to-world matrices.

The transforms files hold per-frame camera-to-world matrices ``c2w`` (OpenGL camera, metres;
world = the head-model frame: origin at the head centre, x towards the subject's left, y up,
z out of the face; see ``preprocess.transforms``). Their inverse is the head's pose in the
camera, ``X_cam = R X_head + t``.

**Canonical frame.** The speaker's *rest pose* is the mean training pose (the pose of
``nerfhead render --poses static``: ``inv(mean_pose(c2w_train))`` = ``[R0 | t0]``). A frame's
pose is written relative to it, in the head's own axes at rest::

    R = R0 @ Rz(roll) @ Ry(yaw) @ Rx(pitch)        t = t0 + R0 @ (tx, ty, tz)

so all six numbers are 0 at the rest pose, and

- ``yaw`` (degrees, about the head's up axis y): positive turns the face towards the
  subject's own left (to the right of the picture);
- ``pitch`` (degrees, about the head's x axis): positive tips the face down (chin towards
  the chest), negative looks up;
- ``roll`` (degrees, about the axis out of the face): positive tilts the head towards the
  subject's right shoulder (the top of the head moves to the left of the picture);
- ``tx, ty, tz`` (metres): the head centre's displacement from rest along the subject's left,
  up, and forwards (towards the camera at rest).

The Euler order (x first, then y, then z, in the head's axes) is that of
``preprocess.transforms.euler_to_matrix`` with ``euler = (pitch, yaw, roll)``. Angles must stay
within +-90 degrees (yaw) for the decomposition to be unique; real heads stay far inside.
Because the rest pose is the rendering speaker's own, a motion written for one speaker plays
on another around that speaker's framing (the rule of ``--pose-from``).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from nerfhead.render.poses import mean_pose, project_to_rotation

POSE_COLUMNS = ("yaw_deg", "pitch_deg", "roll_deg", "tx_m", "ty_m", "tz_m")


def rest_pose(c2w_train: np.ndarray) -> np.ndarray:
    """The speaker's rest pose as a camera-to-world matrix [4, 4] (mean training pose)."""
    return mean_pose(np.asarray(c2w_train)).astype(np.float64)


def _head_to_camera(c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c2w = np.asarray(c2w, np.float64)
    rot = np.swapaxes(c2w[..., :3, :3], -1, -2)
    trans = -np.einsum("...ij,...j->...i", rot, c2w[..., :3, 3])
    return rot, trans


def c2w_to_canonical(c2w: np.ndarray, rest_c2w: np.ndarray) -> np.ndarray:
    """[N, 6] (yaw, pitch, roll in degrees; tx, ty, tz in metres) of poses ``c2w`` [N, 4, 4]
    relative to the rest pose ``rest_c2w`` [4, 4] (see the module docstring)."""
    rot, trans = _head_to_camera(c2w)
    rot0, trans0 = _head_to_camera(rest_c2w)
    rel = np.einsum("ji,njk->nik", rot0, rot)  # R0^T R
    # R = Rz(roll) Ry(yaw) Rx(pitch): scipy's intrinsic "ZYX" gives (roll, yaw, pitch)
    roll, yaw, pitch = Rotation.from_matrix(rel).as_euler("ZYX", degrees=True).T
    disp = np.einsum("ji,nj->ni", rot0, trans - trans0)  # R0^T (t - t0)
    return np.column_stack([yaw, pitch, roll, disp]).astype(np.float64)


def canonical_to_c2w(pose6: np.ndarray, rest_c2w: np.ndarray) -> np.ndarray:
    """Inverse of ``c2w_to_canonical``: camera-to-world [N, 4, 4] float32."""
    pose6 = np.asarray(pose6, np.float64).reshape(-1, 6)
    rel = Rotation.from_euler("ZYX", pose6[:, [2, 0, 1]], degrees=True).as_matrix()
    rot0, trans0 = _head_to_camera(rest_c2w)
    rot = project_to_rotation(rot0[None] @ rel)
    trans = trans0[None] + pose6[:, 3:] @ rot0.T
    out = np.tile(np.eye(4), (len(pose6), 1, 1))
    out[:, :3, :3] = np.swapaxes(rot, -1, -2)
    out[:, :3, 3] = -np.einsum("nji,nj->ni", rot, trans)
    return out.astype(np.float32)


def rest_pose_in_camera(rest_c2w: np.ndarray) -> dict:
    """The rest pose itself, as the camera sees it: yaw/pitch/roll (degrees) of the head
    relative to facing the camera squarely, and the head centre in the OpenGL camera frame
    (metres; z is negative, the distance to the camera)."""
    rot, trans = _head_to_camera(rest_c2w)
    roll, yaw, pitch = Rotation.from_matrix(rot).as_euler("ZYX", degrees=True)
    return {"yaw_deg": float(yaw), "pitch_deg": float(pitch), "roll_deg": float(roll),
            "head_centre_camera_m": [float(v) for v in trans]}


def angular_velocity(pose6: np.ndarray, fps: float = 25.0) -> np.ndarray:
    """[N-1, 3] angular velocity (degrees/s, rotation vector of R_i^T R_{i+1}, head axes)."""
    rot = Rotation.from_euler("ZYX", np.asarray(pose6, np.float64)[:, [2, 0, 1]], degrees=True)
    rel = rot[:-1].inv() * rot[1:]
    return np.degrees(rel.as_rotvec()) * fps
