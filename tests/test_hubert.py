"""HuBERT features (``nerfhead.audio.hubert``): on the video's clock, chunked without seams,
stored in ER-NeRF's layout and read back as the windows new audio gets, refused clearly where
the model cannot be had.

HuBERT-large's weights (1.26 GB) cannot be downloaded on the test machines, so these tests
load, through the same code path, a HuBERT of the real architecture's front end (the 400-sample
receptive field every 320 samples, layer norms, the stable-layer-norm transformer) but two
small transformer layers with random weights, saved in the HuggingFace layout in a weights
folder. Its features mean nothing; the clock, the chunking, the storage and the errors are what
is tested.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("transformers")

from nerfhead.audio import hubert as H  # noqa: E402
from nerfhead.audio.features import extract, frame_windows  # noqa: E402
from nerfhead.weights import WeightsUnavailable  # noqa: E402

SR = 16000
HIDDEN = 32
CHUNK_TOL = 1e-4  #: chunked vs one pass when every chunk sees the whole clip (float32 sums)


def save_small_hubert(d, normalize: bool = True):
    """A small random HuBERT as ``d/hubert-large-ls960-ft/`` in the HuggingFace layout."""
    import torch
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    torch.manual_seed(0)
    cfg = HubertConfig(hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, conv_dim=(16,) * 7, feat_extract_norm="layer",
                       do_stable_layer_norm=True, num_conv_pos_embeddings=16,
                       num_conv_pos_embedding_groups=2)
    HubertModel(cfg).save_pretrained(d / H.HUBERT_DIR)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SR, padding_value=0.0,
                             do_normalize=normalize, return_attention_mask=True
                             ).save_pretrained(d / H.HUBERT_DIR)
    return d


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return save_small_hubert(tmp_path_factory.mktemp("weights"))


@pytest.fixture
def use_weights(weights, monkeypatch):
    monkeypatch.setenv("NERFHEAD_WEIGHTS", str(weights))
    monkeypatch.setenv("NERFHEAD_OFFLINE", "1")
    return weights


def speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * np.arange(n) / SR)  # syllable-rate envelope
    return (0.1 * env * rng.standard_normal(n)).astype(np.float32)


def test_frame_count_follows_the_audio_length(use_weights):
    for n in (1, 319, 320, 321, 16000, 16000 + 160):
        feat = H.hubert_stream(np.zeros(n, np.float32) + 0.01 * np.sin(np.arange(n)))
        assert feat.shape == (H.num_hubert_frames(n), HIDDEN)
        assert H.num_hubert_frames(n) == int(np.ceil(n / 320))  # frame j exists while j/50 s < length


def test_a_click_at_j_over_50_seconds_lands_in_frame_j(tmp_path, monkeypatch):
    """The convolutional front end's frame j must be centred on j / 50 s (the clock
    frame_windows assumes): a click within 7.5 ms of j / 50 s changes front-end frame j and no
    other, one further off also the neighbour it reaches (frames read 25 ms every 20 ms). The
    clip-wide normalisation is off here, so that nothing but the click's frames can move."""
    monkeypatch.setenv("NERFHEAD_WEIGHTS", str(save_small_hubert(tmp_path, normalize=False)))
    monkeypatch.setenv("NERFHEAD_OFFLINE", "1")
    _, model = H.load_hubert()
    seen = []
    hook = model.feature_extractor.register_forward_hook(lambda m, i, o: seen.append(o[0].clone()))
    try:
        noise = speechlike(2.0, seed=4)
        H.hubert_stream(noise)
        # frame j reads samples 320 j - 200 .. 320 j + 199; its neighbours share 80 of them
        for j in (1, 10, 37, 98):
            for off, frames in ((-119, [j]), (0, [j]), (119, [j]), (-200, [j - 1, j]),
                                (-121, [j - 1, j]), (120, [j, j + 1]), (199, [j, j + 1])):
                click = noise.copy()
                click[j * 320 + off] += 1.0
                H.hubert_stream(click)
                diff = (seen[-1] - seen[0]).abs().amax(dim=0)
                assert (diff > 0).nonzero().flatten().tolist() == frames, (j, off)
    finally:
        hook.remove()


