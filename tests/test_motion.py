"""Motion files, blinks, expression control, head motion from audio, jitter (nerfhead.motion).

Hand-computed and synthetic ground truth first; then the real GRID poses (the 300-s clip's
bundle-adjusted head poses, ``tests/data/grid_s1_300s_motion.npz``, with the clip's audio from
``../shared``) for the head-motion generator; then a tiny trained model rendering motion files.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from nerfhead.motion import blink as B
from nerfhead.motion import stats as S
from nerfhead.motion.pose import (angular_velocity, c2w_to_canonical, canonical_to_c2w, rest_pose,
                                  rest_pose_in_camera)
from nerfhead.motion.table import (ALL_COLUMNS, BLENDSHAPES, MotionFileError, MotionTable,
                                   read_motion, write_motion)
from nerfhead.data.synthetic import look_at_gl


def _project(c2w, point_head, focal=500.0):
    """Pixel (u, v) of a head-frame point seen from camera-to-world ``c2w`` (OpenGL)."""
    w2c = np.linalg.inv(c2w)
    p = w2c[:3, :3] @ point_head + w2c[:3, 3]
    return np.array([focal * p[0] / -p[2], -focal * p[1] / -p[2]])  # v grows downwards


# ------------------------------------------------------------------------------ pose frame
def test_canonical_pose_round_trip_and_rest_is_zero():
    rng = np.random.default_rng(0)
    c2w = np.stack([look_at_gl(np.array([0.1 * rng.normal(), 0.05 * rng.normal(), 0.55]))
                    for _ in range(30)])
    rest = rest_pose(c2w)
    p = c2w_to_canonical(c2w, rest)
    assert np.allclose(canonical_to_c2w(p, rest), c2w, atol=1e-5)
    assert np.allclose(c2w_to_canonical(rest[None], rest), 0, atol=1e-9)
    assert np.allclose(canonical_to_c2w(np.zeros((1, 6)), rest)[0], rest, atol=1e-6)


def test_canonical_pose_signs_match_the_documented_convention():
    """yaw > 0: face turns to the subject's left (picture right); pitch > 0: chin down;
    roll > 0: top of the head to the picture's left; tx > 0 subject's left, ty > 0 up, tz > 0
    towards the camera (the head looks bigger)."""
    rest = look_at_gl(np.array([0.0, 0.0, 0.6]))  # frontal: head axes = camera axes
    nose, crown, left_ear = np.array([0, 0, 0.1]), np.array([0, 0.1, 0]), np.array([0.07, 0, 0])
    at = lambda *p: canonical_to_c2w(np.array([p], float), rest)[0]  # noqa: E731
    base = _project(rest, nose)
    assert _project(at(10, 0, 0, 0, 0, 0), nose)[0] > base[0] + 5  # yaw: nose to picture right
    assert _project(at(0, 10, 0, 0, 0, 0), nose)[1] > base[1] + 5  # pitch: nose goes down
    assert _project(at(0, 0, 10, 0, 0, 0), crown)[0] < _project(rest, crown)[0] - 5  # roll
    assert _project(at(0, 0, 0, 0.01, 0, 0), nose)[0] > base[0] + 5  # tx: subject's left
    assert _project(at(0, 0, 0, 0, 0.01, 0), nose)[1] < base[1] - 5  # ty: up (v decreases)
    width = lambda c: _project(c, left_ear)[0] - _project(c, -left_ear)[0]  # noqa: E731
    assert width(at(0, 0, 0, 0, 0, 0.05)) > 1.05 * width(rest)  # tz: towards the camera
    view = rest_pose_in_camera(at(5, 0, 0, 0, 0, 0))
    assert view["yaw_deg"] == pytest.approx(5, abs=1e-6)
    assert view["head_centre_camera_m"][2] == pytest.approx(-0.6, abs=1e-6)


def test_angular_velocity_of_a_steady_turn():
    p = np.zeros((11, 6))
    p[:, 0] = np.arange(11) * 0.4  # 0.4 degrees of yaw per frame = 10 deg/s at 25 fps
    w = angular_velocity(p, 25.0)
    assert np.allclose(w[:, 1], 10.0, atol=1e-9) and np.allclose(w[:, [0, 2]], 0, atol=1e-9)


# ------------------------------------------------------------------------------ motion file
def _table(n=12):
    rng = np.random.default_rng(1)
    return MotionTable(pose=np.column_stack([rng.normal(0, 2, (n, 3)), rng.normal(0, 0.01, (n, 3))]),
                       blendshapes=rng.uniform(0, 1, (n, 52)), blink=rng.uniform(0, 1, (n, 2)),
                       meta={"condition_columns": ["eyeBlinkLeft", "browInnerUp"],
                             "condition_source": "test"})


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_motion_file_round_trip(tmp_path, suffix):
    t = _table()
    path = write_motion(t, tmp_path / f"m{suffix}")
    back = read_motion(path)
    assert len(back) == 12 and back.fps == pytest.approx(25.0)
    assert np.allclose(back.pose[:, :3], t.pose[:, :3], atol=1e-4)
    assert np.allclose(back.pose[:, 3:], t.pose[:, 3:], atol=1e-6)
    assert np.allclose(back.blendshapes, t.blendshapes, atol=1e-4)
    assert set(back.present) == set(ALL_COLUMNS)
    if suffix == ".csv":
        text = path.read_text().splitlines()
        assert text[0].startswith("# nerfhead-motion v1")
        assert any("model condition (test): eyeBlinkLeft browInnerUp" in ln for ln in text)
        header = next(ln for ln in text if not ln.startswith("#")).split(",")
        assert header[:8] == ["frame", "time_s", "yaw_deg", "pitch_deg", "roll_deg", "tx_m",
                              "ty_m", "tz_m"]
        assert header[8:60] == list(BLENDSHAPES) and header[60:] == ["blink_left", "blink_right"]


def test_motion_file_from_a_spreadsheet_is_read(tmp_path):
    """Semicolons, decimal commas, quoted comment rows, trailing empty cells, a subset of
    columns: what a spreadsheet in another locale saves."""
    rows = ['"# nerfhead-motion v1: edited";;;;;;;', "time_s;yaw_deg;pitch_deg;roll_deg;tx_m;ty_m;tz_m;"]
    for i in range(5):
        rows.append(f"{i * 0.04:.2f};{i},5;0;0;0;0,001;0;")
    p = tmp_path / "edited.csv"
    p.write_text("\n".join(rows) + "\n")
    t = read_motion(p)
    assert len(t) == 5 and np.allclose(t.pose[:, 0], [0.5, 1.5, 2.5, 3.5, 4.5])
    assert np.allclose(t.pose[:, 4], 0.001) and np.isnan(t.blendshapes).all()
    assert "eyeBlinkLeft" not in t.present


def test_motion_file_errors_name_the_place(tmp_path, caplog):
    t = _table(4)
    good = write_motion(t, tmp_path / "good.csv").read_text()
    lines = good.splitlines()
    header_at = next(i for i, ln in enumerate(lines) if not ln.startswith("#"))
    cols = lines[header_at].split(",")

    def variant(name, fn):
        rows = [ln.split(",") for ln in lines[header_at:]]
        fn(rows)
        p = tmp_path / name
        p.write_text("\n".join(",".join(r) for r in rows) + "\n")
        return p

    drop = cols.index("pitch_deg")
    p = variant("missing.csv", lambda rows: [r.pop(drop) for r in rows])
    with pytest.raises(MotionFileError, match=r"missing column\(s\) pitch_deg.*motion export"):
        read_motion(p)
    yaw = cols.index("yaw_deg")
    p = variant("text.csv", lambda rows: rows[2].__setitem__(yaw, "abc"))
    with pytest.raises(MotionFileError, match=r"line \d+, column 'yaw_deg'.*'abc'"):
        read_motion(p)
    blink = cols.index("eyeBlinkLeft")
    p = variant("range.csv", lambda rows: rows[3].__setitem__(blink, "1.7"))
    with pytest.raises(MotionFileError, match=r"eyeBlinkLeft = 1.7 at frame\(s\) 2 .*\[0, 1\]"):
        read_motion(p)
    p = variant("angle.csv", lambda rows: rows[1].__setitem__(yaw, "135"))
    with pytest.raises(MotionFileError, match="yaw_deg = 135.*90 degrees"):
        read_motion(p)
    tcol = cols.index("time_s")
    p = variant("order.csv", lambda rows: rows[3].__setitem__(tcol, "0.0"))
    with pytest.raises(MotionFileError, match="time does not increase"):
        read_motion(p)
    p = variant("typo.csv", lambda rows: rows[0].__setitem__(cols.index("browInnerUp"), "browInerUp"))
    with caplog.at_level(logging.WARNING, logger="nerfhead.motion"):
        read_motion(p)
    assert "did you mean 'browInnerUp'" in caplog.text
    with pytest.raises(MotionFileError, match="not found"):
        read_motion(tmp_path / "nope.csv")


def test_motion_file_at_another_frame_rate_is_resampled(tmp_path):
    n = 51  # 1 s at 50 fps: yaw ramps 0..10 degrees
    cols = {"time_s": np.arange(n) / 50.0, "yaw_deg": np.linspace(0, 10, n)}
    for c in ("pitch_deg", "roll_deg", "tx_m", "ty_m", "tz_m"):
        cols[c] = np.zeros(n)
    p = tmp_path / "m50.json"
    p.write_text(json.dumps({"columns": {k: v.tolist() for k, v in cols.items()}}))
    t = read_motion(p)
    assert len(t) == 26 and t.fps == 25.0
    assert np.allclose(t.pose[:, 0], np.linspace(0, 10, 26), atol=1e-9)


# ------------------------------------------------------------------------------ blinks
def _blink_clip(n=750, fps=25.0, every=(2.0, 4.0), seed=0):
    """Synthetic eyeBlink curves: open 0.1, blinks of 5 frames peaking at 0.7 at known times."""
    rng = np.random.default_rng(seed)
    bs = np.full((n, 52), 0.05)
    bs[:, BLENDSHAPES.index("eyeBlinkLeft")] = 0.10
    bs[:, BLENDSHAPES.index("eyeBlinkRight")] = 0.12
    bs[:, BLENDSHAPES.index("eyeSquintLeft")] = 0.40
    peaks, t = [], 1.0
    while t * fps < n - 5:
        peaks.append(int(t * fps))
        t += rng.uniform(*every)
    bump = np.array([0.25, 0.75, 1.0, 0.75, 0.25])
    for p in peaks:
        sl = slice(p - 2, p + 3)
        bs[sl, BLENDSHAPES.index("eyeBlinkLeft")] += 0.6 * bump
        bs[sl, BLENDSHAPES.index("eyeBlinkRight")] += 0.6 * bump
        bs[sl, BLENDSHAPES.index("eyeSquintLeft")] += 0.3 * bump
    return bs, np.array(peaks)


def test_measure_blinks_recovers_rate_duration_and_levels():
    bs, peaks = _blink_clip()
    prof = B.measure_blinks(bs)
    assert prof.count == len(peaks)
    assert prof.rate_per_min == pytest.approx(60 * len(peaks) / 30.0)
    # half prominence of the 5-frame bump is reached between the 0.25 and 0.75 samples: 3 frames
    assert np.median(prof.durations_s) == pytest.approx(3 / 25, abs=0.01)
    assert np.allclose(prof.intervals_s, np.diff(peaks) / 25)
    assert prof.open_level["eyeBlinkLeft"] == pytest.approx(0.10)
    assert prof.closed_level["eyeBlinkLeft"] == pytest.approx(0.70)
    assert prof.closed_level["eyeSquintLeft"] == pytest.approx(0.70)
    d = B.derived_blink(bs, prof)
    assert np.allclose(d[peaks], 1.0) and np.allclose(d[peaks + 5], 0.0)
    # a gap in the frame ids splits the clip: no interval across it
    ids = np.concatenate([np.arange(375), np.arange(400, 775)])
    assert all(iv < 5 for iv in B.measure_blinks(bs, frame_ids=ids).intervals_s)


def test_natural_blinks_follow_the_speakers_rate_and_duration():
    bs, _ = _blink_clip(n=3000)
    prof = B.measure_blinks(bs)
    closure, times = B.synthesize(3000, prof, seed=3)
    again = B.measure_blinks(B.apply_closure(np.zeros((3000, 52)), np.column_stack([closure, closure]),
                                             prof))
    assert again.rate_per_min == pytest.approx(prof.rate_per_min, rel=0.2)
    assert np.median(again.durations_s) == pytest.approx(np.median(prof.durations_s), abs=0.045)
    assert np.array_equal(B.synthesize(3000, prof, seed=3)[0], closure)  # seeded
    assert not np.array_equal(B.synthesize(3000, prof, seed=4)[0], closure)
    with pytest.raises(B.BlinkError, match="no blink found"):
        B.synthesize(100, B.measure_blinks(np.full((100, 52), 0.1)))


def test_apply_closure_moves_every_eye_column_between_its_levels():
    bs, _ = _blink_clip()
    prof = B.measure_blinks(bs)
    closure = np.zeros((3, 2))
    closure[1] = [1.0, 0.0]
    closure[2] = [0.5, 0.5]
    out = B.apply_closure(np.full((3, 52), 0.33), closure, prof)
    L, R, SL = (BLENDSHAPES.index(c) for c in ("eyeBlinkLeft", "eyeBlinkRight", "eyeSquintLeft"))
    assert out[0, L] == pytest.approx(0.10) and out[0, R] == pytest.approx(0.12)
    assert out[1, L] == pytest.approx(0.70) and out[1, R] == pytest.approx(0.12)
    assert out[1, SL] == pytest.approx(0.70) and out[2, L] == pytest.approx(0.40)
    assert out[0, BLENDSHAPES.index("browInnerUp")] == pytest.approx(0.33)  # untouched


def test_blink_files(tmp_path):
    bs, _ = _blink_clip()
    prof = B.measure_blinks(bs)
    (tmp_path / "times.csv").write_text("blink_at_s\n0.52\n1.5\n9\n")  # times of the peaks
    c = B.load_blink_file(tmp_path / "times.csv", 50, prof)
    assert c.shape == (50, 2) and c[13, 0] == pytest.approx(1.0) and c[13, 1] == c[13, 0]
    assert c[37, 0] == pytest.approx(c[38, 0]) and c[37, 0] > 0.8 and c[25, 0] < 0.01  # 37.5
    (tmp_path / "curve.csv").write_text("blink\n0\n0.5\n1\n")
    c = B.load_blink_file(tmp_path / "curve.csv", 5, prof)
    assert np.allclose(c[:, 1], [0, 0.5, 1, 0, 0])  # shorter file: eyes open afterwards
    (tmp_path / "bad.csv").write_text("blink_left\n0.2\n")
    with pytest.raises(B.BlinkError, match="only one of blink_left/blink_right"):
        B.load_blink_file(tmp_path / "bad.csv", 5, prof)
    (tmp_path / "none.csv").write_text("yaw_deg\n1\n")
    with pytest.raises(B.BlinkError, match="no blink_left/blink_right, blink or blink_at_s"):
        B.load_blink_file(tmp_path / "none.csv", 5, prof)
    with pytest.raises(B.BlinkError, match="not one of clip, natural, none"):
        B.blink_closure("sometimes", 5, prof)


def test_mediapipe_blink_left_is_the_subjects_left_eye(hdtf_video, weights_dir):
    """The documented convention (docs/motion.md), checked on a real frame: covering the eye on
    the picture's left (the subject's right) raises eyeBlinkRight, and vice versa."""
    import cv2
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    from nerfhead.render.video import read_frames

    if not hdtf_video.is_file():
        pytest.skip(f"{hdtf_video} not found")
    frame = list(read_frames(hdtf_video, max_frames=11))[10]
    opts = vision.FaceLandmarkerOptions(
        base_options=BaseOptions(model_asset_path=str(weights_dir / "face_landmarker.task")),
        running_mode=vision.RunningMode.IMAGE, num_faces=1, output_face_blendshapes=True)
    with vision.FaceLandmarker.create_from_options(opts) as lmk:
        def detect(img):
            r = lmk.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(img)))
            pts = np.array([(p.x * img.shape[1], p.y * img.shape[0]) for p in r.face_landmarks[0]])
            return {c.category_name: c.score for c in r.face_blendshapes[0]}, pts

        _, pts = detect(frame)
        got = {}
        for side, idx in (("picture_left", [33, 133, 159, 145]), ("picture_right", [362, 263, 386, 374])):
            img = frame.copy()
            (x0, y0), (x1, y1) = pts[idx].min(0).astype(int) - 4, pts[idx].max(0).astype(int) + 4
            img[y0:y1, x0:x1] = frame[y1 + 8:y1 + 14, x0:x1].reshape(-1, 3).mean(0).astype(np.uint8)
            cv2.line(img, (x0 + 2, (y0 + y1) // 2), (x1 - 2, (y0 + y1) // 2), (60, 40, 40), 2)
            got[side] = detect(img)[0]
    assert pts[33, 0] < pts[263, 0]  # landmark 33 (the subject's right eye) is on the picture's left
    assert got["picture_left"]["eyeBlinkRight"] > got["picture_left"]["eyeBlinkLeft"] + 0.1
    assert got["picture_right"]["eyeBlinkLeft"] > got["picture_right"]["eyeBlinkRight"] + 0.05


# ------------------------------------------------------------------------------ expression
def test_expression_scales():
    from nerfhead.motion.controls import parse_expression_scales, scale_expressions

    assert parse_expression_scales(["browInnerUp=1.5", "eyeWideLeft=0"]) == {"browInnerUp": 1.5,
                                                                             "eyeWideLeft": 0.0}
    with pytest.raises(ValueError, match="did you mean 'browInnerUp'"):
        parse_expression_scales(["browInerUp=2"])
    with pytest.raises(ValueError, match="NAME=SCALE"):
        parse_expression_scales(["browInnerUp"])
    with pytest.raises(ValueError, match=">= 0"):
        parse_expression_scales(["browInnerUp=-1"])
    e = np.full((2, 52), 0.4, np.float32)
    out = scale_expressions(e, {"browInnerUp": 1.5, "jawOpen": 3.0}, ["browInnerUp"])
    i, j = BLENDSHAPES.index("browInnerUp"), BLENDSHAPES.index("jawOpen")
    assert np.allclose(out[:, i], 0.6) and np.allclose(out[:, j], 1.0)  # clipped at 1
    assert np.allclose(np.delete(out, [i, j], 1), 0.4)


def test_fit_length_says_how_it_extends(caplog):
    from nerfhead.motion.controls import fit_length

    with caplog.at_level(logging.INFO, logger="nerfhead.motion"):
        assert fit_length(4, 8, "mirror", "m.csv").tolist() == [0, 1, 2, 3, 2, 1, 0, 1]
        assert "extended by --pose-mode mirror" in caplog.text and "4 frames" in caplog.text
        assert fit_length(4, 6, "loop", "m.csv").tolist() == [0, 1, 2, 3, 0, 1]
        assert fit_length(9, 3, "mirror", "m.csv").tolist() == [0, 1, 2]
        assert "the last 6 are not used" in caplog.text


# ------------------------------------------------------------------------------ statistics
def test_motion_stats_hand_computed():
    n = 100
    p = np.zeros((n, 6))
    p[:, 0] = 2.0 * np.sin(2 * np.pi * np.arange(n) / 50.0)  # yaw sine: 2 deg, period 2 s
    st = S.motion_stats(p)
    # amplitude: |yaw - window mean| over 2-s windows of a full period = |2 sin|
    sine = 2 * np.sin(2 * np.pi * np.arange(50) / 50)
    assert st["amplitude"].mean() == pytest.approx(np.mean(np.abs(sine)))
    # angular speed: |d yaw/dt| = 2 deg * 2 pi / 2 s * |cos|, whose mean is 2 pi * 2/pi = 4 deg/s
    assert st["angular_speed"].mean() == pytest.approx(4.0, rel=0.01)
    assert st["translation_speed"].max() == 0
    ok = np.ones(n, bool)
    ok[40:45] = False
    assert len(S.motion_stats(p, ok)["angular_speed"]) == n - 1 - 6  # steps touching the cut
    w = S.windows(p, np.ones(n, bool))
    assert np.allclose(S.nearest_window_distance(w[:5], w), 0.0, atol=1e-6)  # a copy scores 0
    shifted = S.windows(p + np.array([1.0, 0, 0, 0, 0, 0]), np.ones(n, bool))
    assert np.allclose(S.nearest_window_distance(shifted[:5], w), 0.0, atol=1e-6)  # offset: still
    c = S.compare(st, {k: st[k] + 1.0 for k in S.STATS})
    assert c["angular_speed"]["w1"] == pytest.approx(1.0) and c["angular_speed"]["ks"] > 0


# ------------------------------------------------------------------------------ jitter
def test_landmark_jitter_hand_computed():
    from nerfhead.motion.jitter import RIGID_LANDMARKS, landmark_jitter

    base = np.zeros((478, 2))
    steady = [base + [2.0 * t, 0.5 * t] for t in range(10)]  # constant velocity: no jitter
    assert landmark_jitter(steady)["mean_px"] == pytest.approx(0.0)
    shake = [base + [0.0, 1.0 if t % 2 else -1.0] for t in range(10)]  # +-1 px: |1 - 2(-1) + 1| = 4
    j = landmark_jitter(shake)
    assert j["mean_px"] == pytest.approx(4.0) and j["triples"] == 8
    mouth_only = [base.copy() for _ in range(5)]
    mouth_only[2][[13, 14, 17]] = 9.0  # lip landmarks move: the rigid set does not see it
    assert landmark_jitter(mouth_only)["mean_px"] == 0.0 and 13 not in RIGID_LANDMARKS
    gaps = steady[:3] + [None] + steady[4:]
    assert landmark_jitter(gaps)["triples_without_face"] == 3


# ------------------------------------------------------------------------------ head motion
def _true_model():
    """A known head-motion process: AR(2) keyframe velocities, noise twice as large in speech."""
    from nerfhead.motion.generator import HeadMotionModel, MotionModelConfig

    a1, a2 = 0.6, -0.2
    A = np.vstack([a1 * np.eye(6), a2 * np.eye(6)])
    U = np.zeros((3, 6))
    U[0] = np.log(2.0)  # speech doubles the noise
    return HeadMotionModel(MotionModelConfig(), scale=[2.0, 2.0, 1.0, 0.01, 0.01, 0.01],
                           feature_mean=[0.0, 0.0, 0.0], A=A.tolist(), kappa=[0.02] * 6,
                           U=U.tolist(), c=[np.log(0.15)] * 6, lo=[-30] * 3 + [-0.2] * 3,
                           hi=[30] * 3 + [0.2] * 3)


def _speech_features(n, seed=0):
    """Alternating speech (2-4 s) and silence (1-2 s) blocks: [speech, loudness, envelope]."""
    from scipy.ndimage import gaussian_filter1d

    rng = np.random.default_rng(seed)
    s, i, on = np.zeros(n), 0, False
    while i < n:
        k = int(25 * (rng.uniform(2, 4) if on else rng.uniform(1, 2)))
        s[i:i + k] = on
        i, on = i + k, not on
    return np.column_stack([s, np.where(s > 0, 0.0, -3.0), gaussian_filter1d(s, 12.5)])


def test_generator_learns_a_known_process():
    from nerfhead.motion.generator import MotionModelConfig, fit, motion_from_arrays, spectral_radius

    true = _true_model()
    n = 25 * 240  # four minutes
    feats = _speech_features(n)
    poses, _ = true.sample(feats, seed=0)
    data = motion_from_arrays(poses, np.arange(n), None, MotionModelConfig(), features=feats)
    assert len(data.cuts) == 0 and data.stretches == [(0, n)]
    model = fit(data)
    assert model.info["spectral_radius"] < 1
    assert spectral_radius(model.A, 2, model.kappa) < 1
    # the noise in speech over the noise in silence: 2 in truth
    assert np.mean(model.info["noise_speech_over_silence"][:3]) == pytest.approx(2.0, rel=0.25)
    test_feats = _speech_features(25 * 60, seed=5)
    truth = S.motion_stats(true.sample(test_feats, seed=11)[0], speech=test_feats[:, 0] > 0.5)
    gen = [S.motion_stats(model.sample(test_feats, seed=s)[0], speech=test_feats[:, 0] > 0.5)
           for s in range(4)]
    pooled = {k: np.concatenate([g[k] for g in gen]) for k in S.STATS}
    d = S.compare(truth, pooled)
    for k in ("angular_speed", "angular_acceleration", "amplitude"):
        assert d[k]["w1_relative"] < 0.25, (k, d[k])
    assert all(g["speech_over_silence"] > 1.3 for g in gen)


def test_generated_motion_is_seeded_smooth_and_in_range():
    from nerfhead.motion.generator import MotionModelConfig, fit, motion_from_arrays

    true = _true_model()
    feats = _speech_features(25 * 120)
    poses, _ = true.sample(feats, seed=0)
    model = fit(motion_from_arrays(poses, np.arange(len(poses)), None, MotionModelConfig(),
                                   features=feats))
    f = _speech_features(25 * 30, seed=2)
    a, info = model.sample(f, seed=7)
    b, _ = model.sample(f, seed=7)
    c, _ = model.sample(f, seed=8)
    assert np.array_equal(a, b) and not np.allclose(a, c)
    assert a.shape == (750, 6) and info["frames"] == 750
    lo, hi = np.asarray(model.lo), np.asarray(model.hi)
    assert (a >= lo).all() and (a <= hi).all()
    # smooth: the second difference is small next to the first (a cubic spline through 5 Hz
    # keyframes: no frame-to-frame noise)
    d1 = np.abs(np.diff(a[:, 0])).mean()
    d2 = np.abs(np.diff(a[:, 0], 2)).mean()
    assert d2 < 0.25 * d1
    # narrow the range: the soft limit holds every value inside and never speeds the head up
    # (its slope is at most 1: no jumps)
    model.lo, model.hi = (lo / 20).tolist(), (hi / 20).tolist()
    lim, info = model.sample(f, seed=7)
    assert info["limited_fraction"] > 0.1
    assert (lim >= lo / 20 - 1e-12).all() and (lim <= hi / 20 + 1e-12).all()
    assert (np.abs(np.diff(lim, axis=0)) <= np.abs(np.diff(a, axis=0)) + 1e-12).all()


def test_cuts_split_the_training_motion():
    from nerfhead.motion.generator import find_cuts, segments

    rng = np.random.default_rng(0)
    p = np.cumsum(rng.normal(0, 0.02, (300, 6)), 0)
    p[:, 3:] *= 0.001
    p[150:, 0] += 5.0  # a take join: the head jumps 5 degrees
    ids = np.concatenate([np.arange(100), np.arange(110, 310)])  # frames 100-109 left out
    cuts = find_cuts(p, ids, 6.0)
    assert 100 in cuts and any(abs(c - 150) <= 2 for c in cuts) and len(cuts) == 2
    st = segments(300, cuts, 5, 10)
    assert st[0] == (0, 95) and st[1][0] == 105 and st[-1][1] == 300
    assert find_cuts(p, ids, 6.0, known=[260]).tolist()[-1] == 250  # frame 260 sits at index 250


@pytest.fixture(scope="module")
def grid_motion(grid_video):
    """The 300-s GRID clip's bundle-adjusted head poses (tests/data, see the module docstring)
    and its audio, split as preprocess splits it (last 1/11 held out)."""
    from pathlib import Path

    from nerfhead.audio.features import load_audio
    from nerfhead.motion.generator import MotionModelConfig, motion_from_arrays, prosody_features

    if not grid_video.is_file():
        pytest.skip(f"{grid_video} not found")
    d = np.load(Path(__file__).parent / "data" / "grid_s1_300s_motion.npz")
    pose, n = d["pose"].astype(np.float64), len(d["pose"])
    ids = np.setdiff1d(np.arange(n), d["interpolated"])  # frames preprocess left out
    samples = load_audio(grid_video)
    samples = np.pad(samples, (0, max(0, n * 640 - len(samples))))
    cfg = MotionModelConfig()
    feats, _ = prosody_features(samples, n)
    val = ids >= n - n // 11
    train = motion_from_arrays(pose[ids[~val]], ids[~val], samples, cfg, features=feats)
    heldout = motion_from_arrays(pose[ids[val]], ids[val], samples, cfg, features=feats)
    assert len(train.pose) == int(d["train_frames"])
    a = int(ids[val][0]) * 640
    return train, heldout, samples[a:a + len(heldout.pose) * 640]


@pytest.mark.slow
def test_generated_head_motion_against_held_out_grid(grid_motion, tmp_path):
    """Fit on 272 s of GRID s1, generate for the held-out 27 s of audio: statistics close to the
    real held-out motion, as much more (or less) motion in speech as the speaker's training
    poses, not a copy, inside the trained range."""
    from nerfhead.motion.bench import evaluate_generator, markdown, write_report

    train, heldout, audio = grid_motion
    result, arrays = evaluate_generator(train, heldout, audio, seeds=3)
    assert result["fit"]["cuts_found"] > 40  # the joins between the 100 sentences
    d = result["distances"]["smoothed"]
    for k in ("angular_speed", "angular_acceleration", "amplitude"):
        # close: within 0.3 of the mean, and far closer than a static head
        assert d["generated"][k]["w1_relative"] <= 0.3, (k, d["generated"][k])
        assert d["generated"][k]["w1"] < 0.35 * d["static"][k]["w1"]
    so = result["speech_over_silence"]  # GRID s1: about 1.05 in training, 0.84 held out
    assert so["generated_mean"] == pytest.approx(so["train"], rel=0.25)
    near = result["nearest_train_window_deg"]
    assert near["replay_of_train"]["median"] == pytest.approx(0.0, abs=1e-6)
    assert near["generated"]["min"] > 0.05
    assert near["generated"]["median"] >= 0.5 * near["heldout"]["median"]
    assert all(result["verdict"].values()), result["verdict"]
    write_report(dict(result, data="GRID fixture"), arrays, tmp_path)
    assert "| angular_speed (deg/s) |" in markdown(result)
    assert (tmp_path / "motion_bench.png").stat().st_size > 10_000


# ------------------------------------------------------------------------------ rendering
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Synthetic 24x24 dataset of 80 frames (+ aud.wav, face masks) and a `tiny` model trained
    2 steps."""
    from nerfhead.cli import main
    from nerfhead.data.synthetic import make_dataset
    from nerfhead.render.video import write_wav

    import cv2

    root = tmp_path_factory.mktemp("motion")
    data = make_dataset(root / "data", num_frames=80, size=24)
    mask = np.zeros((24, 24), np.uint8)
    cv2.circle(mask, (12, 11), 6, 255, -1)
    for i in range(80):  # face masks (evaluate's portrait mode reads them)
        cv2.imwrite(str(data / "parsing" / f"{i}_face.png"), mask)
    sr = 16000
    t = np.arange(80 * 640) / sr
    write_wav(data / "aud.wav", 0.2 * np.sin(2 * np.pi * 180 * t) * (np.sin(2 * np.pi * 0.4 * t) > 0), sr)
    run = root / "run"
    assert main(["train", str(data), "--config", "tiny", "--out", str(run), "--iters", "2",
                 "--device", "cpu", "--no-progress", "--set", "data.image_size=0",
                 "--set", "model.max_steps=16", "--set", "data.num_rays=64"]) == 0
    drive = root / "tone.wav"  # a steady tone: the same audio features in every frame
    write_wav(drive, 0.3 * np.sin(2 * np.pi * 200 * np.arange(sr) / sr), sr)
    return root, data, run, drive


