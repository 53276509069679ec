"""Focal length from the rigid upper face seen in several head poses (used by ``face_fit``).

Why not the face-model fit's error? Fitting the Surrey model to 68 landmarks for each focal
and keeping the focal with the lowest error returned the grid's lower edge on every real clip:
a shorter focal adds perspective distortion, an extra nonlinear degree of freedom that soaks up
the systematic mismatch between MediaPipe's points (mapped to iBUG) and the SFM's landmark
vertices, while the 63 identity coefficients trade face depth against distance. With a nearly
frontal speaker, nothing in the landmarks pins the focal; the error only measures model mismatch.

What does pin it: ONE rigid 3D shape seen in DIFFERENT poses. Turning the head brings one
cheek closer and magnifies it by ``depth change / distance``; only the true focal explains all
poses with a single shape. So the estimate here is a small bundle adjustment: MediaPipe's
rigid upper-face points (landmarks.npy, consistent mesh vertices, not contour points) on ``K``
frames chosen for pose diversity; unknowns: the points' 3D shape (free, started from
MediaPipe's canonical face mesh, weakly held to it), each frame's rotation and translation;
for each focal of a log-spaced grid, Levenberg-Marquardt with a Schur complement over the
shape, all focals batched. The profile ``cost(focal)`` is the error curve. Its width gives the
confidence: the focals whose cost is within ``chi2_threshold`` (in units of the fit's own
residual variance, inflated for correlated landmark errors) of the minimum form the interval.
A curve that stays flat to the grid's edge, or an interval wider than ``max_ratio``, means the
clip does not determine the focal (too little head rotation); the caller then uses a default.

Camera: OpenCV convention inside this module (x right, y down, looking down +z); only the
focal leaves it. Pixel coordinates are continuous, as the landmarks.
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

#: MediaPipe face-mesh vertices that move with blinks, brows, speech: not part of the rigid set
_NONRIGID_EDGE_SETS = ("FACEMESH_LEFT_EYE", "FACEMESH_RIGHT_EYE", "FACEMESH_LEFT_EYEBROW",
                       "FACEMESH_RIGHT_EYEBROW", "FACEMESH_LIPS")
EYE_CORNERS = (33, 133, 362, 263)  #: eye corners stay (they do not move with blinks)
SUBNASALE = 2  #: rigid points lie above this vertex (the mouth, cheeks and jaw move)


@dataclass
class CanonicalFace:
    """MediaPipe's canonical face mesh (the one its landmarks are vertices of)."""

    vertices: np.ndarray  #: [468, 3] metres; x = subject's left (image right), y up, z to camera
    procrustes_ids: np.ndarray  #: MediaPipe's own rigid-pose landmark set


def load_canonical_face(task_path: str | Path) -> CanonicalFace:
    """Read the canonical mesh from ``face_landmarker.task`` (a zip holding
    ``geometry_pipeline_metadata_landmarks.binarypb``)."""
    from mediapipe.tasks.cc.vision.face_geometry.proto import geometry_pipeline_metadata_pb2 as g

    with zipfile.ZipFile(task_path) as z:
        meta = g.GeometryPipelineMetadata()
        meta.ParseFromString(z.read("geometry_pipeline_metadata_landmarks.binarypb"))
    buf = np.asarray(meta.canonical_mesh.vertex_buffer, np.float64).reshape(-1, 5)  # xyz uv, cm
    return CanonicalFace(vertices=buf[:, :3] / 100.0,
                         procrustes_ids=np.array([b.landmark_id for b in meta.procrustes_landmark_basis]))


def rigid_point_ids(canonical: CanonicalFace) -> np.ndarray:
    """Vertices of the rigid upper face: above the subnasale, not on eyelids, brows or lips
    (eye corners kept), plus MediaPipe's own Procrustes set above the mouth."""
    import mediapipe as mp

    fm = mp.solutions.face_mesh
    moving = {a for name in _NONRIGID_EDGE_SETS for e in getattr(fm, name) for a in e}
    moving -= set(EYE_CORNERS)
    v = canonical.vertices
    upper = np.flatnonzero(v[:, 1] > v[SUBNASALE, 1])
    keep = sorted(set(upper.tolist()) - moving)
    return np.asarray(keep, np.int64)


