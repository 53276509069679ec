"""Background plate, gt_imgs and torso_imgs on a synthetic clip with known background."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from preprocess.background import BACKGROUND_STEP, torso_rgba
from preprocess.config import load_preprocess_config
from preprocess.parsing import BG, HEAD, NECK, REGION_RGB, TORSO
from preprocess.steps import StepContext, StepError

S = 96  # frame side
N = 8
NECK_FILL = 4


def true_background() -> np.ndarray:
    """A smooth texture (BGR uint8) that survives JPEG well but is far from flat."""
    y, x = np.mgrid[0:S, 0:S].astype(np.float32)
    b = 128 + 60 * np.sin(x / 7.0) * np.cos(y / 9.0)
    g = 100 + 80 * np.sin((x + y) / 11.0)
    r = 60 + 0.8 * x + 0.5 * y
    return np.clip(np.stack([b, g, r], -1), 0, 255).astype(np.uint8)


def person_regions(cx: int) -> np.ndarray:
    """Head disc, a neck strip under it and a torso block at the bottom, centred at ``cx``."""
    y, x = np.mgrid[0:S, 0:S]
    region = np.full((S, S), BG, np.uint8)
    region[(np.abs(x - cx) <= 20) & (y >= 76)] = TORSO
    region[(np.abs(x - cx) <= 5) & (y >= 50) & (y < 76)] = NECK
    region[(x - cx) ** 2 + (y - 36) ** 2 <= 15 ** 2] = HEAD
    return region


@pytest.fixture()
def clip(tmp_path):
    bg = true_background()
    rng = np.random.default_rng(0)
    centres = np.linspace(16, S - 16, N).round().astype(int)
    for sub in ("ori_imgs", "parsing"):
        (tmp_path / sub).mkdir()
    for i, cx in enumerate(centres):
        region = person_regions(cx)
        img = bg.copy()
        person_colour = np.array([[30, 40, 200], [40, 200, 40], [200, 60, 30]], np.uint8)
        for k, rid in enumerate((HEAD, NECK, TORSO)):
            img[region == rid] = person_colour[k]
        img[region == NECK] = (rng.integers(0, 30, ((region == NECK).sum(), 1)) + [40, 170, 40]).astype(np.uint8)
        cv2.imwrite(str(tmp_path / "ori_imgs" / f"{i}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 100])
        cv2.imwrite(str(tmp_path / "parsing" / f"{i}.png"), REGION_RGB[region][:, :, ::-1])
    (tmp_path / "manifest.json").write_text(json.dumps({"video": {"num_frames": N}}))
    cfg = load_preprocess_config(None, {"background": {"num_samples": N, "neck_fill_px": NECK_FILL}})
    ctx = StepContext(tmp_path, tmp_path / "none.mp4", cfg, {"video": {"num_frames": N}})
    return ctx, bg, centres


def test_plate_gt_and_torso(clip):
    ctx, bg, centres = clip
    stats = BACKGROUND_STEP.run(ctx)
    BACKGROUND_STEP.check(ctx)
    d = ctx.data_dir
    plate = cv2.imread(str(d / "bc.jpg")).astype(int)
    # where some frame saw the background >= 5 px away from the person, the plate is the truth
    far = np.zeros((S, S), bool)
    for cx in centres:
        person = (person_regions(cx) != BG).astype(np.uint8)
        far |= cv2.distanceTransform(1 - person, cv2.DIST_L2, 5) >= 5
    assert far.mean() > 0.8
    err = np.abs(plate - bg.astype(int))[far]
    assert err.mean() < 2.0 and err.max() < 20
    assert stats["plate_filled_fraction"] == pytest.approx(1 - far.mean(), abs=0.02)

    for i, cx in enumerate(centres):
        region = person_regions(cx)
        frame = cv2.imread(str(d / "ori_imgs" / f"{i}.jpg")).astype(int)
        gt = cv2.imread(str(d / "gt_imgs" / f"{i}.jpg")).astype(int)
        inner_bg = cv2.erode((region == BG).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        inner_person = cv2.erode((region != BG).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        assert np.abs(gt - plate)[inner_bg].mean() < 2.0  # background: the plate
        assert np.abs(gt - frame)[inner_person].mean() < 2.0  # person: the frame

        rgba = cv2.imread(str(d / "torso_imgs" / f"{i}.png"), cv2.IMREAD_UNCHANGED)
        assert rgba.shape == (S, S, 4)
        alpha = rgba[..., 3]
        body = (region == NECK) | (region == TORSO)
        assert (alpha[body] == 255).all() and (alpha[region == BG] == 0).all()
        assert np.abs(rgba[..., :3].astype(int) - frame)[body].max() == 0
        # the neck continues NECK_FILL rows under the head with its top pixel's colour ...
        cols = np.flatnonzero((region == NECK).any(0))
        fill = np.zeros((S, S), bool)
        for x in cols:
            top = int(np.argmax(region[:, x] == NECK))
            fill[top - NECK_FILL:top, x] = True
            assert (rgba[top - NECK_FILL:top, x, :3] == frame[top, x]).all()
        assert (region[fill] == HEAD).all() and (alpha[fill] == 255).all()
        # ... and the rest of the head is transparent
        assert (alpha[(region == HEAD) & ~fill] == 0).all()
    # a rerun keeps every frame; a changed setting rewrites them
    assert BACKGROUND_STEP.run(ctx)["reused_frames"] == N
    ctx.cfg.background.neck_fill_px = 2
    assert BACKGROUND_STEP.run(ctx)["reused_frames"] == 0


def test_missing_frame_names_the_file(clip):
    ctx, _, _ = clip
    (ctx.data_dir / "ori_imgs" / "3.jpg").unlink()
    with pytest.raises(StepError, match=r"background.*ori_imgs/3\.jpg"):
        BACKGROUND_STEP.run(ctx)
    assert not list(ctx.data_dir.glob(".*")) and not list((ctx.data_dir / "gt_imgs").glob(".*"))


def test_missing_parsing_names_the_file(clip):
    ctx, _, _ = clip
    (ctx.data_dir / "parsing" / "5.png").unlink()
    with pytest.raises(StepError, match=r"parsing/5\.png"):
        BACKGROUND_STEP.run(ctx)


def test_neck_fill_bridges_a_gap_to_the_chin():
    region = np.full((12, 3), BG, np.uint8)
    region[0:4, :] = HEAD
    region[6:10, 1] = NECK  # a 2-row background gap under the chin in the middle column
    region[10:, :] = TORSO
    bgr = np.arange(12 * 3 * 3, dtype=np.uint8).reshape(12, 3, 3)
    out = torso_rgba(bgr, region, neck_fill_px=3)
    assert (out[1:6, 1, 3] == 255).all() and (out[1:6, 1, :3] == bgr[6, 1]).all()
    assert out[0, 1, 3] == 0  # 3 rows into the head and no further
    assert (out[:10, [0, 2], 3] == 0).all()  # columns without neck: untouched
    assert (out[10:, :, 3] == 255).all()


def _torso_rgba_loop(bgr, region, neck_fill_px):
    """The column-by-column definition of the neck fill (the original implementation)."""
    body = (region == NECK) | (region == TORSO)
    out = np.zeros((*region.shape, 4), np.uint8)
    out[body, :3] = bgr[body]
    out[body, 3] = 255
    neck, head = region == NECK, region == HEAD
    for x in np.unique(np.nonzero(neck)[1]):
        top = int(np.argmax(neck[:, x]))
        above = np.flatnonzero(head[:top, x])
        if above.size == 0 or top - 1 - above[-1] > neck_fill_px:
            continue
        y0 = max(above[-1] + 1 - neck_fill_px, 0)
        out[y0:top, x, :3] = bgr[top, x]
        out[y0:top, x, 3] = 255
    return out


def test_vectorized_torso_matches_the_column_loop():
    rng = np.random.default_rng(4)
    for _ in range(20):
        region = rng.choice([BG, HEAD, NECK, TORSO], size=(40, 30), p=[0.4, 0.3, 0.15, 0.15])
        region = region.astype(np.uint8)
        bgr = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
        for fill in (0, 3, 12):
            assert np.array_equal(torso_rgba(bgr, region, fill), _torso_rgba_loop(bgr, region, fill))


def test_foreign_scene_frames_stay_out_of_the_plate(clip):
    """Two frames from 'another session' (another background colour, a person elsewhere):
    listed in scenes.json, they give the plate nothing; without it, they leak into it."""
    ctx, bg, centres = clip
    d = ctx.data_dir
    other = np.full((S, S, 3), (40, 40, 40), np.uint8)
    for i in (2, 5):
        region = np.full((S, S), BG, np.uint8)  # the person sat elsewhere: a corner of torso
        region[-10:, -10:] = TORSO
        img = other.copy()
        img[region != BG] = (200, 200, 200)
        cv2.imwrite(str(d / "ori_imgs" / f"{i}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 100])
        cv2.imwrite(str(d / "parsing" / f"{i}.png"), REGION_RGB[region][:, :, ::-1])

    def plate_error():
        BACKGROUND_STEP.run(ctx)
        return np.abs(cv2.imread(str(d / "bc.jpg")).astype(int) - bg.astype(int)).mean()

    leaked = plate_error()
    (d / "scenes.json").write_text(json.dumps({
        "num_frames": N, "cuts": [2, 3, 5, 6], "foreign_frames": [[2, 3], [5, 6]],
        "excluded_frames": [], "shots": []}))
    stats = BACKGROUND_STEP.run(ctx)
    assert stats["plate_excluded_frames"] == 2 and stats["plate_samples"] == N - 2
    assert plate_error() < 0.25 * leaked and leaked > 10


def test_one_and_two_workers_write_the_same_files(clip, tmp_path_factory):
    import filecmp
    import shutil

    ctx, _, _ = clip
    copy = tmp_path_factory.mktemp("bg2")
    shutil.copytree(ctx.data_dir, copy, dirs_exist_ok=True)
    ctx.cfg.background.chunk_frames = 3
    ctx.cfg.workers = 1
    BACKGROUND_STEP.run(ctx)
    ctx2 = StepContext(copy, copy / "none.mp4", ctx.cfg, ctx.manifest)
    ctx2.cfg.workers = 2
    BACKGROUND_STEP.run(ctx2)
    for sub, ext in (("gt_imgs", "jpg"), ("torso_imgs", "png")):
        for i in range(N):
            assert filecmp.cmp(ctx.data_dir / sub / f"{i}.{ext}", copy / sub / f"{i}.{ext}",
                               shallow=False), (sub, i)
    assert filecmp.cmp(ctx.data_dir / "bc.jpg", copy / "bc.jpg", shallow=False)
