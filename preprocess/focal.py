"""Face-model fit (step ``face_fit``): the focal length, then a per-frame head pose.

1. **Focal**: ``preprocess.rigid_focal`` (why the old search clamped, and what pins the focal
   instead: one rigid upper-face shape seen in diverse head poses). Its error curve, interval
   and verdict go into ``track_params.pt``, the stats and ``previews/face_fit.png``. A focal the
   landmarks do not determine is not taken from the curve: the documented default
   (``focal_default_distance_m``: the focal that puts the head that far from the lens, kept
   inside the curve's interval) is used, with a warning. ``face_fit.focal`` overrides it all.
2. **Identity**: the Surrey Face Model (identity, expressions, poses) fitted to the 68 iBUG
   landmarks of ``identity_frames`` pose-diverse frames at that focal (batched Adam to find the
   basin, then Levenberg-Marquardt).
3. **Poses**: every frame's rotation, translation and expression with the identity fixed, a
   batched Gauss-Newton solve (12 unknowns per frame), then one sparse solve that adds the
   temporal smoothness term between consecutive frames of the same shot (``scenes.json``: no
   smoothing across cuts).

The SFM has no jaw or speech expressions, so mouth and jaw landmarks would drag the head pose
while the speaker talks: per-landmark weights (``landmark_weights``) keep eye corners, nose,
brows and the upper contour in charge of the pose and give the lips and jaw little say.
Poses follow ``preprocess.transforms.CAMERA_CONVENTION`` (OpenGL camera, metres).
"""

from __future__ import annotations

import json

import math
from pathlib import Path
from dataclasses import dataclass

import numpy as np
import torch

from preprocess.face_model import FaceModel, load_face_model
from preprocess.steps import Step, StepContext, StepError, atomic_path
from preprocess.transforms import CAMERA_CONVENTION, project, transform_points

EYE_CORNERS = (36, 45)  #: outer eye corners (0-based iBUG), used to guess the initial depth
RIGID_MIN_WEIGHT = 1.0  #: landmarks with at least this weight count in the reported error


@dataclass
class FaceFitConfig:
    """Settings of the ``face_fit`` step (config section ``face_fit``)."""

    sfm_path: str | None = None  #: folder of the Surrey Face Model; None = weights resolver
    device: str = "cpu"  #: torch device for the fit ("cpu", "cuda", "auto")
    #: the focal in pixels of the crop, given by the user (e.g. ``--set face_fit.focal=1200``):
    #: no search; None = estimate it (see ``preprocess.rigid_focal``)
    focal: float | None = None
    #: another dataset folder of the same person filmed by the same camera (e.g. the training
    #: clip, when this clip is held out for evaluation or gives poses to its model): its face
    #: shape (identity) and focal are used instead of fitted, the focal rescaled by the two
    #: clips' crop sizes, so both clips' head poses share one scale and `--audio-from` /
    #: `--pose-from` render this clip's frames where its head is. None: fit them here
    reference: str | None = None
    focal_min: float = 300.0  #: shortest focal tried, pixels at a 512-px crop (scaled with W)
    focal_max: float = 8000.0  #: longest focal tried (same units); ~ a flat, orthographic look
    focal_grid_points: int = 13  #: log-spaced focals over [focal_min, focal_max]
    focal_refine_points: int = 6  #: extra focals between the best grid focal's neighbours
    focal_frames: int = 24  #: frames chosen for head-pose diversity (farthest-point sampling)
    focal_points: int = 128  #: rigid MediaPipe upper-face points used (spread over the set)
    focal_shape_prior_mm: float = 5.0  #: how far the rigid shape may leave MediaPipe's mean face
    #: focals whose fit is worse than the best by at most this RMS (pixels at 512) are in the
    #: interval: below it, a landmark detector's pose-dependent bias could tip the balance
    #: (on the shared GRID clip, other frame selections moved the minimum that much)
    focal_tolerance_px: float = 0.1
    focal_max_ratio: float = 2.0  #: an interval wider than this (hi / lo) is "undetermined"
    #: undetermined focal: the one that puts the head this far from the lens (1 m: about
    #: 1,200-1,400 px for a 512 crop twice the face's size, the range SyncTalk reports), moved
    #: into the curve's interval if the landmarks rule it out
    focal_default_distance_m: float = 1.0
    identity_frames: int = 16  #: pose-diverse frames the face model's identity is fitted on
    search_iters: int = 100  #: Adam iterations that start the identity fit (then LM)
    lr: float = 0.02  #: Adam learning rate (cosine decay to 5%)
    lm_max_nfev: int = 30  #: Levenberg-Marquardt evaluations of the identity fit
    fit_iters: int = 12  #: Gauss-Newton iterations of the per-frame pose fit
    huber_px: float = 2.0  #: pseudo-Huber scale of the landmark residual, pixels
    id_reg: float = 0.05  #: weight of the identity prior sum(id^2) (coefficients ~ N(0, 1))
    exp_reg: float = 0.5  #: weight of the expression prior mean(exp^2)
    #: temporal smoothness within a shot, per frame step in units of 0.01 rad / 5 mm (0.5: on the
    #: 300-s GRID clip rotation jitter 0.032 deg/frame^2 within shots, 0.077 at 0.1, for 0.005 px
    #: more landmark error)
    smooth_weight: float = 0.5
    weight_rigid: float = 2.0  #: eye corners and nose
    weight_brow: float = 1.0  #: brows; eyelids get half of this (blinks)
    weight_mouth: float = 0.1  #: upper outer lip
    weight_jaw: float = 0.03  #: lower lip, inner lips (move with speech)
    weight_contour: float = 0.0  #: the 16 jaw-line points (0 = dropped, see landmark_weights)