# ------------------------------------------------------------------------------ geometry
def _hat(w: torch.Tensor) -> torch.Tensor:
    """Skew matrices [..., 3, 3] of vectors [..., 3]."""
    z = torch.zeros_like(w[..., 0])
    return torch.stack([torch.stack([z, -w[..., 2], w[..., 1]], -1),
                        torch.stack([w[..., 2], z, -w[..., 0]], -1),
                        torch.stack([-w[..., 1], w[..., 0], z], -1)], -2)


def _exp_so3(w: torch.Tensor) -> torch.Tensor:
    """Rodrigues: rotation matrices [..., 3, 3] for axis-angle vectors [..., 3]."""
    theta = w.norm(dim=-1, keepdim=True)[..., None].clamp_min(1e-12)
    k = _hat(w) / theta
    eye = torch.eye(3, dtype=w.dtype).expand(k.shape)
    return eye + torch.sin(theta) * k + (1 - torch.cos(theta)) * (k @ k)


def pnp_poses(shape: np.ndarray, uv: np.ndarray, focal: float, cx: float, cy: float
              ) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame rotation [F, 3, 3] and translation [F, 3] (OpenCV camera) of a rigid
    ``shape`` [P, 3] seen at ``uv`` [F, P, 2], by OpenCV's SQPnP then LM refinement."""
    import cv2

    k = np.array([[focal, 0, cx], [0, focal, cy], [0, 0, 1]], np.float64)
    rots, trans = [], []
    obj = np.ascontiguousarray(shape, np.float64)
    for pts in uv:
        img = np.ascontiguousarray(pts, np.float64)
        ok, rvec, tvec = cv2.solvePnP(obj, img, k, None, flags=cv2.SOLVEPNP_SQPNP)
        if not ok:
            raise RuntimeError("solvePnP failed")
        rvec, tvec = cv2.solvePnPRefineLM(obj, img, k, None, rvec, tvec)
        rots.append(cv2.Rodrigues(rvec)[0])
        trans.append(tvec.ravel())
    return np.stack(rots), np.stack(trans)


def rotation_angles(rot: np.ndarray) -> np.ndarray:
    """(pitch, yaw, roll) in degrees [F, 3] of rotations [F, 3, 3] of a shape given in the
    OpenCV object frame (identity = frontal face)."""
    from scipy.spatial.transform import Rotation

    return np.degrees(Rotation.from_matrix(rot).as_euler("XYZ"))


def diverse_frames(angles: np.ndarray, k: int, candidates: np.ndarray | None = None) -> np.ndarray:
    """``k`` frame indices spread over head poses: greedy farthest-point sampling in (pitch, yaw,
    roll) degrees, starting from the most extreme pose. ``candidates`` restricts the choice."""
    idx = np.arange(len(angles)) if candidates is None else np.asarray(candidates)
    pts = angles[idx] - np.median(angles[idx], axis=0)
    chosen = [int(np.argmax(np.linalg.norm(pts, axis=1)))]
    dist = np.linalg.norm(pts - pts[chosen[0]], axis=1)
    while len(chosen) < min(k, len(idx)):
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(pts - pts[nxt], axis=1))
    return np.sort(idx[chosen])


# ------------------------------------------------------------------------ the profile
@dataclass
class FocalProfile:
    """The focal search's outcome (focals in pixels of the image the landmarks live in)."""

    focals: np.ndarray  #: [B] the focals tried, ascending
    cost: np.ndarray  #: [B] converged robust cost per focal (the error curve)
    rms_px: np.ndarray  #: [B] root-mean-square reprojection error per focal
    excess_px: np.ndarray  #: [B] how much worse than the best focal, RMS pixels
    best: float  #: focal at the minimum of the interpolated curve
    interval: tuple[float, float]  #: focals whose excess is within the tolerance
    tolerance_px: float  #: the excess tolerance used (floor or statistical, the larger)
    determined: bool  #: interval inside the grid and no wider than the allowed ratio
    reason: str  #: why (not) determined, in words
    frames: np.ndarray  #: frames used
    pose_spread_deg: float  #: RMS angle of the used frames' rotations about their mean
    num_points: int = 0  #: rigid landmarks per frame
    #: image pixels per metre at the head's depth (focal / distance: the same for every focal)
    px_per_m: float = float("nan")


