"""The ``av_sync`` step (issue 9): offsets and drifts injected into known-good material must be
reported within stated tolerances, out-of-sync data refused with a way forward, and unclear
evidence reported as unmeasured, never as in sync.

Fast tests: a synthetic mouth that opens with the real GRID speech (one frame after it, as the
speaker's lips do) and that speech shifted or stretched. Slow test: the real mouth
(MediaPipe landmarks of 30 s of GRID) against its audio, delayed in the clip's content.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import wave
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from preprocess import driver
from preprocess.av_sync import (AV_SYNC, PLOT, AvSyncConfig, corr_at_lags, fit_line, measure,
                                mouth_opening, speech_energy)
from preprocess.decode import DecodeConfig
from preprocess.steps import StepError

FPS, SR, SPF = 25, 16000, 640  # samples per frame
OFFSET_TOL = 0.5  #: frames: reported offset vs injected
DRIFT_TOL = 1.5  #: frames per minute: reported drift vs injected


def ffmpeg(*args) -> bytes:
    import imageio_ffmpeg

    return subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-y", "-loglevel", "error",
                           *map(str, args)], check=True, capture_output=True).stdout


@pytest.fixture(scope="module")
def speech(grid_video) -> np.ndarray:
    """The first 60 s of GRID's speech at 16 kHz (decoded on its timestamps)."""
    from preprocess.decode import decode_audio_frames, place_on_clock

    samples, frames = decode_audio_frames(grid_video, 0.0, 60.0, SR)
    return place_on_clock(samples, frames, 60 * SR, jitter=32)[0]


def warp(x: np.ndarray, ahead_frames) -> np.ndarray:
    """The audio ``ahead_frames(t)`` frames early at time t (a number or a function of the
    time in seconds): out(t) = x(t + ahead(t)), linearly interpolated, silence outside."""
    t = np.arange(len(x)) / SR
    ahead = ahead_frames(t) if callable(ahead_frames) else np.full_like(t, ahead_frames)
    return np.interp(t + ahead / FPS, t, x, left=0.0, right=0.0).astype(np.float32)


def synthetic_landmarks(opening: np.ndarray) -> np.ndarray:
    """[N, 478, 3] with the eyes 100 px apart and the lips ``opening`` x 100 px apart."""
    lms = np.zeros((len(opening), 478, 3), np.float32)
    lms[:, 33, :2], lms[:, 263, :2] = (200, 200), (300, 200)
    lms[:, 0, :2] = (250, 300)
    lms[:, 17, 0], lms[:, 17, 1] = 250, 300 + 100 * opening
    return lms


def mouth_from(speech: np.ndarray, rng) -> np.ndarray:
    """A mouth that opens with the speech energy one frame after it, plus landmark noise."""
    n = len(speech) // SPF
    e = speech_energy(speech, n)
    o = np.clip(e - np.percentile(e, 20), 0, None)
    o = np.convolve(o, [0.25, 0.5, 0.25], mode="same")  # the lips are smoother than sound
    o = np.concatenate([[o[0]], o[:-1]])  # one frame after the sound
    return 0.02 + 0.05 * o / o.max() + rng.normal(0, 0.004, n)