def _write_rows(path, header, rows):
    import csv

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def test_export_edit_and_render_back(tiny, tmp_path):
    from nerfhead.cli import main
    from nerfhead.motion.controls import render_inputs
    from nerfhead.render.video import probe
    from nerfhead.train.checkpoint import load_run

    root, data, run, drive = tiny
    out = tmp_path / "motion.csv"
    assert main(["motion", "export", str(run), "--out", str(out)]) == 0
    cond = list(load_run(run).configs["model"].expression)
    text = out.read_text()
    assert f"model condition (run {run}, step 2): {' '.join(cond)}" in text
    t = read_motion(out)
    assert len(t) == 80 and np.abs(t.pose).max() > 0  # the synthetic camera moves
    assert main(["motion", "export", str(data), "--out", str(tmp_path / "m.json")]) == 0
    doc = json.loads((tmp_path / "m.json").read_text())
    assert doc["num_frames"] == 80 and doc["rest_pose"]["head_centre_camera_m"][2] < 0
    assert doc["condition_source"].startswith("default model config")
    # a user edits it in a spreadsheet: turn the head 4 degrees, raise the brows
    lines = [ln for ln in text.splitlines() if not ln.startswith("#")]
    header = lines[0].split(",")
    rows = [ln.split(",") for ln in lines[1:11]]
    for r in rows:
        r[header.index("yaw_deg")] = f"{float(r[header.index('yaw_deg')]) + 4:.4f}"
        r[header.index("browInnerUp")] = "0.5"
    edited = tmp_path / "edited.csv"
    _write_rows(edited, header, rows)
    inputs = render_inputs(data, load_run(run), 10, motion=edited)
    assert np.allclose(inputs.pose6[:, 0], t.pose[:10, 0] + 4, atol=2e-4)
    assert np.allclose(inputs.expressions[:, BLENDSHAPES.index("browInnerUp")], 0.5)
    assert inputs.mean_latent and not inputs.seq.tied_to_frames
    video = tmp_path / "edited.mp4"
    assert main(["render", str(run), "--audio", str(drive), "--motion", str(edited), "--out",
                 str(video), "--max-frames", "6", "--device", "cpu"]) == 0
    assert probe(video)["duration"] == pytest.approx(6 / 25, abs=0.05)