def landmark_weights(cfg: FaceFitConfig) -> np.ndarray:
    """Pose weight of each of the 68 iBUG landmarks (0-based), see the module docstring.

    The jaw line (iBUG 1-8, 10-17) has no fixed SFM vertex; matching it to the nearest point
    of the model's contour polyline makes the loss non-smooth, and on synthetic faces that alone
    kept the optimiser from the true focal, so by default those points are dropped
    (``weight_contour = 0``); the chin (iBUG 9) has a vertex and keeps ``weight_jaw``."""
    w = np.full(68, cfg.weight_jaw, np.float32)
    w[[0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16]] = cfg.weight_contour
    w[17:27] = cfg.weight_brow  # brows
    w[27:36] = cfg.weight_rigid  # nose
    w[36:48] = 0.5 * cfg.weight_brow  # eyelids move with blinks
    w[[36, 39, 42, 45]] = cfg.weight_rigid  # eye corners
    w[48:55] = cfg.weight_mouth  # upper outer lip incl. corners
    return w


@dataclass
class LandmarkFit:
    """Result of ``fit_landmarks`` for B focal candidates and F frames."""

    focal: torch.Tensor  #: [B]
    euler: torch.Tensor  #: [B, F, 3] radians
    trans: torch.Tensor  #: [B, F, 3] metres
    id: torch.Tensor  #: [B, 63]
    exp: torch.Tensor  #: [B, F, 6]
    err: torch.Tensor  #: [B, F] mean pixel error over the rigid landmarks
    proj: torch.Tensor  #: [B, F, 68, 2] projected model landmarks (contour: nearest curve point)
    objective: torch.Tensor  #: [B] final value of the minimised (robust, regularised) loss


def _pseudo_huber(d: torch.Tensor, delta: float) -> torch.Tensor:
    return delta * delta * (torch.sqrt(1 + (d / delta) ** 2) - 1)


def project_landmarks(model: FaceModel, id_c, exp_c, euler, trans, focal, cx, cy, lms):
    """Projected model landmarks [..., 68, 2]. Contour points (no fixed vertex) take the
    nearest point of their side's projected contour polyline to the detected ``lms``
    [..., 68, 2]; the choice is made without gradient, then that point is differentiated."""
    cont_ids = model.contour_vertex_ids()
    verts = torch.cat([model.landmark_vertices, cont_ids])
    pts = transform_points(model.shape(id_c, exp_c, verts), euler, trans)
    nfix = len(model.landmark_vertices)
    fixed_uv = project(pts[..., :nfix, :], focal, cx, cy)
    cont = pts[..., nfix:, :]  # [..., C, 3]
    side = model.contour_side
    with torch.no_grad():
        poly = project(model.contour_points(cont, cont_ids), focal[..., None], cx, cy)
        target = lms[..., model.contour_ibug, None, :]  # [..., 16, 1, 2]
        nearest = (poly[..., side, :, :] - target).norm(dim=-1).argmin(-1)  # [..., 16]
    ia, ib = model.contour_local_index(cont_ids)

    def pick(table):  # [2, P] per side -> [..., 16] for the nearest polyline points
        return torch.gather(table[side].expand(*nearest.shape, table.shape[-1]), -1,
                            nearest[..., None])[..., 0]

    def verts_at(idx):
        return torch.gather(cont, -2, idx[..., None].expand(*idx.shape, 3))

    t = pick(model.contour_t.to(cont))[..., None]
    cont_uv = project(verts_at(pick(ia)) * (1 - t) + verts_at(pick(ib)) * t, focal, cx, cy)
    out = torch.zeros(*fixed_uv.shape[:-2], 68, 2, dtype=fixed_uv.dtype, device=fixed_uv.device)
    out[..., model.landmark_ibug, :] = fixed_uv
    out[..., model.contour_ibug, :] = cont_uv
    return out


