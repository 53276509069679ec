"""Word timings from a clip's audio (`nerfhead words`, `audio.transcript`, `respeak_words=auto`):
checked against GRID's own word alignments of the real clip (each GRID sentence is 3 s of
grid_s1_300s.mp4, its .align file counts from the sentence's start)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from nerfhead.audio import respeak as R
from nerfhead.audio import words as W
from nerfhead.audio.features import SAMPLE_RATE, AudioError

SENTENCE_SECONDS = 3.0
SENTENCES = 4  # the first 12 s

needs_pocketsphinx = pytest.mark.skipif(W.unavailable_reason() is not None,
                                        reason=str(W.unavailable_reason()))


def grid_words(shared_dir, sentences=SENTENCES) -> list[R.WordTiming]:
    """GRID's word timings of the first sentences of grid_s1_300s.mp4, on the video's clock."""
    names = [line.split()[1] for line in
             (shared_dir / "data" / "video" / "grid_s1_300s.clips.txt").read_text().splitlines()]
    out = []
    for k, name in enumerate(names[:sentences]):
        align = shared_dir / "data" / "video" / "grid_s1_align" / (name.rsplit(".", 1)[0] + ".align")
        out += R.read_word_timings(align, offset=k * SENTENCE_SECONDS)
    return out


@pytest.fixture(scope="module")
def grid_audio(grid_video):
    from nerfhead.audio.features import load_audio

    return load_audio(grid_video)[: int(SENTENCES * SENTENCE_SECONDS * SAMPLE_RATE)]


def test_transcripts_are_spelled_as_the_dictionary_spells_them():
    assert W.transcript_words("Bin BLUE at F two, now!") == ["bin", "blue", "at", "f", "two", "now"]
    assert W.transcript_words("It\u2019s a well-known 'fact': 105 of 2026.") == [
        "it's", "a", "well", "known", "fact", "one", "hundred", "five", "of", "two", "thousand",
        "twenty", "six"]
    assert W.spell_number(0) == ["zero"] and W.spell_number(40) == ["forty"]
    assert W.spell_number(999_999)[:4] == ["nine", "hundred", "ninety", "nine"]


@needs_pocketsphinx
def test_a_transcript_aligns_to_within_tens_of_milliseconds_of_grids_own_alignment(grid_audio,
                                                                                   shared_dir):
    truth = grid_words(shared_dir)
    found = W.align_transcript(grid_audio, " ".join(w.word for w in truth))
    assert [w.word for w in found] == [w.word for w in truth]
    err = np.abs([[f.start - t.start, f.end - t.end] for f, t in zip(found, truth)]).ravel()
    # 240 s measured: median 10 ms, 92% within 50 ms
    assert np.median(err) <= 0.03 and (err <= 0.05).mean() >= 0.8, err
    assert W.unworded_speech(grid_audio, found) == []


@needs_pocketsphinx
def test_a_transcript_of_other_words_or_unknown_words_is_refused(grid_audio, shared_dir):
    truth = [w.word for w in grid_words(shared_dir)]
    with pytest.raises(AudioError, match="cannot be aligned to the audio.*start-seconds"):
        W.align_transcript(grid_audio, " ".join(truth + ["bin", "blue", "at", "f", "two", "now"]))
    with pytest.raises(AudioError, match="cannot be aligned"):
        W.align_transcript(grid_audio, "the quick brown fox jumps over the lazy dog " * 3)
    with pytest.raises(AudioError, match=r"my.txt: 2 word\(s\) not in the pronouncing.*nerfhead, zzxq"):
        W.align_transcript(grid_audio, "bin blue nerfhead zzxq", source="my.txt")


@needs_pocketsphinx
def test_a_transcript_that_leaves_the_last_sentence_out_shows_speech_without_words(grid_audio,
                                                                                  shared_dir):
    truth = grid_words(shared_dir)
    kept = [w for w in truth if w.end <= 3 * SENTENCE_SECONDS]
    found = W.align_transcript(grid_audio, " ".join(w.word for w in kept))
    gaps = W.unworded_speech(grid_audio, found)
    last = [w for w in truth if w.start >= 3 * SENTENCE_SECONDS]
    assert gaps, "the fourth sentence has no words over it"
    assert any(a <= last[1].start and b >= last[-2].end for a, b in gaps), (gaps, last)


@needs_pocketsphinx
def test_recognised_words_lie_where_the_speech_is(grid_audio, shared_dir):
    """The recogniser's words are often wrong on GRID's sentences; their spans are not."""
    truth = grid_words(shared_dir)
    found = W.recognize_words(grid_audio)
    assert all(a.end <= b.start for a, b in zip(found, found[1:]))

    def mask(words):
        m = np.zeros(int(SENTENCES * SENTENCE_SECONDS * 100), bool)
        for w in words:
            m[int(w.start * 100):int(w.end * 100)] = True
        return m

    t, f = mask(truth), mask(found)
    assert (t & f).sum() >= 0.8 * t.sum() and (f & ~t).sum() <= 0.15 * f.sum()


@needs_pocketsphinx
def test_words_command_writes_timings_respeak_reads(grid_video, shared_dir, tmp_path, capsys):
    from nerfhead.cli import main

    truth = grid_words(shared_dir, sentences=1)
    clip = tmp_path / "clip.wav"
    from nerfhead.audio.features import load_audio
    from nerfhead.render.video import write_wav

    write_wav(clip, load_audio(grid_video)[: 3 * SAMPLE_RATE], SAMPLE_RATE)
    text = tmp_path / "said.txt"
    text.write_text("Bin blue at F two now.\n")
    out = tmp_path / "words.txt"
    assert main(["words", str(clip), "--transcript", str(text), "--out", str(out)]) == 0
    got = R.read_word_timings(out)
    assert [w.word for w in got] == [w.word for w in truth]
    assert max(abs(a.start - b.start) for a, b in zip(got, truth)) < 0.08
    assert "6 words" in capsys.readouterr().out
    # no run overwrites another's work; a transcript of other words says what to check
    assert main(["words", str(clip), "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    text.write_text("lay red with nine again please and more words than said\n")
    assert main(["words", str(clip), "--transcript", str(text), "--out", str(tmp_path / "x.txt")]) == 2
    assert "cannot be aligned" in capsys.readouterr().err and not (tmp_path / "x.txt").exists()
    assert main(["words", str(clip), "--out", str(tmp_path / "rec.txt")]) == 0
    assert R.read_word_timings(tmp_path / "rec.txt")


@needs_pocketsphinx
def test_the_audio_step_aligns_a_transcript_or_recognises_the_words(grid_video, shared_dir,
                                                                     tmp_path, monkeypatch):
    """audio.transcript: the clip's words aligned to aud.wav (words.txt, on the clip's
    clock) said by the respeak voices; respeak_words=auto: recognised instead; a transcript
    beside a timings file is refused; unsetting both removes words.txt."""
    from preprocess import driver
    from preprocess.audio import AUDIO, AudioConfig
    from preprocess.decode import DECODE, DecodeConfig
    from preprocess.steps import StepError

    def tone(word, voice, speed=1.0):  # the real synthesisers are tested in test_respeak.py
        n = int(0.3 / speed * SAMPLE_RATE)
        return (0.5 * np.sin(2 * np.pi * 300 * np.arange(n) / SAMPLE_RATE)).astype(np.float32)

    monkeypatch.setattr(R, "synthesize", tone)
    monkeypatch.setattr(R, "voice_unavailable", lambda voice: None)  # the tone voice speaks
    out = tmp_path / "data"
    transcript = tmp_path / "said.txt"
    # the clip: 3.0-6.0 s of the source, GRID's second sentence
    second = [w for w in grid_words(shared_dir, sentences=2) if w.start >= SENTENCE_SECONDS]
    transcript.write_text(" ".join(w.word for w in second) + "\n")

    def run(words=None, text=transcript, optional=False, voices=("flite:slt",)):
        cfg = SimpleNamespace(decode=DecodeConfig(crop_size=64, probe_frames=2, max_seconds=3.0,
                                                  start_seconds=3.0),
                              audio=AudioConfig(kinds=["mel"], voice_shifts=[], respeak_words=words,
                                                transcript=str(text) if text else None,
                                                respeak_voices=list(voices),
                                                respeak_optional=optional),
                              weights_dir=None)
        return {r.name: r.status for r in driver.run_steps(grid_video, out, cfg, steps=[DECODE, AUDIO])}

    assert run()["audio"] == "ran"
    got = R.read_word_timings(out / "words.txt")
    assert [w.word for w in got] == [w.word for w in second]
    assert max(abs(g.start - (t.start - 3.0)) for g, t in zip(got, second)) < 0.08
    record = json.loads((out / "manifest.json").read_text())["steps"]["audio"]["stats"]
    assert record["respeak_words_from"] == "transcript" and record["respoken_voices"] == ["flite:slt"]
    assert np.load(out / "aud_mel_voices.npy").shape[0] == 1
    assert run()["audio"] == "skipped"
    assert run(words="auto", text=None)["audio"] == "ran"
    assert R.read_word_timings(out / "words.txt")
    record = json.loads((out / "manifest.json").read_text())["steps"]["audio"]["stats"]
    assert record["respeak_words_from"] == "recognised"
    with pytest.raises(StepError, match="both give the words"):
        run(words=str(tmp_path / "timings.txt"))
    # no voices asked for (`nerfhead run --audio-feature hubert`): the words alone, for the
    # lip-sync score under another voice; the voices and their picture of an earlier run go
    assert (out / "previews" / "respeak.png").exists()
    assert run(voices=[])["audio"] == "ran"
    assert [w.word for w in R.read_word_timings(out / "words.txt")] == [w.word for w in second]
    assert not (out / "aud_mel_voices.npy").exists()
    assert not (out / "previews" / "respeak.png").exists()
    with pytest.raises(StepError, match="respeak_voices is empty"):  # a timings file: nothing to do
        run(words=str(tmp_path / "timings.txt"), text=None, voices=[])
    assert run(words=None, text=None)["audio"] == "ran"
    assert not (out / "words.txt").exists() and not (out / "aud_mel_voices.npy").exists()


@needs_pocketsphinx
def test_optional_synthetic_voices_are_left_out_with_a_warning(grid_video, tmp_path, monkeypatch,
                                                               caplog):
    """audio.respeak_optional (nerfhead run's default): a missing synthesiser is warned about
    before any words are recognised, and the step writes the other voices without them;
    without the option the step stops naming the program."""
    from preprocess import driver
    from preprocess.audio import AUDIO, AudioConfig
    from preprocess.decode import DECODE, DecodeConfig
    from preprocess.steps import StepError

    monkeypatch.setattr(R, "engine_available", lambda engine: False)
    monkeypatch.setattr(W, "recognize_words", lambda *a, **k: pytest.fail("recognised in vain"))
    out = tmp_path / "data"

    def run(optional):
        cfg = SimpleNamespace(decode=DecodeConfig(crop_size=64, probe_frames=2, max_seconds=2.0),
                              audio=AudioConfig(kinds=["mel"], voice_shifts=[], respeak_words="auto",
                                                respeak_optional=optional),
                              weights_dir=None)
        return {r.name: r.status for r in driver.run_steps(grid_video, out, cfg, steps=[DECODE, AUDIO])}

    with pytest.raises(StepError, match="'flite' is not installed.*apt install flite"):
        run(False)
    with caplog.at_level("WARNING"):
        assert run(True)["audio"] == "ran"
    assert "no synthetic voices (audio.respeak_optional)" in caplog.text
    assert not (out / "aud_mel_voices.npy").exists() and not (out / "words.txt").exists()
    assert run(True)["audio"] == "skipped"  # its check accepts the voices left out
    monkeypatch.undo()  # flite and espeak-ng "installed" (the tone voice) -> the step reruns
    monkeypatch.setattr(R, "engine_available", lambda engine: True)
    monkeypatch.setattr(R, "flite_voices", lambda: ("kal16",))
    monkeypatch.setattr(R, "synthesize", lambda word, voice, speed=1.0: np.full(
        int(0.3 / speed * SAMPLE_RATE), 0.3, np.float32))
    assert run(True)["audio"] == "ran"
    assert np.load(out / "aud_mel_voices.npy").shape[0] == 3 and (out / "words.txt").is_file()
