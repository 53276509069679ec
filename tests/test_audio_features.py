"""nerfhead.audio.features: mel filterbank maths, window centring, file loading, ow embeddings."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from nerfhead.audio import features as F

SR = 16000


def tone(freq: float, seconds: float = 2.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(SR * seconds)) / SR
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_slaney_mel_scale_hand_values():
    # linear part: 3 mels per 200 Hz; 1 kHz is mel 15; log part: 27 mels per factor 6.4
    assert F._hz_to_mel(55.0) == pytest.approx(0.825)
    assert F._hz_to_mel(1000.0) == pytest.approx(15.0)
    assert F._hz_to_mel(6400.0) == pytest.approx(42.0)
    assert F._mel_to_hz(F._hz_to_mel(np.array([300.0, 2500.0]))) == pytest.approx([300.0, 2500.0])


@pytest.mark.parametrize("freq, expected_bin", [(1000.0, 25), (4000.0, 63)])
def test_pure_tone_peaks_in_the_hand_computed_mel_bin(freq, expected_bin):
    # 80 filters between mel(55)=0.825 and mel(7600)=44.4996: centres are 0.825 + (k+1)*0.539192.
    # 1000 Hz = mel 15 -> (15 - 0.825)/0.539192 = 26.29 -> nearest centre k+1 = 26 -> bin 25.
    # 4000 Hz = mel 15 + ln(4)/(ln(6.4)/27) = 35.164 -> 63.69 -> k+1 = 64 -> bin 63.
    mel = F.log_mel(tone(freq))
    assert mel.shape == (1 + 2 * SR // 160, 80)  # centred frames every 10 ms
    middle = mel[20:-20]
    assert np.all(middle.argmax(axis=1) == expected_bin)
    assert mel.min() >= -4.0 and mel.max() <= 4.0


def test_filterbank_triangles_peak_at_their_centres():
    fb = F.mel_filterbank()
    assert fb.shape == (80, 401)
    assert np.all(fb >= 0)
    peaks = fb.argmax(axis=1)
    assert np.all(np.diff(peaks) >= 0)  # filters are ordered by frequency
    assert fb[:, 55 * 800 // SR - 1].sum() == 0  # nothing below fmin (bin 1 = 20 Hz)
    assert fb[:, 7640 * 800 // SR:].sum() == 0  # nothing above fmax


def test_frame_windows_are_centred_and_edge_padded():
    feat = np.arange(100, dtype=np.float32)[:, None].repeat(3, axis=1)  # value = frame index
    win = F.frame_windows(feat, num_frames=25, fps=25, window=16, rate=100)
    assert win.shape == (25, 16, 3)
    # frame i sits at mel frame 4i, the 9th entry of its window: entries 4i-8 .. 4i+7
    assert np.array_equal(win[10, :, 0], np.arange(32, 48))
    assert win[10, 8, 0] == 40
    assert np.array_equal(win[0, :, 0], np.r_[np.zeros(8), np.arange(8)])  # start padded
    assert np.array_equal(win[24, :, 0], np.r_[np.arange(88, 100), [99] * 4])  # end padded


def test_extract_window_timing_matches_a_tone_onset():
    x = np.concatenate([np.zeros(SR, np.float32), tone(1000.0, 1.0)])  # onset at 1.00 s
    feats = F.extract(x, kind="mel")
    assert feats.shape == (50, 16, 80)
    energy = feats[..., 25]
    assert energy[20].max() < -3.0 and energy[35].min() > 0.0  # 0.8 s quiet, 1.4 s loud
    # frame 25 (t = 1.00 s): its window's first entries (0.92-0.96 s) are silent, the last
    # ones (1.03-1.07 s) are loud, so the window is centred on the frame's time
    assert energy[25, :5].max() < -3.0 and energy[25, 11:].min() > 0.0


def test_load_audio_from_video_and_errors(hdtf_video, tmp_path):
    samples = F.load_audio(hdtf_video)
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert abs(len(samples) / SR - 8.0) < 0.05
    assert 0.01 < np.abs(samples).max() <= 1.0
    with pytest.raises(F.AudioError, match="not found"):
        F.load_audio(tmp_path / "nope.wav")
    silent = tmp_path / "silent.mp4"
    import imageio_ffmpeg

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-i", str(hdtf_video),
                    "-t", "1", "-an", "-c:v", "copy", str(silent)], check=True)
    with pytest.raises(F.AudioError, match="no audio stream"):
        F.load_audio(silent)
    feats = F.extract(hdtf_video, "mel")
    assert feats.shape == (200, 16, 80) and feats.dtype == np.float32


def test_unknown_kind_is_rejected():
    with pytest.raises(ValueError, match="unknown audio feature kind"):
        F.extract(tone(440.0, 0.5), kind="deepspeech")


@pytest.mark.skipif(not F.ow_available(), reason="onnxruntime/openwakeword not installed")
def test_speech_embeddings_follow_the_speech(shared_dir):
    speech = F.load_audio(shared_dir / "data" / "audio" / "radio31_8s.wav")[: 2 * SR]
    x = np.concatenate([np.zeros(2 * SR, np.float32), speech])  # 2 s silence, then 2 s speech
    feats = F.extract(x, kind="ow")
    assert feats.shape == (100, 16, 96) and np.isfinite(feats).all()
    centre = feats[:, 8]  # each frame's own embedding
    silent_var = centre[5:35].var(axis=0).sum()  # 0.2-1.4 s: far from the speech
    speech_var = centre[60:95].var(axis=0).sum()
    assert speech_var > 10 * silent_var
    assert np.linalg.norm(centre[80] - centre[20]) > np.linalg.norm(centre[30] - centre[20])