def test_chunks_are_stitched_without_a_seam(use_weights, monkeypatch):
    """With chunks of 40 frames that each see the whole clip as context, the stitched stream
    equals one pass: the chunks' sample ranges and frame offsets line up exactly."""
    x = speechlike(3.3)
    one = H.hubert_stream(x)
    monkeypatch.setattr(H, "CHUNK_FRAMES", 40)
    monkeypatch.setattr(H, "CONTEXT_FRAMES", 400)
    chunked = H.hubert_stream(x)
    np.testing.assert_allclose(chunked, one, atol=CHUNK_TOL, rtol=0)
    # with 2 s of context (the default) on 1-s chunks the stream stays close too
    monkeypatch.setattr(H, "CHUNK_FRAMES", 50)
    monkeypatch.setattr(H, "CONTEXT_FRAMES", 100)
    near = H.hubert_stream(x)
    assert near.shape == one.shape
    assert np.corrcoef(near.ravel(), one.ravel())[0, 1] > 0.95


def test_extract_gives_windows_and_the_dataset_reads_the_same_back(use_weights, tmp_path):
    """preprocess stores [N, 2, C] (ER-NeRF's aud_hu.npy); the dataset's windows of it equal
    what extract() gives the same audio at render time."""
    from types import SimpleNamespace

    from nerfhead.data.dataset import load_audio_features
    from preprocess.audio import _write_hubert

    x = speechlike(2.0, seed=1)
    n = 50  # 2 s at 25 fps
    wins = extract(x, kind="hubert", num_frames=n)
    stream = H.hubert_stream(x)
    assert wins.shape == (n, 16, HIDDEN)
    np.testing.assert_array_equal(wins, frame_windows(stream, n, 25.0, 16, H.HUBERT_RATE))

    ctx = SimpleNamespace(path=lambda f: tmp_path / f)
    rec = _write_hubert(ctx, x, n, 25.0)
    stored = np.load(tmp_path / H.HUBERT_FILE)
    assert stored.shape == (n, 2, HIDDEN) and stored.dtype == np.float32
    assert rec["model"] == H.HUBERT_MODEL and rec["voices"] is None
    np.testing.assert_array_equal(stored.reshape(2 * n, HIDDEN), stream[:2 * n])
    back, kind = load_audio_features(tmp_path, "hubert")
    assert kind == "hubert"
    np.testing.assert_allclose(back, wins, atol=0, rtol=0)


def test_an_er_nerf_folder_with_aud_hu_loads_as_hubert(tmp_path):
    from nerfhead.data.dataset import DatasetError, load_audio_features

    stream = np.arange(2 * 30 * 4, dtype=np.float32).reshape(60, 4)
    np.save(tmp_path / "aud_hu.npy", stream.reshape(30, 2, 4))
    feats, kind = load_audio_features(tmp_path, "auto")
    assert kind == "hubert" and feats.shape == (30, 16, 4)
    # frame 10's window: 50-Hz rows 12..27, centred on row 20 (its time, 0.4 s)
    np.testing.assert_array_equal(feats[10], stream[12:28])
    np.testing.assert_array_equal(feats[0, :8], np.repeat(stream[:1], 8, axis=0))  # edge
    np.save(tmp_path / "aud_hu.npy", np.zeros((30, 3, 4), np.float32))
    with pytest.raises(DatasetError, match=r"aud_hu.npy must be \[N, 2, C\]"):
        load_audio_features(tmp_path, "hubert")


def test_unavailable_weights_are_named_never_replaced(tmp_path, monkeypatch):
    monkeypatch.setenv("NERFHEAD_WEIGHTS", str(tmp_path / "empty"))
    monkeypatch.setenv("NERFHEAD_OFFLINE", "1")
    with pytest.raises(WeightsUnavailable) as err:
        extract(speechlike(0.5), kind="hubert")
    msg = str(err.value)
    assert str(tmp_path / "empty" / H.HUBERT_DIR) in msg and "NERFHEAD_OFFLINE=1" in msg
    assert "hf download facebook/hubert-large-ls960-ft --local-dir" in msg
    # a folder that is not a HuBERT checkpoint: named, with what it must hold
    bad = tmp_path / "bad" / H.HUBERT_DIR
    bad.mkdir(parents=True)
    (bad / "config.json").write_text(json.dumps({"model_type": "hubert"}))
    monkeypatch.setenv("NERFHEAD_WEIGHTS", str(tmp_path / "bad"))
    with pytest.raises(WeightsUnavailable, match="cannot be loaded.*HuggingFace layout"):
        extract(speechlike(0.5), kind="hubert")
    monkeypatch.setattr(H, "transformers_available", lambda: False)
    with pytest.raises(WeightsUnavailable, match="pip install transformers"):
        H.load_hubert()