def _solve_batch(uv, shape0, rot0, trans0, focals, cx, cy, prior, huber_px, iters):
    """Levenberg-Marquardt over a shared shape [P, 3] and per-frame poses, one independent
    problem per focal of ``focals`` [B]; ``uv`` [K, P, 2]. The points are eliminated (3x3 blocks,
    Schur complement), so each step solves a [6K, 6K] system per focal.
    Returns (robust cost [B], sum of squared residuals [B])."""
    dt = torch.float64
    uv = torch.as_tensor(uv, dtype=dt)
    nb, (nk, npt) = len(focals), uv.shape[:2]
    f = torch.as_tensor(focals, dtype=dt).view(nb, 1, 1)
    S0 = torch.as_tensor(shape0, dtype=dt).expand(nb, -1, -1)
    S, R, T = S0.clone(), torch.as_tensor(rot0, dtype=dt).clone(), torch.as_tensor(trans0, dtype=dt).clone()
    eye3 = torch.eye(3, dtype=dt)
    idx = torch.arange(nk)

    def residuals(S, R, T):
        Y = torch.einsum("bkij,bpj->bkpi", R, S) + T[:, :, None]
        z = Y[..., 2].clamp_min(1e-3)
        proj = torch.stack([cx + f * Y[..., 0] / z, cy + f * Y[..., 1] / z], -1)
        return proj - uv, Y, z

    def cost_of(r, S):
        d = r.norm(dim=-1)
        rho = torch.where(d <= huber_px, 0.5 * d * d, huber_px * (d - 0.5 * huber_px))
        return rho.sum((1, 2)) + 0.5 * prior * (S - S0).pow(2).sum((1, 2))

    r, Y, z = residuals(S, R, T)
    cost = cost_of(r, S)
    mu = torch.full((nb,), 1e-3, dtype=dt)
    for _ in range(iters):
        d = r.norm(dim=-1)
        w = torch.where(d <= huber_px, torch.ones_like(d), huber_px / d.clamp_min(1e-12))  # IRLS
        fz = f / z
        zero = torch.zeros_like(fz)
        jp = torch.stack([torch.stack([fz, zero, -fz * Y[..., 0] / z], -1),
                          torch.stack([zero, fz, -fz * Y[..., 1] / z], -1)], -2)  # [B,K,P,2,3]
        js = jp @ R[:, :, None]  # d residual / d shape point
        q = (Y - T[:, :, None])[..., None, :].expand_as(jp)
        jc = torch.cat([torch.linalg.cross(q, jp, dim=-1), jp], -1)  # left rotation increment, trans
        wj_s, wj_c = js * w[..., None, None], jc * w[..., None, None]
        h_ss = torch.einsum("bkpai,bkpaj->bpij", wj_s, js) + prior * eye3
        g_s = torch.einsum("bkpai,bkpa->bpi", wj_s, r) + prior * (S - S0)
        h_cc = torch.einsum("bkpai,bkpaj->bkij", wj_c, jc)
        g_c = torch.einsum("bkpai,bkpa->bki", wj_c, r)
        h_sc = torch.einsum("bkpai,bkpaj->bkpij", wj_s, jc)  # [B, K, P, 3, 6]
        h_sc_t = h_sc.permute(0, 2, 1, 4, 3).reshape(nb, npt, nk * 6, 3)  # [B, P, 6K, 3]
        converged = None
        while True:
            damp = 1 + mu.view(nb, 1, 1)
            hs = h_ss.clone()
            hs.diagonal(dim1=-2, dim2=-1).mul_(damp)
            hc = h_cc.clone()
            hc.diagonal(dim1=-2, dim2=-1).mul_(damp).add_(1e-9)
            hs_inv = torch.linalg.inv(hs)
            m = h_sc_t @ hs_inv  # [B, P, 6K, 3]
            schur = -(m.transpose(1, 2).reshape(nb, nk * 6, npt * 3)
                      @ h_sc_t.transpose(1, 2).reshape(nb, nk * 6, npt * 3).transpose(1, 2))
            schur = schur.view(nb, nk, 6, nk, 6)
            schur[:, idx, :, idx, :] += hc.transpose(0, 1)
            rhs = g_c.reshape(nb, nk * 6) - torch.einsum("bpia,bpa->bi", m, g_s)
            dc = -torch.linalg.solve(schur.reshape(nb, 6 * nk, 6 * nk), rhs).view(nb, nk, 6)
            ds = -(hs_inv @ (g_s + torch.einsum("bkpij,bkj->bpi", h_sc, dc))[..., None])[..., 0]
            R_new = _exp_so3(dc[..., :3]) @ R
            T_new = T + dc[..., 3:]
            S_new = S + ds
            r_new, Y_new, z_new = residuals(S_new, R_new, T_new)
            c_new = cost_of(r_new, S_new)
            better = c_new < cost
            keep = better.view(nb, 1, 1)
            S = torch.where(keep, S_new, S)
            R = torch.where(keep[..., None], R_new, R)
            T = torch.where(keep, T_new, T)
            r = torch.where(keep[..., None], r_new, r)
            Y = torch.where(keep[..., None], Y_new, Y)
            z = torch.where(keep, z_new, z)
            gain = (cost - torch.where(better, c_new, cost)) / cost.clamp_min(1e-12)
            converged = (gain < 1e-8) & (better | (mu > 1e6))
            cost = torch.where(better, c_new, cost)
            mu = torch.where(better, mu / 3, mu * 4)
            if better.any() or (mu > 1e8).all():
                break
        if converged.all():
            break
    return cost.numpy(), r.pow(2).sum((1, 2, 3)).numpy()