def test_render_motion_file_errors(tiny, tmp_path, capsys, caplog):
    from nerfhead.cli import main
    from nerfhead.motion.controls import render_inputs
    from nerfhead.train.checkpoint import load_run

    root, data, run, drive = tiny
    full = tmp_path / "full.csv"
    assert main(["motion", "export", str(data), "--out", str(full)]) == 0
    lines = [ln.split(",") for ln in full.read_text().splitlines() if not ln.startswith("#")]
    header, rows = lines[0], lines[1:]
    k = header.index("eyeBlinkLeft")
    no_blink = tmp_path / "no_blink.csv"
    _write_rows(no_blink, header[:k] + header[k + 1:], [r[:k] + r[k + 1:] for r in rows])
    args = ["render", str(run), "--audio", str(drive), "--out", str(tmp_path / "x.mp4"),
            "--max-frames", "3", "--device", "cpu"]
    assert main(args + ["--motion", str(no_blink)]) == 2
    err = capsys.readouterr().err
    assert "eyeBlinkLeft" in err and "conditioned on" in err and str(no_blink) in err
    assert main(args + ["--motion", str(full), "--poses", "static"]) == 2
    assert "drop --poses" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    rows = [r[:] for r in rows]
    rows[1][header.index("browInnerUp")] = "2.5"
    _write_rows(bad, header, rows)
    assert main(args + ["--motion", str(bad)]) == 2
    assert "browInnerUp = 2.5 at frame(s) 1" in capsys.readouterr().err
    assert not (tmp_path / "x.mp4").exists()
    short = tmp_path / "short.csv"
    _write_rows(short, header, lines[1:6])
    with caplog.at_level(logging.INFO, logger="nerfhead.motion"):
        inputs = render_inputs(data, load_run(run), 12, motion=short)
    assert "5 frames (0.20 s) but the audio needs 12" in caplog.text
    assert "extended by --pose-mode mirror" in caplog.text
    assert np.allclose(inputs.pose6[5], inputs.pose6[3]) and len(inputs.seq) == 12
    far = tmp_path / "far.csv"
    rows = [r[:] for r in lines[1:4]]
    for r in rows:
        r[header.index("pitch_deg")] = "40"
    _write_rows(far, header, rows)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="nerfhead.motion"):
        render_inputs(data, load_run(run), 3, motion=far)
    assert "pitch_deg reaches 40 deg" in caplog.text and "never looked" in caplog.text


