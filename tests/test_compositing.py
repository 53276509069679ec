"""Portrait-Sync blending and paste-back: exactness outside the masks, placement inside."""

from __future__ import annotations

import numpy as np
import pytest

from nerfhead.render.compositing import feather_mask, paste_back, portrait_blend


def _noise(shape, seed):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_portrait_blend_keeps_non_face_pixels_exact():
    original, render = _noise((64, 64, 3), 0), _noise((64, 64, 3), 1)
    mask = np.zeros((64, 64), np.uint8)
    mask[20:40, 16:48] = 255
    mask[18:20, 16:48] = 100  # soft edge
    out = portrait_blend(render, original, mask)
    outside = mask == 0
    assert np.array_equal(out[outside], original[outside])
    assert np.array_equal(out[20:40, 16:48], render[20:40, 16:48])
    w = 100 / 255
    expect = np.rint(w * render[18:20, 16:48].astype(float) + (1 - w) * original[18:20, 16:48])
    assert np.abs(out[18:20, 16:48].astype(float) - expect).max() <= 1


def test_portrait_blend_rejects_mismatched_sizes():
    with pytest.raises(ValueError, match="differ"):
        portrait_blend(_noise((32, 32, 3), 0), _noise((64, 64, 3), 1), np.ones((64, 64)))


def test_feather_mask_shape_and_ramp():
    m = feather_mask(20, 4)
    assert m.shape == (20, 20) and m[10, 10] == 1.0
    # smoothstep of t = 0.2 and 0.8: 3t^2 - 2t^3
    assert m[0, 10] == pytest.approx(0.104) and m[3, 10] == pytest.approx(0.896) and m[4, 10] == 1.0
    assert m[0, 0] == pytest.approx(0.104)  # corners: the smaller of the two ramps


@pytest.mark.parametrize("method", ["feather", "laplacian"])
def test_paste_back_places_crop_and_leaves_outside_exact(method):
    frame = _noise((240, 320, 3), 2)
    crop = np.zeros((64, 64, 3), np.uint8)
    crop[..., 1] = 200  # uniform green crop
    box = (100, 50, 128)  # upscaled 2x into the frame
    out = paste_back(frame, crop, box, feather=8, method=method)
    inside = np.zeros(frame.shape[:2], bool)
    inside[50:178, 100:228] = True
    assert np.array_equal(out[~inside], frame[~inside])
    core = out[50 + 24:178 - 24, 100 + 24:228 - 24].astype(int)
    assert np.abs(core - [0, 200, 0]).max() <= 2  # the crop landed where the box says
    assert not np.array_equal(out[inside], frame[inside])


def test_paste_back_box_past_frame_edge():
    frame = _noise((100, 100, 3), 3)
    crop = np.full((40, 40, 3), 255, np.uint8)
    out = paste_back(frame, crop, (-10, 80, 40), feather=0)  # box hangs off left and bottom
    assert np.array_equal(out[:80], frame[:80]) and np.array_equal(out[:, 30:], frame[:, 30:])
    assert (out[80:, :30] == 255).all()
    # a box completely outside changes nothing
    assert np.array_equal(paste_back(frame, crop, (200, 200, 40)), frame)


def test_paste_back_region_mask_limits_the_paste():
    frame = _noise((128, 128, 3), 4)
    crop = np.zeros((64, 64, 3), np.uint8)
    region = np.zeros((64, 64), np.uint8)
    region[16:48, 16:48] = 255
    out = paste_back(frame, crop, (0, 0, 64), feather=0, region_mask=region)
    assert (out[20:44, 20:44] == 0).all()
    assert np.array_equal(out[:8, :], frame[:8, :])
