"""decode + landmarks steps on the first seconds of the real clips, and bad inputs."""

from __future__ import annotations

import json
import subprocess
import wave
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from preprocess import driver
from preprocess.decode import DECODE, DecodeConfig, choose_crop
from preprocess.landmarks import (IBUG68_FROM_MEDIAPIPE, LANDMARKS, LandmarksConfig, fill_gaps,
                                  load_ibug68)
from preprocess.steps import StepError


def ffmpeg(*args):
    import imageio_ffmpeg

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-y", "-loglevel", "error", *map(str, args)],
                   check=True)


def cfg(seconds=2.0, **decode):
    return SimpleNamespace(decode=DecodeConfig(max_seconds=seconds, **decode),
                           landmarks=LandmarksConfig(), weights_dir=None)


def decode(video, out, c=None, steps=(DECODE,)):
    driver.run_steps(video, out, c or cfg(), steps=list(steps))
    return json.loads((out / "manifest.json").read_text())


@pytest.fixture(scope="module")
def grid_data(grid_video, tmp_path_factory):
    out = tmp_path_factory.mktemp("grid")
    return out, decode(grid_video, out, steps=(DECODE, LANDMARKS))


@pytest.mark.parametrize("clip", ["grid", "hdtf"])
def test_decode_first_two_seconds(clip, grid_video, hdtf_video, grid_data, tmp_path):
    if clip == "grid":
        out, m = grid_data
    else:
        out = tmp_path / "hdtf"
        m = decode(hdtf_video, out)
    v = m["video"]
    src_w, src_h = (360, 288) if clip == "grid" else (512, 512)
    assert v["source_size"] == [src_w, src_h] and v["source_fps"] == 25.0
    assert abs(v["num_frames"] - 50) <= 1
    x0, y0, side = v["crop_box"]
    assert 0 <= x0 and 0 <= y0 and x0 + side <= src_w and y0 + side <= src_h
    assert side >= 0.6 * min(src_w, src_h)  # a head-and-shoulders crop, not a face close-up
    jpgs = sorted((out / "ori_imgs").glob("*.jpg"), key=lambda p: int(p.stem))
    assert [int(p.stem) for p in jpgs] == list(range(v["num_frames"]))
    for p in (jpgs[0], jpgs[-1]):
        assert cv2.imread(str(p)).shape == (512, 512, 3)
    with wave.open(str(out / "aud.wav")) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
        assert w.getnframes() == pytest.approx(v["num_frames"] / 25 * 16000, abs=16)
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    assert np.abs(pcm).max() > 1000  # real speech, not silence
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_decoded_frame_matches_the_source_crop(grid_video, grid_data):
    out, m = grid_data
    x0, y0, side = m["video"]["crop_box"]
    import imageio_ffmpeg

    raw = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-i", str(grid_video),
                          "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "bgr24", "-"],
                         capture_output=True, check=True).stdout
    first = np.frombuffer(raw, np.uint8).reshape(288, 360, 3)
    expected = cv2.resize(first[y0:y0 + side, x0:x0 + side], (512, 512), interpolation=cv2.INTER_AREA)
    got = cv2.imread(str(out / "ori_imgs" / "0.jpg"))
    assert np.abs(got.astype(float) - expected).mean() < 6.0


def test_choose_crop_stays_inside_and_below_the_face():
    c = DecodeConfig(crop_scale=2.0, crop_shift_down=0.2)
    x0, y0, side = choose_crop([(100, 50, 200, 170)] * 3, 640, 480, c)  # face 100x120
    assert side == 240 and x0 == 30 and y0 == int(round(110 + 24 - 120))
    x0, y0, side = choose_crop([(0, 0, 150, 150)], 360, 288, c)  # big face near a corner
    assert side == 288 and x0 == 0 and y0 == 0
    x0, y0, side = choose_crop([(300, 200, 350, 260)], 360, 288, c)  # near the far corner
    assert x0 + side <= 360 and y0 + side <= 288


def test_landmarks_on_grid(grid_data):
    out, m = grid_data
    n = m["video"]["num_frames"]
    stats = m["steps"]["landmarks"]["stats"]
    assert stats["frames_with_face"] == n and stats["interpolated_ranges"] == []
    lms = np.load(out / "landmarks.npy")
    assert lms.shape == (n, 478, 3)
    assert lms[..., :2].min() > 0 and lms[..., :2].max() < 512
    bs, raw = np.load(out / "bs.npy"), np.load(out / "bs_raw.npy")
    assert bs.shape == raw.shape == (n, 52)
    jaw = bs[:, stats["blendshape_names"].index("jawOpen")]
    assert jaw.max() - jaw.min() > 0.1  # the speaker's mouth opens and closes
    assert np.abs(np.diff(bs, axis=0)).mean() < np.abs(np.diff(raw, axis=0)).mean()  # smoothed
    for i in (0, n - 1):
        ibug = load_ibug68(out / "ori_imgs" / f"{i}.lms")
        assert np.allclose(ibug, lms[i, list(IBUG68_FROM_MEDIAPIPE), :2], atol=0.01)
        # iBUG layout: jaw 8 is the chin (lowest jaw point), right eye left of left eye in the
        # image, brows above eyes, nose tip between eyes and mouth, mouth corners 48 < 54
        assert ibug[:17, 1].argmax() in (7, 8, 9)
        assert ibug[0, 0] < ibug[8, 0] < ibug[16, 0]
        assert ibug[36, 0] < ibug[39, 0] < ibug[42, 0] < ibug[45, 0]
        assert ibug[19, 1] < ibug[37, 1] and ibug[24, 1] < ibug[44, 1]
        assert ibug[39, 1] < ibug[30, 1] < ibug[51, 1] < ibug[57, 1]
        assert ibug[48, 0] < ibug[51, 0] < ibug[54, 0] and ibug[60, 0] < ibug[64, 0]


