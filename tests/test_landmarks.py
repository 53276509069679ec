"""The landmarks step over workers: fixed chunks, so one worker and two write the same arrays;
gaps without a face are filled or refused."""

from __future__ import annotations

import json
import subprocess

import cv2
import numpy as np
import pytest

from preprocess.config import load_preprocess_config
from preprocess.landmarks import IBUG68_FROM_MEDIAPIPE, LANDMARKS, fill_gaps
from preprocess.steps import StepContext

N = 12


def test_fill_gaps_interpolates_short_runs_and_refuses_long_ones():
    found = np.array([1, 0, 0, 1, 1, 0], bool)
    arr = np.arange(6, dtype=float)[:, None] * 10
    arr[~found] = -1
    assert fill_gaps(found, [arr], max_gap=2) == [(1, 2), (5, 5)]
    assert arr[:, 0].tolist() == [0, 10, 20, 30, 40, 40]  # ends hold the last detection
    with pytest.raises(ValueError, match="frames 1-2"):
        fill_gaps(found, [arr.copy()], max_gap=1)


@pytest.fixture(scope="module")
def two_copies(tmp_path_factory, hdtf_video):
    import imageio_ffmpeg

    raw = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(hdtf_video),
                          "-frames:v", str(N), "-f", "rawvideo", "-pix_fmt", "bgr24", "-"],
                         check=True, capture_output=True).stdout
    frames = np.frombuffer(raw, np.uint8).reshape(-1, 512, 512, 3)
    dirs = []
    for name in ("one", "two"):
        d = tmp_path_factory.mktemp(name)
        (d / "ori_imgs").mkdir()
        for i, f in enumerate(frames):
            cv2.imwrite(str(d / "ori_imgs" / f"{i}.jpg"), f, [cv2.IMWRITE_JPEG_QUALITY, 95])
        (d / "manifest.json").write_text(json.dumps({"video": {"num_frames": N, "fps": 25.0}}))
        dirs.append(d)
    return dirs


def test_one_and_two_workers_give_the_same_landmarks(two_copies, weights_dir):
    out = []
    for d, workers in zip(two_copies, (1, 2)):
        cfg = load_preprocess_config(None, {"weights_dir": str(weights_dir), "workers": workers,
                                            "landmarks": {"chunk_frames": 5}})
        ctx = StepContext(d, d / "none.mp4", cfg, json.loads((d / "manifest.json").read_text()))
        stats = LANDMARKS.run(ctx)
        LANDMARKS.check(ctx)
        assert stats["frames_with_face"] == N
        out.append(np.load(d / "landmarks.npy"))
        lms68 = np.loadtxt(d / "ori_imgs" / "7.lms")
        assert np.allclose(lms68, out[-1][7, IBUG68_FROM_MEDIAPIPE, :2], atol=0.01)
    assert np.array_equal(out[0], out[1])
    assert np.array_equal(np.load(two_copies[0] / "bs.npy"), np.load(two_copies[1] / "bs.npy"))
