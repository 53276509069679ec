"""Other voices of the same speech (nerfhead.audio.voice), written by preprocessing's audio
step, read by the dataset, mixed into training by train.voice_augment."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest

from nerfhead.audio.features import SAMPLE_RATE
from nerfhead.audio.voice import rubberband_available, shift_voice

pytestmark = pytest.mark.skipif(not rubberband_available(),
                                reason="the bundled ffmpeg has no rubberband filter")

SR = SAMPLE_RATE


def _peak_hz(x: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / SR)[np.argmax(spec)])


@pytest.mark.parametrize("semitones", [12.0, -5.0, 4.0])
def test_a_tone_moves_by_the_shift_and_keeps_its_length(semitones):
    t = np.arange(2 * SR) / SR
    tone = 0.5 * np.sin(2 * np.pi * 300.0 * t).astype(np.float32)
    out = shift_voice(tone, semitones)
    assert out.dtype == np.float32 and out.shape == tone.shape
    want = 300.0 * 2 ** (semitones / 12)
    got = _peak_hz(out[SR // 2: 3 * SR // 2])  # away from the filter's start-up
    assert abs(got - want) < 0.02 * want, (got, want)


def test_onsets_stay_on_the_clock():
    """Bursts of a harmonic tone: after a +4 / -4 semitone shift every burst starts within
    20 ms (half a 25-fps frame) of where it started (measured: 12-14 ms early, the pitch
    shifter's analysis window smearing each onset)."""
    t = np.arange(6 * SR) / SR
    x = np.zeros_like(t, dtype=np.float32)
    starts = [0.7, 1.9, 3.1, 4.45]
    for s in starts:
        on = (t >= s) & (t < s + 0.3)
        x[on] = sum(0.2 * np.sin(2 * np.pi * f * t[on]) for f in (140, 280, 420, 700))

    def onsets(y):  # the first sample above half the peak after at least 0.2 s below it
        env = np.sqrt(np.convolve(y ** 2, np.ones(320) / 320, mode="same"))
        above = np.flatnonzero(env > 0.5 * env.max())
        return above[np.concatenate([[True], np.diff(above) > 0.2 * SR])] / SR

    assert np.allclose(onsets(x), starts, atol=0.006)
    for semitones in (4.0, -4.0):
        got = onsets(shift_voice(x, semitones))
        assert len(got) == len(starts) and np.abs(got - onsets(x)).max() < 0.020, got


def test_no_shift_is_a_copy_and_bad_requests_are_refused():
    x = np.linspace(-0.5, 0.5, 1000, dtype=np.float32)
    y = shift_voice(x, 0)
    assert np.array_equal(x, y) and y is not x
    with pytest.raises(ValueError, match="outside"):
        shift_voice(x, 20)
    with pytest.raises(ValueError, match="mono"):
        shift_voice(np.zeros((2, 100), np.float32), 2)


def test_the_audio_step_writes_the_voices_and_removes_them_when_none_are_asked(grid_video,
                                                                               tmp_path):
    from preprocess import driver
    from preprocess.audio import AUDIO, AudioConfig
    from preprocess.decode import DECODE, DecodeConfig

    out = tmp_path / "data"

    def run(shifts):
        cfg = SimpleNamespace(decode=DecodeConfig(crop_size=64, probe_frames=2, max_seconds=3.0,
                                                  start_seconds=1.0),
                              audio=AudioConfig(kinds=["mel"], voice_shifts=shifts),
                              weights_dir=None)
        return {r.name: r.status for r in driver.run_steps(grid_video, out, cfg,
                                                            steps=[DECODE, AUDIO])}

    assert run([-3.0, 5.0])["audio"] == "ran"
    own = np.load(out / "aud_mel.npy")
    voices = np.load(out / "aud_mel_voices.npy")
    assert voices.dtype == np.float16 and voices.shape == (2, *own.shape)
    # other voices of the same speech: the loudness contour (mean over bands) stays in step,
    # the spectrum does not
    for v in voices.astype(np.float32):
        loud_own, loud_v = own.mean((1, 2)), v.mean((1, 2))
        assert np.corrcoef(loud_own, loud_v)[0, 1] > 0.9
        assert np.abs(v - own).mean() > 0.1
    assert run([-3.0, 5.0])["audio"] == "skipped"
    assert run([])["audio"] == "ran" and not (out / "aud_mel_voices.npy").exists()
    with pytest.raises(Exception, match="voice_shifts"):
        run([0.0])


def test_without_rubberband_the_audio_step_warns_and_writes_no_voices(grid_video, tmp_path,
                                                                     monkeypatch, caplog):
    """An ffmpeg without rubberband: preprocessing goes on without the voices (only
    train.voice_augment needs them), says so, and adds them once rubberband is there."""
    from preprocess import driver
    from preprocess.audio import AUDIO, AudioConfig
    from preprocess.decode import DECODE, DecodeConfig

    from nerfhead.audio import voice

    out = tmp_path / "data"
    cfg = SimpleNamespace(decode=DecodeConfig(crop_size=64, probe_frames=2, max_seconds=2.0,
                                              start_seconds=1.0),
                          audio=AudioConfig(kinds=["mel"], voice_shifts=[3.0]), weights_dir=None)
    with monkeypatch.context() as m:
        m.setattr(voice, "rubberband_available", lambda: False)
        with caplog.at_level(logging.WARNING, logger="preprocess"):
            res = driver.run_steps(grid_video, out, cfg, steps=[DECODE, AUDIO])
        assert {r.name: r.status for r in res}["audio"] == "ran"
        assert (out / "aud_mel.npy").is_file() and not (out / "aud_mel_voices.npy").exists()
        assert "no rubberband filter" in caplog.text
    res = driver.run_steps(grid_video, out, cfg, steps=[DECODE, AUDIO])
    assert {r.name: r.status for r in res}["audio"] == "ran"
    assert np.load(out / "aud_mel_voices.npy").shape[0] == 1


def _dataset_with_voices(root, shifts=2, ow=True):
    from nerfhead.data.synthetic import make_dataset

    data = make_dataset(root, num_frames=23, size=32)
    rng = np.random.default_rng(1)
    mel = np.load(data / "aud_mel.npy")
    parts = {"mel": mel}
    if ow:
        parts["ow"] = rng.normal(size=(len(mel), 16, 96)).astype(np.float32)
        np.save(data / "aud_ow.npy", parts["ow"])
    for k, a in parts.items():
        other = np.stack([a + rng.normal(size=a.shape) for _ in range(shifts)]).astype(np.float16)
        np.save(data / f"aud_{k}_voices.npy", other)
    return data


def test_the_dataset_reads_voices_of_its_kind_and_refuses_stale_ones(tmp_path):
    from nerfhead.data.dataset import DataConfig, DatasetError, TalkingHeadDataset

    data = _dataset_with_voices(tmp_path / "d")
    ds = TalkingHeadDataset(data, DataConfig(audio="mel+ow"))
    assert ds.audio_voices.shape == (2, *ds.audio.shape)
    np.testing.assert_array_equal(ds.audio_voices[1, :, :, 80:],
                                  np.load(data / "aud_ow_voices.npy")[1])
    assert TalkingHeadDataset(data, DataConfig(audio="mel")).audio_voices.shape[3] == 80
    (data / "aud_ow_voices.npy").unlink()  # mel+ow needs both parts' voices
    assert TalkingHeadDataset(data, DataConfig(audio="mel+ow")).audio_voices is None
    np.save(data / "aud_mel_voices.npy", np.zeros((2, 5, 16, 80), np.float16))
    with pytest.raises(DatasetError, match="aud_mel_voices.npy.*stale"):
        TalkingHeadDataset(data, DataConfig(audio="mel"))


def test_voice_augment_draws_other_voices_at_its_rate(tmp_path, caplog):
    import torch

    from nerfhead.train.config import load_configs
    from nerfhead.train.trainer import Trainer

    data = _dataset_with_voices(tmp_path / "d", shifts=3, ow=False)

    def trainer(rate, out):
        cfg = load_configs("tiny")
        cfg["data"].image_size, cfg["data"].audio = 32, "mel"
        cfg["train"].iters, cfg["train"].voice_augment = 2, rate
        return Trainer(data, cfg, tmp_path / out)

    tr = trainer(0.5, "half")
    g = torch.Generator().manual_seed(0)
    picks = [tr._frame_audio(g) for _ in range(400)]
    own = sum(p is tr.train_set.audio for p in picks)
    assert 150 < own < 250  # binomial(400, 0.5): 5 sigma is 50
    others = [p for p in picks if p is not tr.train_set.audio]
    seen = {next(v for v in range(3) if np.shares_memory(p, tr.voices[v])) for p in others}
    assert seen == {0, 1, 2}
    tr.fit(progress=False)  # the steps run with mixed voices

    off = trainer(0.0, "off")
    assert off.voices is None and off._frame_audio(g) is off.train_set.audio
    for f in data.glob("aud_*_voices.npy"):
        f.unlink()
    with caplog.at_level(logging.WARNING, logger="nerfhead"):
        missing = trainer(0.5, "missing")
    assert missing.voices is None and "no voice-shifted" in caplog.text
    assert "Rerun `nerfhead preprocess`" in caplog.text