def _interpolated(focals, values, dense):
    """Monotone cubic (PCHIP) interpolation in log focal."""
    from scipy.interpolate import PchipInterpolator

    return PchipInterpolator(np.log(focals), values)(np.log(dense))


def focal_profile(uv: np.ndarray, shape0: np.ndarray, cx: float, cy: float,
                  focal_range: tuple[float, float], grid_points: int = 13, refine_points: int = 6,
                  prior_mm: float = 5.0, huber_px: float = 1.5, iters: int = 30,
                  tolerance_px: float = 0.1, chi2_threshold: float = 4.0,
                  max_ratio: float = 2.0, frames: np.ndarray | None = None,
                  pose_spread_deg: float = float("nan")) -> FocalProfile:
    """The error-versus-focal curve of one rigid shape seen on ``uv`` [K, P, 2] (see the module
    docstring), on ``grid_points`` log-spaced focals over ``focal_range`` plus ``refine_points``
    between the best one's neighbours.

    ``shape0`` [P, 3]: the starting shape (metres, canonical axes: y up, z to the camera);
    ``prior_mm``: standard deviation of the shape's deviation from it (against 1 px of landmark
    noise). The interval holds the focals whose fit is worse than the best by at most
    ``tolerance_px`` RMS (a floor: the landmark detector's pose-dependent bias; on the shared
    GRID clip, different frame selections moved the minimum by that much) or by what the
    fit's own noise explains (chi-square ``chi2_threshold``), whichever is larger."""
    lo_f, hi_f = float(focal_range[0]), float(focal_range[1])
    nk, npt = uv.shape[:2]
    flip = np.diag([1.0, -1.0, -1.0])  # canonical (y up, z to camera) -> OpenCV object frame
    shape_cv = shape0 @ flip
    prior = 1.0 / (prior_mm / 1000.0) ** 2

    def run(focals):
        from preprocess.parallel import torch_threads

        inits = [pnp_poses(shape_cv, uv, fo, cx, cy) for fo in focals]
        with torch_threads(1):  # small matrices: more threads only wait on each other
            return _solve_batch(uv, shape_cv, np.stack([i[0] for i in inits]),
                                np.stack([i[1] for i in inits]), focals, cx, cy, prior,
                                huber_px, iters)

    grid = np.exp(np.linspace(np.log(lo_f), np.log(hi_f), grid_points))
    cost, ssr = run(grid)
    i0 = int(np.argmin(cost))
    if refine_points > 0:
        a, b = grid[max(i0 - 1, 0)], grid[min(i0 + 1, len(grid) - 1)]
        fine = np.exp(np.linspace(np.log(a), np.log(b), refine_points + 2)[1:-1])
        c2, s2 = run(fine)
        grid, cost, ssr = (np.concatenate(x) for x in ((grid, fine), (cost, c2), (ssr, s2)))
        order = np.argsort(grid)
        grid, cost, ssr = grid[order], cost[order], ssr[order]
    n_res = 2 * nk * npt
    dense = np.exp(np.linspace(np.log(lo_f), np.log(hi_f), 2000))
    cost_d = _interpolated(grid, cost, dense)
    j0 = int(np.argmin(cost_d))
    c_min = min(float(cost_d[j0]), float(cost.min()))
    best = float(dense[j0])
    excess = np.sqrt(np.maximum(2 * (cost - c_min) / n_res, 0))
    noise = 2 * c_min / max(n_res - 3 * npt - 6 * nk - 1, 1)  # residual variance at the best focal
    stat_px = math.sqrt(chi2_threshold * noise / n_res)  # chi2 = 2 dcost / noise <= threshold
    tol = max(tolerance_px, stat_px)
    excess_d = np.sqrt(np.maximum(2 * (cost_d - c_min) / n_res, 0))
    inside = np.flatnonzero(excess_d <= tol)
    lo, hi = float(dense[inside.min()]), float(dense[inside.max()])
    at_lo, at_hi = inside.min() == 0, inside.max() == len(dense) - 1
    if at_lo or at_hi:
        side = "both ends" if at_lo and at_hi else ("short end" if at_lo else "long end")
        reason = (f"the error curve stays within {tol:.2f} px RMS of its minimum up to the "
                  f"grid's {side} ({lo_f:.0f}-{hi_f:.0f} px): the landmarks do not determine "
                  f"the focal (head pose spread {pose_spread_deg:.1f} deg)")
    elif hi / lo > max_ratio:
        reason = (f"focals {lo:.0f}-{hi:.0f} px fit within {tol:.2f} px RMS of the best, wider "
                  f"than x{max_ratio:g} (head pose spread {pose_spread_deg:.1f} deg)")
    else:
        reason = f"focals {lo:.0f}-{hi:.0f} px fit within {tol:.2f} px RMS of the best"
    return FocalProfile(focals=grid, cost=cost, rms_px=np.sqrt(ssr / (nk * npt)), excess_px=excess,
                        best=best, interval=(lo, hi), tolerance_px=tol,
                        determined=not (at_lo or at_hi) and hi / lo <= max_ratio, reason=reason,
                        frames=np.arange(nk) if frames is None else frames,
                        pose_spread_deg=pose_spread_deg, num_points=npt)


