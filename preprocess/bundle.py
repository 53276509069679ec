"""Two-stage bundle adjustment of the head poses (step ``bundle_adjustment``), then transforms.

Unknowns: the tracked keypoints' 3D positions (world = head-model frame, metres) and each
frame's pose (euler, trans; ``preprocess.transforms.CAMERA_CONVENTION``); the focal stays fixed.

0. ``init_points``: back-project the reference-frame keypoints onto the fitted face mesh
   (ray-triangle intersection); rays that miss the mesh take the depth of the nearest projected
   vertex.
1. ``stage1_points``: Adam on the points only, poses fixed at the face fit.
2. ``stage2_joint``: Adam on points, rotations and translations together: Huber reprojection loss
   over the valid (frame, keypoint) tracks, a small temporal smoothness term (second
   differences, only between frames of one shot: ``scenes.json`` cuts break it) and a weak pull
   towards the face-fit poses. The pull fixes the gauge (a global
   rigid motion or scaling of points + cameras leaves every reprojection unchanged), keeping the
   world the metric, head-centred face-model frame; it also holds frames without tracks.

Writes ``bundle_adjustment.pt`` and ``transforms_train.json`` / ``transforms_val.json``; frames
without a face, and foreign-scene frames when ``scenes.drop_foreign`` is set, are left out of
the transforms.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from preprocess.steps import Step, StepContext, StepError, atomic_path
from preprocess.transforms import (euler_to_matrix, pose_jitter, pose_to_c2w, project,
                                   transform_points, write_transforms)


@dataclass
class BundleConfig:
    """Settings of the ``bundle_adjustment`` step (config section ``bundle``)."""

    device: str = "cpu"  #: torch device ("cpu", "cuda", "auto")
    stage1_iters: int = 300  #: Adam iterations, points only
    stage2_iters: int = 600  #: Adam iterations, points + poses
    lr_points: float = 1e-3  #: metres
    lr_rot: float = 2e-3  #: radians
    lr_trans: float = 1e-3  #: metres
    huber_px: float = 1.0  #: Huber threshold of the reprojection residual, pixels
    smooth_weight: float = 1.0  #: second-difference penalty, units of 0.01 rad and 5 mm (0.1 left
    #: jitter above the face fit's on the 300-s GRID clip; 1.0 lowers it, see docs/benchmarks.md)
    anchor_weight: float = 1e-3  #: pull towards the face-fit poses, same units


def _huber_reprojection(points, euler, trans, tracks, valid, focal, cx, cy, delta):
    """Mean Huber loss of the valid residuals; points [K,3], poses [N,3], tracks [N,K,2]."""
    uv = project(transform_points(points[None], euler, trans), focal, cx, cy)
    res = F.huber_loss(uv, tracks, delta=delta, reduction="none").sum(-1)
    return (res * valid).sum() / valid.sum().clamp_min(1)


def reprojection_errors(points, euler, trans, tracks, valid, focal, cx, cy) -> np.ndarray:
    """Mean pixel error per frame [N] over valid keypoints (NaN for frames without any)."""
    with torch.no_grad():
        uv = project(transform_points(points[None], euler, trans), focal, cx, cy)
        d = (uv - tracks).norm(dim=-1)
        v = valid.float()
        err = (d * v).sum(-1) / v.sum(-1)
    return err.cpu().numpy()


def init_points(vertices_cam: torch.Tensor, triangles: torch.Tensor, keypoints: torch.Tensor,
                euler_ref: torch.Tensor, trans_ref: torch.Tensor, focal: float, cx: float,
                cy: float) -> torch.Tensor:
    """World points [K, 3] for reference-frame keypoints [K, 2] on the fitted mesh.

    ``vertices_cam`` [V, 3]: the fitted face mesh in the reference camera frame."""
    dirs = torch.stack([(keypoints[:, 0] - cx) / focal, -(keypoints[:, 1] - cy) / focal,
                        -torch.ones(len(keypoints), dtype=keypoints.dtype)], -1)  # [K, 3]
    v0, v1, v2 = (vertices_cam[triangles[:, i]] for i in range(3))  # [T, 3]
    e1, e2 = v1 - v0, v2 - v0
    pvec = torch.cross(dirs[:, None], e2[None].expand(len(dirs), -1, -1), dim=-1)  # [K, T, 3]
    det = (e1[None] * pvec).sum(-1)
    inv = 1.0 / torch.where(det.abs() < 1e-12, torch.full_like(det, 1e-12), det)
    tvec = -v0[None]  # ray origin is the camera centre
    u = (tvec * pvec).sum(-1) * inv
    qvec = torch.cross(tvec.expand_as(pvec), e1[None].expand_as(pvec), dim=-1)
    v = (dirs[:, None] * qvec).sum(-1) * inv
    t = (e2[None] * qvec).sum(-1) * inv
    hit = (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 0) & (det.abs() > 1e-12)
    t_hit = torch.where(hit, t, torch.full_like(t, float("inf"))).min(-1).values
    # misses: depth of the vertex whose projection is nearest to the keypoint
    uv = project(vertices_cam, focal, cx, cy)
    nearest = torch.cdist(keypoints, uv).argmin(-1)
    t_miss = -vertices_cam[nearest, 2]
    t_all = torch.where(torch.isfinite(t_hit), t_hit, t_miss)
    p_cam = dirs * t_all[:, None]
    rot = euler_to_matrix(euler_ref)
    return (p_cam - trans_ref) @ rot  # R^T (p - t), row-vector form


def _cosine(it: int, total: int) -> float:
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * it / max(total, 1)))


def stage1_points(points, euler, trans, tracks, valid, focal, cx, cy, cfg: BundleConfig,
                  progress=None) -> tuple[torch.Tensor, list[float]]:
    """Stage 1: optimise the 3D points [K, 3] with the poses fixed. Returns (points, losses)."""
    pts = points.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([pts], lr=cfg.lr_points)
    losses = []
    for it in _steps(cfg.stage1_iters, progress):
        opt.param_groups[0]["lr"] = cfg.lr_points * _cosine(it, cfg.stage1_iters)
        loss = _huber_reprojection(pts, euler, trans, tracks, valid, focal, cx, cy, cfg.huber_px)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return pts.detach(), losses


def smooth_triples(n: int, cuts=()) -> torch.Tensor:
    """[n - 2] float mask of the frame triples (t-1, t, t+1) that lie within one shot."""
    ok = torch.ones(max(n - 2, 0))
    for c in cuts:  # a cut at c (first frame of a shot) breaks the triples centred on c-1 and c
        for t in (c - 1, c):
            if 1 <= t <= n - 2:
                ok[t - 1] = 0
    return ok


def stage2_joint(points, euler, trans, tracks, valid, focal, cx, cy, cfg: BundleConfig,
                 progress=None, cuts=()):
    """Stage 2: optimise points, rotations and translations together; the temporal smoothness
    does not reach across ``cuts`` (first frames of shots).

    Returns (points [K,3], euler [N,3], trans [N,3], losses)."""
    e0, t0 = euler.detach(), trans.detach()
    pts = points.detach().clone().requires_grad_(True)
    eul = euler.detach().clone().requires_grad_(True)
    tra = trans.detach().clone().requires_grad_(True)
    groups = [(pts, cfg.lr_points), (eul, cfg.lr_rot), (tra, cfg.lr_trans)]
    opt = torch.optim.Adam([{"params": [p], "lr": lr} for p, lr in groups])
    losses = []
    triples = smooth_triples(len(eul), cuts).to(eul.device)
    for it in _steps(cfg.stage2_iters, progress):
        for g, (_, lr) in zip(opt.param_groups, groups):
            g["lr"] = lr * _cosine(it, cfg.stage2_iters)
        loss = _huber_reprojection(pts, eul, tra, tracks, valid, focal, cx, cy, cfg.huber_px)
        if len(eul) >= 3:
            d2r = (eul[2:] - 2 * eul[1:-1] + eul[:-2]) / 0.01
            d2t = (tra[2:] - 2 * tra[1:-1] + tra[:-2]) / 0.005
            loss = loss + cfg.smooth_weight * ((d2r.pow(2).sum(-1) + d2t.pow(2).sum(-1)) * triples).mean()
        anchor = ((eul - e0) / 0.01).pow(2).sum(-1) + ((tra - t0) / 0.005).pow(2).sum(-1)
        loss = loss + cfg.anchor_weight * anchor.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return pts.detach(), eul.detach(), tra.detach(), losses


def _steps(n: int, progress):
    """range(n), calling ``progress(1)`` (if given) after each iteration."""
    for it in range(n):
        yield it
        if progress is not None:
            progress(1)


def run_bundle(ctx: StepContext, cfg: BundleConfig) -> dict:
    from preprocess.face_model import load_face_model
    from preprocess.focal import FaceFitConfig, pick_device, section
    from preprocess.scenes import frame_mask, read_scenes
    from preprocess.tracking import read_keypoints

    n = ctx.num_frames()
    tp_path = ctx.path("track_params.pt")
    tp = torch.load(tp_path, weights_only=True)
    ref, kp = read_keypoints(ctx.path("keypoints.txt"))
    tracks_np = np.load(ctx.path("track_xys.npy"))
    valid_np = np.load(ctx.path("track_valid.npy"))
    if len(tp["euler"]) != n or tracks_np.shape[0] != n:
        raise StepError("bundle_adjustment", f"frame counts differ: track_params "
                        f"{len(tp['euler'])}, tracks {tracks_np.shape[0]}, manifest {n}", tp_path)
    dev = pick_device(cfg.device)
    focal, h, w = float(tp["focal"]), int(tp["h"]), int(tp["w"])
    cx, cy = w / 2.0, h / 2.0
    euler0, trans0 = tp["euler"].float().to(dev), tp["trans"].float().to(dev)
    tracks = torch.as_tensor(tracks_np, dtype=torch.float32, device=dev)
    valid = torch.as_tensor(valid_np, device=dev).float()

    fit_cfg = section(ctx.cfg, "face_fit", FaceFitConfig)
    try:
        model = load_face_model(fit_cfg.sfm_path)
    except Exception as e:
        raise StepError("bundle_adjustment", str(e)) from e
    verts = model.shape(tp["id"].float(), tp["exp"][ref].float())
    verts_cam = transform_points(verts, tp["euler"][ref].float(), tp["trans"][ref].float())
    pts0 = init_points(verts_cam, model.triangles, torch.as_tensor(kp), tp["euler"][ref].float(),
                       tp["trans"][ref].float(), focal, cx, cy).to(dev)

    t_start = time.time()
    err_before = reprojection_errors(pts0, euler0, trans0, tracks, valid, focal, cx, cy)
    from preprocess.progress import step_progress

    scenes = read_scenes(ctx)
    cuts = scenes["cuts"] if scenes else []
    with step_progress("bundle_adjustment", cfg.stage1_iters + cfg.stage2_iters,
                       unit="iterations") as advance:
        pts1, loss1 = stage1_points(pts0, euler0, trans0, tracks, valid, focal, cx, cy, cfg, advance)
        err_stage1 = reprojection_errors(pts1, euler0, trans0, tracks, valid, focal, cx, cy)
        pts2, euler2, trans2, loss2 = stage2_joint(pts1, euler0, trans0, tracks, valid, focal,
                                                   cx, cy, cfg, advance, cuts)
    err_after = reprojection_errors(pts2, euler2, trans2, tracks, valid, focal, cx, cy)
    jit_before = pose_jitter(euler0.cpu().numpy(), trans0.cpu().numpy(), cuts)
    jit_after = pose_jitter(euler2.cpu().numpy(), trans2.cpu().numpy(), cuts)
    frame_ok = valid_np.any(1)
    result = {
        "points": pts2.cpu(), "points_init": pts0.cpu(), "euler": euler2.cpu(), "trans": trans2.cpu(),
        "focal": focal, "h": h, "w": w, "reference_frame": ref,
        "losses": {"stage1": torch.tensor(loss1), "stage2": torch.tensor(loss2)},
        "reproj_err_before": torch.as_tensor(err_before), "reproj_err_stage1": torch.as_tensor(err_stage1),
        "reproj_err_after": torch.as_tensor(err_after), "frame_tracked": torch.as_tensor(frame_ok),
        "jitter_before": jit_before, "jitter_after": jit_after,
    }
    with atomic_path(ctx.path("bundle_adjustment.pt")) as tmp:
        torch.save(result, tmp)
    # frames where the landmarks step found no face were interpolated there; their images are
    # unusable (occlusion, decoding damage), so they are left out of training and validation
    no_face = np.zeros(len(frame_ok), bool)
    ranges = ctx.manifest.get("steps", {}).get("landmarks", {}).get("stats", {}) \
        .get("interpolated_ranges", [])
    for a, b in ranges:
        no_face[a:b + 1] = True
    # frames of another session, when the user asked to drop them (scenes.drop_foreign)
    dropped = frame_mask(scenes["excluded_frames"], n) if scenes else np.zeros(n, bool)
    counts = write_transforms(ctx.data_dir, pose_to_c2w(euler2.cpu().numpy(), trans2.cpu().numpy()),
                              focal, h, w, keep=frame_ok & ~no_face & ~dropped)
    from preprocess.geometry_previews import pose_curves_preview

    pose_curves_preview(ctx.data_dir, euler0.cpu().numpy(), trans0.cpu().numpy(),
                        euler2.cpu().numpy(), trans2.cpu().numpy())
    return {"reproj_err_px_before": float(np.nanmean(err_before)),
            "reproj_err_px_stage1": float(np.nanmean(err_stage1)),
            "reproj_err_px_after": float(np.nanmean(err_after)),
            "jitter_before": jit_before, "jitter_after": jit_after,
            "train_frames": counts["train"], "val_frames": counts["val"],
            "frames_without_face_left_out": int(no_face.sum()),
            "foreign_frames_left_out": int((dropped & ~no_face).sum()), "shots": len(cuts) + 1,
            "seconds": round(time.time() - t_start, 2)}


def _run(ctx: StepContext) -> dict:
    from preprocess.focal import section
    from preprocess.parallel import torch_threads

    with torch_threads(1):
        return run_bundle(ctx, section(ctx.cfg, "bundle", BundleConfig))


def _check(ctx: StepContext) -> None:
    import json

    from preprocess.transforms import split_frames

    n = ctx.num_frames()
    ba = torch.load(ctx.path("bundle_adjustment.pt"), weights_only=True)
    if ba["euler"].shape != (n, 3) or not torch.isfinite(ba["trans"]).all():
        raise StepError("bundle_adjustment", "bad pose arrays", ctx.path("bundle_adjustment.pt"))
    for name, ids in zip(("train", "val"), split_frames(n)):
        path = ctx.path(f"transforms_{name}.json")
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise StepError("bundle_adjustment", f"unreadable: {e}", path) from e
        got = [f["img_id"] for f in doc["frames"]]
        if not set(got) <= set(ids) or any(np.shape(f["transform_matrix"]) != (4, 4) for f in doc["frames"]):
            raise StepError("bundle_adjustment", "frames outside the split or bad matrices", path)


BUNDLE_STEP = Step(
    name="bundle_adjustment",
    inputs=("track_params.pt", "keypoints.txt", "track_xys.npy", "track_valid.npy", "scenes.json"),
    outputs=("bundle_adjustment.pt", "transforms_train.json", "transforms_val.json",
             "previews/pose_curves.png"),
    run=_run,
    check=_check,
    settings=lambda cfg: __import__("nerfhead.config", fromlist=["to_dict"]).to_dict(
        __import__("preprocess.focal", fromlist=["section"]).section(cfg, "bundle", BundleConfig)),
    doc="two-stage bundle adjustment of keypoints and head poses; writes transforms_*.json",
)
