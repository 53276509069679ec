"""Model parts: encodings, audio encoder, field conditioning, rendering and compositing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nerfhead.data.dataset import TalkingHeadDataset
from nerfhead.data.synthetic import make_dataset
from nerfhead.models.audio import AudioEncoder, AudioSmoother, window_indices
from nerfhead.models.config import BLENDSHAPE_INDEX, ModelConfig
from nerfhead.models.field import Conditions
from nerfhead.models.layers import sh_encode
from nerfhead.models.rays import Camera, pixel_rays
from nerfhead.models.talking_head import ModelMeta, TalkingHead
from nerfhead.train.config import load_configs

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("syn"), num_frames=23, size=32)


def small_model(num_latents=21, size=32, **over) -> TalkingHead:
    cfg = load_configs("tiny", {"model": over})["model"]
    cam = {"focal": 1.2 * size, "cx": size / 2, "cy": size / 2, "height": size, "width": size}
    torch.manual_seed(0)
    return TalkingHead(cfg, ModelMeta(audio_len=16, audio_channels=80, audio_kind="mel",
                                      num_latents=num_latents, camera=cam))


def test_sh_encode_known_values():
    d = torch.tensor([[0.0, 0.0, 1.0]])
    sh = sh_encode(d, 3)
    assert sh.shape == (1, 9)
    assert sh[0, 0] == pytest.approx(0.2820948)  # 1 / (2 sqrt(pi))
    assert sh[0, 2] == pytest.approx(0.4886025)  # sqrt(3 / (4 pi)) * z
    assert sh[0, 6] == pytest.approx(0.9461747 - 0.3153916)  # Y20 at z = 1
    # orthonormality, estimated by Monte-Carlo over the sphere
    g = torch.Generator().manual_seed(0)
    v = torch.randn(200000, 3, generator=g, dtype=torch.float64)
    v = v / v.norm(dim=-1, keepdim=True)
    Y = sh_encode(v, 4)
    gram = (Y.T @ Y) * (4 * np.pi / v.shape[0])
    torch.testing.assert_close(gram, torch.eye(16, dtype=torch.float64), atol=0.03, rtol=0)


def test_window_indices_clamp():
    assert window_indices(0, 8, 100) == [0, 0, 0, 0, 0, 1, 2, 3]
    assert window_indices(99, 4, 100) == [97, 98, 99, 99]
    assert window_indices(5, 1, 100) == [5]


def test_audio_encoder_normalises_and_checks_shapes():
    enc = AudioEncoder(80, 16, 32)
    feats = torch.randn(50, 16, 80) * 3 + 7
    enc.set_statistics(feats)
    torch.testing.assert_close(enc.mean, feats.reshape(-1, 80).mean(0), atol=1e-4, rtol=0)
    assert enc(feats[:5]).shape == (5, 32)
    with pytest.raises(ValueError, match="16, 29"):
        AudioEncoder(29, 16, 32)(feats[:2])
    assert AudioEncoder(512, 1, 32)(torch.randn(3, 1, 512)).shape == (3, 32)
    sm = AudioSmoother(32, 8)
    assert sm(torch.randn(2, 8, 32)).shape == (2, 32)


def test_expression_uses_upper_face_blendshapes():
    cfg = ModelConfig()
    idx = cfg.expression_indices()
    assert BLENDSHAPE_INDEX["eyeBlinkLeft"] == 9 and 9 in idx and 10 in idx
    assert BLENDSHAPE_INDEX["jawOpen"] not in idx  # the mouth is left to audio
    with pytest.raises(ValueError, match="unknown blendshape"):
        ModelConfig(expression=("eyeBlinkLeftt",)).expression_indices()


def test_field_is_conditioned_on_audio_and_expression():
    m = small_model()
    x = torch.rand(64, 3) * 0.5 - 0.25
    d = torch.nn.functional.normalize(torch.randn(64, 3), dim=-1)
    torch.nn.init.normal_(m.field.planes[0].table, std=0.1)
    c1 = Conditions(audio=torch.zeros(16), expression=torch.zeros(11), latent=torch.zeros(4))
    c2 = Conditions(audio=torch.ones(16), expression=torch.zeros(11), latent=torch.zeros(4))
    c3 = Conditions(audio=torch.zeros(16), expression=torch.ones(11), latent=torch.zeros(4))
    s1, s2, s3 = (m.field(x, d, c)["sigma"] for c in (c1, c2, c3))
    assert not torch.allclose(s1, s2) and not torch.allclose(s1, s3)
    out = m.field(x, d, c2)
    out["rgb"].sum().backward()
    assert m.field.planes[0].table.grad.abs().sum() > 0


def test_empty_grid_renders_background_exactly(data):
    m = small_model().eval()
    m.grid.bitfield.zero_()  # nothing occupied: no samples anywhere
    ds = TalkingHeadDataset(data)
    bg = torch.rand(32, 32, 3)
    out = m.render_frame(ds.poses_file[0], ds.audio, 0, ds.expression(0), bg=bg)
    assert set(out) == {"rgb", "head_rgb", "head_alpha", "torso_alpha", "depth"}
    torch.testing.assert_close(out["rgb"], bg)
    assert float(out["head_alpha"].abs().max()) == 0.0 and float(out["torso_alpha"].max()) == 0.0


def test_inference_render_matches_training_render(data):
    """render_frame (file pose, converted inside, inference marcher) == the training path."""
    m = small_model().eval()
    for p in m.field.planes:
        torch.nn.init.normal_(p.table, std=0.5)
    ds = TalkingHeadDataset(data)
    i = 4
    out = m.render_frame(ds.poses_file[i], ds.audio, int(ds.aud_ids[i]), ds.expression(i), latent_index=i,
                         bg=torch.zeros(32, 32, 3))
    assert float(out["head_alpha"].max()) > 0.5
    u, v = torch.arange(0, 32, 3), torch.arange(0, 32, 3).flip(0)
    o, d = pixel_rays(ds.poses[i], ds.camera, u, v)
    with torch.no_grad():
        cond = m.conditions(ds.audio, int(ds.aud_ids[i]), ds.expression(i), i)
        train = m.render_head_rays(o, d, cond, noise=None)
    torch.testing.assert_close(out["head_rgb"][v, u], train["rgb"], atol=2e-5, rtol=0)
    torch.testing.assert_close(out["head_alpha"][v, u], train["alpha"], atol=2e-5, rtol=0)


def test_torso_composites_behind_the_head(data):
    m = small_model().eval()
    m.grid.bitfield.zero_()
    m.has_torso.fill_(True)
    ds = TalkingHeadDataset(data)
    with torch.no_grad():
        m.torso.rgba_net[-1].weight.zero_()  # rgba = sigmoid(0) everywhere
    out = m.render_frame(ds.poses_file[0], ds.audio, 0, ds.expression(0), bg=torch.zeros(32, 32, 3))
    torch.testing.assert_close(out["torso_alpha"], torch.full((32, 32), 0.5), atol=1e-5, rtol=0)
    torch.testing.assert_close(out["rgb"], torch.full((32, 32, 3), 0.25), atol=1e-5, rtol=0)
    off = m.render_frame(ds.poses_file[0], ds.audio, 0, ds.expression(0), bg=torch.zeros(32, 32, 3),
                         with_torso=False)
    assert float(off["rgb"].abs().max()) == 0.0


def test_render_at_another_camera_size(data):
    m = small_model().eval()
    ds = TalkingHeadDataset(data)
    cam = Camera(focal=1.2 * 16, cx=8, cy=8, height=16, width=16)
    out = m.render_frame(ds.poses_file[0], ds.audio, 0, ds.expression(0), camera=cam)
    assert out["rgb"].shape == (16, 16, 3) and out["depth"].shape == (16, 16)
