"""Face-model fit on synthetic ground truth: SFM loading, poses, mouth weighting, no smoothing
across cuts. (The focal estimate has its own tests: test_focal_estimate.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("eos")

from preprocess.face_model import load_face_model  # noqa: E402
from preprocess.focal import FaceFitConfig, fit_face  # noqa: E402
from preprocess.transforms import project, transform_points  # noqa: E402

FOCAL, SIZE = 1100.0, 512


@pytest.fixture(scope="module")
def model(weights_dir):
    return load_face_model(weights_dir / "sfm")


def _synthetic_landmarks(model, n, seed=0, noise=0.5, outliers=2, yaw=0.35, step=1 / 6.0,
                         yaw0=0.0, x0=0.0):
    """Mean SFM face under smooth known poses, projected at FOCAL, with pixel noise and a few
    gross outliers per frame. Contour landmarks sit on the model's contour polyline."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(seed)
    t = np.arange(n) * step
    euler = np.stack([0.1 * np.sin(2 * t), yaw0 + yaw * np.sin(1.3 * t + 0.5), 0.05 * np.sin(t)], -1)
    trans = np.stack([x0 + 0.01 * np.sin(t), 0.005 * np.cos(t), -0.65 + 0.02 * np.sin(0.7 * t)], -1)
    verts = model.mean.expand(n, -1, -1)
    cam = transform_points(verts, torch.tensor(euler).float(), torch.tensor(trans).float())
    uv = project(cam, FOCAL, SIZE / 2, SIZE / 2)
    lms = np.zeros((n, 68, 2), np.float32)
    lms[:, model.landmark_ibug.numpy()] = uv[:, model.landmark_vertices].numpy()
    ids = model.contour_vertex_ids()
    poly = project(model.contour_points(cam[:, ids], ids), FOCAL, SIZE / 2, SIZE / 2)
    for k, p in enumerate(range(4, 64, 8)):
        lms[:, k], lms[:, 9 + k] = poly[:, 0, p].numpy(), poly[:, 1, p].numpy()
    lms[:, 60], lms[:, 64] = lms[:, 48], lms[:, 54]
    lms += rng.normal(0, noise, lms.shape).astype(np.float32)
    for i in range(n):
        bad = rng.choice(68, outliers, replace=False)
        lms[i, bad] += rng.normal(0, 15, (outliers, 2)).astype(np.float32)
    return lms, euler, trans


def test_model_tensors_and_units(model):
    assert model.mean.shape == (3448, 3) and model.id_basis.shape == (3448, 3, 63)
    assert model.exp_basis.shape == (3448, 3, 6)
    assert len(model.landmark_ibug) == 50  # 68 minus 16 contour points and 2 inner mouth corners
    eye = (model.mean[177] - model.mean[610]).norm()  # outer eye corners, metres
    assert 0.08 < eye < 0.11
    assert abs(model.mean[114, 2] - 0.095) < 1e-4  # nose tip 95 mm in front of the head centre
    assert model.mean[33, 1] < 0 < model.mean[2842, 1]  # y up: chin below nose bridge


def test_poses_recovered_and_mouth_does_not_pull_pose(model):
    lms, euler, trans = _synthetic_landmarks(model, 40, seed=1, step=0.04)
    # speech: the jaw opens by up to 25 px on half the frames; the SFM cannot model it
    lower = [5, 6, 7, 8, 9, 10, 11] + list(range(55, 60)) + [65, 66, 67]
    opening = 25 * np.abs(np.sin(np.arange(40) / 3.0))
    lms[:, lower, 1] += opening[:, None]
    res = fit_face(model, lms, SIZE, SIZE, FaceFitConfig(), FOCAL)
    # a constant rotation offset is a change of world frame (harmless for the NeRF) and is what
    # landmarks cannot pin down (forehead slope trades against pitch): compare relative poses
    d_rot = np.degrees(res["euler"].numpy() - euler)
    rot_err = np.abs(d_rot - d_rot.mean(0)).mean(0)
    assert rot_err.max() < 0.75 and np.abs(d_rot.mean(0)).max() < 4.0, d_rot.mean(0)
    trans_err = 1000 * np.abs(res["trans"].numpy() - trans).mean(0)
    assert trans_err[:2].max() < 5 and trans_err[2] < 30, trans_err
    assert res["reproj_err"].mean() < 2.0


def test_no_pose_smoothing_across_a_cut(model):
    """Two shots joined: the head jumps 30 mm sideways and 8 degrees in yaw at frame 20. With
    the cut given, the frames beside it keep their own poses; smoothing across it (one shot)
    drags them towards each other."""
    lms_a, _, tr_a = _synthetic_landmarks(model, 20, seed=2, noise=0.3, outliers=0, yaw=0.05)
    lms_b, _, tr_b = _synthetic_landmarks(model, 20, seed=3, noise=0.3, outliers=0, yaw=0.05,
                                          yaw0=np.radians(8), x0=0.03)
    lms = np.concatenate([lms_a, lms_b])
    cfg = FaceFitConfig(smooth_weight=2.0)
    cut = fit_face(model, lms, SIZE, SIZE, cfg, FOCAL, shots=[[0, 20], [20, 40]])
    one = fit_face(model, lms, SIZE, SIZE, cfg, FOCAL, shots=None)
    truth = tr_b[0, 0] - tr_a[-1, 0]
    jump_cut = float(cut["trans"][20, 0] - cut["trans"][19, 0])
    jump_one = float(one["trans"][20, 0] - one["trans"][19, 0])
    assert abs(jump_cut - truth) < 0.004, (jump_cut, truth)  # the 30 mm jump is kept
    assert abs(jump_one - truth) > 2 * abs(jump_cut - truth), (jump_one, jump_cut, truth)


def test_fixed_landmark_shortcut_matches_the_general_projection(model):
    """With the jaw line weighted 0 only the fixed vertices are projected (5x cheaper); the
    general path (contour search, weight 1e-9) gives the same poses."""
    from preprocess.focal import fit_frames

    lms, _, _ = _synthetic_landmarks(model, 10, seed=5)
    idc = torch.zeros(model.num_id)
    fast = fit_frames(model, lms, idc, FOCAL, SIZE, SIZE, FaceFitConfig())
    slow = fit_frames(model, lms, idc, FOCAL, SIZE, SIZE, FaceFitConfig(weight_contour=1e-9))
    assert torch.allclose(fast["euler"], slow["euler"], atol=1e-4)
    assert torch.allclose(fast["trans"], slow["trans"], atol=1e-5)