def _eye_boxes(run_dir, c2w, pad=2):
    """Pixel boxes around the synthetic head's two eyes seen from ``c2w``."""
    from nerfhead.data.synthetic import EYE_DIRS, RADIUS, project_gl
    from nerfhead.train.checkpoint import load_run

    run = load_run(run_dir)
    cam = run.camera
    boxes = []
    for e in EYE_DIRS:
        x, y = project_gl(np.array([RADIUS * e / np.linalg.norm(e)]), c2w.astype(np.float64),
                          cam.focal, cam.width)[0]
        boxes.append((slice(max(0, int(y) - pad), int(y) + pad + 1),
                      slice(max(0, int(x) - pad), int(x) + pad + 1)))
    return run, boxes


def test_blinks_forced_on_change_the_eyes_and_off_keep_them_still(tiny, tmp_path):
    """Static pose, the same audio, the mean latent: with --blink none every frame's eye region is
    the same; with a blink file the eyes change at the blink and are back after it. (A model
    trained 2 steps barely responds to blinks, so the change is measured on the float render;
    the trained-model version is the slow test below.)"""
    from nerfhead.audio.features import extract
    from nerfhead.motion.controls import render_inputs

    root, data, run_dir, drive = tiny
    feats = np.repeat(extract(drive)[5:6], 10, 0)  # the same audio window for every frame
    blinks = tmp_path / "blinks.csv"
    blinks.write_text("blink_at_s\n0.2\n")  # fully closed at frame 5
    run, boxes = _eye_boxes(run_dir, render_inputs(data, None, 1, poses="static").seq.c2w[0])
    renders = {}
    for mode in ("none", str(blinks)):
        inputs = render_inputs(data, run, 10, poses="static", blink=mode)
        assert inputs.mean_latent and inputs.expressions.shape == (10, 52)
        renders[mode] = np.stack([run.model.render_frame(
            inputs.seq.c2w[i], feats, i, inputs.expressions[i], latent_index=None)["rgb"].numpy()
            for i in range(2, 9)]).astype(np.float64)  # frames 2..8
    eyes = lambda v: np.concatenate([v[:, b[0], b[1]].reshape(len(v), -1) for b in boxes], 1)  # noqa: E731
    off, on = eyes(renders["none"]), eyes(renders[str(blinks)])
    assert np.abs(off - off[0]).max() == 0  # blinks off: the eye region stays still
    change = np.abs(on - on[0]).mean(1)  # blinks on: it changes at the blink, and only there
    assert change[3] > 0 and change[3] == change.max()  # frame 5 = index 3
    assert change[0] == 0 and np.array_equal(on[-1], off[-1])  # after the blink: eyes open again


