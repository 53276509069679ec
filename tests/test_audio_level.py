"""Speech level (`nerfhead.audio.level`): measured on the speech, not the pauses; driving audio
brought to the training clip's level for the features, the soundtrack kept as given."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from nerfhead.audio import level as LV
from nerfhead.audio.features import extract
from nerfhead.render.video import write_wav

SR = 16000
#: dB: the level of a test signal against its closed form (10-ms frames cut whole tones)
LEVEL_TOL_DB = 0.05
#: the mel features of a signal scaled down and brought back up, against the signal's own:
#: in memory, float32 rounding only; through 16-bit wav files, the quiet file's quantisation
#: noise, raised with it, shows in the mel bands the tone leaves nearly empty (mean over all)
MEL_RESTORED_TOL = 1e-3
MEL_RESTORED_WAV_MEAN_TOL = 0.1


def bursts(amplitude: float, seconds: float = 2.0, seed: int = 0) -> np.ndarray:
    """A 200-Hz tone at ``amplitude`` in 0.25-s bursts, silent between them but for noise
    40 dB under the tone (a room's, well above 16-bit quantisation even 26 dB quieter):
    'speech' with pauses."""
    t = np.arange(int(seconds * SR)) / SR
    on = (np.floor(t / 0.25) % 2) == 0
    noise = np.random.default_rng(seed).normal(0, amplitude * 1e-2, t.size)
    return (amplitude * np.sin(2 * np.pi * 200 * t) * on + noise).astype(np.float32)


def test_the_level_is_the_speech_not_the_pauses():
    x = bursts(0.2)
    want = 20 * np.log10(0.2 / np.sqrt(2))  # the tone's RMS: the pauses left out
    assert LV.speech_level_db(x) == pytest.approx(want, abs=LEVEL_TOL_DB)
    assert LV.speech_level_db(0.1 * x) == pytest.approx(want - 20, abs=LEVEL_TOL_DB)
    assert LV.speech_level_db(np.zeros(SR, np.float32)) is None  # digital silence
    assert LV.speech_level_db(np.full(SR, 1e-5, np.float32)) is None  # -100 dBFS: nothing to match


def test_matching_brings_the_speech_to_the_target_and_leaves_small_gains_alone():
    x = bursts(0.02)  # -37 dBFS
    y, m = LV.match_speech_level(x, -17.0, source="quiet.wav")
    assert m.applied and m.gain_db == pytest.approx(-17.0 - m.level_db)
    assert LV.speech_level_db(y) == pytest.approx(-17.0, abs=LEVEL_TOL_DB)
    assert "quiet.wav" in m.note and "raised by" in m.note
    y, m = LV.match_speech_level(x, m.level_db + 0.5)  # under MIN_GAIN_DB: as given
    assert not m.applied and y is not x and np.array_equal(y, x)
    y, m = LV.match_speech_level(x, m.level_db + 60)  # capped
    assert m.gain_db == LV.MAX_GAIN_DB and "capped" in m.note
    y, m = LV.match_speech_level(x, None)  # no training level known
    assert not m.applied and "unknown" in m.note
    y, m = LV.match_speech_level(np.zeros(SR, np.float32), -17.0)
    assert not m.applied and "silent" in m.note


def test_quiet_driving_audio_gives_the_features_of_the_training_level(tmp_path, caplog):
    """The point of it: the same speech recorded 20 dB quieter gives, once matched, the mel
    features of the speech at the training clip's level; kept as given, a fifth of the
    features' range away. The returned samples (the soundtrack) are the file's."""
    from nerfhead.render.renderer import driving_features

    data = tmp_path / "data"
    data.mkdir()
    x = bursts(0.2)
    write_wav(data / "aud.wav", x)
    write_wav(tmp_path / "quiet.wav", 0.1 * x)
    run = SimpleNamespace(model=SimpleNamespace(audio_kind="mel"), run_dir=tmp_path / "run",
                          dataset_dir=data)
    own, _ = driving_features(run, data / "aud.wav")
    report = {}
    with caplog.at_level("WARNING"):
        heard, samples = driving_features(run, tmp_path / "quiet.wav", report=report)
    assert "raised by 20.0 dB" in report["note"] and "raised by 20.0 dB" in caplog.text
    assert np.abs(heard - own).mean() < MEL_RESTORED_WAV_MEAN_TOL
    assert LV.speech_level_db(samples) == pytest.approx(LV.speech_level_db(x) - 20, abs=0.1)
    kept, _ = driving_features(run, tmp_path / "quiet.wav", level="keep")
    assert np.abs(kept - own).mean() > 1.0
    # the run's dataset is the default; another folder can be named; none found: as given
    other = tmp_path / "other"
    other.mkdir()
    write_wav(other / "aud.wav", 0.1 * x)
    same, _ = driving_features(run, tmp_path / "quiet.wav", data_dir=other)
    assert np.array_equal(same, kept)
    with caplog.at_level("WARNING"):
        lost, _ = driving_features(run, tmp_path / "quiet.wav", data_dir=tmp_path / "gone")
    assert np.array_equal(lost, kept) and "cannot be matched" in caplog.text


def test_evaluate_hears_other_clips_and_voices_at_the_training_level(tmp_path):
    """`evaluate --audio-from CLIP`: the clip's stored features where its level matches, its
    aud.wav brought to the training level where it does not; `--speech`: always matched."""
    from nerfhead.eval.cli import heard_features

    train, held = tmp_path / "train", tmp_path / "held"
    for d in (train, held):
        d.mkdir()
    x = bursts(0.2)
    write_wav(train / "aud.wav", x)
    write_wav(held / "aud.wav", x)
    stored = extract(x, kind="mel", num_frames=50)
    run = SimpleNamespace(dataset_dir=train)
    args = SimpleNamespace(data=None, speech=None, audio_level="match")
    feats, note = heard_features(held, "mel", stored, None, args, run)
    assert feats is stored and "training clip's level" in note
    write_wav(held / "aud.wav", 0.05 * x)  # recorded 26 dB quieter
    quiet = extract(0.05 * x, kind="mel", num_frames=50)
    feats, note = heard_features(held, "mel", quiet, None, args, run)
    assert "raised by 26.0 dB" in note and np.abs(feats - stored).mean() < MEL_RESTORED_WAV_MEAN_TOL
    feats, note = heard_features(held, "mel", quiet, None, SimpleNamespace(**{**vars(args), "audio_level": "keep"}), run)
    assert feats is quiet and "kept" in note
    feats, note = heard_features(held, "mel", stored, (0.05 * x).astype(np.float32),
                                 SimpleNamespace(**{**vars(args), "speech": "voice.wav"}), run)
    assert "voice.wav" in note and np.abs(feats - stored).max() < MEL_RESTORED_TOL


def test_the_option_is_on_every_command_that_drives_a_run():
    from nerfhead.cli import build_parser

    p = build_parser()
    for argv in (["render", "RUN", "--audio", "a.wav"], ["evaluate", "RUN"], ["serve", "RUN"]):
        assert p.parse_args(argv).audio_level == "match"
        assert p.parse_args([*argv, "--audio-level", "keep"]).audio_level == "keep"
    with pytest.raises(ValueError, match="choose one of"):
        LV.bring_to_training_level(np.zeros(10, np.float32), None, "loud")


def _stream(match: LV.LiveLevelMatch, x: np.ndarray, chunk: int = 320) -> np.ndarray:
    return np.concatenate([match.apply(x[i:i + chunk]) for i in range(0, len(x), chunk)])


def test_a_live_stream_is_brought_to_the_target_and_follows_slowly():
    """`nerfhead serve`: the first speech sets the gain at once; later changes of level (the
    speaker moves closer to the microphone) are followed at most SLEW dB per second of audio;
    noise alone, before any speech, leaves the gain at 0."""
    noise = np.random.default_rng(1).normal(0, 1e-3, 3 * SR).astype(np.float32)
    m = LV.LiveLevelMatch(-17.0)
    assert np.array_equal(_stream(m, noise), noise) and m.gain_db == 0.0 and not m.measured
    quiet = bursts(0.02, seconds=4.0)  # -37 dBFS
    out = _stream(m, quiet)
    assert m.gain_db == pytest.approx(20.0, abs=0.3)
    assert LV.speech_level_db(out[SR:]) == pytest.approx(-17.0, abs=0.3)
    before = m.gain_db
    _stream(m, bursts(0.08, seconds=1.0, seed=2))  # 12 dB louder: 1 s later at most 6 dB less
    assert before - 6.0 - 1e-6 <= m.gain_db < before - 1.0
    _stream(m, bursts(0.08, seconds=14.0, seed=3))  # the history is all louder speech now
    assert m.gain_db == pytest.approx(8.0, abs=0.3)