def write_dataset(d: Path, lms: np.ndarray, audio: np.ndarray) -> None:
    d.mkdir(parents=True, exist_ok=True)
    np.save(d / "landmarks.npy", lms)
    with wave.open(str(d / "aud.wav"), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(SR)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    (d / "manifest.json").write_text(json.dumps({
        "video": {"num_frames": len(lms), "fps": FPS}, "audio": {"timing": "timestamps"},
        "steps": {}}))


def run_step(d: Path, **cfg) -> dict:
    driver.run_steps(d / "none.mp4", d, SimpleNamespace(av_sync=AvSyncConfig(**cfg)),
                     steps=[AV_SYNC])
    return json.loads((d / "manifest.json").read_text())["steps"]["av_sync"]["stats"]


# ----------------------------------------------------------------------------- synthetic
@pytest.mark.parametrize("ahead", [0.0, 2.0, -3.0, 12.0, -30.0])
def test_constant_offset_is_measured(speech, ahead):
    rng = np.random.default_rng(0)
    o = mouth_from(speech, rng)
    r = measure(o, speech_energy(warp(speech, ahead), len(o)), AvSyncConfig())
    assert r["windows_reliable"] >= 0.8 * r["windows_total"]
    assert r["offset_frames"] == pytest.approx(ahead, abs=OFFSET_TOL)
    assert abs(r["drift_frames_per_minute"]) < DRIFT_TOL
    assert r["status"] == ("pass" if ahead == 0 else "warn" if abs(ahead) <= 3 else "fail")


@pytest.mark.parametrize("drift", [6.0, -10.0, 20.0])  # frames per minute
def test_drift_is_measured(speech, drift):
    rng = np.random.default_rng(1)
    o = mouth_from(speech, rng)
    r = measure(o, speech_energy(warp(speech, lambda t: drift * t / 60), len(o)), AvSyncConfig())
    assert r["drift_frames_per_minute"] == pytest.approx(drift, abs=DRIFT_TOL)
    assert r["offset_frames"] == pytest.approx(drift / 2, abs=OFFSET_TOL)  # at mid-clip (30 s)
    assert r["end_offset_frames"] == pytest.approx(drift, abs=2 * OFFSET_TOL)
    assert r["status"] == "fail"


def test_windows_without_speech_or_relation_are_not_counted(speech):
    rng = np.random.default_rng(2)
    o = mouth_from(speech, rng)
    quiet = speech.copy()
    quiet[20 * SR:40 * SR] *= 0.001  # 20 s of near silence (speech 60 dB down)
    r = measure(o, speech_energy(quiet, len(o)), AvSyncConfig())
    silent = [w for w in r["windows"] if w["start_s"] >= 20 and w["end_s"] <= 40]
    assert silent and all(w["unreliable"] == "too little speech" for w in silent)
    assert r["status"] == "pass" and r["windows_with_speech"] < r["windows_total"]
    # a mouth unrelated to the speech: nothing above chance, so unmeasured (not "in sync")
    r = measure(rng.permutation(o), speech_energy(speech, len(o)), AvSyncConfig())
    assert r["status"] == "unmeasured" and r["offset_frames"] is None
    # shorter than min_seconds: no window at all
    short = measure(o[:240], speech_energy(speech[:240 * SPF], 240), AvSyncConfig())
    assert short["status"] == "unmeasured" and short["windows_total"] == 0


def test_fit_line_is_robust_to_an_outlier_window():
    cfg = AvSyncConfig()
    wins = [{"centre_s": 5.0 + 5 * i, "offset_frames": 0.1 * i, "reliable": True,
             "speech_fraction": 1.0, "correlation": 0.5} for i in range(10)]
    wins[4]["offset_frames"] = 25.0  # one wild window
    r = fit_line(wins, 50.0, cfg)
    assert r["drift_frames_per_minute"] == pytest.approx(1.2, abs=1e-6)  # 0.1 per 5 s
    assert r["start_offset_frames"] == pytest.approx(-0.1, abs=1e-6)
    assert r["max_window_offset_frames"] == 25.0 and r["status"] == "pass"


def test_corr_at_lags_matches_numpy():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=200), rng.normal(size=200)
    lags = np.arange(-5, 6)
    got = corr_at_lags(a, b, 10, 150, lags)
    for d, r in zip(lags, got):
        t = np.arange(max(10, d), min(150, 200 + d))
        assert r == pytest.approx(np.corrcoef(a[t], b[t - d])[0, 1], abs=1e-12)
    assert np.isnan(corr_at_lags(a, np.ones(200), 10, 150, lags)).all()  # constant: no correlation


