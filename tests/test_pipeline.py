"""`nerfhead run`: step order, stage chaining, resume; end to end on a real clip (slow)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nerfhead import pipeline
from nerfhead.cli import build_parser


def _args(*argv):
    return build_parser().parse_args(["run", *argv])


def test_pipeline_chains_steps_and_skips_finished_ones(tmp_path, monkeypatch):
    video = tmp_path / "v.mp4"
    video.write_bytes(b"not really a video: preprocess is replaced below")
    calls = []

    def fake(argv):
        calls.append(argv)
        if argv[0] == "render":
            (tmp_path / "out" / "render.mp4").write_bytes(b"x")

    monkeypatch.setattr(pipeline, "_subcommand", fake)
    monkeypatch.setattr(pipeline, "write_val_audio", lambda data, dest: dest)
    out = tmp_path / "out"
    args = _args(str(video), "--preset", "head,lips", "--out", str(out), "--max-seconds", "3",
                 "--iters", "5", "--device", "cpu")
    assert pipeline.run(args) == 0
    names = [c[0] for c in calls]
    assert names == ["preprocess", "train", "train", "render", "evaluate"]
    assert float(calls[0][calls[0].index("--max-seconds") + 1]) == 3.0
    lips = calls[2]
    assert lips[lips.index("--config") + 1] == "lips"
    assert lips[lips.index("--init") + 1] == str(out / "run")  # the lips stage starts from head
    assert calls[3][calls[3].index("--poses") + 1] == "val"
    assert calls[3][1] == str(out / "run_lips")
    assert "--gt-torso" in calls[3]  # no torso stage: the clip's torso behind the head
    # rerun: render.mp4 exists -> skipped; evaluate runs again as metrics.json is missing
    calls.clear()
    assert pipeline.run(args) == 0
    assert [c[0] for c in calls] == ["preprocess", "train", "train", "evaluate"]


def _recording_pipeline(tmp_path, monkeypatch):
    """A stand-in video, an empty words file, and the list the pipeline's subcommands are
    recorded in instead of run."""
    video = tmp_path / "v.mp4"
    video.write_bytes(b"not really a video: preprocess is replaced below")
    words = tmp_path / "words.json"
    words.write_text("[]")
    calls = []
    monkeypatch.setattr(pipeline, "_subcommand", lambda argv: calls.append(argv))
    monkeypatch.setattr(pipeline, "write_val_audio", lambda data, dest: dest)
    return video, words, calls


def test_words_reach_preprocessing_and_training(tmp_path, monkeypatch):
    """--words: preprocessing gets audio.respeak_words (an absolute path), the head and lips
    stages train.voice_encoder_steps=3000 (the audio encoder refitted for the synthetic
    voices) unless --set gives another value; the torso stage none."""
    video, words, calls = _recording_pipeline(tmp_path, monkeypatch)
    monkeypatch.chdir(tmp_path)
    args = _args(str(video), "--preset", "head,torso", "--out", str(tmp_path / "out"),
                 "--words", "words.json", "--device", "cpu")
    pipeline.run(args)
    assert f"audio.respeak_words={words}" in calls[0]
    head, torso = calls[1], calls[2]
    assert "train.voice_encoder_steps=3000" in head and not any("voice" in o for o in torso)
    assert calls[3][0] == "render" and "--gt-torso" not in calls[3]  # the trained torso
    assert not any("voice_augment" in o for o in head)
    calls.clear()
    args = _args(str(video), "--preset", "head", "--out", str(tmp_path / "out2"), "--words",
                 str(words), "--set", "train.voice_encoder_steps=500", "--device", "cpu")
    pipeline.run(args)
    assert [o for o in calls[1] if o.startswith("train.voice_")] == ["train.voice_encoder_steps=500"]
    # --words auto (recognised) and --transcript (aligned): the same voices, the same training
    (tmp_path / "said.txt").write_text("hello\n")
    for n, opts in enumerate((["--words", "auto"], ["--transcript", "said.txt"])):
        calls.clear()
        pipeline.run(_args(str(video), "--preset", "head", "--out", str(tmp_path / f"o{n}"), *opts,
                           "--device", "cpu"))
        want = "audio.respeak_words=auto" if n == 0 else f"audio.transcript={tmp_path / 'said.txt'}"
        assert want in calls[0] and "train.voice_encoder_steps=3000" in calls[1]


def test_hubert_reaches_preprocessing_and_every_stage_without_a_refit(tmp_path, monkeypatch):
    """--audio-feature hubert: preprocessing also writes HuBERT's features (recorded in
    run.json, so a rerun without it is refused), every stage trains on them, none refits the
    encoder for the other voices (written for mel and ow only); --set data.audio wins."""
    video, words, calls = _recording_pipeline(tmp_path, monkeypatch)
    out = tmp_path / "out"
    pipeline.run(_args(str(video), "--preset", "head,torso", "--out", str(out), "--words",
                       str(words), "--audio-feature", "hubert", "--device", "cpu"))
    assert pipeline.HUBERT_KINDS in calls[0]
    # no other voices made (mel and ow only, never read by a HuBERT run); a words file is
    # not preprocessing's (the score under another voice reads it)
    assert " ".join(pipeline.HUBERT_NO_VOICES) in " ".join(calls[0])
    assert not any(o.startswith("audio.respeak_words") for o in calls[0])
    head, torso = calls[1], calls[2]
    assert "data.audio=hubert" in head and "data.audio=hubert" in torso
    assert not any("voice_encoder" in o for o in head)
    with pytest.raises(SystemExit, match="preprocessing options"):
        pipeline.run(_args(str(video), "--preset", "head,torso", "--out", str(out), "--words",
                           str(words), "--device", "cpu"))
    calls.clear()
    pipeline.run(_args(str(video), "--preset", "head", "--out", str(tmp_path / "o2"),
                       "--audio-feature", "hubert", "--set", "data.audio=mel", "--words", "none",
                       "--device", "cpu"))
    assert [o for o in calls[1] if o.startswith("data.audio")] == ["data.audio=mel"]
    # recognised words (--words auto, or the default where the recogniser and the scoring
    # voice are here): preprocessing writes words.txt alone, without voices
    for n, opts in enumerate((["--words", "auto"], [])):
        calls.clear()
        monkeypatch.setattr(pipeline, "synthetic_voices_missing", lambda voices=None: None)
        pipeline.run(_args(str(video), "--preset", "head", "--out", str(tmp_path / f"w{n}"), *opts,
                           "--audio-feature", "hubert", "--device", "cpu"))
        assert pipeline.AUTO_WORDS in calls[0] and "audio.respeak_voices=[]" in calls[0]
        assert not any("voice_encoder" in o for o in calls[1])


def test_synthetic_voices_are_the_default_where_they_can_be_made(tmp_path, monkeypatch, caplog):
    """No --words: the recognised words said by synthetic voices, optional in preprocessing,
    and train.voice_encoder_steps=3000 only when preprocessing wrote them; where the tools are
    missing a warning names what; --words none: without; a rerun keeps what OUT was made
    with."""
    video = tmp_path / "v.mp4"
    video.write_bytes(b"not really a video: preprocess is replaced below")
    calls = []
    monkeypatch.setattr(pipeline, "_subcommand", lambda argv: calls.append(argv))
    monkeypatch.setattr(pipeline, "write_val_audio", lambda data, dest: dest)

    def run(out, *opts, voices=("flite:kal16",)):
        calls.clear()
        (tmp_path / out / "data").mkdir(parents=True, exist_ok=True)
        (tmp_path / out / "data" / "manifest.json").write_text(json.dumps(
            {"steps": {"audio": {"stats": {"respoken_voices": list(voices)}}}}))
        pipeline.run(_args(str(video), "--preset", "head", "--out", str(tmp_path / out), *opts,
                           "--device", "cpu"))
        return calls[0], calls[1]

    monkeypatch.setattr(pipeline, "synthetic_voices_missing", lambda: None)
    pre, head = run("a")
    assert pipeline.AUTO_WORDS in pre and "audio.respeak_optional=true" in pre
    assert "train.voice_encoder_steps=3000" in head
    # preprocessing could not make them after all (warned there): no refit
    pre, head = run("a", voices=())
    assert pipeline.AUTO_WORDS in pre and not any("voice_" in o for o in head)
    pre, head = run("b", "--words", "none")
    assert not any("respeak" in o for o in pre) and not any("voice_" in o for o in head)
    monkeypatch.setattr(pipeline, "synthetic_voices_missing", lambda: "flite is not installed")
    with caplog.at_level("WARNING", logger="nerfhead.run"):
        pre, head = run("c")
    assert "without synthetic voices of the clip's words (flite is not installed)" in caplog.text
    assert not any("respeak" in o for o in pre) and not any("voice_" in o for o in head)
    # the tools arrive later: work started without them resumes without them (run.json)
    monkeypatch.setattr(pipeline, "synthetic_voices_missing", lambda: None)
    pre, head = run("c")
    assert not any("respeak" in o for o in pre)
    pre, head = run("a")  # and work started with them keeps them
    assert pipeline.AUTO_WORDS in pre


def test_a_stage_begun_earlier_keeps_its_voice_settings(tmp_path, monkeypatch):
    """Work started before the refit was the default (head trained with voice_augment 0.5)
    resumes with what it was begun with, not the new default, so the resume is not refused;
    --set still wins."""
    video = tmp_path / "v.mp4"
    video.write_bytes(b"not really a video: preprocess is replaced below")
    calls = []
    monkeypatch.setattr(pipeline, "_subcommand", lambda argv: calls.append(argv))
    monkeypatch.setattr(pipeline, "write_val_audio", lambda data, dest: dest)
    out = tmp_path / "out"
    (out / "run").mkdir(parents=True)
    (out / "run" / "config.yaml").write_text("train:\n  stage: head\n  voice_augment: 0.5\n")
    words = tmp_path / "words.txt"
    words.write_text("0.5 1.0 hello\n")
    pipeline.run(_args(str(video), "--preset", "head,lips", "--out", str(out), "--words",
                       str(words), "--device", "cpu"))
    head, lips = calls[1], calls[2]
    assert "train.voice_augment=0.5" in head and "train.voice_encoder_steps=0" in head
    assert "train.voice_encoder_steps=3000" in lips and not any("voice_augment" in o for o in lips)  # not begun yet
    calls.clear()
    pipeline.run(_args(str(video), "--preset", "head", "--out", str(out), "--words", str(words),
                       "--set", "train.voice_encoder_steps=100", "--device", "cpu"))
    assert [o for o in calls[1] if o.startswith("train.voice_")] == [
        "train.voice_augment=0.5", "train.voice_encoder_steps=100"]


def test_lip_sync_is_also_scored_under_a_voice_the_model_never_heard(tmp_path, monkeypatch, caplog):
    """With the clip's word timings, run respeaks them in flite:slt and evaluates the held-out
    frames under it (OUT/eval_other_voice); a --words file on the source's clock is cut to
    the clip and shifted by --start-seconds; a failure there is a warning, not a failed run;
    without timings or without flite it says why in the log."""
    from nerfhead.audio import respeak

    video = tmp_path / "v.mp4"
    video.write_bytes(b"not really a video: preprocess is replaced below")
    out = tmp_path / "out"
    (out / "data").mkdir(parents=True)
    import wave

    with wave.open(str(out / "data" / "aud.wav"), "wb") as w:  # a 4-s clip
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes(b"\0\0" * 64000)
    (out / "data" / "manifest.json").write_text(json.dumps({"video": {"start_seconds": 10.0}}))
    words = tmp_path / "words.txt"
    words.write_text("9.0 9.5 before\n10.5 11.0 one\n12.0 12.5 two\n13.5 14.5 after\n")
    calls = []

    def fake(argv):
        calls.append(argv)
        if argv[0] == "respeak" and fail:
            raise SystemExit("nerfhead run: step `nerfhead respeak` failed (exit 2)")

    fail = False
    monkeypatch.setattr(pipeline, "_subcommand", fake)
    monkeypatch.setattr(pipeline, "write_val_audio", lambda data, dest: dest)
    monkeypatch.setattr(respeak, "voice_unavailable", lambda voice: None)
    args = _args(str(video), "--preset", "head", "--out", str(out), "--words", str(words),
                 "--device", "cpu")
    assert pipeline.run(args) == 0
    names = [c[0] for c in calls]
    assert names == ["preprocess", "train", "render", "evaluate", "respeak", "evaluate"]
    respoken, scored = calls[4], calls[5]
    clip_words = respeak.read_word_timings(respoken[1])
    assert [(w.start, w.end, w.word) for w in clip_words] == [(0.5, 1.0, "one"), (2.0, 2.5, "two")]
    assert respoken[respoken.index("--voice") + 1] == "flite:slt"
    assert scored[scored.index("--speech") + 1] == str(out / "eval_other_voice" / "voice" / "flite_slt.wav")
    assert scored[scored.index("--out") + 1] == str(out / "eval_other_voice")
    # a failure there: the run's own outputs are complete, so a warning and exit 0
    calls.clear()
    fail = True
    with caplog.at_level("WARNING", logger="nerfhead.run"):
        assert pipeline.run(_args(str(video), "--preset", "head", "--out", str(out), "--words",
                                  str(words), "--device", "cpu", "--force")) == 0
    assert "the lip-sync score under flite:slt failed" in caplog.text
    # no flite here: said, and skipped
    monkeypatch.setattr(respeak, "voice_unavailable", lambda voice: "flite is not installed")
    calls.clear()
    with caplog.at_level("INFO", logger="nerfhead.run"):
        pipeline.run(_args(str(video), "--preset", "head", "--out", str(out), "--words",
                           str(words), "--device", "cpu", "--force"))
    assert "respeak" not in [c[0] for c in calls]
    assert "no lip-sync score under another voice: flite is not installed" in caplog.text


def test_synthetic_voices_missing_names_each_missing_tool(monkeypatch):
    from nerfhead.audio import respeak, words

    monkeypatch.setattr(words, "unavailable_reason", lambda: "PocketSphinx is not installed")
    monkeypatch.setattr(respeak, "engine_available", lambda engine: engine != "flite")
    reason = pipeline.synthetic_voices_missing()
    assert "PocketSphinx is not installed" in reason and "apt install flite" in reason
    assert "espeak-ng" not in reason


def test_pipeline_missing_video(tmp_path):
    assert pipeline.run(_args(str(tmp_path / "nope.mp4"), "--out", str(tmp_path / "o"))) == 2


def test_subcommand_failure_names_the_step(monkeypatch):
    with pytest.raises(SystemExit, match="nerfhead train"):
        pipeline._subcommand(["train", "/nonexistent/data", "--out", "/tmp/nerfhead_never",
                              "--config", "tiny", "--device", "cpu"])


def test_write_val_audio_takes_the_val_frames(tmp_path):
    from nerfhead.audio.features import load_audio
    from nerfhead.data.synthetic import make_dataset
    from nerfhead.render.video import write_wav

    data = make_dataset(tmp_path / "d", num_frames=22, size=16)  # val = frames 20, 21
    samples = np.zeros(22 * 640)
    samples[20 * 640:] = 0.5
    write_wav(data / "aud.wav", samples)
    out = pipeline.write_val_audio(data, tmp_path / "val.wav")
    got = load_audio(out)
    assert len(got) == 2 * 640 and np.allclose(got, 0.5, atol=1e-3)


@pytest.mark.slow
def test_run_end_to_end_on_real_clip(hdtf_video, tmp_path):
    """preprocess -> train (tiny) -> render -> evaluate on 3 s of the HDTF clip."""
    from nerfhead.cli import main
    from nerfhead.render.video import probe

    out = tmp_path / "e2e"
    rc = main(["run", str(hdtf_video), "--preset", "tiny", "--out", str(out), "--max-seconds", "3",
               "--crop-size", "256", "--iters", "30", "--device", "cpu", "--eval-frames", "4",
               "--set", "data.image_size=64", "--set", "train.val_every=1000",
               "--set", "train.voice_encoder_steps=50"])  # where voices are made: a short refit
    assert rc == 0
    info = probe(out / "render.mp4")
    n_val = 75 // 11  # 3 s at 25 fps, last 1/11 is validation
    assert info["has_audio"] and info["duration"] == pytest.approx(n_val / 25, abs=0.06)
    result = json.loads((out / "eval" / "metrics.json").read_text())
    assert result["frames"] == 4
    assert result["modes"]["full"]["psnr"]["count"] == 4
    assert result["modes"]["portrait"]["psnr"]["mean"] > 0
    assert (out / "eval" / "report.md").is_file()
    # where the recogniser and synthesisers are installed: trained with synthetic voices of
    # the recognised words, and scored under a voice it never heard as well
    if pipeline.synthetic_voices_missing() is None:
        assert (out / "data" / "words.txt").is_file()
        from nerfhead.train.checkpoint import read_checkpoint

        assert read_checkpoint(out / "run")["voice_fit"]["voices"] >= 3  # the encoder refitted
        other = json.loads((out / "eval_other_voice" / "metrics.json").read_text())
        assert other["frames"] == 4 and "flite_slt.wav" in other["audio"]


def test_trained_torso_reads_the_run_before_the_preset_name(tmp_path):
    """The render step's --gt-torso choice: the run's config.yaml says its stage; before it is
    written, the preset's last stage name does."""
    args = _args("v.mp4", "--preset", "tiny", "--out", str(tmp_path))
    assert not pipeline.trained_torso(args, tmp_path / "none")
    assert pipeline.trained_torso(_args("v.mp4", "--preset", "head,torso", "--out", str(tmp_path)),
                                  tmp_path / "none")
    (tmp_path / "config.yaml").write_text("train:\n  stage: torso\n")
    assert pipeline.trained_torso(args, tmp_path)
    (tmp_path / "config.yaml").write_text("train: [cut short by a kill")  # unreadable: the name
    assert not pipeline.trained_torso(args, tmp_path)
