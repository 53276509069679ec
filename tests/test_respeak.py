"""`nerfhead respeak`: a clip's words in other voices, each word on its own span.

The fitting and placing are tested with a deterministic synthesiser (a tone whose length
falls faster than in proportion to the speed asked, with silence around it, as espeak-ng's
does); the real engines (flite, espeak-ng) where they are installed."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from nerfhead.audio import respeak as R
from nerfhead.audio.features import SAMPLE_RATE, AudioError

SR = SAMPLE_RATE


def tone_voice(base_seconds=0.4, power=1.3, pad=0.1, calls=None):
    """say(word, speed): a 300-Hz tone of base_seconds / speed**power (not proportional),
    with `pad` seconds of silence before and after."""
    def say(word, speed):
        if calls is not None:
            calls.append(speed)
        n = int(base_seconds / speed ** power * SR)
        z = np.zeros(int(pad * SR), np.float32)
        return np.concatenate([z, 0.5 * np.sin(2 * np.pi * 300 * np.arange(n) / SR), z]).astype(np.float32)
    return say


def level_db(x, hop=160):
    n = len(x) // hop
    return 10 * np.log10((x[:n * hop].reshape(n, hop).astype(np.float64) ** 2).mean(1) + 1e-12)


def test_word_timings_in_seconds_grid_units_and_whisper_json(tmp_path):
    txt = tmp_path / "w.txt"
    txt.write_text("# start end word\n0.0 0.5 sil\n0.5 0.8 bin\n0.8,1.1,blue\n1.1\t1.3\tsp\n1.3 1.6 at\n")
    assert R.read_word_timings(txt) == [R.WordTiming(0.5, 0.8, "bin"), R.WordTiming(0.8, 1.1, "blue"),
                                        R.WordTiming(1.3, 1.6, "at")]
    align = tmp_path / "s.align"  # GRID: 1/25000 s
    align.write_text("0 23750 sil\n23750 29500 bin\n29500 34000 blue\n")
    words = R.read_word_timings(align, offset=3.0)
    assert [w.word for w in words] == ["bin", "blue"]
    assert words[0].start == pytest.approx(3.0 + 23750 / 25000) and words[1].end == pytest.approx(3.0 + 1.36)
    js = tmp_path / "w.json"  # whisperX
    js.write_text(json.dumps({"segments": [{"words": [{"word": "hello", "start": 0.2, "end": 0.6},
                                                      {"word": "there", "start": 0.6, "end": 1.0}]}]}))
    assert [(w.start, w.word) for w in R.read_word_timings(js)] == [(0.2, "hello"), (0.6, "there")]


@pytest.mark.parametrize("content, match", [
    ("0.5 0.8 bin\n0.7 1.0 blue\n", "line 2.*before the previous word"),
    ("0.5 0.8 bin\nzero 1.0 blue\n", "line 2: expected 'start end word'"),
    ("0.9 0.8 bin\n", "line 1.*0 <= start < end"),
    ("0 1 sil\n", "no words"),
])
def test_word_timings_errors_name_the_file_and_line(tmp_path, content, match):
    p = tmp_path / "bad.txt"
    p.write_text(content)
    with pytest.raises(AudioError, match=match) as e:
        R.read_word_timings(p)
    assert str(p) in str(e.value)


def test_an_overlap_is_reported_on_the_files_own_clock(tmp_path):
    p = tmp_path / "w.txt"
    p.write_text("0.5 0.8 bin\n0.7 1.0 blue\n")
    with pytest.raises(AudioError, match=r"starts at 0.7 s, before the previous word 'bin' ends \(0.8 s\)"):
        R.read_word_timings(p, offset=-0.4)


def test_whisper_words_without_timing_are_refused(tmp_path):
    p = tmp_path / "w.json"
    p.write_text(json.dumps([{"word": "a", "start": 0.1, "end": 0.2}, {"word": "b"}]))
    with pytest.raises(AudioError, match="word 1 has no numeric start/end"):
        R.read_word_timings(p)


def test_fit_word_searches_the_speed_and_fills_the_span_exactly():
    calls: list[float] = []
    n = int(0.25 * SR)  # 0.4 s at speed 1: needs speed (0.4/0.25)**(1/1.3) = 1.436
    x, speed, fits = R.fit_word(tone_voice(calls=calls), "word", n)
    assert fits and len(x) == n
    assert speed == pytest.approx(1.6 ** (1 / 1.3), rel=R.FIT_TOLERANCE)
    assert len(calls) <= 7
    db = level_db(x)
    assert db[0] > -20 and db[-1] > -20  # the silence around the word was trimmed: tone edge to edge
    # a slower word is searched the other way
    x, speed, fits = R.fit_word(tone_voice(), "word", int(0.8 * SR))
    assert fits and speed < 1 and len(x) == int(0.8 * SR)


def test_a_word_that_cannot_fit_is_resampled_by_the_limit_and_centred():
    stubborn = tone_voice(base_seconds=0.9, power=0.0)  # 0.9 s whatever the speed
    n = int(0.3 * SR)
    x, _, fits = R.fit_word(stubborn, "word", n)
    assert not fits and len(x) == n  # 0.9 s resampled to 0.6 s, its middle 0.3 s kept
    short = tone_voice(base_seconds=0.1, power=0.0)  # 0.1 s into 0.5 s: stretched to 0.15, centred
    x, _, fits = R.fit_word(short, "word", int(0.5 * SR))
    active = np.flatnonzero(level_db(x) > -30)
    assert not fits and abs(len(active) - 15) <= 1 and abs(active.mean() - 24.5) <= 1


def test_respeak_places_words_in_their_spans_at_the_reference_loudness():
    rng = np.random.default_rng(1)
    num = 3 * SR
    reference = rng.normal(0, 0.003, num).astype(np.float32)  # room noise ...
    reference[SR // 2:SR] += 0.2 * np.sin(np.arange(SR // 2) * 0.3)  # ... and one loud stretch
    words = [R.WordTiming(0.5, 0.9, "one"), R.WordTiming(1.2, 1.5, "two"), R.WordTiming(2.0, 2.7, "three")]
    r = R.respeak(words, tone_voice(), num, reference=reference)
    assert r.samples.shape == (num,) and r.samples.dtype == np.float32 and r.words == 3 and not r.unfitted
    db = level_db(r.samples)
    inside = np.zeros(len(db), bool)
    for w in words:
        inside[int(w.start * 100) + 1:int(w.end * 100) - 1] = True
    outside = np.ones(len(db), bool)
    for w in words:
        outside[int(w.start * 100) - 1:int(w.end * 100) + 2] = False
    assert db[inside].min() > db[outside].max() + 20
    # speech at the reference's speech loudness, pauses at its noise floor
    assert R._speech_rms(r.samples) == pytest.approx(R._speech_rms(reference), rel=0.03)
    floor = 10 * np.log10((r.samples[np.repeat(outside, 160)[:num]] ** 2).mean())
    assert floor == pytest.approx(20 * np.log10(R._floor_rms(reference)), abs=1.5)
    again = R.respeak(words, tone_voice(), num, reference=reference)
    assert np.array_equal(again.samples, r.samples)  # deterministic (seeded noise)


def test_unknown_engine_and_missing_program_are_named(monkeypatch):
    with pytest.raises(AudioError, match="ENGINE:VOICE"):
        R.parse_voice("festival:kal")
    monkeypatch.setattr(R, "engine_available", lambda engine: False)
    with pytest.raises(AudioError, match="apt install flite"):
        R.synthesize("word", R.parse_voice("flite:slt"))


@pytest.mark.parametrize("voice", ["flite:slt", "flite:awb", "espeak-ng:en-us+f3"])
def test_real_synthesisers_say_each_word_inside_its_span(voice):
    v = R.parse_voice(voice)
    if not R.engine_available(v.engine):
        pytest.skip(f"{v.engine} is not installed (apt install {v.engine})")
    words = [R.WordTiming(0.40, 0.62, "bin"), R.WordTiming(0.62, 0.95, "green"),
             R.WordTiming(1.30, 1.50, "by"), R.WordTiming(1.50, 1.72, "h")]
    r = R.respeak(words, v, 2 * SR)
    assert len(r.samples) == 2 * SR and not r.unfitted
    energy = r.samples.astype(np.float64) ** 2
    span = np.zeros(2 * SR, bool)
    for w in words:
        span[int(w.start * SR):int(w.end * SR)] = True
    assert energy[span].sum() > 0.99 * energy.sum()
    for w in words:  # every word is sounded, not only placed
        assert np.sqrt(energy[int(w.start * SR):int(w.end * SR)].mean()) > 0.01


def test_respeak_command(tmp_path, capsys):
    from nerfhead.cli import main
    from nerfhead.render.video import write_wav

    clip = tmp_path / "clip"
    clip.mkdir()
    write_wav(clip / "aud.wav", 0.1 * np.sin(np.arange(2 * SR) * 0.05), SR)
    words = tmp_path / "w.txt"
    words.write_text("0.3 0.6 bin\n0.6 0.9 blue\n")
    assert main(["respeak", str(words), "--like", str(clip), "--out", str(tmp_path / "o")]) == 2
    assert "--voice" in capsys.readouterr().err
    late = tmp_path / "late.txt"
    late.write_text("0.3 0.6 bin\n2.5 2.9 blue\n")
    assert main(["respeak", str(late), "--like", str(clip), "--voice", "flite:slt",
                 "--out", str(tmp_path / "o")]) == 2
    assert "lasts 2.00 s" in capsys.readouterr().err
    assert main(["respeak", "--list-voices"]) == 0
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert main(["respeak", str(words), "--like", str(clip), "--voice", "flite:slt",
                 "--out", str(blocker)]) == 2
    assert "not a folder" in capsys.readouterr().err
    if shutil.which("flite") is None:
        pytest.skip("flite is not installed (apt install flite)")
    out = tmp_path / "o"
    assert main(["respeak", str(words), "--like", str(clip), "--voice", "flite:slt", "--out", str(out)]) == 0
    from nerfhead.audio.features import load_audio

    assert len(load_audio(out / "flite_slt.wav")) == 2 * SR
    summary = json.loads((out / "respeak.json").read_text())
    assert summary["voices"][0]["voice"] == "flite:slt" and summary["voices"][0]["words"] == 2
    assert (out / "respeak.png").stat().st_size > 1000


def test_a_voice_that_fails_leaves_no_empty_output_folder(tmp_path, capsys, monkeypatch):
    from nerfhead.cli import main
    from nerfhead.render.video import write_wav

    clip = tmp_path / "clip"
    clip.mkdir()
    write_wav(clip / "aud.wav", 0.1 * np.sin(np.arange(2 * SR) * 0.05), SR)
    words = tmp_path / "w.txt"
    words.write_text("0.3 0.6 bin\n0.6 0.9 blue\n")

    def fails(*a, **k):
        raise AudioError("flite:slt: the synthesiser said nothing")

    monkeypatch.setattr(R, "respeak", fails)
    monkeypatch.setattr(R, "parse_voice", lambda label: SimpleNamespace(label=label))
    out = tmp_path / "new" / "voices"
    assert main(["respeak", str(words), "--like", str(clip), "--voice", "flite:slt", "--out", str(out)]) == 2
    assert "said nothing" in capsys.readouterr().err and not (tmp_path / "new").exists()


def test_an_unknown_flite_voice_is_refused_not_said_in_the_default_voice():
    """flite itself falls back to its default voice (exit 0) for a name it does not know."""
    if not R.engine_available("flite"):
        pytest.skip("flite is not installed (apt install flite)")
    with pytest.raises(AudioError, match="flite has no voice 'nosuch'.*slt"):
        R.synthesize("word", R.parse_voice("flite:nosuch"))


def test_the_audio_step_adds_the_clips_words_in_other_voices(grid_video, shared_dir, tmp_path,
                                                             monkeypatch):
    """audio.respeak_words: the clip's words (GRID's own timings of the first sentence, on the
    source's clock) said by each audio.respeak_voices voice join aud_<kind>_voices.npy, on
    the clip's clock (the clip starts 1 s into the source); a changed words file reruns the
    step; timings of another video are refused. The synthesiser is the tone voice here (the
    real engines are tested above)."""
    from preprocess import driver
    from preprocess.audio import AUDIO, AudioConfig
    from preprocess.decode import DECODE, DecodeConfig
    from preprocess.steps import StepError

    monkeypatch.setattr(R, "synthesize", lambda word, voice, speed=1.0: tone_voice()(word, speed))
    monkeypatch.setattr(R, "voice_unavailable", lambda voice: None)  # the tone voice speaks
    words = tmp_path / "bbaf2n.align"
    words.write_text((shared_dir / "data" / "video" / "grid_s1_align" / "bbaf2n.align").read_text())
    out = tmp_path / "data"

    def run(path=words):
        cfg = SimpleNamespace(decode=DecodeConfig(crop_size=64, probe_frames=2, max_seconds=2.5,
                                                  start_seconds=1.0),
                              audio=AudioConfig(kinds=["mel"], voice_shifts=[],
                                                respeak_words=str(path) if path else None,
                                                respeak_voices=["flite:slt", "espeak-ng:en-us"]),
                              weights_dir=None)
        return {r.name: r.status for r in driver.run_steps(grid_video, out, cfg, steps=[DECODE, AUDIO])}

    assert run()["audio"] == "ran"
    own = np.load(out / "aud_mel.npy")
    voices = np.load(out / "aud_mel_voices.npy").astype(np.float32)
    assert voices.shape == (2, *own.shape)
    # 'bin' (0.95-1.18 s) starts before the clip and is left out; 'blue' ... 'now' (1.18-2.12 s)
    # fall 0.18-1.12 s into the clip: frames 5-27 at 25 fps. The mel window row 8 is the frame's.
    loud = voices[0, :, 8].max(-1)  # the tone voice fills one band: its loudest
    inside, outside = loud[6:26], np.concatenate([loud[:3], loud[31:]])
    assert inside.min() > outside.max() + 1.0
    assert (out / "previews" / "respeak.png").stat().st_size > 1000
    import json

    record = json.loads((out / "manifest.json").read_text())["steps"]["audio"]["stats"]
    assert record["respoken_voices"] == ["flite:slt", "espeak-ng:en-us"]
    assert run()["audio"] == "skipped"
    words.write_text(words.read_text().replace("47250 53000 now", "47250 52000 now"))
    assert run()["audio"] == "ran"
    # without words again: no voices, and no picture of them left behind
    assert run(None)["audio"] == "ran"
    assert not (out / "aud_mel_voices.npy").exists() and not (out / "previews" / "respeak.png").exists()
    elsewhere = tmp_path / "late.txt"
    elsewhere.write_text("100.0 100.4 hello\n")
    with pytest.raises(StepError, match="none of its words lies within this clip"):
        run(elsewhere)
