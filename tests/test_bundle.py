"""Bundle adjustment on synthetic ground truth, transforms conventions, and the real-clip run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from preprocess.bundle import (BundleConfig, init_points, smooth_triples, stage1_points,
                               stage2_joint)
from preprocess.transforms import (c2w_to_pose, euler_to_matrix, pose_jitter, pose_to_c2w,
                                   project, split_frames, transform_points, write_transforms)

FOCAL, SIZE = 1100.0, 512


def _smooth_poses(n: int):
    t = np.arange(n) / 25.0
    euler = np.stack([0.08 * np.sin(1.9 * t), 0.25 * np.sin(1.1 * t + 0.3), 0.04 * np.sin(0.7 * t)], -1)
    trans = np.stack([0.01 * np.sin(0.8 * t), 0.006 * np.cos(1.2 * t), -0.62 + 0.02 * np.sin(0.5 * t)], -1)
    return torch.tensor(euler, dtype=torch.float32), torch.tensor(trans, dtype=torch.float32)


def _synthetic_tracks(seed=0, n=60, k=60):
    """Points on the front of a head-sized ellipsoid, projected under smooth poses, with
    0.3 px noise, 2% gross outliers and 5% missing samples."""
    g = torch.Generator().manual_seed(seed)
    az = (torch.rand(k, generator=g) - 0.5) * 2.2
    el = (torch.rand(k, generator=g) - 0.3) * 1.2
    pts = torch.stack([0.075 * torch.sin(az) * torch.cos(el), 0.1 * torch.sin(el),
                       0.09 * torch.cos(az) * torch.cos(el)], -1)
    euler, trans = _smooth_poses(n)
    uv = project(transform_points(pts[None], euler, trans), FOCAL, SIZE / 2, SIZE / 2)
    tracks = uv + 0.3 * torch.randn(uv.shape, generator=g)
    outlier = torch.rand(n, k, generator=g) < 0.02
    tracks[outlier] += 20 * torch.randn(int(outlier.sum()), 2, generator=g)
    valid = (torch.rand(n, k, generator=g) > 0.05).float()
    return pts, euler, trans, tracks, valid


def _pose_errors(euler, trans, euler_gt, trans_gt):
    rel = euler_to_matrix(euler) @ euler_to_matrix(euler_gt).transpose(-1, -2)
    ang = torch.arccos(((rel.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1))
    return float(torch.rad2deg(ang).mean()), float(1000 * (trans - trans_gt).norm(dim=-1).mean())


def test_bundle_adjustment_reduces_pose_error_of_perturbed_init():
    torch.set_num_threads(1)  # tiny tensors: threads only add contention
    pts, euler_gt, trans_gt, tracks, valid = _synthetic_tracks()
    g = torch.Generator().manual_seed(1)
    euler0 = euler_gt + torch.deg2rad(torch.tensor(1.5)) * torch.randn(euler_gt.shape, generator=g)
    trans0 = trans_gt + 0.006 * torch.randn(trans_gt.shape, generator=g)
    pts0 = pts + 0.008 * torch.randn(pts.shape, generator=g)
    cfg = BundleConfig(stage1_iters=150, stage2_iters=400)
    c = SIZE / 2
    pts1, loss1 = stage1_points(pts0, euler0, trans0, tracks, valid, FOCAL, c, c, cfg)
    assert loss1[-1] < loss1[0]
    pts2, euler2, trans2, loss2 = stage2_joint(pts1, euler0, trans0, tracks, valid, FOCAL, c, c, cfg)
    rot_before, tr_before = _pose_errors(euler0, trans0, euler_gt, trans_gt)
    rot_after, tr_after = _pose_errors(euler2, trans2, euler_gt, trans_gt)
    assert rot_after < 0.4 * rot_before, (rot_before, rot_after)
    assert tr_after < 0.5 * tr_before, (tr_before, tr_after)
    assert pose_jitter(euler2, trans2)["rot_deg"] < 0.3 * pose_jitter(euler0, trans0)["rot_deg"]


def test_no_smoothing_across_a_cut():
    """A second shot starts at frame 30 with the head 25 mm to the side: with the cut given the
    jump survives bundle adjustment; smoothed across, the frames beside it are pulled together."""
    torch.set_num_threads(1)
    pts, euler_gt, trans_gt, tracks, valid = _synthetic_tracks(seed=3)
    trans_gt = trans_gt.clone()
    trans_gt[30:, 0] += 0.025
    tracks = project(transform_points(pts[None], euler_gt, trans_gt), FOCAL, SIZE / 2, SIZE / 2)
    valid = torch.ones(tracks.shape[:2])
    g = torch.Generator().manual_seed(2)
    trans0 = trans_gt + 0.004 * torch.randn(trans_gt.shape, generator=g)
    cfg = BundleConfig(stage1_iters=50, stage2_iters=300, smooth_weight=5.0)
    assert smooth_triples(6, [3]).tolist() == [1, 0, 0, 1]  # triples centred on 2 and 3 broken
    c = SIZE / 2
    jumps = {}
    for name, cuts in (("cut", [30]), ("none", [])):
        _, _, tr, _ = stage2_joint(pts, euler_gt, trans0, tracks, valid, FOCAL, c, c, cfg, cuts=cuts)
        jumps[name] = float(tr[30, 0] - tr[29, 0])
    truth = float(trans_gt[30, 0] - trans_gt[29, 0])
    assert abs(jumps["cut"] - truth) < 0.002, jumps
    assert abs(jumps["none"] - truth) > 3 * abs(jumps["cut"] - truth), (jumps, truth)


def test_init_points_back_projects_onto_the_mesh():
    # a square facing the camera at 0.6 m (two triangles), reference pose = identity
    verts = torch.tensor([[-0.1, -0.1, -0.6], [0.1, -0.1, -0.6], [0.1, 0.1, -0.6], [-0.1, 0.1, -0.6]])
    tris = torch.tensor([[0, 1, 2], [0, 2, 3]])
    kp = torch.tensor([[256.0, 256.0], [300.0, 200.0], [5.0, 5.0]])  # the last one misses
    pts = init_points(verts, tris, kp, torch.zeros(3), torch.zeros(3), FOCAL, 256.0, 256.0)
    assert torch.allclose(pts[:, 2], torch.full((3,), -0.6), atol=1e-5)
    assert torch.allclose(pts[1, :2], torch.tensor([44 * 0.6 / FOCAL, 56 * 0.6 / FOCAL]), atol=1e-6)
    back = project(pts[None], FOCAL, 256.0, 256.0)[0]
    assert torch.allclose(back, kp, atol=1e-3)


def test_transforms_round_trip_and_trainer_convention():
    euler, trans = _smooth_poses(20)
    c2w = pose_to_c2w(euler.numpy(), trans.numpy())
    e2, t2 = c2w_to_pose(c2w)
    assert np.allclose(e2, euler.numpy(), atol=1e-6) and np.allclose(t2, trans.numpy(), atol=1e-6)
    assert np.allclose(pose_to_c2w(np.zeros((1, 3)), [[0, 0, -0.7]])[0][:3, 3], [0, 0, 0.7])
    # a ray cast the trainer's way (nerf_matrix_to_ngp, OpenCV directions) hits the point we project
    p = torch.tensor([[0.03, -0.02, 0.05]])
    uv = project(transform_points(p[None], euler[:1], trans[:1]), FOCAL, 256.0, 256.0)[0, 0].numpy()
    m = c2w[0]
    s = 4.0
    ngp = np.array([[m[1, 0], -m[1, 1], -m[1, 2], m[1, 3] * s], [m[2, 0], -m[2, 1], -m[2, 2], m[2, 3] * s],
                    [m[0, 0], -m[0, 1], -m[0, 2], m[0, 3] * s]])
    u, v = uv - 0.5  # the trainer's pixel index whose centre is uv
    d = ngp[:, :3] @ np.array([(u + 0.5 - 256) / FOCAL, (v + 0.5 - 256) / FOCAL, 1.0])
    target = s * p.numpy()[0][[1, 2, 0]]  # same permutation and scale applied to the world point
    off = target - ngp[:, 3]
    assert np.linalg.norm(np.cross(d / np.linalg.norm(d), off)) < 1e-6 and off @ d > 0


def test_write_transforms_split_and_fields(tmp_path):
    n = 100
    train, val = split_frames(n)
    assert len(val) == n // 11 == 9 and val[0] == 91 and train[-1] == 90
    keep = np.ones(n, bool)
    keep[[5, 95]] = False
    c2w = pose_to_c2w(*(x.numpy() for x in _smooth_poses(n)))
    counts = write_transforms(tmp_path, c2w, 1234.5, 512, 512, keep)
    assert counts == {"train": 90, "val": 8}
    doc = json.loads((tmp_path / "transforms_val.json").read_text())
    assert doc["focal_len"] == 1234.5 and doc["cx"] == 256.0 and doc["cy"] == 256.0
    assert doc["h"] == 512 and doc["w"] == 512
    assert [f["img_id"] for f in doc["frames"]] == [91, 92, 93, 94, 96, 97, 98, 99]
    assert doc["frames"][0]["aud_id"] == 91
    assert np.allclose(doc["frames"][0]["transform_matrix"], c2w[91])
    assert not list(tmp_path.glob(".transforms*"))  # no temporary files left behind


# MediaPipe 478-mesh indices standing in for the 68 iBUG points (test fixture only: the dataset's
# landmarks step writes the real ori_imgs/<i>.lms).
MP_TO_IBUG68 = [127, 234, 132, 58, 172, 150, 149, 148, 152, 377, 378, 379, 397, 288, 361, 454, 356,
                70, 63, 105, 66, 107, 336, 296, 334, 293, 300, 168, 197, 5, 4, 75, 97, 2, 326, 305,
                33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,
                61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181, 78, 82, 13, 312, 308, 317, 14, 87]


def _grid_dataset(video, out, weights_dir, seconds=3.0, size=512):
    """First seconds of GRID: square face crop scaled to ``size``, MediaPipe landmarks -> .lms."""
    import subprocess

    import cv2
    import imageio_ffmpeg
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    raw = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(video), "-t",
                          str(seconds), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         capture_output=True, check=True).stdout
    frames = np.frombuffer(raw, np.uint8).reshape(-1, 288, 360, 3)
    opts = vision.FaceLandmarkerOptions(
        base_options=BaseOptions(model_asset_path=str(weights_dir / "face_landmarker.task")),
        running_mode=vision.RunningMode.IMAGE, num_faces=1)
    det = vision.FaceLandmarker.create_from_options(opts)
    first = det.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(frames[0])))
    pts = np.array([[p.x * 360, p.y * 288] for p in first.face_landmarks[0]])
    box = 280
    x0 = int(np.clip(pts[:, 0].mean() - box / 2, 0, 360 - box))
    y0 = int(np.clip(pts[:, 1].mean() - box / 2 - 10, 0, 288 - box))
    (out / "ori_imgs").mkdir(parents=True)
    mesh = []
    for i, f in enumerate(frames):
        crop = cv2.resize(f[y0:y0 + box, x0:x0 + box], (size, size), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(out / "ori_imgs" / f"{i}.jpg"), crop[:, :, ::-1])
        res = det.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(crop)))
        lm = np.array([[p.x * size, p.y * size, p.z * size] for p in res.face_landmarks[0]], np.float32)
        np.savetxt(out / "ori_imgs" / f"{i}.lms", lm[MP_TO_IBUG68, :2], "%.2f")
        mesh.append(lm[:478])
    det.close()
    np.save(out / "landmarks.npy", np.stack(mesh))
    manifest = {"video": {"num_frames": len(frames), "fps": 25}, "crop": [x0, y0, box]}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return manifest


@pytest.mark.slow
def test_geometry_steps_on_real_grid_clip(tmp_path, grid_video, weights_dir):
    pytest.importorskip("eos")
    pytest.importorskip("mediapipe")
    from preprocess.bundle import BUNDLE_STEP
    from preprocess.focal import FACE_FIT_STEP, FaceFitConfig
    from preprocess.steps import StepContext
    from preprocess.tracking import TRACKING_STEP

    torch.set_num_threads(1)
    manifest = _grid_dataset(grid_video, tmp_path, weights_dir)
    n = manifest["video"]["num_frames"]
    cfg = {"face_fit": FaceFitConfig(sfm_path=str(weights_dir / "sfm"), search_iters=80,
                                     lm_max_nfev=30)}
    # as if the landmarks step had found no face in frames 5-6 and interpolated them
    manifest["steps"] = {"landmarks": {"stats": {"interpolated_ranges": [[5, 6]]}}}
    ctx = StepContext(tmp_path, grid_video, cfg, manifest)
    stats = {}
    for step in (FACE_FIT_STEP, TRACKING_STEP, BUNDLE_STEP):
        stats[step.name] = step.run(ctx)
        step.check(ctx)
    fit, trk, ba = stats["face_fit"], stats["tracking"], stats["bundle_adjustment"]
    assert 300 < fit["focal"] < 5000 and fit["focal_source"] in ("estimated", "default")
    assert fit["focal_interval"][0] <= fit["focal"] <= fit["focal_interval"][1]
    assert fit["reproj_err_px_mean"] < 4.0  # rigid 68-point landmarks, 512-px crop
    assert trk["num_keypoints"] >= 32 and trk["dropped_frames"] <= n // 10
    assert ba["reproj_err_px_after"] < min(1.5, ba["reproj_err_px_before"])
    assert ba["jitter_after"]["rot_deg"] < ba["jitter_before"]["rot_deg"]
    assert ba["jitter_after"]["trans_mm"] < ba["jitter_before"]["trans_mm"]
    assert ba["frames_without_face_left_out"] == 2
    train_ids = {f["img_id"] for f in json.loads((tmp_path / "transforms_train.json").read_text())["frames"]}
    assert not train_ids & {5, 6}
    dropped = set(trk["dropped_frame_ids"]) | {5, 6}
    assert ba["train_frames"] + ba["val_frames"] == n - len(dropped)
    for name in ("face_fit", "keypoints", "pose_curves"):
        assert (tmp_path / "previews" / f"{name}.png").stat().st_size > 10_000