def test_surrogates_keep_the_spectrum_and_lose_the_alignment(speech):
    from preprocess.av_sync import surrogates

    e = np.gradient(speech_energy(speech, len(speech) // SPF))
    sur = surrogates(e, 20)
    assert np.allclose(np.abs(np.fft.rfft(sur, axis=1)), np.abs(np.fft.rfft(e - e.mean())), rtol=1e-6, atol=1e-9)
    r = [np.corrcoef(e, s)[0, 1] for s in sur]
    assert np.abs(r).max() < 0.25 and np.abs(r).mean() < 0.08  # unrelated to the original
    assert np.array_equal(sur, surrogates(e, 20))  # deterministic


def test_mouth_opening_is_lip_gap_over_eye_distance():
    assert mouth_opening(synthetic_landmarks(np.array([0.0, 0.25])))[1] == pytest.approx(0.25)


# ----------------------------------------------------------------------------- the step
def test_step_refuses_out_of_sync_audio_with_a_way_forward(speech, tmp_path, caplog):
    rng = np.random.default_rng(4)
    lms = synthetic_landmarks(mouth_from(speech, rng))
    d = tmp_path / "late"
    write_dataset(d, lms, warp(speech, -6.0))  # the sound comes 6 frames after the mouth
    with pytest.raises(StepError) as err:
        run_step(d)
    msg = str(err.value)
    assert "av_sync" in msg and "aud.wav" in msg and "previews/av_sync.png" in msg
    assert re.search(r"behind the video by (5\.[5-9]|6\.[0-4])\d* frames", msg)
    assert re.search(r"decode.audio_offset=-0.2[2-5]\d", msg) and "av_sync.on_fail=proceed" in msg
    assert (d / PLOT).stat().st_size > 10000  # the plot is there to look at
    assert "av_sync" not in json.loads((d / "manifest.json").read_text())["steps"]
    # the user keeps it: a warning, the verdict on record
    with caplog.at_level(logging.WARNING, logger="preprocess"):
        rec = run_step(d, on_fail="proceed")
    assert rec["status"] == "fail" and rec["offset_frames"] == pytest.approx(-6, abs=OFFSET_TOL)
    assert "OUT OF SYNC, kept" in caplog.text
    # a drift gets no offset advice
    write_dataset(d, lms, warp(speech, lambda t: 10 * t / 60))
    with pytest.raises(StepError, match="drifts against the video"):
        run_step(d)


def test_step_passes_in_sync_audio_and_records_it(speech, tmp_path):
    rng = np.random.default_rng(5)
    d = tmp_path / "ok"
    write_dataset(d, synthetic_landmarks(mouth_from(speech, rng)), speech)
    rec = run_step(d)
    assert rec["status"] == "pass" and abs(rec["offset_frames"]) < OFFSET_TOL
    assert len(rec["windows"]) == rec["windows_total"] == 11  # 10-s windows every 5 s in 60 s
    assert rec["plot"] == PLOT and (d / PLOT).is_file()
    res = driver.run_steps(d / "none.mp4", d, SimpleNamespace(av_sync=AvSyncConfig()), steps=[AV_SYNC])
    assert res[0].status == "skipped"
    with pytest.raises(StepError, match="on_fail"):
        run_step(d, on_fail="ignore")


def test_step_says_a_short_clip_is_too_short_to_measure(speech, tmp_path, caplog):
    """An 8-s clip (as the HDTF one) gets no window: the warning says it is the length, and
    the manifest records it unmeasured, never in sync."""
    rng = np.random.default_rng(6)
    short = speech[:8 * SR]
    d = tmp_path / "short"
    write_dataset(d, synthetic_landmarks(mouth_from(short, rng)), short)
    with caplog.at_level(logging.WARNING, logger="preprocess"):
        rec = run_step(d)
    assert rec["status"] == "unmeasured" and rec["windows_total"] == 0
    assert "8.0 s long, shorter than av_sync.min_seconds (10 s)" in caplog.text
    assert "--drive VIDEO" in caplog.text and "0 of 0 windows" not in caplog.text


# --------------------------------------------------------------------------- real mouth
@pytest.fixture(scope="module")
def grid_delayed(grid_video, tmp_path_factory):
    """30 s of GRID (from 30 s in) whose audio CONTENT is 0.2 s late (re-encoded with adelay:
    the timestamps say it is in sync), decoded and landmarked."""
    from preprocess.decode import DECODE
    from preprocess.landmarks import LANDMARKS, LandmarksConfig

    d = tmp_path_factory.mktemp("delayed")
    video = d / "delayed.mp4"
    ffmpeg("-ss", 30, "-i", grid_video, "-t", 30, "-c:v", "libx264", "-preset", "ultrafast",
           "-af", "adelay=200", "-c:a", "aac", video)
    data = d / "data"
    cfg = SimpleNamespace(decode=DecodeConfig(crop_size=256, probe_frames=2),
                          landmarks=LandmarksConfig(max_gap=16), weights_dir=None)
    driver.run_steps(video, data, cfg, steps=[DECODE, LANDMARKS])
    return video, data


@pytest.mark.slow
def test_real_mouth_finds_the_injected_offset_and_drift(grid_delayed, tmp_path):
    from preprocess.decode import _write_audio
    from preprocess.driver import load_manifest, write_manifest

    video, data = grid_delayed
    with pytest.raises(StepError, match=r"behind the video by (4\.[5-9]|5\.[0-4])\d* frames.*"
                                        r"decode.audio_offset=-0.2"):
        run_step(data)
    # the advice works: the audio decoded 0.2 s earlier is in sync with the same mouth
    m = load_manifest(data)
    m["audio"] = _write_audio(video, data / "aud.wav", 0.0, m["video"]["num_frames"] / FPS,
                              DecodeConfig(audio_offset=-0.2))
    write_manifest(data, m)
    rec = run_step(data)
    assert rec["status"] == "pass" and abs(rec["offset_frames"]) < OFFSET_TOL
    # a drift of 12 frames/minute injected into the corrected audio
    samples = np.frombuffer((data / "aud.wav").read_bytes()[44:], "<i2") / 32768.0
    d = tmp_path / "drift"
    write_dataset(d, np.load(data / "landmarks.npy"), warp(samples, lambda t: 12 * t / 60))
    rec = run_step(d, on_fail="proceed")
    assert rec["drift_frames_per_minute"] == pytest.approx(12, abs=3 * DRIFT_TOL)
    assert rec["end_offset_frames"] == pytest.approx(6, abs=4 * OFFSET_TOL)
