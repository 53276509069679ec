"""Metrics against hand-computed values and synthetic data with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nerfhead.eval import lipsync, metrics
from nerfhead.eval.lpips import LPIPS, LPIPSUnavailable, random_alexnet_state


def test_psnr_of_known_mse():
    gt = np.zeros((8, 8, 3), np.float64)
    pred = gt + 0.1  # MSE = 0.01 -> PSNR = 10 log10(1 / 0.01) = 20 dB
    assert metrics.psnr(pred, gt) == pytest.approx(20.0, abs=1e-9)
    assert metrics.psnr(gt, gt) == math.inf
    # uint8 input: error of 51/255 = 0.2 -> MSE 0.04 -> 13.9794 dB
    assert metrics.psnr(np.full((4, 4, 3), 51, np.uint8), np.zeros((4, 4, 3), np.uint8)) == \
        pytest.approx(10 * math.log10(1 / 0.04), abs=1e-9)


def test_masked_psnr_only_counts_mask():
    gt = np.zeros((10, 10, 3))
    pred = gt.copy()
    pred[:, 5:] = 0.5  # error only on the right half
    mask = np.zeros((10, 10))
    mask[:, :5] = 1
    assert metrics.psnr(pred, gt, mask) == math.inf
    mask[:] = 0
    mask[:, 5:] = 1  # MSE 0.25 on the masked half -> 6.0206 dB
    assert metrics.psnr(pred, gt, mask) == pytest.approx(10 * math.log10(4), abs=1e-9)
    assert math.isnan(metrics.psnr(pred, gt, np.zeros((10, 10))))


def test_ssim_identical_is_one_and_drops_with_noise():
    rng = np.random.default_rng(0)
    img = rng.random((48, 48, 3))
    assert metrics.ssim(img, img) == pytest.approx(1.0, abs=1e-12)
    s_small = metrics.ssim(np.clip(img + rng.normal(0, 0.05, img.shape), 0, 1), img)
    s_big = metrics.ssim(np.clip(img + rng.normal(0, 0.3, img.shape), 0, 1), img)
    assert 1.0 > s_small > s_big > 0.0


def test_ssim_constant_images_hand_value():
    # Constant images a and b: variances 0, so SSIM = (2ab + C1) / (a^2 + b^2 + C1).
    a, b = 0.2, 0.6
    c1 = (0.01 * 1.0) ** 2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    got = metrics.ssim(np.full((20, 20, 3), a), np.full((20, 20, 3), b))
    assert got == pytest.approx(expected, rel=1e-9)


def test_lmd_translation_is_zero_and_scaling_hand_value():
    rng = np.random.default_rng(1)
    pts = rng.random((40, 2)) * 100 + 200
    assert metrics.lmd(pts + np.array([13.0, -7.0]), pts) == pytest.approx(0.0, abs=1e-9)
    # Points at (+-10, 0) around a centre; a 1.5x scale moves each by 5 px.
    sq = np.array([[-10.0, 0.0], [10.0, 0.0], [0.0, 10.0], [0.0, -10.0]]) + 256
    scaled = (sq - 256) * 1.5 + 256
    assert metrics.lmd(scaled, sq) == pytest.approx(5.0)
    # Same shapes in a 256-pixel frame are reported at 512 x 512: twice the distance.
    assert metrics.lmd(scaled, sq, image_size=256) == pytest.approx(10.0)


def test_mouth_mask_covers_lips():
    lm = np.zeros((478, 2))
    lm[:, 0], lm[:, 1] = 100, 100
    lm[list(metrics.MOUTH_LANDMARKS)] = [[50, 60], [70, 80]] * 20
    m = metrics.mouth_mask(lm, 128, 128, margin=0.0)
    assert m[60:80, 50:70].all() and m.sum() < 128 * 128 / 4


def test_sync_proxy_recovers_known_offset():
    rng = np.random.default_rng(3)
    energy = np.convolve(rng.random(200), np.ones(5) / 5, mode="same")
    opening = np.full(200, np.nan)
    opening[4:] = energy[:-4] * 2 + 0.01 * rng.normal(size=196)  # mouth lags audio by 4 frames
    res = lipsync.offset_correlation(opening, energy, max_offset=8)
    assert res["best_offset"] == 4
    assert res["best_correlation"] > 0.95
    # and the opposite direction
    res = lipsync.offset_correlation(energy[3:], energy[:-3], max_offset=8)
    assert res["best_offset"] == -3


def test_sync_proxy_from_waveform_and_landmarks():
    sr, fps, n = 16000, 25, 100
    rng = np.random.default_rng(4)
    loud = (np.arange(n) // 7) % 2 == 0  # speech bursts
    samples = np.concatenate([rng.normal(0, 0.3 if l else 0.01, sr // fps) for l in loud])
    energy = lipsync.audio_energy_per_frame(samples, n, sr, fps)
    assert energy[loud].min() > energy[~loud].max()
    lms = []
    for i in range(n):
        lm = np.zeros((478, 2))
        lm[lipsync.EYE_OUTER_RIGHT], lm[lipsync.EYE_OUTER_LEFT] = [0, -50], [60, -50]
        shown = loud[i - 2] if i >= 2 else False  # mouth follows 2 frames late
        lm[lipsync.LOWER_LIP_BOTTOM] = [20, 10 if shown else 1]
        lms.append(None if i % 10 == 5 else lm)  # some frames without a face
    res = lipsync.sync_proxy(lms, samples, sr, max_offset=5)
    assert res["best_offset"] == 2 and res["faces_missing"] == 10


def test_sync_proxy_without_faces_is_unavailable():
    res = lipsync.sync_proxy([None] * 50, np.random.default_rng(0).normal(size=50 * 640))
    assert res["best_offset"] is None and "unavailable" in res and res["faces_missing"] == 50


def test_lpips_unavailable_without_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("NERFHEAD_WEIGHTS", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("NERFHEAD_OFFLINE", "1")
    with pytest.raises(LPIPSUnavailable, match="lpips_alex"):
        LPIPS.load()


def test_lpips_runs_with_random_backbone(tmp_path):
    backbone = tmp_path / "alex_random.pth"
    torch.save(random_alexnet_state(seed=0), backbone)
    torch.manual_seed(1)
    heads = tmp_path / "lin.pth"
    torch.save({f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1)
                for k, c in enumerate((64, 192, 384, 256, 256))}, heads)
    net = LPIPS.load(backbone, heads)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert net.distance(img, img) == pytest.approx(0.0, abs=1e-7)
    noisy = np.clip(img.astype(int) + rng.integers(-60, 60, img.shape), 0, 255).astype(np.uint8)
    assert net.distance(noisy, img) > 0.0


def test_ssim_matches_scipy_reference():
    """skimage's algorithm written with scipy.ndimage (gaussian_filter, crop 5-pixel border)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(5)
    a = rng.random((40, 36, 3))
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    vals = []
    for c in range(3):
        x, y = a[..., c], b[..., c]
        f = lambda t: gaussian_filter(t, 1.5, truncate=3.5)  # noqa: E731
        ux, uy = f(x), f(y)
        vx, vy, vxy = f(x * x) - ux ** 2, f(y * y) - uy ** 2, f(x * y) - ux * uy
        c1, c2 = 0.01 ** 2, 0.03 ** 2
        s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
        vals.append(s[5:-5, 5:-5].mean())
    assert metrics.ssim(b, a) == pytest.approx(float(np.mean(vals)), abs=1e-10)