def test_poses_audio_fit_generate_and_render(tiny, tmp_path, capsys):
    from nerfhead.cli import main
    from nerfhead.motion.generator import HeadMotionModel, model_path
    from nerfhead.render.video import probe

    root, data, run, drive = tiny
    speech = root / "data" / "aud.wav"  # tone bursts: speech-like on and off
    video = tmp_path / "audio_poses.mp4"
    assert main(["render", str(run), "--audio", str(speech), "--poses", "audio", "--seed", "3",
                 "--out", str(video), "--max-frames", "4", "--device", "cpu"]) == 0
    assert probe(video)["duration"] == pytest.approx(4 / 25, abs=0.05)
    model = HeadMotionModel.load(model_path(run))  # fitted on first use, kept in the run
    assert model.info["frames"] == 73 and len(model.A) == 12
    out = tmp_path / "gen.csv"
    assert main(["motion", "generate", str(run), "--audio", str(speech), "--out", str(out),
                 "--seed", "3"]) == 0
    t = read_motion(out)
    assert len(t) == 80 and np.abs(t.pose).max() > 0
    assert (t.pose >= np.asarray(model.lo) - 1e-4).all() and (t.pose <= np.asarray(model.hi) + 1e-4).all()
    again = tmp_path / "gen2.csv"
    assert main(["motion", "generate", str(run), "--audio", str(speech), "--out", str(again),
                 "--seed", "3"]) == 0
    assert again.read_text() == out.read_text()  # same seed, same motion
    assert main(["motion", "fit", str(data)]) == 2
    assert "give --out" in capsys.readouterr().err
    assert main(["motion", "fit", str(data), "--out", str(tmp_path / "hm.json")]) == 0
    assert main(["bench", "motion", str(data), "--out", str(tmp_path / "b")]) == 2
    assert "held-out part has 7 frames" in capsys.readouterr().err


