"""Dataset loading: transforms, pose conversion, both folder layouts, bounded cache, rays."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nerfhead.data.dataset import DataConfig, DatasetError, TalkingHeadDataset, read_transforms
from nerfhead.data.synthetic import RADIUS, TORSO, make_dataset, render_gl
from nerfhead.models.rays import nerf_matrix_to_ngp, pixel_rays


@pytest.fixture(scope="module")
def ours(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("ours"), num_frames=23, size=48)


@pytest.fixture(scope="module")
def synctalk(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("synctalk"), num_frames=23, size=48, layout="synctalk")


def test_nerf_matrix_to_ngp_matches_formula():
    p = np.arange(16, dtype=np.float64).reshape(4, 4)
    p[3] = (0, 0, 0, 1)
    want = np.array([[4, -5, -6, 7 * 4], [8, -9, -10, 11 * 4], [0, -1, -2, 3 * 4], [0, 0, 0, 1]], float)
    np.testing.assert_array_equal(nerf_matrix_to_ngp(p), want)
    np.testing.assert_array_equal(nerf_matrix_to_ngp(torch.from_numpy(p)).numpy(), want)


def test_read_transforms(ours):
    c2w, cam, ids, aud = read_transforms(ours / "transforms_train.json")
    assert c2w.shape == (21, 4, 4) and list(ids) == list(range(21)) and list(aud) == list(range(21))
    assert (cam.height, cam.width, cam.cx, cam.cy) == (48, 48, 24.0, 24.0)
    assert cam.focal == pytest.approx(1.2 * 48)
    _, _, val_ids, _ = read_transforms(ours / "transforms_val.json")
    assert list(val_ids) == [21, 22]  # last N // 11 frames


def test_rays_of_converted_pose_hit_the_rendered_sphere(ours):
    """The OpenGL renderer and our ray convention (after nerf_matrix_to_ngp) agree per pixel."""
    ds = TalkingHeadDataset(ours, DataConfig())
    c2w_gl, cam = ds.poses_file[3].astype(np.float64), ds.camera
    _, hit_gl = render_gl(c2w_gl, cam.focal, cam.width, 0.5, 0.0)
    u, v = torch.meshgrid(torch.arange(cam.width), torch.arange(cam.height), indexing="xy")
    o, d = pixel_rays(ds.poses[3], cam, u.reshape(-1), v.reshape(-1))
    r = RADIUS * 4  # scale 4 of the conversion
    b = (o * d).sum(-1)
    hit = (b ** 2 - ((o * o).sum(-1) - r ** 2)) > 0
    agree = (hit.reshape(cam.height, cam.width).numpy() == hit_gl).mean()
    assert hit_gl.sum() > 100 and agree > 0.995


def test_nerfhead_layout_loads(ours):
    ds = TalkingHeadDataset(ours, DataConfig(image_size=24))
    assert len(ds) == 21 and ds.audio_kind == "mel" and ds.audio.shape == (23, 16, 80)
    assert isinstance(ds.audio, np.memmap)
    assert (ds.camera.height, ds.camera.width) == (24, 24)
    assert ds.camera.focal == pytest.approx(1.2 * 48 / 2)
    assert ds.image(0).shape == (24, 24, 3) and ds.image(0).dtype == np.uint8
    assert ds.expression(0).shape == (52,)


def test_synctalk_layout_loads(synctalk):
    assert not (synctalk / "manifest.json").exists() and not (synctalk / "aud_mel.npy").exists()
    assert "h" not in json.loads((synctalk / "transforms_train.json").read_text())
    ds = TalkingHeadDataset(synctalk, DataConfig(patch_size=8))
    assert ds.audio_kind == "precomputed" and ds.audio.shape == (23, 16, 29)
    assert (ds.camera.height, ds.camera.width) == (48, 48)  # read from gt_imgs/0.jpg
    x0, y0, x1, y1 = ds.mouth_box(0)  # from ori_imgs/0.lms (iBUG 48..67)
    lms = np.loadtxt(synctalk / "ori_imgs" / "0.lms")[48:68]
    assert x0 <= lms[:, 0].min() and x1 >= lms[:, 0].max()
    assert y0 <= lms[:, 1].min() and y1 >= lms[:, 1].max()


def test_ave_style_2d_audio_becomes_one_step_windows(synctalk, tmp_path):
    import shutil

    d = tmp_path / "ave"
    shutil.copytree(synctalk, d)
    np.save(d / "aud.npy", np.zeros((23, 512), np.float32))
    ds = TalkingHeadDataset(d)
    assert ds.audio.shape == (23, 1, 512)


def test_cache_is_bounded(ours):
    ds = TalkingHeadDataset(ours, DataConfig(cache_size=4))
    for i in range(len(ds)):
        ds.image(i)
        ds.head_background(i)
    assert len(ds._cache) == 4
    assert ds.cache_nbytes() == 4 * 48 * 48 * 3
    assert ds._cache.misses == 2 * len(ds)
    ds.image(len(ds) - 1)  # most recent entries stay
    assert ds._cache.hits == 1


def test_head_background_is_torso_over_plate(ours):
    ds = TalkingHeadDataset(ours)
    bg = ds.head_background(0).astype(int)
    plate = ds.background().astype(int)
    assert np.abs(bg[-2, 24] - np.array(TORSO) * 255).max() <= 3  # torso box at the bottom
    assert np.abs(bg[2, 2] - plate[2, 2]).max() <= 1


def test_random_and_mouth_sampling(ours):
    ds = TalkingHeadDataset(ours, DataConfig(num_rays=100, patch_size=8))
    g = torch.Generator().manual_seed(0)
    b = ds.sample(2, "random", g)
    assert b.rgb.shape == (100, 3) and b.patch is None
    img = torch.from_numpy(ds.image(2)).float() / 255
    torch.testing.assert_close(b.rgb, img[b.v, b.u])
    b2 = ds.sample(2, "random", torch.Generator().manual_seed(0))
    assert torch.equal(b.u, b2.u) and torch.equal(b.v, b2.v)  # a function of the generator
    m = ds.sample(2, "mouth", g)
    assert m.patch == (8, 8) and m.u.shape == (64,)
    x0, y0, x1, _ = ds.mouth_box(2)
    assert int(m.u.min()) >= x0 and int(m.u.max()) < x1 + 1 and int(m.v.min()) >= y0


def test_missing_image_names_the_file(ours, tmp_path):
    import shutil

    d = tmp_path / "broken"
    shutil.copytree(ours, d)
    (d / "gt_imgs" / "5.jpg").unlink()
    ds = TalkingHeadDataset(d)
    with pytest.raises(DatasetError, match="gt_imgs/5.jpg"):
        ds.image(5)
    (d / "transforms_train.json").unlink()
    with pytest.raises(DatasetError, match="transforms_train.json"):
        TalkingHeadDataset(d)


def test_audio_ids_out_of_range_are_rejected(ours, tmp_path):
    import shutil

    d = tmp_path / "short_audio"
    shutil.copytree(ours, d)
    np.save(d / "aud_mel.npy", np.zeros((10, 16, 80), np.float32))
    with pytest.raises(DatasetError, match="aud_id"):
        TalkingHeadDataset(d)


def test_auto_audio_prefers_mel_and_ow_side_by_side(tmp_path):
    """data.audio = auto reads aud_mel.npy and aud_ow.npy concatenated along the channels when
    both exist (the best kind on held-out speech), else mel; a part of the wrong length is
    refused with both files named."""
    from nerfhead.data.dataset import load_audio_features

    root = make_dataset(tmp_path / "d", num_frames=23, size=24)
    mel = np.load(root / "aud_mel.npy")
    assert load_audio_features(root, "auto")[1] == "mel"
    ow = np.random.default_rng(0).normal(size=(len(mel), 16, 96)).astype(np.float32)
    np.save(root / "aud_ow.npy", ow)
    feats, kind = load_audio_features(root, "auto")
    assert kind == "mel+ow" and feats.shape == (len(mel), 16, 176)
    assert np.array_equal(feats[..., :80], mel) and np.array_equal(feats[..., 80:], ow)
    assert load_audio_features(root, "mel")[1] == "mel"
    ds = TalkingHeadDataset(root, DataConfig(image_size=24))
    assert ds.audio_kind == "mel+ow" and ds.audio.shape[2] == 176
    np.save(root / "aud_ow.npy", ow[:-1])
    with pytest.raises(DatasetError, match="aud_mel.npy.*aud_ow.npy"):
        load_audio_features(root, "mel+ow")
    (root / "aud_mel.npy").unlink()
    with pytest.raises(DatasetError, match="no audio features.*aud_mel.npy"):
        load_audio_features(root, "mel+ow")