def test_blank_render_is_evaluated_and_failures_reported(hdtf_video, tmp_path):
    """A degenerate render (black frames) against real face frames: no crash, every render
    frame counted as faceless, LMD and the render's sync proxy unavailable, files written."""
    import cv2

    from nerfhead.eval.report import SequenceEvaluator, write_report
    from nerfhead.render.video import read_frames

    gts = [cv2.resize(f, (256, 256), interpolation=cv2.INTER_AREA)
           for f in read_frames(hdtf_video, max_frames=12)]
    det = lipsync.FaceLandmarks()
    ev = SequenceEvaluator(det, None, "no LPIPS weights in this test", preview_frames=(0,))
    mask = np.zeros((256, 256), np.uint8)
    mask[80:200, 70:190] = 255
    for i, gt in enumerate(gts):
        ev.add(i, np.zeros_like(gt), gt, gt, mask)
    samples = np.random.default_rng(0).normal(0, 0.1, 12 * 640)
    result = write_report(ev.finish(samples, {"run": "blank", "split": "val"}), ev.previews, tmp_path)
    det.close()
    assert result["faces_not_found"]["render"]["count"] == 12
    assert result["faces_not_found"]["gt"]["count"] == 0
    assert result["modes"]["full"]["lmd"]["count"] == 0
    assert result["modes"]["full"]["psnr"]["mean"] < 15
    # portrait mode pastes black only inside the mask: better than the full blank frame
    assert result["modes"]["portrait"]["psnr"]["mean"] > result["modes"]["full"]["psnr"]["mean"]
    assert result["lipsync_proxy"]["render"]["best_offset"] is None
    assert "unavailable" in result["lipsync_proxy"]["render"]
    assert result["lipsync_proxy"]["gt"]["frames_used"] == 12
    assert result["lpips"] == {"available": False, "reason": "no LPIPS weights in this test"}
    report = (tmp_path / "report.md").read_text()
    assert "render 12" in report and "LPIPS unavailable" in report
    assert (tmp_path / "frame_00000.png").is_file() and (tmp_path / "per_frame.png").is_file()