def test_evaluate_reports_jitter_for_every_pose_source(tiny, tmp_path):
    from nerfhead.cli import main

    root, data, run, drive = tiny
    assert main(["evaluate", str(run), "--out", str(tmp_path), "--device", "cpu",
                 "--jitter-frames", "3", "--previews", "0"]) == 0
    result = json.loads((tmp_path / "metrics.json").read_text())
    jit = result["jitter"]
    assert jit["unit"] == "px at 512x512" and set(jit["sources"]) == {"tracked", "smooth", "static",
                                                                       "audio"}
    assert jit["sources"]["tracked"]["frames"] == 7 and jit["sources"]["static"]["frames"] == 3
    # a shaded sphere is no face: every triple is counted as without a face, nothing crashes
    assert jit["sources"]["static"]["render"]["triples_without_face"] == 1
    assert jit["sources"]["static"]["render"]["mean_px"] is None
    assert "## Jitter" in (tmp_path / "report.md").read_text()


@pytest.mark.slow
def test_trained_model_blinks_with_the_eyes_when_told(tmp_path):
    """A model trained until it has learned the synthetic head's blinks (big eyes, no per-frame
    latent, 300 steps): a forced blink changes the eye region, and much more than the rest of
    the head; blinks off leave the eyes exactly as they were."""
    from nerfhead.cli import main
    from nerfhead.data.synthetic import make_dataset
    from nerfhead.motion.controls import render_inputs

    data = make_dataset(tmp_path / "data", num_frames=44, size=32, eye_angle=0.35)
    run_dir = tmp_path / "run"
    assert main(["train", str(data), "--config", "tiny", "--out", str(run_dir), "--iters", "300",
                 "--device", "cpu", "--no-progress", "--set", "data.image_size=0",
                 "--set", "data.num_rays=1024", "--set", "model.latent_dim=0",
                 "--set", "model.max_steps=32", "--set", "train.val_every=100000"]) == 0
    blinks = tmp_path / "blinks.csv"
    blinks.write_text("blink_at_s\n0.2\n")  # closed at frame 5
    feats = np.repeat(np.load(data / "aud_mel.npy")[5:6], 8, 0)
    run, boxes = _eye_boxes(run_dir, render_inputs(data, None, 1, poses="static").seq.c2w[0])
    out = {}
    for mode in ("none", str(blinks)):
        inputs = render_inputs(data, run, 8, poses="static", blink=mode)
        out[mode] = [run.model.render_frame(inputs.seq.c2w[i], feats, i, inputs.expressions[i])
                     for i in (1, 5)]
    head = out["none"][0]["head_alpha"].numpy() > 0.5
    eye = np.zeros_like(head)
    for b in boxes:
        eye[b] = True
    diff = lambda a, b: np.abs(a["rgb"].numpy() - b["rgb"].numpy()).mean(-1)  # noqa: E731
    assert diff(*out["none"])[eye].max() == 0  # blinks off: still
    d = diff(*out[str(blinks)])  # open (frame 1) vs closed (frame 5)
    assert d[eye].mean() > 0.03
    # measured 0.090 in the eyes against 0.046 over the rest of the head: after 300 steps the
    # blink has leaked a little elsewhere, but the eyes change most
    assert d[eye].mean() > 1.5 * d[head & ~eye].mean()


