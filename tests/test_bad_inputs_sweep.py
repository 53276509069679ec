"""Bad inputs found by a sweep of damaged driving audio, pose files, dataset files, checkpoints
and videos: each is refused with a message that names the file, the cause and the way forward
(or, where the result is only doubtful, warned about). Files are built at test time; no
training beyond a 4-step run on a 24-px synthetic dataset.
"""

from __future__ import annotations

import json
import logging
import struct
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from nerfhead.audio.features import AudioError, load_audio


def ffmpeg(*args):
    import imageio_ffmpeg

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-y", "-loglevel", "error",
                    *map(str, args)], check=True)


def write_wav(path: Path, samples: np.ndarray, sr: int = 16000, float32: bool = True,
              claim_bytes: int | None = None) -> Path:
    """A mono WAV (IEEE float or 16-bit PCM); ``claim_bytes``: the data size its header says."""
    if float32:
        data, fmt, bits = np.asarray(samples, "<f4").tobytes(), 3, 32
    else:
        data, fmt, bits = (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes(), 1, 16
    claim = len(data) if claim_bytes is None else claim_bytes
    header = (b"RIFF" + struct.pack("<I", (36 + claim) & 0xFFFFFFFF) + b"WAVEfmt "
              + struct.pack("<IHHIIHH", 16, fmt, 1, sr, sr * bits // 8, bits // 8, bits)
              + b"data" + struct.pack("<I", claim))
    path.write_bytes(header + data)
    return path


def speech_like(seconds: float = 1.0, sr: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * 220 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


# ------------------------------------------------------------------- driving audio (load_audio)


@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_float_wav_with_non_finite_samples_is_refused(tmp_path, bad):
    x = speech_like(1.0)
    x[1600:3200] = float(bad)  # 0.10-0.20 s
    path = write_wav(tmp_path / "broken take.wav", x)
    with pytest.raises(AudioError) as e:
        load_audio(path)
    msg = str(e.value)
    assert str(path) in msg and "NaN" in msg and "1600 of its 16000 samples" in msg
    assert "0.10 s to 0.20 s" in msg and "export it again" in msg


def test_truncated_wav_is_refused_with_what_its_header_promises(tmp_path):
    x = speech_like(3.0)
    whole = write_wav(tmp_path / "whole.wav", x, float32=False)
    cut = tmp_path / "cut.wav"
    cut.write_bytes(whole.read_bytes()[:44 + 32000])  # the header's 3 s, then 1 s of data
    with pytest.raises(AudioError) as e:
        load_audio(cut)
    msg = str(e.value)
    assert str(cut) in msg and "truncated" in msg and "promises 3.00 s" in msg
    assert "only 1.00 s" in msg and "copy or export it again" in msg
    assert len(load_audio(whole)) == len(x)  # the intact file reads as before


def test_wav_of_an_unfinished_recording_is_not_called_truncated(tmp_path):
    """A recorder killed before it wrote the sizes leaves 0 or 0xFFFFFFFF: no promise made."""
    x = speech_like(1.0)
    for claim in (0, 0xFFFFFFFF):
        path = write_wav(tmp_path / f"rec_{claim}.wav", x, float32=False, claim_bytes=claim)
        try:
            load_audio(path)
        except AudioError as e:  # ffmpeg may refuse a size-0 header; never as truncated
            assert "truncated" not in str(e)


def test_empty_and_soundless_files_name_the_cause_and_the_way_forward(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(AudioError, match=r"empty\.wav: the file is empty \(0 bytes\)\. Is it an audio"):
        load_audio(empty)
    mute = tmp_path / "mute.mp4"
    ffmpeg("-f", "lavfi", "-i", "color=c=gray:s=64x64:r=25:d=0.2", "-c:v", "libx264", mute)
    with pytest.raises(AudioError, match=r"mute\.mp4 has no audio stream .*give a file with the speech"):
        load_audio(mute)


def test_clipped_driving_audio_is_warned_about(caplog):
    from nerfhead.render.renderer import warn_if_clipped

    x = speech_like(2.0)
    with caplog.at_level(logging.WARNING, logger="nerfhead.render"):
        warn_if_clipped(np.clip(x * 100, -1, 1), "loud.wav")
    assert "loud.wav" in caplog.text and "% of its samples are at full scale" in caplog.text
    caplog.clear()
    x[::500] = 1.0  # 0.2% at full scale: a loud but clean recording (the radio sample has that)
    with caplog.at_level(logging.WARNING, logger="nerfhead.render"):
        warn_if_clipped(x, "radio.wav")
    assert caplog.text == ""


# ------------------------------------------------------------------------------- pose files


def _poses(n: int = 4) -> np.ndarray:
    return np.repeat(np.eye(4, dtype=np.float32)[None], n, axis=0)


@pytest.mark.parametrize("suffix", [".json", ".npy"])
@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_pose_file_with_non_finite_matrices_is_refused(tmp_path, suffix, bad):
    """An infinite matrix used to hang render in numpy's SVD (Rotation.from_matrix)."""
    from nerfhead.render.poses import load_pose_file

    c2w = _poses()
    c2w[2, 0, 3] = float(bad)
    path = tmp_path / f"poses{suffix}"
    if suffix == ".npy":
        np.save(path, c2w)
    else:  # Python's json writes NaN / Infinity and reads them back
        path.write_text(json.dumps({"frames": [{"transform_matrix": m.tolist()} for m in c2w]}))
    with pytest.raises(ValueError) as e:
        load_pose_file(path)
    assert str(path) in str(e.value) and "NaN or infinite" in str(e.value)
    assert "pose index 2" in str(e.value)


def test_damaged_npy_pose_file_is_named(tmp_path):
    from nerfhead.render.poses import load_pose_file

    path = tmp_path / "poses.npy"
    path.write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(ValueError, match=r"pose file .*poses\.npy: not a readable \.npy array"):
        load_pose_file(path)


# ------------------------------------------------------------------- dataset files, checkpoints


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from nerfhead.data.synthetic import make_dataset

    return make_dataset(tmp_path_factory.mktemp("syn") / "data", num_frames=14, size=24)


def test_damaged_dataset_files_say_how_to_rewrite_them(dataset, tmp_path):
    import shutil

    from nerfhead.data.dataset import DatasetError, load_audio_features, read_transforms

    data = Path(shutil.copytree(dataset, tmp_path / "data"))
    mel = data / "aud_mel.npy"
    mel.write_bytes(mel.read_bytes()[: mel.stat().st_size // 2])
    with pytest.raises(DatasetError) as e:
        load_audio_features(data, "mel")
    assert str(mel) in str(e.value) and "Rerun `nerfhead preprocess VIDEO --out DATA`" in str(e.value)
    val = data / "transforms_val.json"
    val.write_text('{"frames": [ {')
    with pytest.raises(DatasetError) as e:
        read_transforms(val)
    assert "not valid JSON" in str(e.value) and "Rerun `nerfhead preprocess" in str(e.value)
    mel.unlink()
    with pytest.raises(DatasetError, match=r"no audio features .*rerun `nerfhead preprocess"):
        load_audio_features(data, "mel")


def test_damaged_blendshapes_and_manifest_are_named(dataset, tmp_path):
    """These read as 'mmap length is greater than file size' and 'Expecting property name
    enclosed in double quotes', naming no file, in render, evaluate and motion export."""
    import shutil

    from nerfhead.data.dataset import DatasetError
    from nerfhead.motion.export import load_blendshapes
    from nerfhead.render.renderer import DatasetFrames

    data = Path(shutil.copytree(dataset, tmp_path / "data"))
    bs = data / "bs.npy"
    bs.write_bytes(bs.read_bytes()[: bs.stat().st_size // 2])
    for read in (DatasetFrames, load_blendshapes):
        with pytest.raises(DatasetError) as e:
            read(data)
        assert f"cannot read {bs}" in str(e.value) and "Rerun `nerfhead preprocess" in str(e.value)
    bs.unlink()
    man = data / "manifest.json"
    man.write_text("{garbage")
    with pytest.raises(DatasetError) as e:
        DatasetFrames(data)
    assert f"{man} is not valid JSON" in str(e.value) and "delete it and rerun" in str(e.value)


def test_run_with_only_damaged_checkpoints_says_what_to_do(tmp_path):
    from nerfhead.train.checkpoint import CheckpointError, read_checkpoint

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "step_0000200.pt").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(run)
    msg = str(e.value)
    assert "no readable checkpoint" in msg and "truncated or damaged" in msg
    assert "Copy the run folder again" in msg and f"--out {run} --force-new" in msg


def test_wrong_kind_of_run_path_is_named(dataset, tmp_path):
    """A video used to be 'a truncated or damaged checkpoint'; a dataset, a folder with no
    checkpoints; a missing path, a missing checkpoint."""
    from nerfhead.train.checkpoint import CheckpointError, read_checkpoint

    video = tmp_path / "talk.mp4"
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(64))
    cases = [(video, "is neither a run folder nor a checkpoint (.pt)"),
             (dataset, "is a dataset folder, not a run folder: train a run on it first"),
             (tmp_path / "nope", "run folder " + str(tmp_path / "nope") + " not found (check the path")]
    for path, words in cases:
        with pytest.raises(CheckpointError) as e:
            read_checkpoint(path)
        assert words in str(e.value) and "truncated" not in str(e.value)


@pytest.fixture(scope="module")
def tiny_run(dataset, tmp_path_factory):
    from nerfhead.train.config import load_configs
    from nerfhead.train.trainer import Trainer

    run = tmp_path_factory.mktemp("run") / "run"
    cfg = load_configs("tiny", {"data": {"image_size": 24, "num_rays": 64},
                                "model": {"max_steps": 16},
                                "train": {"iters": 2, "checkpoint_every": 2, "val_every": 0}})
    Trainer(dataset, cfg, run).fit(progress=False)
    return run


def test_render_refuses_nan_audio_and_writes_nothing(tiny_run, tmp_path, capsys):
    from nerfhead.cli import main

    x = speech_like(1.0)
    x[100:200] = np.nan
    drive = write_wav(tmp_path / "nan.wav", x)
    out = tmp_path / "talk.mp4"
    assert main(["render", str(tiny_run), "--audio", str(drive), "--out", str(out),
                 "--device", "cpu", "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert f"nerfhead render: {drive}" in err and "NaN" in err and "Traceback" not in err
    assert not out.exists() and list(tmp_path.iterdir()) == [drive]


# ----------------------------------------------------------------------- preprocess: the video


def _decode_cfg(**decode):
    from preprocess.decode import DecodeConfig
    from preprocess.landmarks import LandmarksConfig

    return SimpleNamespace(decode=DecodeConfig(crop_size=128, **decode),
                           landmarks=LandmarksConfig(), weights_dir=None)


@pytest.fixture(scope="module")
def cut_videos(hdtf_video, tmp_path_factory):
    """3 s of the HDTF clip with its index at the end (plain) and at the front (faststart),
    each cut at half its bytes; and its sound alone."""
    d = tmp_path_factory.mktemp("cut")
    ffmpeg("-i", hdtf_video, "-t", 3, "-c:v", "libx264", "-c:a", "aac", d / "plain.mp4")
    ffmpeg("-i", d / "plain.mp4", "-c", "copy", "-movflags", "+faststart", d / "faststart.mp4")
    for name in ("plain", "faststart"):
        data = (d / f"{name}.mp4").read_bytes()
        (d / f"{name}_cut.mp4").write_bytes(data[: len(data) // 2])
    ffmpeg("-i", d / "plain.mp4", "-vn", "-c:a", "copy", d / "sound.m4a")
    return d


@pytest.mark.parametrize("name, words", [
    ("plain_cut.mp4", ("'moov' atom) is missing", "cut short", "copy or export it again")),
    ("empty.mp4", ("the file is empty (0 bytes)",)),
    ("sound.m4a", ("no video stream (this is a sound file)", "Give the video of the speaker")),
])
def test_unreadable_video_names_the_real_cause(cut_videos, tmp_path, name, words):
    from preprocess.decode import probe
    from preprocess.steps import StepError

    path = cut_videos / name
    if name == "empty.mp4":
        path.write_bytes(b"")
    with pytest.raises(StepError) as e:
        probe(path)
    msg = str(e.value)
    assert "not a readable video" in msg and str(path) in msg
    for w in words:
        assert w in msg, (w, msg)


def test_faststart_video_cut_short_is_refused_not_decoded_short(cut_videos, tmp_path):
    """Its index is whole, so it opens and demuxes cleanly up to the cut: it used to become a
    1.4-s dataset of a 3-s video without a word."""
    from preprocess import driver
    from preprocess.decode import DECODE
    from preprocess.steps import StepError

    video, out = cut_videos / "faststart_cut.mp4", tmp_path / "data"
    with pytest.raises(StepError) as e:
        driver.run_steps(video, out, _decode_cfg(), steps=[DECODE])
    msg = str(e.value)
    assert e.value.step == "decode" and str(video) in msg
    assert "corrupt or truncated" in msg and "promises 3.00 s" in msg and "--max-seconds" in msg
    assert not (out / "ori_imgs").exists() and not (out / "aud.wav").exists()
    assert "decode" not in json.loads((out / "manifest.json").read_text())["steps"]
    # the intact file, and the intact part of the cut one, pass this check
    from preprocess.decode import stream_timing

    assert stream_timing(cut_videos / "faststart.mp4").cut_short is None
    timing = stream_timing(video)
    assert timing.cut_short and 1.0 < timing.end < 2.0
    driver.run_steps(video, tmp_path / "part", _decode_cfg(max_seconds=1.2), steps=[DECODE])
    assert json.loads((tmp_path / "part" / "manifest.json").read_text())["video"]["num_frames"] == 30


def test_video_whose_float_audio_holds_nan_is_refused(hdtf_video, tmp_path):
    """Float PCM in a MOV passes ffmpeg as it is: NaN became silent samples of aud.wav."""
    from preprocess import driver
    from preprocess.decode import DECODE
    from preprocess.steps import StepError

    x = speech_like(2.0)
    x[8000:9600] = np.nan  # 0.50-0.60 s
    wav = write_wav(tmp_path / "nan.wav", x)
    video = tmp_path / "take.mov"
    ffmpeg("-i", hdtf_video, "-i", wav, "-map", "0:v", "-map", "1:a", "-t", 2, "-c:v", "libx264",
           "-c:a", "pcm_f32le", video)
    out = tmp_path / "data"
    with pytest.raises(StepError) as e:
        driver.run_steps(video, out, _decode_cfg(), steps=[DECODE])
    msg = str(e.value)
    assert e.value.step == "decode" and str(video) in msg
    assert "1600 of its samples are not numbers (NaN)" in msg and "from 0.50 s to 0.60 s" in msg
    assert not (out / "ori_imgs").exists() and not (out / "aud.wav").exists()
    assert [p.name for p in out.iterdir()] == ["manifest.json"]


def test_failed_evaluate_leaves_no_empty_output_folder(tiny_run, tmp_path, capsys):
    """--out is made before the work (an unwritable place fails at once); when the work then
    fails, the folders made for it are removed again, a folder that was there is kept."""
    from nerfhead.cli import main

    x = speech_like(1.0)
    x[100:200] = np.nan
    bad = write_wav(tmp_path / "nan.wav", x)
    common = ["--device", "cpu", "--threads", "1", "--max-frames", "2"]
    missing = ["--audio-from", str(tmp_path / "no_such_clip")]
    out = tmp_path / "new" / "eval"
    assert main(["evaluate", str(tiny_run), "--out", str(out)] + missing + common) == 2
    assert "no_such_clip" in capsys.readouterr().err and not (tmp_path / "new").exists()
    there = tmp_path / "there"
    there.mkdir()
    assert main(["evaluate", str(tiny_run), "--out", str(there)] + missing + common) == 2
    assert there.is_dir() and not any(there.iterdir())
    with pytest.raises(SystemExit, match="aud.wav not found"):  # the run's own eval/ folder
        main(["evaluate", str(tiny_run), "--speech", str(bad)] + common)
    assert not (tiny_run / "eval").exists()
    assert main(["evaluate", str(tiny_run), "--drive", str(bad), "--out", str(out)] + common) == 2
    assert "NaN" in capsys.readouterr().err and not (tmp_path / "new").exists()


def test_a_default_render_name_never_replaces_an_earlier_render(tiny_run, tmp_path):
    """Two driving files of one stem (a/talk.wav, b/talk.wav) rendered without --out: the
    second goes to RUN/renders/talk-2.mp4, the first is kept; unused_path's numbering."""
    from nerfhead.cli import main
    from nerfhead.fileio import unused_path

    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        wav = write_wav(tmp_path / sub / "talk.wav", speech_like(1.0))
        assert main(["render", str(tiny_run), "--audio", str(wav), "--max-frames", "2",
                     "--device", "cpu", "--threads", "1"]) == 0
    renders = tiny_run / "renders"
    assert sorted(p.name for p in renders.iterdir()) == ["talk-2.mp4", "talk.mp4"]
    first = (renders / "talk.mp4").stat().st_mtime_ns
    assert first <= (renders / "talk-2.mp4").stat().st_mtime_ns
    (renders / "talk-3.mp4").write_bytes(b"")
    assert unused_path(renders / "talk.mp4").name == "talk-4.mp4"
    assert unused_path(renders / "new.mp4").name == "new.mp4"