def test_preprocess_refuses_hubert_it_cannot_make(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from preprocess import audio
    from preprocess.steps import StepError

    monkeypatch.setattr(H, "transformers_available", lambda: False)
    ctx = SimpleNamespace(cfg=SimpleNamespace(audio=audio.AudioConfig(kinds=["mel", "hubert"])),
                          num_frames=lambda: 10, manifest={"video": {"fps": 25}},
                          path=lambda f: tmp_path / f, log=None)
    with pytest.raises(StepError, match="'hubert' needs the transformers package"):
        audio.run(ctx)


def test_a_run_trained_on_hubert_renders_new_audio_and_is_not_served_live(use_weights, tmp_path):
    """Train 2 steps on a synthetic dataset's HuBERT features, then `nerfhead render` new
    audio (featurised by the same model) to an mp4; serving it live is refused clearly."""
    from nerfhead.audio.stream import streaming_features
    from nerfhead.cli import main
    from nerfhead.data.synthetic import make_dataset
    from nerfhead.render.video import probe, write_wav

    data = make_dataset(tmp_path / "data", num_frames=22, size=32)
    x = speechlike(22 / 25, seed=2)
    write_wav(data / "aud.wav", x, SR)
    np.save(data / H.HUBERT_FILE, H.per_video_frame(H.hubert_stream(x), 22))
    run = tmp_path / "run"
    assert main(["train", str(data), "--config", "tiny", "--out", str(run), "--iters", "2",
                 "--device", "cpu", "--no-progress", "--set", "data.audio=hubert",
                 "--set", "data.image_size=0", "--set", "model.max_steps=16",
                 "--set", "data.num_rays=128", "--set", "train.lipsync_check_frames=0",
                 "--set", "train.voice_encoder_steps=0"]) == 0
    speech = tmp_path / "new.wav"
    write_wav(speech, speechlike(1.0, seed=3), SR)
    out = tmp_path / "talk.mp4"
    assert main(["render", str(run), "--audio", str(speech), "--out", str(out), "--device",
                 "cpu"]) == 0
    info = probe(out)
    assert info["has_audio"] and info["duration"] == pytest.approx(1.0, abs=0.1)
    with pytest.raises(ValueError, match="HuBERT reads whole utterances"):
        streaming_features("hubert")


def test_info_says_where_hubert_stands(weights, tmp_path):
    import os
    import subprocess
    import sys

    def info(**env):
        out = subprocess.run([sys.executable, "-m", "nerfhead", "info", "--json"],
                             capture_output=True, text=True, env={**os.environ, **env})
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)["audio_features"]["hubert"]

    assert info(NERFHEAD_WEIGHTS=str(weights)).startswith("available")
    assert str(weights / H.HUBERT_DIR) in info(NERFHEAD_WEIGHTS=str(weights))
    missing = info(NERFHEAD_WEIGHTS=str(tmp_path), NERFHEAD_OFFLINE="1",
                   XDG_CACHE_HOME=str(tmp_path / "cache"))
    assert missing.startswith("unavailable") and "NERFHEAD_OFFLINE=1" in missing


def test_an_earlier_download_is_found_offline(tmp_path, monkeypatch):
    """The snapshot a hub download leaves in ~/.cache/nerfhead/huggingface is used without
    the network (and `info` calls it available)."""
    save_small_hubert(tmp_path / "fresh")
    snap = (tmp_path / "cache" / "nerfhead" / "huggingface" / "models--facebook--hubert-large-ls960-ft"
            / "snapshots" / "0123abc")
    snap.parent.mkdir(parents=True)
    (tmp_path / "fresh" / H.HUBERT_DIR).rename(snap)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("NERFHEAD_WEIGHTS", str(tmp_path / "empty"))
    monkeypatch.setenv("NERFHEAD_OFFLINE", "1")
    assert H.find_local() == snap
    assert H.hubert_stream(speechlike(0.5)).shape == (25, HIDDEN)
