"""Streaming audio features (nerfhead.audio.stream) against the offline ones, and their latency."""

from __future__ import annotations

import numpy as np
import pytest

from nerfhead.audio import features as F
from nerfhead.audio.stream import StreamingFeatures

#: streamed mel against offline log_mel: numpy FFT against torch.stft, float32 rounding only
MEL_TOL = 1e-4  # on the [-4, 4] scale


def stream(kind, x, chunk, smoother=1):
    s = StreamingFeatures(kind, smoother_window=smoother)
    got = []
    for a in range(0, len(x), chunk):
        got += s.push(x[a:a + chunk])
    return got + s.finish(), s


@pytest.fixture(scope="module")
def speech(shared_dir):
    return F.load_audio(shared_dir / "data" / "audio" / "radio31_8s.wav")[:3 * 16000 + 123]


@pytest.mark.parametrize("chunk", [7, 320, 4410])
def test_streamed_mel_equals_offline(speech, chunk):
    off = F.extract(speech, kind="mel")
    got, _ = stream("mel", speech, chunk)
    assert [g.index for g in got] == list(range(len(off)))
    w = np.stack([g.windows[g.centre] for g in got])
    assert np.abs(w - off).max() < MEL_TOL


@pytest.mark.parametrize("n", [50, 400, 401, 700, 1000, 16000])
def test_streamed_mel_short_clips_and_edges(speech, n):
    off = F.extract(speech[:n], kind="mel")
    got, _ = stream("mel", speech[:n], 160)
    assert np.abs(np.stack([g.windows[0] for g in got]) - off).max() < MEL_TOL


def test_smoother_context_matches_the_model_indexing(speech):
    """windows[k] of frame i is offline frame clamp(i - W//2 + k): what TalkingHead.audio_code
    reads around frame i from the whole clip's features."""
    from nerfhead.models.audio import window_indices

    off = F.extract(speech, kind="mel")
    W = 8
    got, _ = stream("mel", speech, 320, smoother=W)
    for g in got:
        ref = off[window_indices(g.index, W, len(off))]
        assert g.centre == W // 2
        assert np.abs(g.windows - ref).max() < MEL_TOL


@pytest.mark.parametrize("kind, smoother", [("mel", 1), ("mel", 8), ("ow", 4)])
def test_lookahead_is_the_measured_latency(speech, kind, smoother):
    """Push 16 samples at a time: frame i comes out once audio up to its time plus the stated
    look-ahead has arrived (never before: no frame peeks past the audio it was given)."""
    if kind == "ow" and not F.ow_available():
        pytest.skip("openwakeword/onnxruntime not installed")
    s = StreamingFeatures(kind, smoother_window=smoother)
    step, late = 16, []
    x = speech[:2 * 16000]
    for a in range(0, len(x), step):
        for g in s.push(x[a:a + step]):
            late.append((a + step) / 16000 - g.index / 25.0)
    late = np.array(late)
    assert len(late) > 20
    assert late.max() <= s.lookahead_seconds + step / 16000 + 1e-9
    assert late.min() >= s.lookahead_seconds - (0.09 if kind == "ow" else step / 16000) - 1e-9


def test_stated_latencies():
    assert StreamingFeatures("mel").lookahead_seconds == pytest.approx(0.095)
    assert StreamingFeatures("mel", smoother_window=8).lookahead_seconds == pytest.approx(0.215)
    with pytest.raises(ValueError, match="precomputed"):
        StreamingFeatures("precomputed")


@pytest.mark.skipif(not F.ow_available(), reason="openwakeword/onnxruntime not installed")
def test_streamed_ow_close_to_offline(speech):
    """The ONNX mel model of ow clips at 80 dB below the loudest bin of the audio it is given
    (ReduceMax + Clip in its graph): offline that is the whole clip, streamed the new chunk, so
    only bins at that floor differ. Measured on this speech: correlation 0.999, mean
    difference 2% of the features' spread."""
    off = F.extract(speech, kind="ow")
    got, _ = stream("ow", speech, 320)
    assert [g.index for g in got] == list(range(len(off)))
    w = np.stack([g.windows[0] for g in got])
    assert np.abs(w - off).mean() < 0.05 * off.std()
    assert np.corrcoef(w.ravel(), off.ravel())[0, 1] > 0.995


@pytest.mark.skipif(not F.ow_available(), reason="openwakeword/onnxruntime not installed")
def test_streamed_mel_ow_is_its_parts_side_by_side(speech):
    """The combined kind streams as its parts do, concatenated along the channels as offline
    (mel channels first, to the mel tolerance; the ow ones as close as the ow stream), with the
    slower part's latency and the model's smoother context."""
    from nerfhead.audio.stream import streaming_features

    off = F.extract(speech, kind="mel+ow")
    assert off.shape[2] == 80 + F.OW_DIM
    s = streaming_features("mel+ow", smoother_window=4)
    got = []
    for a in range(0, len(speech), 320):
        got += s.push(speech[a:a + 320])
    got += s.finish()
    assert [g.index for g in got] == list(range(len(off))) and s.next_frame == len(off)
    w = np.stack([g.windows[g.centre] for g in got])
    assert np.abs(w[..., :80] - off[..., :80]).max() < MEL_TOL
    assert np.corrcoef(w[..., 80:].ravel(), off[..., 80:].ravel())[0, 1] > 0.995
    assert all(g.windows.shape == (4, 16, 176) for g in got)
    assert s.lookahead_seconds == max(StreamingFeatures(k, smoother_window=4).lookahead_seconds
                                      for k in ("mel", "ow"))


@pytest.mark.parametrize("rate, channels", [(48000, 1), (44100, 2)])
def test_pcm_chunks_of_a_websocket_resample_as_one_stream(rate, channels):
    """A WebSocket's PCM chunks at another rate are one stream: cut in 37 chunks, the 16-kHz
    samples equal the whole body's (each chunk resampled alone put steps at the edges)."""
    pytest.importorskip("av")
    from nerfhead.serve.app import PcmStream, decode_pcm

    t = np.arange(2 * rate) / rate
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    x = (np.repeat(tone[:, None], channels, axis=1) * 32767).astype("<i2")
    whole = decode_pcm(x.tobytes(), rate, channels)
    stream = PcmStream(rate, channels)
    chunked = np.concatenate([stream.push(c.tobytes()) for c in np.array_split(x, 37)]
                             + [stream.flush()])
    assert len(whole) == len(chunked) == pytest.approx(32000, abs=2)
    np.testing.assert_allclose(chunked, whole, atol=1e-6)
    ref = 0.5 * np.sin(2 * np.pi * 440 * np.arange(len(whole)) / 16000)
    assert np.abs(whole[200:-200] - ref[200:-200]).max() < 2e-3
    assert PcmStream(16000, 1).push(x[:, 0].tobytes()).dtype == np.float32  # no resampling