def estimate_focal(lms478: np.ndarray, canonical: CanonicalFace, width: int, height: int,
                   focal_range: tuple[float, float], num_frames: int = 24, max_points: int = 128,
                   **kw) -> FocalProfile:
    """The whole estimate from MediaPipe landmarks [N, >=468, >=2] (pixels): the rigid points
    (at most ``max_points``, spread evenly over the list), a rough pose of every frame at a
    nominal focal, ``num_frames`` frames spread over the poses, then ``focal_profile``."""
    ids = rigid_point_ids(canonical)
    ids = ids[np.unique(np.linspace(0, len(ids) - 1, min(max_points, len(ids))).round().astype(int))]
    uv_all = np.asarray(lms478[:, ids, :2], np.float64)
    cx, cy = width / 2.0, height / 2.0
    shape0 = canonical.vertices[ids]
    nominal = float(np.sqrt(focal_range[0] * focal_range[1]))
    flip = np.diag([1.0, -1.0, -1.0])
    cand = np.arange(0, len(uv_all), max(1, len(uv_all) // 2000))  # rough poses of <= ~2000 frames
    rot, trans = pnp_poses(shape0 @ flip, uv_all[cand], nominal, cx, cy)
    angles = rotation_angles(rot)
    pos = diverse_frames(angles, num_frames)
    frames, sel = cand[pos], angles[pos]
    spread = float(np.sqrt(((sel - sel.mean(0)) ** 2).sum(1).mean()))
    prof = focal_profile(uv_all[frames], shape0, cx, cy, focal_range, frames=frames,
                         pose_spread_deg=spread, **kw)
    prof.px_per_m = nominal / float(np.median(trans[:, 2]))
    return prof