def fit_landmarks(model: FaceModel, lms: np.ndarray, focals, height: int, width: int,
                  cfg: FaceFitConfig, iters: int, smooth: bool, init: LandmarkFit | None = None,
                  device: str = "cpu",
                  id_init: torch.Tensor | None = None) -> LandmarkFit:
    """Fit identity, expressions and poses of F frames' landmarks ``lms`` [F, 68, 2] for each
    focal in ``focals`` [B] at once. ``smooth`` adds the temporal term (consecutive frames).
    ``id_init`` [63] starts from a known identity (e.g. ``refine_lm`` on a subset)."""
    model = model.to(device)
    lm = torch.as_tensor(np.asarray(lms), dtype=torch.float32, device=device)
    focal = torch.as_tensor(np.asarray(focals, np.float32), device=device)
    nb, nf = len(focal), len(lm)
    cx, cy = width / 2.0, height / 2.0
    w = torch.as_tensor(landmark_weights(cfg), device=device)
    valid = torch.ones(68, dtype=torch.bool, device=device)
    valid[[60, 64]] = False  # inner mouth corners: no SFM vertex (see face_model)
    w = w * valid
    rigid = (w >= RIGID_MIN_WEIGHT).float()

    if init is None:  # depth from the outer-eye-corner distance, centre from eyes + nose
        eye_m = (model.mean[model.landmark_vertices[model.landmark_ibug == EYE_CORNERS[0]]] -
                 model.mean[model.landmark_vertices[model.landmark_ibug == EYE_CORNERS[1]]]).norm()
        eye_px = (lm[:, EYE_CORNERS[0]] - lm[:, EYE_CORNERS[1]]).norm(dim=-1).clamp_min(1.0)
        depth = focal[:, None] * eye_m / eye_px[None]  # [B, F]
        centre = lm[:, 27:48].mean(1)
        xy = torch.stack([(centre[:, 0] - cx), -(centre[:, 1] - cy)], -1)[None] / focal[:, None, None]
        euler = torch.zeros(nb, nf, 3, device=device)
        id_c = (torch.zeros(nb, model.num_id, device=device) if id_init is None
                else id_init.to(device).float().expand(nb, -1).clone())
        exp_c = torch.zeros(nb, nf, model.num_exp, device=device)
    else:
        depth = -init.trans[..., 2].to(device)
        xy = init.trans[..., :2].to(device) / depth[..., None]
        euler, id_c, exp_c = (init.euler.to(device).clone(), init.id.to(device).clone(),
                              init.exp.to(device).clone())
    params = {"euler": euler, "xy": xy, "logd": depth.log(), "id": id_c, "exp": exp_c}
    for p in params.values():
        p.requires_grad_(True)
    lrs = {"euler": cfg.lr, "xy": cfg.lr * 0.1, "logd": cfg.lr * 0.5, "id": cfg.lr * 5, "exp": cfg.lr * 2}
    opt = torch.optim.Adam([{"params": [params[k]], "lr": lrs[k]} for k in params])
    warm = 0 if init is not None else iters // 4  # pose only first: shape fits a posed face
    focal_b = focal[:, None, None, None]

    def current(shape_on: bool):
        if shape_on:
            idc = params["id"]
        else:  # warm-up: the given identity (or the mean face) is held
            idc = params["id"].detach() * (id_init is not None)
        exc = params["exp"] if shape_on else params["exp"].detach() * 0
        d = params["logd"].exp()
        trans = torch.cat([params["xy"] * d[..., None], -d[..., None]], -1)
        uv = project_landmarks(model, idc[:, None], exc, params["euler"], trans, focal_b, cx, cy, lm)
        return uv, trans

    def objective(shape_on: bool) -> torch.Tensor:
        """Per-candidate loss [B] (the candidates are independent problems)."""
        uv, trans = current(shape_on)
        dist = (uv - lm).norm(dim=-1)  # [B, F, 68]
        loss = (_pseudo_huber(dist, cfg.huber_px) * w).sum(-1).mean(-1) / w.sum()
        loss = loss + cfg.id_reg * params["id"].pow(2).sum(-1) / 68
        loss = loss + cfg.exp_reg * params["exp"].pow(2).mean(-1).mean(-1)
        if smooth and nf > 1:
            d_rot = (params["euler"][:, 1:] - params["euler"][:, :-1]) / 0.01
            d_tr = (trans[:, 1:] - trans[:, :-1]) / 0.005
            d_exp = params["exp"][:, 1:] - params["exp"][:, :-1]
            loss = loss + cfg.smooth_weight * (d_rot.pow(2).sum(-1) + d_tr.pow(2).sum(-1) +
                                               d_exp.pow(2).sum(-1)).mean(-1)
        return loss

    for it in range(iters):  # Adam finds the basin (robust to the poor initial pose); LM goes down it
        for g, k in zip(opt.param_groups, params):
            g["lr"] = lrs[k] * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * it / max(iters, 1))))
        loss = objective(it >= warm).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        uv, trans = current(True)
        err = ((uv - lm).norm(dim=-1) * rigid).sum(-1) / rigid.sum()
        final = objective(True)
    return LandmarkFit(focal=focal.cpu(), euler=params["euler"].detach().cpu(), trans=trans.cpu(),
                       id=params["id"].detach().cpu(), exp=params["exp"].detach().cpu(),
                       err=err.cpu(), proj=uv.cpu(), objective=final.cpu())


