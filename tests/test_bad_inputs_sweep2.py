"""Bad inputs found by a second sweep: driving audio in other forms, pose files of other
layouts, speakers files, presets and --set values, bad requests to the live server, and
transcripts or word timings nerfhead cannot say. Each is refused (or warned about) with a
message that names the file, the cause and the way forward, instead of a traceback or a
silently wrong result. Files are built at test time; no training beyond a 2-step run on a
24-px synthetic dataset.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

# the first sweep's helpers, its 24-px dataset and 2-step run (module-scoped here too), and
# test_batch's stand-in video for speakers files: fixtures shared by import
from test_bad_inputs_sweep import dataset, ffmpeg, speech_like, tiny_run  # noqa: F401
from test_batch import video  # noqa: F401

from nerfhead.audio.features import AudioError, load_audio


@pytest.fixture(scope="module")
def base_wav(tmp_path_factory) -> Path:
    from nerfhead.render.video import write_wav

    path = tmp_path_factory.mktemp("audio") / "base.wav"
    write_wav(path, speech_like(1.5), 16000)
    return path


# ------------------------------------------------------------------- driving audio, other forms


@pytest.mark.parametrize("name, args", [
    ("s.mp3", ["-c:a", "libmp3lame"]), ("s.flac", ["-c:a", "flac"]), ("s.ogg", ["-c:a", "libvorbis"]),
    ("st48.wav", ["-ar", 48000, "-ac", 2]), ("r8k.wav", ["-ar", 8000]), ("u8.wav", ["-c:a", "pcm_u8"]),
    ("s24.wav", ["-c:a", "pcm_s24le"]), ("s32.wav", ["-c:a", "pcm_s32le"]),
    ("meta.wav", ["-metadata", "title=a LIST chunk", "-write_bext", 1]),
    ("mp3_named.wav", ["-c:a", "libmp3lame", "-f", "mp3"]),
])
def test_driving_audio_in_other_forms_is_resampled_and_downmixed(base_wav, tmp_path, name, args):
    """Already right before this sweep: kept so that it stays so."""
    ref = load_audio(base_wav)
    path = tmp_path / name
    ffmpeg("-i", base_wav, *args, path)
    x = load_audio(path)
    assert abs(len(x) - len(ref)) <= 160  # 10 ms: an encoder's padding at most
    n = min(len(x), len(ref))
    assert np.corrcoef(x[:n], ref[:n])[0, 1] > 0.95


def test_a_folder_given_as_audio_is_called_a_folder(tmp_path):
    folder = tmp_path / "speech.wav"
    folder.mkdir()
    with pytest.raises(AudioError, match=r"speech\.wav is a folder, not an audio file"):
        load_audio(folder)


def test_render_refuses_an_out_that_is_its_own_audio(tiny_run, tmp_path, capsys):
    """`--audio talk.mp4 --out talk.mp4` used to replace the speech with a 2-frame render."""
    from nerfhead.cli import main

    talk = tmp_path / "talk.mp4"
    ffmpeg("-f", "lavfi", "-i", "color=c=gray:s=32x32:r=25:d=1", "-f", "lavfi", "-i",
           "sine=frequency=220:duration=1", "-c:v", "libx264", "-c:a", "aac", "-shortest", talk)
    before = talk.read_bytes()
    assert main(["render", str(tiny_run), "--audio", str(talk), "--out", str(talk),
                 "--device", "cpu", "--threads", "1", "--max-frames", "2"]) == 2
    err = capsys.readouterr().err
    assert f"--out {talk} is the --audio file: the render would replace it" in err
    assert "Traceback" not in err and talk.read_bytes() == before


def test_audio_features_file_is_checked_against_the_run(tmp_path):
    """Wrong shapes failed in the audio encoder without naming the file; NaN features
    rendered a video with exit 0."""
    from nerfhead.render.renderer import load_feature_file

    meta = SimpleNamespace(audio_len=16, audio_channels=80, audio_kind="mel")
    cases = {"other.npy": (np.zeros((10, 16, 29), np.float32),
                           "shape (10, 16, 29), but this run was trained on mel features [N, 16, 80]"),
             "flat.npy": (np.zeros(10, np.float32), "shape (10,)"),
             "nan.npy": (np.full((4, 16, 80), np.nan, np.float32),
                         "the features of 4 frame(s) hold NaN or infinite values (frame 0 first")}
    for name, (array, words) in cases.items():
        np.save(tmp_path / name, array)
        with pytest.raises(ValueError) as e:
            load_feature_file(tmp_path / name, meta)
        assert f"--audio-features {tmp_path / name}: {words}" in str(e.value)
    (tmp_path / "junk.npy").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"junk\.npy: not a readable \.npy array"):
        load_feature_file(tmp_path / "junk.npy", meta)
    np.save(tmp_path / "ok.npy", np.zeros((4, 16, 80), np.float32))
    assert load_feature_file(tmp_path / "ok.npy", meta).shape == (4, 16, 80)
    one = SimpleNamespace(audio_len=1, audio_channels=29, audio_kind="precomputed")
    np.save(tmp_path / "ds.npy", np.zeros((4, 29), np.float32))  # [N, C] with T = 1
    assert load_feature_file(tmp_path / "ds.npy", one).shape == (4, 1, 29)


# ------------------------------------------------------------------------------- pose files


def _poses(n: int = 4) -> np.ndarray:
    c2w = np.repeat(np.eye(4, dtype=np.float32)[None], n, axis=0)
    c2w[:, :3, 3] = [0.0, 0.02, 0.5]
    return c2w


def test_pose_matrices_that_are_no_rigid_transform_are_refused(tmp_path):
    """Transposed or scaled matrices rendered a wrong or empty head with exit 0."""
    from nerfhead.render.poses import load_pose_file

    path = tmp_path / "poses.npy"
    np.save(path, _poses().transpose(0, 2, 1))
    with pytest.raises(ValueError) as e:
        load_pose_file(path)
    assert str(path) in str(e.value) and "not [0, 0, 0, 1]" in str(e.value)
    assert "transposed" in str(e.value) and "c2w.transpose(0, 2, 1)" in str(e.value)
    scaled = _poses()
    scaled[:, :3, :3] *= 2
    np.save(path, scaled)
    with pytest.raises(ValueError, match=r"rotation block of pose 0 .* is no rotation \(determinant 8"):
        load_pose_file(path)


def test_pose_arrays_of_other_shapes(tmp_path):
    from nerfhead.render.poses import load_pose_file

    path = tmp_path / "poses.npy"
    np.save(path, _poses(3)[:, :3])  # [N, 3, 4]: the last row left out
    np.testing.assert_array_equal(load_pose_file(path), _poses(3))
    np.save(path, _poses(1)[0])  # one [4, 4] matrix: one pose
    assert load_pose_file(path).shape == (1, 4, 4)
    np.save(path, _poses(3).reshape(3, 16))
    with pytest.raises(ValueError, match=r"shape \(3, 16\) \(flattened matrices\? reshape them"):
        load_pose_file(path)
    txt = tmp_path / "poses.txt"
    np.savetxt(txt, _poses(3).reshape(3, 16))
    with pytest.raises(ValueError, match=r"poses\.txt: neither \.npy nor JSON; a pose file is a "
                                         r"transforms \.json"):
        load_pose_file(txt)


@pytest.mark.parametrize("doc, words", [
    ([np.eye(4).tolist()], "no 'frames' list (its top level is a list, not an object)"),
    ({"poses": [np.eye(4).tolist()]}, "no 'frames' list (its keys are ['poses'])"),
    ({"frames": [{"file_path": "a.png"}]}, "frame 0 (counting from 0) has no 'transform_matrix'"),
    ({"frames": []}, "holds no poses"),
    ({"frames": [{"transform_matrix": "eye"}]}, "not all 4x4 matrices of numbers"),
])
def test_transforms_json_of_another_layout_is_named(tmp_path, doc, words):
    from nerfhead.render.poses import load_pose_file

    path = tmp_path / "poses.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError) as e:
        load_pose_file(path)
    assert str(path) in str(e.value) and words in str(e.value)


def test_pose_file_shorter_than_the_audio_is_warned_about(dataset, tmp_path, caplog):
    from nerfhead.render.poses import build_sequence

    path = tmp_path / "poses.npy"
    np.save(path, _poses(3))
    with caplog.at_level(logging.WARNING, logger="nerfhead.render"):
        seq = build_sequence(dataset, 10, pose_file=path)
    assert len(seq) == 10
    assert f"pose file {path} holds 3 pose(s) for 10 frames of audio" in caplog.text
    caplog.clear()
    np.save(path, _poses(1))  # one pose: a still head, as meant
    with caplog.at_level(logging.WARNING, logger="nerfhead.render"):
        build_sequence(dataset, 10, pose_file=path)
    assert caplog.text == ""


def test_pose_from_a_short_dataset_and_from_what_is_no_dataset(dataset, tmp_path):
    """A dataset of under 11 frames has no validation frames: --pose-from refused it as a
    'pose file' with 0 matrices."""
    from nerfhead.data.synthetic import make_dataset
    from nerfhead.render.poses import build_sequence

    short = make_dataset(tmp_path / "short", num_frames=8, size=32)
    assert not json.loads((short / "transforms_val.json").read_text())["frames"]
    assert len(build_sequence(dataset, 5, pose_from=short)) == 5
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\x00\x00\x00\x18ftypmp42")
    for path, words in ((clip, "is a video, not a dataset folder"),
                        (tmp_path / "nope", "does not exist"),
                        (tmp_path, "has no transforms_train.json")):
        with pytest.raises(ValueError) as e:
            build_sequence(dataset, 5, pose_from=path)
        assert str(e.value).startswith("--pose-from ") and words in str(e.value)


# ---------------------------------------------------------------------------- speakers files


@pytest.mark.parametrize("text, words", [
    (b"\xff\xfe\x00speakers", "is not UTF-8 text"),
    (b"speakers:\n  - name: a\n    video: clips/a.mp4\n    name: b\n",
     "not valid YAML: the key 'name' is given twice (first on line 2); keep one"),
    (b"# only a comment\n", "is empty (or only comments)"),
    (b"speakers:\n  - name: summary.md\n    video: clips/a.mp4\n",
     "name 'summary.md' is the batch's own file DIR/summary.md"),
    (b"speakers:\n  - name: Summary.CSV\n    video: clips/a.mp4\n", "the batch's own file"),
    (b"speakers:\n  - name: a\n    video: clips/a.mp4\n    max_seconds: .nan\n",
     "'max_seconds' must be a positive number, got nan"),
    (b"speakers:\n  - name: a\n    video: clips/a.mp4\n    max_seconds: .inf\n",
     "'max_seconds' must be a positive number, got inf"),
])
def test_speakers_file_mistakes_name_the_file(tmp_path, video, text, words):
    from nerfhead.batch.spec import SpeakersFileError, load_speakers

    path = tmp_path / "speakers.yaml"
    path.write_bytes(text)
    with pytest.raises(SpeakersFileError) as e:
        load_speakers(path)
    assert str(path) in str(e.value) and words in str(e.value)


def test_speakers_file_that_is_a_folder_and_yaml_merges_still_work(tmp_path, video, capsys):
    from nerfhead.batch.spec import load_speakers
    from nerfhead.cli import main

    folder = tmp_path / "speakers.yaml"
    folder.mkdir()
    assert main(["batch", str(folder), "--out", str(tmp_path / "out"), "--dry-run"]) == 2
    assert "is a folder, not a YAML file" in capsys.readouterr().err
    path = tmp_path / "merged.yaml"  # a << merge repeats keys on purpose: allowed
    path.write_text("speakers:\n  - &a {name: a, video: clips/a.mp4}\n  - <<: *a\n    name: b\n")
    assert [s.name for s in load_speakers(path)] == ["a", "b"]


# ------------------------------------------------------------------------ presets and --set


@pytest.mark.parametrize("text, words", [
    (b"train: {iters: [1,\n", "is not valid YAML"),
    (b"\xff\xfe", "is not UTF-8 text"),
    (b"train: 5\n", "section 'train' must be a mapping of field: value, got 5"),
    (b"train:\n  iters: 2\n  iters: 3\n", "the key 'iters' is given twice (first on line 2)"),
    (b"train: {iters: -3}\n", "train.iters: -3 is out of range; it must be 1 or more"),
    (b"train: {itres: 3}\n", "unknown field(s) ['itres'] ('itres': did you mean 'iters'?)"),
    (b"foo: {a: 1}\n", "unknown config section(s) ['foo']"),
])
def test_preset_file_mistakes_name_the_file(tmp_path, text, words):
    from nerfhead.config import ConfigError
    from nerfhead.train.config import load_configs

    path = tmp_path / "mine.yaml"
    path.write_bytes(text)
    with pytest.raises(ConfigError) as e:
        load_configs(str(path))
    assert str(path) in str(e.value) and words in str(e.value)


@pytest.mark.parametrize("override, words", [
    ("train.iters=-5", "train.iters: -5 is out of range; it must be 1 or more"),
    ("train.iters=0", "train.iters: 0 is out of range"),
    ("data.num_rays=0", "data.num_rays: 0 is out of range"),
    ("data.image_size=-5", "data.image_size: -5 is out of range; it must be 0 or more"),
    ("data.image_size=3", "data.image_size: 3 px is too small to hold a face"),
    ("train.lr_net=-1", "train.lr_net: -1.0 is out of range"),
    ("train.lr_net=.nan", "train.lr_net: nan is out of range"),
    ("train.latent_dropout=1.5", "train.latent_dropout: 1.5 is out of range; it must be from 0.0 to 1.0"),
    ("model.audio_dim=0", "model.audio_dim: 0 is out of range"),
    ("train.iters=[1,", "override 'train.iters=[1,': the value '[1,' is not valid YAML"),
    ("train.iters=abc", "train.iters: expected an integer, got 'abc'"),
])
def test_set_values_out_of_range_or_unreadable_are_refused(override, words):
    from nerfhead.config import ConfigError
    from nerfhead.train.config import load_configs

    with pytest.raises(ConfigError) as e:
        load_configs("tiny", [override])
    assert words in str(e.value) and "mine.yaml" not in str(e.value)


def test_every_preset_still_loads():
    from nerfhead.config import CONFIG_DIR
    from nerfhead.train.config import load_configs

    for path in CONFIG_DIR.glob("*.yaml"):
        if path.stem != "preprocess":
            load_configs(path.stem)


def test_train_cli_reports_a_bad_preset_without_a_traceback(dataset, tmp_path, capsys):
    from nerfhead.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {iters: [1,\n")
    assert main(["train", str(dataset), "--config", str(bad), "--out", str(tmp_path / "run"),
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"config file {bad} is not valid YAML" in err and f'in "{bad}", line 2' in err
    assert "Traceback" not in err and not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------- live server


def test_pcm_parameters_and_a_wav_sent_as_pcm():
    from nerfhead.serve.app import decode_pcm, pcm_params

    assert pcm_params("44100", "2") == (44100, 2)
    for rate, ch, words in (("abc", 1, "PCM rate 'abc' is not a whole number"),
                            ("16000.5", 1, "is not a whole number"),
                            (0, 1, "PCM rate 0 is out of range (1000 to 192000"),
                            (16000, 0, "PCM channels 0 is out of range (1 to 8)")):
        with pytest.raises(ValueError) as e:
            pcm_params(rate, ch)
        assert words in str(e.value)
    import io
    import wave

    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(44100)
        w.writeframes(np.zeros(882, "<i2").tobytes())
    with pytest.raises(ValueError, match="this is a WAV file, not raw PCM: send it as a file"):
        decode_pcm(buf.getvalue(), 16000, 1)


def test_server_answers_bad_requests_with_errors(tiny_run, base_wav):
    pytest.importorskip("aiohttp")
    import aiohttp
    from aiohttp.test_utils import TestClient, TestServer

    from nerfhead.serve.app import ServeConfig, build_app, load_server

    server = load_server(tiny_run, ServeConfig(max_sessions=2), "cpu", motion="clip")
    wav = base_wav.read_bytes()

    async def body(c):
        sid = (await (await c.post("/api/sessions")).json())["session"]
        url = f"/api/sessions/{sid}/audio"
        form = aiohttp.FormData()
        form.add_field("file", wav, filename="speech.wav", content_type="audio/wav")
        answers = {
            "form": await c.post(url, data=form),
            "json": await c.post(url, json={"audio": "..."}),
            "format": await c.post(url + "?format=f32le", data=wav),
            "wav as pcm": await c.post(url + "?format=s16le", data=wav),
            "rate": await c.post(url, data=b"\0\0" * 8,
                                 headers={"Content-Type": "audio/L16; rate=abc"}),
            "empty pcm": await c.post(url + "?format=s16le", data=b""),
        }
        errors = {k: (r.status, (await r.json())["error"]) for k, r in answers.items()}
        with pytest.raises(aiohttp.WSServerHandshakeError) as e:
            await c.ws_connect(f"/api/sessions/{sid}/ws?rate=5")
        ok = await c.post(url, data=wav)  # the session still takes good audio
        return errors, e.value.status, ok.status, (await c.get("/api/health")).status

    async def main():
        async with TestClient(TestServer(build_app(server))) as client:
            return await body(client)

    errors, ws_status, ok, health = asyncio.run(main())
    assert all(status == 400 for status, _ in errors.values())
    assert "multipart/form-data, not audio" in errors["form"][1]
    assert "curl --data-binary @speech.wav" in errors["form"][1]
    assert "application/json, not audio" in errors["json"][1]
    assert "format='f32le' is not known" in errors["format"][1]
    assert "this is a WAV file, not raw PCM" in errors["wav as pcm"][1]
    assert "PCM rate 'abc' is not a whole number" in errors["rate"][1]
    assert "the request has no audio (empty body)" in errors["empty pcm"][1]
    assert ws_status == 400 and ok == 200 and health == 200


# ---------------------------------------------------------------------- words and respeak


def test_transcript_accents_are_taken_off_not_the_letters():
    from nerfhead.audio.words import transcript_words

    assert transcript_words("The naïve café’s résumé") == ["the", "naive", "cafe's", "resume"]


def test_transcript_in_another_alphabet_is_named():
    from nerfhead.audio import words

    try:
        words._require()
    except AudioError as e:  # the aligner is not installed here
        pytest.skip(str(e))
    silence = np.zeros(16000, np.float32)
    with pytest.raises(AudioError) as e:
        words.align_transcript(silence, "Привет, как дела", source="transcript said.txt")
    assert "transcript said.txt: no words in the Latin alphabet" in str(e.value)
    assert "Cyrillic letters: Прив" in str(e.value) and "US English" in str(e.value)
    with pytest.raises(AudioError, match="empty, or holds only punctuation"):
        words.align_transcript(silence, " ... ", source="transcript said.txt")
    # mixed: the other script's words would vanish and the rest be aligned out of place
    with pytest.raises(AudioError) as e:
        words.align_transcript(silence, "bin blue at Москва now", source="transcript said.txt")
    assert "1 word(s) not in the pronouncing dictionary" in str(e.value) and "Москва" in str(e.value)
    assert words.foreign_words("naïve café, 東京 and Αθήνα.") == {"東京", "Αθηνα"}


def test_words_said_by_nothing_are_named():
    """flite says nothing for a word in another alphabet: the track was silent, exit 0."""
    from nerfhead.audio.respeak import WordTiming, respeak

    def say(word, speed):  # flite: -52 dBFS for a word in another alphabet
        t = np.arange(int(0.3 * 16000 / speed)) / 16000
        return (0.5 * np.sin(2 * np.pi * 200 * t) if word.isascii() else
                0.0025 * np.sin(2 * np.pi * 50 * t)).astype(np.float32)

    words = [WordTiming(0.1, 0.4, "hello"), WordTiming(0.5, 0.8, "мир")]
    r = respeak(words, say, 16000, label="fake")
    assert r.unsaid == ["мир"] and np.abs(r.samples[1600:6400]).max() > 0.1
    with pytest.raises(AudioError, match=r"fake said nothing for any of the words \('мир'\)"):
        respeak(words[1:], say, 16000, label="fake")


@pytest.mark.parametrize("args, words", [
    (["--seconds", "0"], "--seconds 0: give a positive number of seconds"),
    (["--seconds", "nan"], "--seconds nan: give a positive number of seconds"),
    (["--seconds", "0.5"], "the words run to 1.00 s but --seconds is 0.5"),
    (["--offset", "-5"], "--offset -5 moves the word 'hello'"),
])
def test_respeak_length_and_offset_mistakes(tmp_path, capsys, args, words):
    from nerfhead.cli import main

    timings = tmp_path / "words.txt"
    timings.write_text("0.1 0.5 hello\n0.6 1.0 world\n")
    out = tmp_path / "voices"
    assert main(["respeak", str(timings), "--voice", "flite:slt", "--out", str(out)] + args) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and not out.exists()


def test_respeak_timings_in_milliseconds_are_caught(tmp_path, capsys):
    """A word ending at 1e9 s ran out of memory (a traceback)."""
    from nerfhead.cli import main

    timings = tmp_path / "words.txt"
    timings.write_text("100 500 hello\n600 5000000 world\n")
    assert main(["respeak", str(timings), "--voice", "flite:slt", "--out", str(tmp_path / "v")]) == 2
    assert "over 1 hour: are the timings in milliseconds" in capsys.readouterr().err


def test_drive_without_landmark_weights_exits_2_naming_each_place_once(tiny_run, base_wav, tmp_path,
                                                                       monkeypatch, capsys):
    from nerfhead.cli import main

    monkeypatch.delenv("NERFHEAD_WEIGHTS", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("NERFHEAD_OFFLINE", "1")
    out = tmp_path / "drive"
    assert main(["evaluate", str(tiny_run), "--drive", str(base_wav), "--out", str(out),
                 "--device", "cpu", "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert "needs the face landmark detector" in err and "NERFHEAD_WEIGHTS" in err, err
    where = str(tmp_path / "cache" / "nerfhead" / "face_landmarker.task")
    assert err.count(where) == 1 and "Traceback" not in err
    assert not out.exists()