def test_fill_gaps_interpolates_short_runs_and_rejects_long_ones():
    found = np.array([False, True, True, False, False, True, True])
    arr = np.arange(7, dtype=np.float32)[:, None] * 10
    arr[~found] = -1
    runs = fill_gaps(found, [arr], max_gap=2)
    assert runs == [(0, 0), (3, 4)]
    assert arr[:, 0].tolist() == [10, 10, 20, 30, 40, 50, 60]  # held at the start, linear inside
    with pytest.raises(ValueError, match="frames 3-4"):
        fill_gaps(found, [arr.copy()], max_gap=1)
    with pytest.raises(ValueError, match="no face in any"):
        fill_gaps(np.zeros(3, bool), [np.zeros((3, 2))], max_gap=5)


# ----------------------------------------------------------------------------- bad inputs
@pytest.fixture(scope="module")
def bad_inputs(grid_video, hdtf_video, tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    (d / "text.mp4").write_text("this is not a video\n" * 100)
    data = hdtf_video.read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 3])
    ffmpeg("-i", grid_video, "-t", "2", "-an", "-c:v", "copy", d / "no_audio.mp4")
    ffmpeg("-f", "lavfi", "-i", "color=c=gray:s=320x240:r=25:d=2", "-f", "lavfi", "-i",
           "sine=frequency=440:sample_rate=16000:duration=2", "-shortest", "-c:v", "libx264",
           "-pix_fmt", "yuv420p", "-c:a", "aac", d / "no_face.mp4")
    ffmpeg("-i", hdtf_video, "-t", "0.6", "-c:v", "libx264", "-c:a", "aac", d / "short.mp4")
    return d


@pytest.mark.parametrize("name, message", [
    ("missing.mp4", "video file not found"),
    ("text.mp4", "not a readable video"),
    ("truncated.mp4", "not a readable video|corrupt"),
    ("no_audio.mp4", "no audio track"),
    ("no_face.mp4", "no face found"),
    ("short.mp4", "too short"),
])
def test_bad_input_is_reported_with_the_file(bad_inputs, tmp_path, name, message):
    video = bad_inputs / name
    out = tmp_path / "out"
    with pytest.raises(StepError, match=message) as err:
        decode(video, out, cfg(seconds=None))
    assert "decode" in str(err.value) and name in str(err.value)
    m = json.loads((out / "manifest.json").read_text())
    assert "decode" not in m["steps"]
    assert not (out / "ori_imgs").exists() and not (out / "aud.wav").exists()
    assert not [p for p in out.iterdir() if p.name != "manifest.json"]  # nothing half-written


def test_variable_frame_rate_source_is_resampled_and_noted(hdtf_video, tmp_path):
    # keep 3 of every 5 frames with their original timestamps: irregular gaps, avg ~15 fps
    vfr = tmp_path / "vfr.mp4"
    ffmpeg("-i", hdtf_video, "-t", "2", "-vf", r"select='lt(mod(n\,5)\,3)'", "-fps_mode", "vfr",
           "-c:v", "libx264", "-c:a", "aac", vfr)
    m = decode(vfr, tmp_path / "out", cfg(seconds=None))
    v = m["video"]
    assert v["variable_frame_rate"] is True
    assert abs(v["num_frames"] - 50) <= 1  # 25 fps by timestamp: dropped frames are repeated
    assert len(list((tmp_path / "out" / "ori_imgs").glob("*.jpg"))) == v["num_frames"]


def test_crop_finds_the_head_in_a_larger_frame(hdtf_video, tmp_path):
    # the HDTF clip pasted at (600, 150) into a 1280x720 grey frame: the crop must sit on it
    padded = tmp_path / "padded.mp4"
    ffmpeg("-i", hdtf_video, "-t", "1.5", "-vf", "pad=1280:720:600:150:color=gray",
           "-c:v", "libx264", "-c:a", "aac", padded)
    m = decode(padded, tmp_path / "out", cfg(seconds=None, crop_size=256))
    x0, y0, side = m["video"]["crop_box"]
    assert m["video"]["source_size"] == [1280, 720]
    assert 600 < x0 + side / 2 < 1112 and 150 < y0 + side / 2 < 662
    assert 350 < side <= 720 and y0 + side <= 720
    img = cv2.imread(str(tmp_path / "out" / "ori_imgs" / "0.jpg"))
    assert img.shape == (256, 256, 3)