@pytest.mark.slow
def test_real_clip_export_render_and_jitter(hdtf_video, tmp_path):
    """3 s of the HDTF clip: preprocess, a tiny model, then export the motion, render it back,
    and evaluate with the jitter section measured on real faces."""
    from nerfhead.cli import main

    if not hdtf_video.is_file():
        pytest.skip(f"{hdtf_video} not found")
    data, run = tmp_path / "data", tmp_path / "run"
    assert main(["preprocess", str(hdtf_video), "--out", str(data), "--max-seconds", "3",
                 "--crop-size", "256"]) == 0
    assert main(["train", str(data), "--config", "tiny", "--out", str(run), "--iters", "30",
                 "--device", "cpu", "--no-progress", "--set", "data.image_size=64",
                 "--set", "train.val_every=1000"]) == 0
    motion = tmp_path / "motion.csv"
    assert main(["motion", "export", str(run), "--out", str(motion)]) == 0
    t = read_motion(motion)
    assert len(t) == 75 and np.isfinite(t.pose).all()
    assert np.abs(t.pose[:, :3].mean(0)).max() < 1.0  # relative to the mean training pose
    assert np.abs(t.pose[:, :3]).max() > 0.5  # the speaker moves her head
    assert 0 <= t.blink.min() and t.blink.max() <= 1
    assert main(["render", str(run), "--audio", str(data / "aud.wav"), "--motion", str(motion),
                 "--blink", "none", "--out", str(tmp_path / "back.mp4"), "--max-frames", "4",
                 "--device", "cpu"]) == 0
    assert main(["evaluate", str(run), "--out", str(tmp_path / "eval"), "--device", "cpu",
                 "--jitter-frames", "4", "--jitter-sources", "tracked,static",
                 "--previews", "0"]) == 0
    jit = json.loads((tmp_path / "eval" / "metrics.json").read_text())["jitter"]
    assert jit["gt"]["triples"] >= 4 and jit["gt"]["mean_px"] > 0  # real faces on the GT frames
    assert set(jit["sources"]) == {"tracked", "static"}