def test_syncnet_unavailable_without_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("NERFHEAD_WEIGHTS", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    res = lipsync.syncnet_scores([np.zeros((64, 64, 3), np.uint8)] * 10, np.zeros(6400))
    assert res["available"] is False and "syncnet" in res["reason"]


def test_syncnet_runs_with_random_weights(tmp_path):
    torch.manual_seed(0)
    weights = tmp_path / "syncnet_random.model"
    torch.save({f"__S__.{k}": v for k, v in lipsync.build_syncnet().state_dict().items()}, weights)
    rng = np.random.default_rng(0)
    n = 10
    frames = [rng.integers(0, 256, (128, 128, 3), dtype=np.uint8) for _ in range(n)]
    lm = np.stack([np.linspace(150, 350, 478), np.linspace(180, 380, 478)], 1)
    res = lipsync.syncnet_scores(frames, rng.normal(0, 0.1, n * 640), weights, landmarks=[lm] * n)
    assert res["available"] and res["windows"] == n - 5
    assert res["lse_d"] >= 0 and res["lse_c"] >= 0 and -15 <= res["offset"] <= 15


def test_mfcc_shape_and_energy():
    sr = 16000
    tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(sr) / sr)
    feat = lipsync.mfcc(tone, sr)
    assert feat.shape == (99, 13)  # 1 + ceil((16000 - 400) / 160) frames
    quiet = lipsync.mfcc(tone * 0.1, sr)
    # c0 is log frame energy: a 10x quieter signal has 100x less energy
    assert np.allclose(feat[:, 0] - quiet[:, 0], np.log(100), atol=1e-6)
    assert np.allclose(feat[:, 1:], quiet[:, 1:], atol=1e-6)


def test_sync_proxy_constant_mouth_is_reported():
    lm = np.zeros((478, 2))
    lm[lipsync.EYE_OUTER_LEFT] = [60, 0]
    lm[lipsync.LOWER_LIP_BOTTOM] = [0, 7]
    samples = np.random.default_rng(0).normal(0, 0.1, 30 * 640) * np.repeat(
        np.arange(30) % 4 == 0, 640)
    res = lipsync.sync_proxy([lm] * 30, samples)
    assert res["best_offset"] is None and "never moves" in res["unavailable"]
    assert res["offsets"] == list(range(-6, 7))  # a 30-frame sequence searches +-6 frames
