"""Shot cuts and foreign-session shots: unit tests on synthetic signals, and a clip joined at
test time from the shared GRID video (a main-session sentence, then one from the other
session, then the main session again)."""

from __future__ import annotations

import json
import subprocess

import cv2
import numpy as np
import pytest

from preprocess.config import load_preprocess_config
from preprocess.scenes import (SCENES_STEP, ScenesConfig, classify_shots, detect_cuts,
                               frame_changes, shot_ranges)
from preprocess.steps import StepContext


def test_cuts_from_change_spikes():
    rng = np.random.default_rng(0)
    change = 0.6 + 0.1 * rng.random(300)  # talking: small changes every frame
    change[[75, 150, 225]] = [4.0, 7.0, 5.0]  # joins
    change[100] = 1.5  # a blink: larger than usual but no cut
    cuts = detect_cuts(change, ScenesConfig())
    assert cuts.tolist() == [75, 150, 225]
    assert shot_ranges(cuts, 300) == [(0, 75), (75, 150), (150, 225), (225, 300)]
    assert detect_cuts(np.full(50, 0.01), ScenesConfig()).size == 0  # a still clip: no cuts
    thumbs = np.zeros((3, 4, 4, 3), np.float32)
    thumbs[2] += 10
    assert frame_changes(thumbs).tolist() == [0.0, 0.0, 10.0]


def test_foreign_shot_by_background_or_clothing():
    shots = [(0, 100), (100, 200), (200, 230), (230, 330), (330, 340)]
    main = np.array([[60.0, -10, -20], [40.0, 5, 5]])  # background, torso (Lab)
    colours = [np.repeat(main[None], 4, 0) + k for k in (0, 1, 0, -1, 0)]
    colours[2] = colours[2] + np.array([[-20.0, 5, 5], [0, 0, 0]])  # darker background
    colours[4] = colours[4] + np.array([[0.0, 0, 0], [30, 10, 0]])  # another shirt only
    records, ref = classify_shots(shots, colours, [100, 101, 110, 100, 99], ScenesConfig())
    assert [r["scene"] for r in records] == ["main", "main", "foreign", "main", "foreign"]
    assert records[2]["scale"] == pytest.approx(1.1, abs=0.01)
    assert np.allclose(ref["background_lab"], main[0], atol=1.01)


SEGMENTS = ((1.0, 1.0), (76.0, 1.0), (150.0, 1.0))  # (start s, length s); 75-78 s: other session
SIZE = 256


@pytest.fixture(scope="module")
def joined_clip(tmp_path_factory, grid_video, weights_dir):
    """Frames of three GRID segments joined into one dataset folder (crop around the face,
    256 px), with landmarks and parsing from the project's own steps."""
    import imageio_ffmpeg

    from preprocess.landmarks import LANDMARKS
    from preprocess.parsing import PARSING_STEP

    d = tmp_path_factory.mktemp("joined")
    (d / "ori_imgs").mkdir()
    frames = []
    for start, length in SEGMENTS:
        raw = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-ss", str(start),
                              "-i", str(grid_video), "-t", str(length), "-f", "rawvideo",
                              "-pix_fmt", "bgr24", "-"], capture_output=True, check=True).stdout
        frames.append(np.frombuffer(raw, np.uint8).reshape(-1, 288, 360, 3))
    bounds = np.cumsum([0] + [len(f) for f in frames])
    for i, f in enumerate(np.concatenate(frames)):
        crop = cv2.resize(f[12:276, 48:312], (SIZE, SIZE), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(d / "ori_imgs" / f"{i}.jpg"), crop, [cv2.IMWRITE_JPEG_QUALITY, 95])
    manifest = {"video": {"num_frames": int(bounds[-1]), "fps": 25.0}}
    (d / "manifest.json").write_text(json.dumps(manifest))
    cfg = load_preprocess_config(None, {"weights_dir": str(weights_dir), "workers": 1,
                                        "parsing": {"parser": "offline"}})
    ctx = StepContext(d, grid_video, cfg, manifest)
    LANDMARKS.run(ctx)
    PARSING_STEP.run(ctx)
    return ctx, bounds


def test_joined_clip_cuts_and_foreign_session(joined_clip):
    ctx, bounds = joined_clip
    stats = SCENES_STEP.run(ctx)
    SCENES_STEP.check(ctx)
    doc = json.loads((ctx.data_dir / "scenes.json").read_text())
    assert doc["cuts"] == bounds[1:-1].tolist()
    assert [s["scene"] for s in doc["shots"]] == ["main", "foreign", "main"]
    assert doc["foreign_frames"] == [bounds[1:3].tolist()]
    assert doc["shots"][1]["scale"] > 1.05  # the other session's head is closer
    assert doc["excluded_frames"] == [] and stats["foreign_frames"] == bounds[2] - bounds[1]
    assert (ctx.data_dir / "previews" / "scenes.png").stat().st_size > 20_000
    ctx.cfg.scenes.drop_foreign = True
    SCENES_STEP.run(ctx)
    assert json.loads((ctx.data_dir / "scenes.json").read_text())["excluded_frames"] == \
        [bounds[1:3].tolist()]