def refine_lm(model: FaceModel, lms: np.ndarray, focal: float, height: int, width: int,
              cfg: FaceFitConfig, init: LandmarkFit, index: int = 0) -> tuple[float, LandmarkFit]:
    """Converge one focal's fit with robust Levenberg-Marquardt (SciPy ``least_squares``, TRF,
    soft-L1 = pseudo-Huber at ``huber_px``), starting from candidate ``index`` of ``init``.

    First-order methods stall in the long, narrow valley where identity (face depth), pitch and
    distance trade off; that stalling differs between focals and drowned the sub-pixel focal
    signal on synthetic faces. The Jacobian is sparse (each frame's residuals depend on the
    shared identity and that frame's 12 parameters): finite differences in one batched call.
    Returns (final cost, fit for this focal)."""
    from scipy.optimize import least_squares

    nf = len(lms)
    lm = torch.as_tensor(np.asarray(lms), dtype=torch.float64)
    m64 = FaceModel(**{k: (v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
                       for k, v in model.to("cpu").__dict__.items()})
    sw = torch.as_tensor(np.sqrt(landmark_weights(cfg)), dtype=torch.float64)
    sw[[60, 64]] = 0.0
    n_id, n_exp = model.num_id, model.num_exp
    per = n_exp + 6
    f = torch.tensor(float(focal), dtype=torch.float64)

    def unpack(x):
        x = torch.from_numpy(x)
        frames = x[n_id:].view(nf, per)
        return x[:n_id], frames[:, :n_exp], frames[:, n_exp:n_exp + 3], frames[:, n_exp + 3:]

    def data_residuals(idc, exc, eul, trn):  # leading batch dims allowed
        with torch.no_grad():
            uv = project_landmarks(m64, idc[..., None, :], exc, eul, trn, f, width / 2.0,
                                   height / 2.0, lm)
        return (uv - lm) * sw[:, None]  # [..., F, 68, 2]

    def residuals(x):
        idc, exc, eul, trn = unpack(x)
        r = data_residuals(idc, exc, eul, trn).reshape(-1)
        return np.concatenate([r.numpy(), math.sqrt(cfg.id_reg * nf) * idc.numpy(),
                               math.sqrt(cfg.exp_reg) * exc.numpy().ravel()])

    # Jacobian by forward differences, all 63 + 12 perturbations in one batched evaluation:
    # an identity coefficient touches every frame, a per-frame parameter only its own frame.
    n_res, n_par = nf * 136 + n_id + nf * n_exp, n_id + nf * per
    rows_frame = torch.arange(nf * 136).view(nf, 136)
    id_rows = rows_frame.reshape(-1, 1).expand(-1, n_id).reshape(-1).numpy()
    id_cols = torch.arange(n_id).expand(nf * 136, -1).reshape(-1).numpy()
    pf_rows = rows_frame[:, :, None].expand(-1, -1, per).reshape(-1).numpy()
    pf_cols = (n_id + torch.arange(nf)[:, None, None] * per + torch.arange(per)).expand(-1, 136, -1)
    pf_cols = pf_cols.reshape(-1).numpy()
    prior_rows = np.r_[nf * 136 + np.arange(n_id), nf * 136 + n_id + np.arange(nf * n_exp)]
    prior_cols = np.r_[np.arange(n_id), (n_id + np.arange(nf)[:, None] * per + np.arange(n_exp)).ravel()]
    prior_vals = np.r_[np.full(n_id, math.sqrt(cfg.id_reg * nf)), np.full(nf * n_exp, math.sqrt(cfg.exp_reg))]
    rows, cols = np.r_[id_rows, pf_rows, prior_rows], np.r_[id_cols, pf_cols, prior_cols]

    def jacobian(x):
        from scipy.sparse import csr_matrix

        x = torch.from_numpy(x)
        eps = 1e-6 * torch.clamp(x.abs(), min=1.0)
        batch = x[None].repeat(1 + n_id + per, 1)
        idx = torch.arange(n_id)
        batch[1 + idx, idx] += eps[idx]
        for k in range(per):
            pcols = n_id + torch.arange(nf) * per + k
            batch[1 + n_id + k, pcols] += eps[pcols]
        frames = batch[:, n_id:].view(-1, nf, per)
        r = data_residuals(batch[:, :n_id], frames[..., :n_exp], frames[..., n_exp:n_exp + 3],
                           frames[..., n_exp + 3:]).reshape(len(batch), nf, 136)
        d_id = (r[1:1 + n_id] - r[0]) / eps[:n_id, None, None]  # [63, F, 136]
        d_pf = (r[1 + n_id:] - r[0]).permute(1, 2, 0) / eps[n_id:].view(nf, 1, per)  # [F, 136, per]
        vals = np.r_[d_id.permute(1, 2, 0).reshape(-1).numpy(), d_pf.reshape(-1).numpy(), prior_vals]
        return csr_matrix((vals, (rows, cols)), shape=(n_res, n_par))

    x0 = np.concatenate([init.id[index].double().numpy(), torch.cat(
        [init.exp[index], init.euler[index], init.trans[index]], -1).double().numpy().ravel()])
    sol = least_squares(residuals, x0, jac=jacobian, method="trf", tr_solver="lsmr",
                        loss="soft_l1", f_scale=cfg.huber_px, x_scale="jac", max_nfev=cfg.lm_max_nfev)
    idc, exc, eul, trn = (t.float() for t in unpack(sol.x))
    with torch.no_grad():
        uv = project_landmarks(model.to("cpu"), idc[None], exc, eul, trn, torch.tensor(float(focal)),
                               width / 2.0, height / 2.0, lm.float())
    rigid = torch.as_tensor(landmark_weights(cfg) >= RIGID_MIN_WEIGHT).float()
    err = ((uv - lm.float()).norm(dim=-1) * rigid).sum(-1) / rigid.sum()
    fit = LandmarkFit(focal=torch.tensor([float(focal)]), euler=eul[None], trans=trn[None],
                      id=idc[None], exp=exc[None], err=err[None], proj=uv[None],
                      objective=torch.tensor([sol.cost]))
    return float(sol.cost), fit


def choose_focal(lms478: np.ndarray, height: int, width: int, cfg: FaceFitConfig,
                 weights_dir=None) -> dict:
    """The focal to use and why: the user's (``cfg.focal``), the estimate (see
    ``preprocess.rigid_focal``) or, when the landmarks do not determine it, the default.
    Returns {"focal", "source" ("user", "estimated", "default"), "profile" (or None), "reason",
    "default_focal"}."""
    from preprocess import rigid_focal

    scale = width / 512.0
    if cfg.focal is not None:
        if not cfg.focal > 0:
            raise ValueError(f"face_fit.focal must be > 0 pixels, got {cfg.focal}")
        return {"focal": float(cfg.focal), "source": "user", "profile": None,
                "reason": "face_fit.focal given", "default_focal": None}
    from nerfhead.weights import resolve

    canonical = rigid_focal.load_canonical_face(resolve("face_landmarker", weights_dir=weights_dir))
    prof = rigid_focal.estimate_focal(
        lms478, canonical, width, height, (cfg.focal_min * scale, cfg.focal_max * scale),
        num_frames=cfg.focal_frames, max_points=cfg.focal_points,
        grid_points=cfg.focal_grid_points, refine_points=cfg.focal_refine_points,
        prior_mm=cfg.focal_shape_prior_mm, tolerance_px=cfg.focal_tolerance_px * scale,
        max_ratio=cfg.focal_max_ratio)
    # the default: the head at focal_default_distance_m; pixels per metre at the head's depth
    # do not depend on the focal (a longer lens sees the head farther), so take them from the fit
    default = float(np.clip(cfg.focal_default_distance_m * prof.px_per_m, *prof.interval))
    if prof.determined:
        return {"focal": prof.best, "source": "estimated", "profile": prof, "reason": prof.reason,
                "default_focal": default}
    return {"focal": default, "source": "default", "profile": prof, "default_focal": default,
            "reason": f"{prof.reason}; using the default {default:.0f} px (head at "
                      f"{cfg.focal_default_distance_m:g} m, see face_fit.focal_default_distance_m;"
                      f" set face_fit.focal to override)"}


def pose_diverse_frames(lms: np.ndarray, k: int) -> np.ndarray:
    """``k`` frames spread over head poses, judged from the 68 landmarks: yaw from the nose tip's
    offset between the outer eye corners, pitch from its height, roll from the eye line."""
    l_eye, r_eye, nose = lms[:, 36], lms[:, 45], lms[:, 30]
    span = np.linalg.norm(r_eye - l_eye, axis=-1).clip(1e-3)
    mid = (l_eye + r_eye) / 2
    d = r_eye - l_eye
    yaw = ((nose - mid) * d).sum(-1) / span ** 2
    pitch = ((nose - mid)[:, 1] * d[:, 0] - (nose - mid)[:, 0] * d[:, 1]) / span ** 2
    roll = np.arctan2(d[:, 1], d[:, 0])
    from preprocess.rigid_focal import diverse_frames

    return diverse_frames(np.degrees(np.stack([pitch, yaw, roll], -1)), k)


def _frame_residuals(model, id_c, x, lm, sqrt_w, focal, cx, cy, exp_sqrt, fixed=None):
    """Weighted residuals [..., F, 68*2 + E] of per-frame parameters x [..., F, 12]
    (euler 3, trans 3, expression E). ``fixed`` = (identity shape [L, 3], expression basis
    [L, 3, E]) of the fixed landmark vertices: with the jaw line weighted 0 (the default) only
    those are projected, skipping the contour search that made up most of the cost."""
    ne = model.num_exp
    if fixed is None:
        uv = project_landmarks(model, id_c, x[..., 6:6 + ne], x[..., :3], x[..., 3:6],
                               torch.as_tensor(focal, dtype=x.dtype), cx, cy, lm)
    else:
        base, exb = fixed
        verts = base + torch.einsum("vck,...k->...vc", exb, x[..., 6:6 + ne])
        fixed_uv = project(transform_points(verts, x[..., :3], x[..., 3:6]), focal, cx, cy)
        uv = lm.expand(*fixed_uv.shape[:-2], 68, 2).clone()  # unweighted points: no residual
        uv[..., model.landmark_ibug, :] = fixed_uv
    r = ((uv - lm) * sqrt_w[:, None]).flatten(-2)
    return torch.cat([r, exp_sqrt * x[..., 6:6 + ne]], -1)


def fit_frames(model: FaceModel, lms: np.ndarray, id_coeff: torch.Tensor, focal: float,
               height: int, width: int, cfg: FaceFitConfig, shots: list | None = None,
               chunk: int = 1024, progress=None) -> dict:
    """Per-frame pose and expression [F] with a fixed identity: robust Gauss-Newton per frame
    (forward-difference Jacobians, all frames batched), then one sparse solve adding the
    temporal smoothness between consecutive frames of each shot (``shots``: [start, end)
    ranges; None = one shot). Returns euler, trans, exp [F, .], reproj_err [F], proj."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import spsolve

    dt = torch.float64
    m64 = FaceModel(**{k: (v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
                       for k, v in model.to("cpu").__dict__.items()})
    lm_all = torch.as_tensor(np.asarray(lms), dtype=dt)
    nf, ne = len(lm_all), model.num_exp
    npar = 6 + ne
    w = landmark_weights(cfg).astype(np.float64)
    w[[60, 64]] = 0.0  # inner mouth corners: no SFM vertex
    wsum = float(w.sum())
    sqrt_w = torch.as_tensor(np.sqrt(w), dtype=dt)
    exp_sqrt = math.sqrt(cfg.exp_reg * wsum / ne)
    idc = id_coeff.to(dt)[None]
    cx, cy = width / 2.0, height / 2.0
    fixed = None
    if cfg.weight_contour == 0:  # the identity is fixed: its landmark vertices once
        lv = m64.landmark_vertices
        fixed = (m64.mean[lv] + torch.einsum("vck,k->vc", m64.id_basis[lv], idc[0]),
                 m64.exp_basis[lv])
    # start: frontal, depth from the outer-eye-corner distance, centre from eyes + nose
    eye_m = float((m64.mean[m64.landmark_vertices[m64.landmark_ibug == EYE_CORNERS[0]]] -
                   m64.mean[m64.landmark_vertices[m64.landmark_ibug == EYE_CORNERS[1]]]).norm())
    eye_px = (lm_all[:, EYE_CORNERS[0]] - lm_all[:, EYE_CORNERS[1]]).norm(dim=-1).clamp_min(1.0)
    depth = focal * eye_m / eye_px
    centre = lm_all[:, 27:48].mean(1)
    x = torch.zeros(nf, npar, dtype=dt)
    x[:, 3] = (centre[:, 0] - cx) / focal * depth
    x[:, 4] = -(centre[:, 1] - cy) / focal * depth
    x[:, 5] = -depth
    eps = torch.tensor([1e-5] * 3 + [1e-6] * 3 + [1e-4] * ne, dtype=dt)
    hess = torch.zeros(nf, npar, npar, dtype=dt)
    for a in range(0, nf, chunk):
        b = min(a + chunk, nf)
        lm, xc = lm_all[a:b], x[a:b].clone()
        mu = torch.full((b - a,), 1e-3, dtype=dt)

        def res(xx):
            return _frame_residuals(m64, idc, xx, lm, sqrt_w, focal, cx, cy, exp_sqrt, fixed)

        for _ in range(cfg.fit_iters):
            r0 = res(xc)  # [F, M]
            d = (r0[:, :136].view(-1, 68, 2) / sqrt_w.clamp_min(1e-12)[:, None]).norm(dim=-1)
            irls = (1 + (d / cfg.huber_px) ** 2) ** -0.5  # pseudo-Huber weights
            rw = torch.cat([irls.repeat_interleave(2, -1), torch.ones(b - a, ne, dtype=dt)], -1)
            xp = xc[None] + torch.diag(eps)[:, None]  # [12, F, 12]
            jac = ((res(xp) - r0[None]) / eps[:, None, None]).permute(1, 2, 0)  # [F, M, 12]
            jtw = jac.transpose(1, 2) * rw[:, None]
            h, g = jtw @ jac, (jtw @ r0[..., None])[..., 0]
            cost0 = (rw * r0 * r0).sum(-1)
            step = -torch.linalg.solve(h + torch.diag_embed(mu[:, None] * torch.diagonal(h, dim1=-2, dim2=-1) + 1e-9), g)
            c1 = (rw * res(xc + step).pow(2)).sum(-1)
            ok = c1 < cost0
            xc = torch.where(ok[:, None], xc + step, xc)
            mu = torch.where(ok, mu / 3, mu * 4)
        r0 = res(xc)
        d = (r0[:, :136].view(-1, 68, 2) / sqrt_w.clamp_min(1e-12)[:, None]).norm(dim=-1)
        irls = (1 + (d / cfg.huber_px) ** 2) ** -0.5
        rw = torch.cat([irls.repeat_interleave(2, -1), torch.ones(b - a, ne, dtype=dt)], -1)
        xp = xc[None] + torch.diag(eps)[:, None]
        jac = ((res(xp) - r0[None]) / eps[:, None, None]).permute(1, 2, 0)
        hess[a:b] = (jac.transpose(1, 2) * rw[:, None]) @ jac
        x[a:b] = xc
        if progress is not None:
            progress(b - a)
    if cfg.smooth_weight > 0 and nf > 1:  # one Gauss-Newton step of the coupled problem
        scale = torch.tensor([1 / 0.01] * 3 + [1 / 0.005] * 3 + [1.0] * ne, dtype=dt) ** 2
        lam = cfg.smooth_weight * wsum * scale.numpy()
        starts = sorted({int(s[0]) for s in (shots or [[0, nf]])} | {0})
        linked = np.ones(nf - 1, bool)  # pair (t, t+1) smoothed unless t+1 starts a shot
        linked[[s - 1 for s in starts if 0 < s < nf]] = False
        rows, cols, vals = [], [], []
        base = np.arange(npar)
        hn = hess.numpy()
        for t in range(nf):  # H_t blocks
            rr, cc = np.meshgrid(t * npar + base, t * npar + base, indexing="ij")
            rows.append(rr.ravel()), cols.append(cc.ravel()), vals.append(hn[t].ravel())
        deg = np.zeros(nf)
        deg[:-1] += linked
        deg[1:] += linked
        diag_idx = np.arange(nf * npar)
        rows.append(diag_idx), cols.append(diag_idx), vals.append((deg[:, None] * lam[None]).ravel())
        pairs = np.flatnonzero(linked)
        for off in (0, 1):  # -lam between linked neighbours, both orders
            r_ = (pairs[:, None] + off) * npar + base
            c_ = (pairs[:, None] + 1 - off) * npar + base
            rows.append(r_.ravel()), cols.append(c_.ravel()), vals.append(np.tile(-lam, len(pairs)))
        big = coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                         shape=(nf * npar, nf * npar)).tocsc()
        rhs = (hess @ x[..., None])[..., 0].numpy().ravel()  # H x_hat: the smoothed x stays near it
        x = torch.as_tensor(spsolve(big, rhs), dtype=dt).view(nf, npar)
    with torch.no_grad():
        uv = project_landmarks(m64, idc, x[:, 6:], x[:, :3], x[:, 3:6], torch.tensor(focal, dtype=dt),
                               cx, cy, lm_all)
    rigid = torch.as_tensor(landmark_weights(cfg) >= RIGID_MIN_WEIGHT, dtype=dt)
    err = ((uv - lm_all).norm(dim=-1) * rigid).sum(-1) / rigid.sum()
    return {"euler": x[:, :3].float(), "trans": x[:, 3:6].float(), "exp": x[:, 6:].float(),
            "reproj_err": err.float(), "proj": uv.float()}


def fit_face(model: FaceModel, lms: np.ndarray, height: int, width: int, cfg: FaceFitConfig,
             focal: float, device: str = "cpu", shots: list | None = None, progress=None) -> dict:
    """Identity from ``identity_frames`` pose-diverse frames at ``focal``, then every frame's
    pose (``fit_frames``). ``lms`` [F, 68, 2]."""
    subset = pose_diverse_frames(lms, min(cfg.identity_frames, len(lms)))
    # a short Adam run finds the basin; Levenberg-Marquardt converges the identity from there
    # (first-order methods stall in the valley where face depth, pitch and distance trade off)
    rough = fit_landmarks(model, lms[subset], [focal], height, width, cfg, cfg.search_iters,
                          False, device=device)
    _, sub_fit = refine_lm(model, lms[subset], focal, height, width, cfg, rough)
    fit = fit_frames(model, lms, sub_fit.id[0], focal, height, width, cfg, shots, progress=progress)
    return {"focal": float(focal), "id": sub_fit.id[0], "identity_frames": torch.as_tensor(subset),
            **fit}

# ----------------------------------------------------------------------------- the step

def section(cfg, name: str, cls):
    """The step's own config section from the preprocess config (defaults when absent)."""
    sub = getattr(cfg, name, None) if cfg is not None else None
    if sub is None and isinstance(cfg, dict):
        sub = cfg.get(name)
    if sub is None:
        return cls()
    if isinstance(sub, dict):
        from nerfhead.config import from_dict

        return from_dict(cls, sub, name)
    return sub


def pick_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def read_lms(ctx: StepContext, step: str) -> np.ndarray:
    """All frames' 68 iBUG landmarks [N, 68, 2] from ``ori_imgs/<i>.lms``."""
    out = []
    for i in range(ctx.num_frames()):
        path = ctx.path(f"ori_imgs/{i}.lms")
        try:
            pts = np.loadtxt(path, dtype=np.float32, ndmin=2)
        except (OSError, ValueError) as e:
            raise StepError(step, f"cannot read landmarks: {e}", path) from e
        if pts.shape != (68, 2) or not np.isfinite(pts).all():
            raise StepError(step, f"expected 68 finite 'x y' rows, got shape {pts.shape}", path)
        out.append(pts)
    return np.stack(out)


def image_size(ctx: StepContext, step: str) -> tuple[int, int]:
    import cv2

    path = ctx.path("ori_imgs/0.jpg")
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise StepError(step, "cannot read the first frame", path)
    return img.shape[0], img.shape[1]


def read_landmarks478(ctx: StepContext, step: str) -> np.ndarray:
    """``landmarks.npy`` [N, 478, 3] (pixels), checked against the frame count."""
    path, n = ctx.path("landmarks.npy"), ctx.num_frames()
    try:
        arr = np.load(path)
    except (OSError, ValueError) as e:
        raise StepError(step, f"cannot read MediaPipe landmarks ({e}); run the landmarks step "
                              "first", path) from e
    if arr.shape[:2] != (n, 478) or not np.isfinite(arr).all():
        raise StepError(step, f"expected finite [{n}, 478, 3] landmarks, got {arr.shape}", path)
    return arr


def _run(ctx: StepContext) -> dict:
    from preprocess.parallel import torch_threads

    with torch_threads(1):  # small tensors: see torch_threads
        return _run_fit(ctx)


def _run_fit(ctx: StepContext) -> dict:
    import time

    from preprocess.progress import step_progress
    from preprocess.scenes import read_shots

    cfg = section(ctx.cfg, "face_fit", FaceFitConfig)
    try:
        model = load_face_model(cfg.sfm_path)
    except Exception as e:  # WeightsUnavailable / FaceModelError: report under this step
        raise StepError("face_fit", str(e)) from e
    lms = read_lms(ctx, "face_fit")
    lms478 = read_landmarks478(ctx, "face_fit")
    height, width = image_size(ctx, "face_fit")
    shots = read_shots(ctx)
    t0 = time.time()
    shot_frames = [s["frames"] for s in shots] if shots else None
    with step_progress("face_fit", len(lms)) as bar:
        if cfg.reference:
            choice, identity = reference_fit(ctx, cfg.reference, width)
            ctx.log.info("face_fit: %s", choice["reason"])
            t_focal = time.time() - t0
            res = fit_frames(model, lms, identity, choice["focal"], height, width, cfg, shot_frames,
                             progress=bar)
            res.update({"focal": choice["focal"], "id": identity,
                        "identity_frames": torch.zeros(0, dtype=torch.long)})
        else:
            try:
                choice = choose_focal(lms478, height, width, cfg,
                                      getattr(ctx.cfg, "weights_dir", None))
            except ValueError as e:
                raise StepError("face_fit", str(e)) from e
            t_focal = time.time() - t0
            if choice["source"] == "default":
                ctx.log.warning("face_fit: %s", choice["reason"])
            res = fit_face(model, lms, height, width, cfg, choice["focal"], pick_device(cfg.device),
                           shots=shot_frames, progress=bar)
    prof = choice["profile"]
    focal_info = {"focal_source": choice["source"], "focal_reason": choice["reason"],
                  "focal_default": choice["default_focal"]}
    if prof is not None:
        focal_info.update({"focal_estimate": prof.best, "focal_interval": list(prof.interval),
                           "focal_determined": prof.determined,
                           "focal_pose_spread_deg": prof.pose_spread_deg,
                           "focal_tolerance_px": prof.tolerance_px})
    out = {k: v for k, v in res.items() if k != "proj"}
    out.update(focal_info)
    out.update({"camera_convention": CAMERA_CONVENTION, "h": height, "w": width,
                "landmark_weights": torch.as_tensor(landmark_weights(cfg))})
    if prof is not None:
        out.update({"focal_curve_focals": torch.as_tensor(prof.focals),
                    "focal_curve_excess_px": torch.as_tensor(prof.excess_px),
                    "focal_curve_rms_px": torch.as_tensor(prof.rms_px),
                    "focal_frames": torch.as_tensor(prof.frames)})
    with atomic_path(ctx.path("track_params.pt")) as tmp:
        torch.save(out, tmp)
    from preprocess.geometry_previews import face_fit_preview

    proj = res["proj"].numpy().copy()
    proj[:, [60, 64]] = np.nan  # inner mouth corners have no model vertex
    face_fit_preview(ctx.data_dir, lms, proj, res["reproj_err"].numpy(), res["focal"], choice)
    err = res["reproj_err"].numpy()
    return {"focal": res["focal"], **focal_info, "reproj_err_px_mean": float(err.mean()),
            "reproj_err_px_max": float(err.max()), "focal_seconds": round(t_focal, 2),
            "shots": len(shots) if shots else 1, "seconds": round(time.time() - t0, 2)}


def _crop_side(data_dir: Path) -> float:
    """The source pixels one side of a dataset's crop covers (manifest, decode step)."""
    m = json.loads((Path(data_dir) / "manifest.json").read_text())
    return float(m["steps"]["decode"]["stats"]["crop_box"][2])


def reference_fit(ctx: StepContext, reference: str, width: int) -> tuple[dict, torch.Tensor]:
    """(focal choice, identity [63]) taken from another dataset of the same person and camera
    (``face_fit.reference``): its identity as is, its focal times its crop side over this
    clip's (a focal in crop pixels scales with the crop), and over the widths if they differ."""
    ref = Path(reference).expanduser()
    path = ref / "track_params.pt"
    try:
        tp = torch.load(path, weights_only=True)
        ref_side, side = _crop_side(ref), _crop_side(ctx.data_dir)
    except (OSError, KeyError, ValueError, RuntimeError) as e:
        raise StepError("face_fit", f"face_fit.reference {ref}: cannot read its face fit and crop "
                                    f"({e}); give a dataset folder preprocessed from the same "
                                    "camera (its face_fit step done)", path) from e
    focal = float(tp["focal"]) * ref_side / side * width / float(tp["w"])
    reason = (f"face shape and focal from {ref}: {float(tp['focal']):.0f} px at its "
              f"{ref_side:.0f}-px crop = {focal:.0f} px at this clip's {side:.0f}-px crop")
    choice = {"focal": focal, "source": "reference", "profile": None, "reason": reason,
              "default_focal": focal}
    return choice, tp["id"].float()


def _check(ctx: StepContext) -> None:
    path = ctx.path("track_params.pt")
    try:
        tp = torch.load(path, weights_only=True)
    except Exception as e:
        raise StepError("face_fit", f"unreadable: {e}", path) from e
    n = ctx.num_frames()
    for key, shape in (("euler", (n, 3)), ("trans", (n, 3)), ("exp", (n, tp["exp"].shape[-1]))):
        if tuple(tp[key].shape) != shape or not torch.isfinite(tp[key]).all():
            raise StepError("face_fit", f"'{key}' should be finite with shape {shape}", path)
    if not (tp["focal"] > 0):
        raise StepError("face_fit", f"bad focal {tp['focal']}", path)


def _settings(cfg) -> dict:
    """The step's settings for its fingerprint; with ``reference``, also a stamp of that
    dataset's face fit and crop, so a redone reference redoes this clip's fit."""
    import hashlib

    from nerfhead.config import to_dict

    c = section(cfg, "face_fit", FaceFitConfig)
    out = to_dict(c)
    if c.reference:
        ref = Path(c.reference).expanduser()
        try:
            stamp = hashlib.sha256((ref / "track_params.pt").read_bytes()).hexdigest()[:16]
            out["reference_fit"] = {"track_params": stamp, "crop_side": _crop_side(ref)}
        except (OSError, KeyError, ValueError):
            out["reference_fit"] = "unreadable"  # the step itself says why
    return out


FACE_FIT_STEP = Step(
    name="face_fit",
    inputs=("ori_imgs", "landmarks.npy", "scenes.json", "manifest.json"),
    outputs=("track_params.pt", "previews/face_fit.png"),
    run=_run,
    check=_check,
    settings=_settings,
    doc="focal length (rigid upper face over diverse poses) + per-frame head pose (Surrey Face Model)",
)
