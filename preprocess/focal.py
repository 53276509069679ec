"""Face-model fit: focal-length search and a coarse per-frame head pose (step ``face_fit``).

For each focal candidate the Surrey Face Model (identity shared by all frames, expression,
rotation and translation per frame) is fitted to the 68 iBUG landmarks of a subset of frames;
all candidates are fitted at once as one batched Adam problem. The focal with the lowest
reprojection error on the rigid landmarks wins (a coarse grid, then a fine grid around the best).
Then every frame is fitted with that focal and a temporal smoothness term.

The SFM has no jaw or speech expressions, so mouth and jaw landmarks would drag the head pose
while the speaker talks: per-landmark weights (``landmark_weights``) keep eye corners, nose,
brows and the upper contour in charge of the pose and give the lips and jaw little say.
Poses follow ``preprocess.transforms.CAMERA_CONVENTION`` (OpenGL camera, metres).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

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
    focal_min: float = 700.0  #: smallest focal candidate, pixels at a 512-px crop (scaled with W);
    #: below ~40 degrees of crop field of view the head would sit < 0.4 m from the lens
    focal_max: float = 2600.0  #: largest focal candidate (same units)
    focal_coarse_step: float = 300.0  #: coarse grid spacing
    focal_fine_step: float = 100.0  #: fine grid spacing, over +-1 coarse step around the best
    search_frames: int = 16  #: frames (evenly spaced) used by the focal search
    search_iters: int = 100  #: Adam iterations per focal grid (then Levenberg-Marquardt)
    fit_iters: int = 200  #: Adam iterations of the all-frames fit
    lr: float = 0.02  #: Adam learning rate (cosine decay to 5%)
    refine_iters: int = 50  #: L-BFGS iterations after Adam in the all-frames fit (0 = none)
    lm_max_nfev: int = 30  #: Levenberg-Marquardt evaluations per focal candidate (search)
    huber_px: float = 2.0  #: pseudo-Huber scale of the landmark residual, pixels
    id_reg: float = 0.05  #: weight of the identity prior sum(id^2) (coefficients ~ N(0, 1))
    exp_reg: float = 0.5  #: weight of the expression prior mean(exp^2)
    smooth_weight: float = 0.1  #: temporal smoothness, per frame step in units of 0.01 rad / 5 mm
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
                  device: str = "cpu", progress: bool = False,
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

    steps = range(iters)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc="face fit (Adam)", unit="it", leave=False)
    for it in steps:  # Adam finds the basin (robust to the poor initial pose) ...
        for g, k in zip(opt.param_groups, params):
            g["lr"] = lrs[k] * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * it / max(iters, 1))))
        loss = objective(it >= warm).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if cfg.refine_iters > 0:  # ... L-BFGS goes further down it
        lbfgs = torch.optim.LBFGS(list(params.values()), lr=1.0, max_iter=cfg.refine_iters,
                                  history_size=20, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-9, tolerance_change=1e-12)

        def closure():
            lbfgs.zero_grad(set_to_none=True)
            loss = objective(True).sum()
            loss.backward()
            return loss

        lbfgs.step(closure)
    with torch.no_grad():
        uv, trans = current(True)
        err = ((uv - lm).norm(dim=-1) * rigid).sum(-1) / rigid.sum()
        final = objective(True)
    return LandmarkFit(focal=focal.cpu(), euler=params["euler"].detach().cpu(), trans=trans.cpu(),
                       id=params["id"].detach().cpu(), exp=params["exp"].detach().cpu(),
                       err=err.cpu(), proj=uv.cpu(), objective=final.cpu())


def focal_grid(lo: float, hi: float, step: float) -> np.ndarray:
    return np.arange(lo, hi + 0.5 * step, step)


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


def search_focal(model: FaceModel, lms: np.ndarray, height: int, width: int, cfg: FaceFitConfig,
                 device: str = "cpu") -> tuple[float, np.ndarray, np.ndarray]:
    """Best focal (pixels) for landmarks ``lms`` [F, 68, 2]; also all candidates and their
    scores. Every candidate is fitted by a short batched Adam run, then converged by
    ``refine_lm``; its score is the final robust cost (landmark loss + priors)."""
    scale = width / 512.0

    def scores(focals):
        rough = fit_landmarks(model, lms, focals, height, width, replace(cfg, refine_iters=0),
                              cfg.search_iters, False, device=device)
        return np.array([refine_lm(model, lms, fo, height, width, cfg, rough, b)[0]
                         for b, fo in enumerate(focals)])

    coarse = focal_grid(cfg.focal_min, cfg.focal_max, cfg.focal_coarse_step) * scale
    err_c = scores(coarse)
    best = coarse[int(np.argmin(err_c))]
    step = cfg.focal_coarse_step * scale
    fine = focal_grid(best - step, best + step, cfg.focal_fine_step * scale)
    fine = fine[(fine >= coarse[0]) & (fine <= coarse[-1]) & ~np.isin(fine, coarse)]
    err_f = scores(fine)
    cand = np.concatenate([coarse, fine])
    errs = np.concatenate([err_c, err_f])
    order = np.argsort(cand, kind="stable")
    return float(cand[int(np.argmin(errs))]), cand[order], errs[order]


def fit_face(model: FaceModel, lms: np.ndarray, height: int, width: int, cfg: FaceFitConfig,
             focal: float | None = None, device: str = "cpu", progress: bool = False) -> dict:
    """Focal search on a subset (unless ``focal`` is given), then the all-frames smooth fit."""
    n = len(lms)
    cand, errs = np.zeros(0), np.zeros(0)
    subset = np.unique(np.linspace(0, n - 1, min(cfg.search_frames, n)).round().astype(int))
    if focal is None:
        focal, cand, errs = search_focal(model, lms[subset], height, width, cfg, device)
    # identity from a converged (Levenberg-Marquardt) fit of the subset at the chosen focal: from
    # there the all-frames fit no longer slides along the identity/pitch valley
    rough = fit_landmarks(model, lms[subset], [focal], height, width, replace(cfg, refine_iters=0),
                          cfg.search_iters, False, device=device)
    _, sub_fit = refine_lm(model, lms[subset], focal, height, width, cfg, rough)
    fit = fit_landmarks(model, lms, [focal], height, width, cfg, cfg.fit_iters, True,
                        device=device, progress=progress, id_init=sub_fit.id[0])
    return {"focal": float(focal), "euler": fit.euler[0], "trans": fit.trans[0], "id": fit.id[0],
            "exp": fit.exp[0], "reproj_err": fit.err[0], "proj": fit.proj[0],
            "focal_candidates": torch.as_tensor(cand), "focal_errors": torch.as_tensor(errs)}


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


def _run(ctx: StepContext) -> dict:
    import time

    cfg = section(ctx.cfg, "face_fit", FaceFitConfig)
    try:
        model = load_face_model(cfg.sfm_path)
    except Exception as e:  # WeightsUnavailable / FaceModelError: report under this step
        raise StepError("face_fit", str(e)) from e
    lms = read_lms(ctx, "face_fit")
    height, width = image_size(ctx, "face_fit")
    t0 = time.time()
    res = fit_face(model, lms, height, width, cfg, device=pick_device(cfg.device), progress=True)
    out = {k: v for k, v in res.items() if k != "proj"}
    out.update({"camera_convention": CAMERA_CONVENTION, "h": height, "w": width,
                "landmark_weights": torch.as_tensor(landmark_weights(cfg))})
    with atomic_path(ctx.path("track_params.pt")) as tmp:
        torch.save(out, tmp)
    from preprocess.geometry_previews import face_fit_preview

    proj = res["proj"].numpy().copy()
    proj[:, [60, 64]] = np.nan  # inner mouth corners have no model vertex
    face_fit_preview(ctx.data_dir, lms, proj, res["reproj_err"].numpy(),
                     res["focal_candidates"].numpy(), res["focal_errors"].numpy(), res["focal"])
    err = res["reproj_err"].numpy()
    cand = res["focal_candidates"].numpy()
    at_edge = bool(len(cand)) and res["focal"] in (cand.min(), cand.max())
    if at_edge:  # the landmarks did not pin the focal down (little head rotation, biased points)
        ctx.log.warning("face_fit: focal %.0f px is at the edge of the search grid", res["focal"])
    return {"focal": res["focal"], "focal_at_grid_edge": at_edge, "reproj_err_px_mean": float(err.mean()),
            "reproj_err_px_max": float(err.max()), "seconds": round(time.time() - t0, 2)}


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


FACE_FIT_STEP = Step(
    name="face_fit",
    inputs=("ori_imgs", "manifest.json"),
    outputs=("track_params.pt", "previews/face_fit.png"),
    run=_run,
    check=_check,
    settings=lambda cfg: __import__("nerfhead.config", fromlist=["to_dict"]).to_dict(
        section(cfg, "face_fit", FaceFitConfig)),
    doc="focal-length search + per-frame head pose from a Surrey Face Model landmark fit",
)
