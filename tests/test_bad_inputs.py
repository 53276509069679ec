"""A battery of bad and unusual inputs, built at test time from the shared clips (no binaries
committed). Each case asserts the error class, that the message names the file and the step,
and that nothing half-written or claimed done is left behind; the doubtful-but-usable cases
assert the warning. Preprocessing cases use 2-3 s of video and a 128-px crop.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nerfhead.fileio import TEMP_MARK, DiskFullError, OutputLocationError
from preprocess import driver
from preprocess.audio import SPEECH
from preprocess.config import load_preprocess_config
from preprocess.decode import DECODE
from preprocess.landmarks import IBUG68_FROM_MEDIAPIPE, LANDMARKS
from preprocess.steps import StepError

# ----------------------------------------------------------------------------- helpers


def ffmpeg(*args):
    import imageio_ffmpeg

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-y", "-loglevel", "error",
                    *map(str, args)], check=True)


def cfg(**sections):
    """Preprocess config: 128-px crop, whole (short) clip, plus ``section={field: value}``."""
    over = {"decode": {"crop_size": 128, **sections.pop("decode", {})}, **sections}
    return load_preprocess_config("preprocess", over)


def preprocess(video, out, c=None, steps=(DECODE, SPEECH), **kw):
    return driver.run_steps(video, out, c or cfg(), steps=list(steps), **kw)


def manifest(out: Path) -> dict:
    p = out / "manifest.json"
    return json.loads(p.read_text()) if p.is_file() else {"steps": {}}


def temps_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if TEMP_MARK in p.name] if folder.exists() else []


def assert_refused(err: StepError, step: str, video: Path | None, *words: str):
    text = str(err)
    assert isinstance(err, StepError) and err.step == step
    assert f"preprocess step '{step}'" in text
    if video is not None:
        assert str(video) in text, f"the message does not name {video}: {text}"
    for w in words:
        assert w in text, f"{w!r} not in: {text}"


def assert_nothing_claimed(out: Path, done: tuple[str, ...] = ()):
    """Only the steps in ``done`` are recorded; no temporaries; nothing of a failed decode."""
    assert set(manifest(out)["steps"]) == set(done)
    assert not temps_under(out)
    if "decode" not in done:
        assert not (out / "ori_imgs").exists() and not (out / "aud.wav").exists()


@pytest.fixture(scope="module")
def clips(grid_video, hdtf_video, tmp_path_factory):
    """Builds each bad clip on first use (cached for the module)."""
    d = tmp_path_factory.mktemp("clips")
    H, G = hdtf_video, grid_video
    recipes = {
        # GRID turned upside down: MediaPipe still "finds" an upright face (eyes on the nostrils)
        "upside_down": lambda p: ffmpeg("-i", G, "-t", 2, "-vf", "vflip,hflip", "-c:v", "libx264",
                                        "-c:a", "aac", p),
        "sideways": lambda p: ffmpeg("-i", H, "-t", 2, "-vf", "transpose=clock", "-c:v", "libx264",
                                     "-c:a", "aac", p),
        # pixels stored upside down + a display matrix that says "turn 180": upright when played
        "rotation_metadata": lambda p: ffmpeg("-display_rotation", 180, "-i", clip("upside_down"),
                                              "-c", "copy", p),
        # 3 s without anyone, then 1 s of the speaker: a face in 2 of 8 probe frames
        "face_in_part": lambda p: ffmpeg("-f", "lavfi", "-i", "color=c=gray:s=512x512:r=25:d=3",
                                         "-i", H, "-filter_complex",
                                         "[1:v]trim=0:1,setpts=PTS-STARTPTS[f];[0:v][f]concat=n=2:v=1:a=0[v]",
                                         "-map", "[v]", "-map", "1:a", "-t", 4, "-c:v", "libx264",
                                         "-c:a", "aac", p),
        "silent": lambda p: ffmpeg("-i", H, "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", 2,
                                   "-map", "0:v", "-map", "1:a", "-c:v", "libx264", "-c:a", "aac", p),
        # the speech on the left, inverted on the right: loud on headphones, silent as mono
        "cancelling_stereo": lambda p: ffmpeg("-i", H, "-t", 2, "-af",
                                              "aeval=val(0)|-val(0):c=stereo,aformat=channel_layouts=stereo",
                                              "-c:v", "libx264", "-c:a", "aac", p),
        "noise_only": lambda p: ffmpeg("-i", H, "-f", "lavfi", "-i",
                                       "anoisesrc=color=pink:amplitude=0.05:r=16000", "-t", 2,
                                       "-map", "0:v", "-map", "1:a", "-c:v", "libx264", "-c:a", "aac", p),
        # audio track of 1.0 s in a 3-s video: decode pads the rest with silence
        "audio_ends_early": lambda p: ffmpeg("-i", H, "-i", H, "-map", "0:v", "-map", "1:a",
                                             "-t", 3, "-af", "atrim=0:1.0", "-c:v", "libx264",
                                             "-c:a", "aac", p),
        # video 2 s, audio 4 s: the container outlasts the video stream
        "audio_outlasts_video": lambda p: ffmpeg("-i", H, "-filter_complex",
                                                 "[0:v]trim=0:2,setpts=PTS-STARTPTS[v]", "-map", "[v]",
                                                 "-map", "0:a", "-t", 4, "-c:v", "libx264", "-c:a", "aac", p),
        # upright for 2 s, then a quarter turn: the probe sees mostly upright frames
        "camera_turns": lambda p: ffmpeg("-i", H, "-filter_complex",
                                         "[0:v]trim=0:2,setpts=PTS-STARTPTS[a];[0:v]trim=2:2.6,"
                                         "setpts=PTS-STARTPTS,transpose=clock[b];[a][b]concat=n=2:v=1:a=0[v]",
                                         "-map", "[v]", "-map", "0:a", "-t", 2.6, "-c:v", "libx264",
                                         "-c:a", "aac", p),
        "tiny_64px": lambda p: ffmpeg("-i", H, "-t", 2, "-vf", "scale=64:64", "-c:v", "libx264",
                                      "-c:a", "aac", p),
        "still.png": lambda p: ffmpeg("-ss", 1, "-i", H, "-frames:v", 1, p),
        "grid_2s": lambda p: ffmpeg("-i", G, "-t", 2, "-c:v", "libx264", "-c:a", "aac", p),
        "hdtf_2s": lambda p: ffmpeg("-i", H, "-t", 2, "-c:v", "libx264", "-c:a", "aac", p),
        # amplified past full scale, as a recorder set too loud does: 13% of the samples
        # clipped (speech still found), or 49% (no speech found in it)
        "clipped.mov": lambda p: ffmpeg("-i", H, "-t", 2, "-af", "volume=16dB", "-c:v", "libx264",
                                        "-c:a", "pcm_s16le", p),
        "clipped_hard.mov": lambda p: ffmpeg("-i", H, "-t", 2, "-af", "volume=30dB", "-c:v", "libx264",
                                             "-c:a", "pcm_s16le", p),
    }

    def clip(name: str) -> Path:
        p = d / (name if "." in name else f"{name}.mp4")
        if not p.exists():
            recipes[name](p)
        return p
    return clip


def ibug(out: Path, i: int) -> np.ndarray:
    return np.load(out / "landmarks.npy")[i][list(IBUG68_FROM_MEDIAPIPE), :2]


def assert_upright(out: Path):
    for i in (0, 20):
        p = ibug(out, i)
        eyes, nose, mouth, chin = p[36:48, 1].mean(), p[30, 1], p[48:68, 1].mean(), p[8, 1]
        assert eyes < nose < mouth < chin
        assert p[36:42, 0].mean() < p[42:48, 0].mean()  # the subject's right eye on the image left


# ------------------------------------------------------------------ 1. orientation, faces


def test_upside_down_video_is_refused_with_the_rotation_that_fixes_it(clips, tmp_path):
    video, out = clips("upside_down"), tmp_path / "data"
    with pytest.raises(StepError) as e:
        preprocess(video, out, steps=(DECODE, SPEECH, LANDMARKS))
    assert_refused(e.value, "decode", video, "upside down", "--rotate 180")
    assert_nothing_claimed(out)


def test_rotate_option_turns_an_upside_down_video_upright(clips, tmp_path):
    out = tmp_path / "data"
    preprocess(clips("upside_down"), out, cfg(decode={"rotate": 180}), steps=(DECODE, SPEECH, LANDMARKS))
    v = manifest(out)["video"]
    assert v["rotate"] == 180 and v["num_frames"] == 50
    assert_upright(out)


def test_rotation_metadata_is_honoured(clips, tmp_path):
    out = tmp_path / "data"
    preprocess(clips("rotation_metadata"), out, steps=(DECODE, SPEECH, LANDMARKS))
    v = manifest(out)["video"]
    assert v["rotation"] == 180 and v["rotate"] == 0
    assert_upright(out)


def test_sideways_video_is_refused(clips, tmp_path):
    video, out = clips("sideways"), tmp_path / "data"
    with pytest.raises(StepError) as e:
        preprocess(video, out)
    assert_refused(e.value, "decode", video, "on its side", "--rotate 270")
    assert_nothing_claimed(out)


def test_face_in_only_part_of_the_clip_is_refused_with_the_times(clips, tmp_path):
    video, out = clips("face_in_part"), tmp_path / "data"
    with pytest.raises(StepError) as e:
        preprocess(video, out)
    assert_refused(e.value, "decode", video, "only 2 of 8", "0.2, 0.8")
    assert_nothing_claimed(out)


def test_camera_turning_mid_clip_is_caught_by_the_landmark_layout(clips, tmp_path):
    video, out = clips("camera_turns"), tmp_path / "data"
    with pytest.raises(StepError) as e:
        preprocess(video, out, steps=(DECODE, SPEECH, LANDMARKS))
    assert_refused(e.value, "landmarks", video, "tilted more than 50 degrees", "frames 5")
    assert_nothing_claimed(out, done=("decode", "speech"))
    assert not (out / "landmarks.npy").exists()


def test_implausible_layouts_hand_made():
    from preprocess.landmarks import implausible_frames

    # an upright face: eyes (36-47) at y=40, mouth (48-67) at y=80, right eye on the left
    face = np.zeros((68, 2))
    face[36:42] = [30, 40]
    face[42:48] = [70, 40]
    face[48:68] = [50, 80]
    c = np.array([50.0, 60.0])

    def turned(deg):
        a = np.radians(deg)
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        return (face - c) @ rot.T + c
    got = implausible_frames(np.stack([turned(d) for d in (0, 20, -45, 55, 90, 180, -90)]), 50.0)
    assert got.tolist() == [False, False, False, True, True, True, True]
    swapped = face.copy()
    swapped[36:42], swapped[42:48] = face[42:48], face[36:42]  # eyes swapped: a garbled fit
    assert implausible_frames(swapped[None], 50.0).tolist() == [True]


# ------------------------------------------------------------------ 3. speech


@pytest.mark.parametrize("name, words", [
    ("silent", ("digital silence",)),
    ("noise_only", ("no speech found",)),
    ("audio_ends_early", ("ends at 1.0 s", "1.0-3.0 s is padded")),
])
def test_silent_or_short_speech_is_refused_with_the_time_ranges(clips, tmp_path, name, words):
    video, out = clips(name), tmp_path / "data"
    with pytest.raises(StepError) as e:
        preprocess(video, out)
    assert_refused(e.value, "speech", out / "aud.wav", *words, "--allow-silence", str(video))
    assert_nothing_claimed(out, done=("decode",))  # the frames are kept, nothing claims speech


def test_channels_that_cancel_are_named_as_the_cause_of_the_silence(clips, tmp_path, caplog):
    from nerfhead.audio.channels import cancelling_channels
    from nerfhead.render.renderer import warn_if_silent

    video, out = clips("cancelling_stereo"), tmp_path / "data"
    with pytest.raises(StepError) as e:
        preprocess(video, out)
    assert_refused(e.value, "speech", out / "aud.wav", "digital silence",
                   "two audio channels cancel each other", "pan=mono|c0=c0", str(video))
    # the same file as the driving audio of a render: the warning says why
    with caplog.at_level(logging.WARNING, logger="nerfhead.render"):
        warn_if_silent(np.zeros(32000, np.float32), video)
    assert "no speech found" in caplog.text and "cancel each other" in caplog.text
    # not for a plain mono silence, nor for the speech itself
    assert cancelling_channels(clips("silent")) is None
    assert cancelling_channels(clips("hdtf_2s")) is None


def test_allow_silence_proceeds_with_a_warning(clips, tmp_path, caplog):
    out = tmp_path / "data"
    with caplog.at_level(logging.WARNING, logger="preprocess"):
        preprocess(clips("audio_ends_early"), out, cfg(speech={"allow_silence": True}))
    assert "ends at 1.0 s" in caplog.text and "allowed by --allow-silence" in caplog.text
    rec = manifest(out)["speech"]
    assert rec["allowed_silence"] and rec["padded_from"] == pytest.approx(1.0, abs=0.1)


def test_speech_is_found_in_the_real_clips(clips, tmp_path, caplog):
    for name in ("grid_2s", "hdtf_2s"):
        out = tmp_path / name
        with caplog.at_level(logging.WARNING, logger="preprocess"):
            preprocess(clips(name), out)
        rec = manifest(out)["speech"]
        assert rec["fraction"] > 0.3 and not rec["allowed_silence"], (name, rec)
        assert rec["clipped_fraction"] < 0.01 and "clipped" not in caplog.text, (name, rec)


def test_clipped_training_audio_is_warned_about(clips, tmp_path, caplog):
    out = tmp_path / "data"
    with caplog.at_level(logging.WARNING, logger="preprocess"):
        preprocess(clips("clipped.mov"), out)
    assert "at full scale: its sound is clipped" in caplog.text and "clipped.mov" in caplog.text
    assert manifest(out)["speech"]["clipped_fraction"] > 0.05
    hard = clips("clipped_hard.mov")  # not "no speech": the clipping hides it
    with pytest.raises(StepError) as e:
        preprocess(hard, tmp_path / "hard")
    assert_refused(e.value, "speech", tmp_path / "hard" / "aud.wav", "clipped so hard", str(hard),
                   "lower level")
    assert "no speech found in the" not in str(e.value)


# ------------------------------------------------------------------ 6. smaller input defects


@pytest.mark.parametrize("name, words", [
    ("folder", ("is a folder, not a video file", "it holds")),
    ("still.png", ("still image", "not a video")),
    ("missing.mp4", ("video file not found",)),
])
def test_wrong_kind_of_video_path_is_named(clips, tmp_path, name, words):
    clips("upside_down")  # something for the folder to hold
    video = clips("still.png") if name == "still.png" else (
        clips("upside_down").parent if name == "folder" else tmp_path / name)
    out = tmp_path / "data"
    with pytest.raises(StepError) as e:
        preprocess(video, out)
    assert_refused(e.value, "decode", video, *words)
    assert "no audio track" not in str(e.value)  # not blamed on a missing audio track
    assert_nothing_claimed(out)


@pytest.mark.parametrize("size", [0, 63, 129, 100000])
def test_bad_crop_size_is_a_setting_error_not_a_corrupt_video(clips, tmp_path, size):
    video, out = clips("hdtf_2s"), tmp_path / "data"
    with pytest.raises(StepError) as e:
        preprocess(video, out, cfg(decode={"crop_size": size}))
    assert_refused(e.value, "decode", video, "--crop-size", f"is {size}")
    assert "corrupt" not in str(e.value)
    assert_nothing_claimed(out)


def test_container_longer_than_the_video_is_neither_vfr_nor_truncated(clips, tmp_path, caplog):
    out = tmp_path / "data"
    with caplog.at_level(logging.WARNING, logger="preprocess"):
        preprocess(clips("audio_outlasts_video"), out, steps=(DECODE,))
    v = manifest(out)["video"]
    assert v["num_frames"] == 50 and v["variable_frame_rate"] is False
    assert "variable frame rate" not in caplog.text


def test_tiny_video_upscaled_is_warned_about(clips, tmp_path, caplog):
    out = tmp_path / "data"
    with caplog.at_level(logging.WARNING, logger="preprocess"):
        preprocess(clips("tiny_64px"), out, cfg(decode={"crop_size": 512}), steps=(DECODE,))
    assert "only 64x64 pixels" in caplog.text and "8.0x" in caplog.text
    assert "--crop-size 128" in caplog.text
    assert manifest(out)["video"]["upscale"] == pytest.approx(8.0)


# ------------------------------------------------------------------ 2. another video's dataset


def test_preprocess_never_overwrites_another_videos_dataset(clips, tmp_path):
    out = tmp_path / "data"
    preprocess(clips("grid_2s"), out, steps=(DECODE,))
    before = manifest(out)
    frames = {p.name: p.stat().st_mtime_ns for p in (out / "ori_imgs").iterdir()}
    other = clips("hdtf_2s")
    with pytest.raises(StepError) as e:
        preprocess(other, out, steps=(DECODE,))
    assert_refused(e.value, "driver", other, str(clips("grid_2s")), "--force-new")
    assert manifest(out) == before
    assert {p.name: p.stat().st_mtime_ns for p in (out / "ori_imgs").iterdir()} == frames
    # the same video moved elsewhere is still the same video: resumes (decode skipped)
    moved = tmp_path / "renamed.mp4"
    moved.write_bytes(clips("grid_2s").read_bytes())
    assert [r.status for r in preprocess(moved, out, steps=(DECODE,))] in (["skipped"], ["ran"])
    # --force-new keeps the old dataset, moved aside, and starts a new one
    preprocess(other, out, steps=(DECODE,), force_new=True)
    assert manifest(out)["video"]["source"] == str(other.resolve())
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("data.replaced-")]
    assert len(aside) == 1 and (aside[0] / "ori_imgs" / "0.jpg").is_file()


def test_run_refuses_another_video_or_other_options_in_the_same_folder(tmp_path, monkeypatch, capsys):
    from nerfhead import pipeline
    from nerfhead.cli import build_parser

    calls = []
    monkeypatch.setattr(pipeline, "_subcommand", lambda argv: calls.append(argv[0]))
    monkeypatch.setattr(pipeline, "write_val_audio", lambda data, dest: dest)
    a, b = tmp_path / "a.mp4", tmp_path / "b.mp4"
    a.write_bytes(b"video a")
    b.write_bytes(b"video b")
    out = tmp_path / "work"
    args = lambda v, *more: build_parser().parse_args(["run", str(v), "--out", str(out), *more])  # noqa: E731
    assert pipeline.run(args(a, "--max-seconds", "3")) == 0
    calls.clear()
    with pytest.raises(SystemExit, match=r"another video .*a\.mp4.*--force-new"):
        pipeline.run(args(b, "--max-seconds", "3"))
    with pytest.raises(SystemExit, match=r"options.*--max-seconds', '3.0'.*--force-new"):
        pipeline.run(args(a, "--max-seconds", "5"))
    assert calls == []  # refused before any step ran
    assert pipeline.run(args(b, "--force-new")) == 0
    assert [p.name.split(".")[0] for p in tmp_path.glob("work.replaced-*")] == ["work"]


def test_run_renders_and_evaluates_again_after_more_training(tmp_path, monkeypatch):
    """`run` once printed `done` with a render older than the checkpoint it claimed to show."""
    from nerfhead import pipeline
    from nerfhead.cli import build_parser

    out, calls, step = tmp_path / "work", [], [1]

    def fake(argv):
        calls.append(argv[0])
        if argv[0] == "train":
            ck = out / "run" / "checkpoints" / f"step_{step[0]:07d}.pt"
            if not ck.exists():
                ck.parent.mkdir(parents=True, exist_ok=True)
                ck.write_bytes(b"x")
                rendered = out / "render.mp4"
                if rendered.exists():  # written after the render, whatever the clock's resolution
                    t = rendered.stat().st_mtime_ns + 10**9
                    os.utime(ck, ns=(t, t))
        elif argv[0] == "render":
            (out / "render.mp4").write_bytes(b"v")
        elif argv[0] == "evaluate":
            (out / "eval").mkdir(exist_ok=True)
            (out / "eval" / "metrics.json").write_text("{}")
    monkeypatch.setattr(pipeline, "_subcommand", fake)
    monkeypatch.setattr(pipeline, "write_val_audio", lambda data, dest: dest)
    video = tmp_path / "v.mp4"
    video.write_bytes(b"video")
    args = build_parser().parse_args(["run", str(video), "--out", str(out)])
    assert pipeline.run(args) == 0 and calls == ["preprocess", "train", "render", "evaluate"]
    calls.clear()
    assert pipeline.run(args) == 0 and calls == ["preprocess", "train"]  # up to date
    calls.clear()
    step[0] = 2  # the rerun trained further: a checkpoint newer than the render
    assert pipeline.run(args) == 0 and calls == ["preprocess", "train", "render", "evaluate"]


# ------------------------------------------------------------------ 2. training


def _tiny(**train):
    from nerfhead.train.config import load_configs

    return load_configs("tiny", {"data": {"image_size": 24, "num_rays": 64},
                                 "model": {"max_steps": 16},
                                 "train": {"iters": 4, "checkpoint_every": 2, "val_every": 0,
                                           "keep_checkpoints": 3, **train}})


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory):
    from nerfhead.data.synthetic import make_dataset

    root = tmp_path_factory.mktemp("syn")
    return (make_dataset(root / "a", num_frames=14, size=24, seed=0),
            make_dataset(root / "b", num_frames=14, size=24, seed=1))


@pytest.fixture(scope="module")
def master_run(two_datasets, tmp_path_factory):
    from nerfhead.train.trainer import Trainer

    run = tmp_path_factory.mktemp("master") / "run"
    Trainer(two_datasets[0], _tiny(), run).fit(progress=False)
    return run


@pytest.fixture
def trained(master_run, tmp_path):
    """A copy of a 4-step tiny run on dataset a (checkpoints at steps 2 and 4)."""
    import shutil

    return Path(shutil.copytree(master_run, tmp_path / "run"))


def _snapshot(run: Path) -> dict:
    return {str(p.relative_to(run)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in run.rglob("*") if p.is_file() and "tb" not in p.parts}


def test_training_refuses_to_resume_another_datasets_run(two_datasets, trained):
    from nerfhead.train.checkpoint import RunMismatchError, load_run
    from nerfhead.train.trainer import Trainer

    a, b = two_datasets
    before = _snapshot(trained)
    with pytest.raises(RunMismatchError) as e:
        Trainer(b, _tiny(iters=6), trained)
    text = str(e.value)
    assert str(trained) in text and str(a.resolve()) in text and str(b) in text
    assert "another dataset" in text and "--force-new" in text
    assert _snapshot(trained) == before  # checkpoints and config.yaml untouched
    # --force-new: the old run moved aside whole, a new one trained on b
    tr = Trainer(b, _tiny(), trained, force_new=True)
    tr.fit(progress=False)
    assert load_run(trained).dataset["content"] == tr.dataset["content"]
    aside = list(trained.parent.glob("run.replaced-*"))
    assert len(aside) == 1 and _snapshot(aside[0]) == before


def test_training_refuses_to_resume_with_other_settings(two_datasets, trained):
    from nerfhead.train.checkpoint import RunMismatchError
    from nerfhead.train.trainer import Trainer

    a, _ = two_datasets
    wider = _tiny(iters=6)
    wider["model"].hidden_dim = 48
    with pytest.raises(RunMismatchError, match=r"other settings.*model.hidden_dim: 32 -> 48"):
        Trainer(a, wider, trained)
    tr = Trainer(a, _tiny(iters=6, val_every=3), trained)  # more steps, other logging: fine
    assert tr.step == 4 and tr.tcfg.iters == 6


def test_train_cli_names_a_video_given_as_the_dataset(clips, tmp_path, capsys):
    from nerfhead.cli import main

    video = clips("hdtf_2s")
    assert main(["train", str(video), "--config", "tiny", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "nerfhead train" in err and str(video) in err and "is a video, not a dataset folder" in err
    assert "nerfhead preprocess" in err
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_train_cli_names_an_unfinished_dataset(tmp_path, capsys):
    from nerfhead.cli import main

    data = tmp_path / "data"
    data.mkdir()
    (data / "manifest.json").write_text(json.dumps({"steps": {"decode": {}, "speech": {}}}))
    assert main(["train", str(data), "--config", "tiny", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "unfinished preprocess" in err and "decode, speech" in err and str(data) in err


# ------------------------------------------------------------------ 6. checkpoints, moved data


def test_truncated_newest_checkpoint_falls_back_to_the_intact_one(two_datasets, trained, caplog):
    from nerfhead.train.checkpoint import CheckpointError, load_run, read_checkpoint
    from nerfhead.train.trainer import Trainer

    newest = trained / "checkpoints" / "step_0000004.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    with caplog.at_level(logging.WARNING, logger="nerfhead.train"):
        run = load_run(trained)  # render and evaluate read it this way
    assert run.step == 2
    assert "step_0000004.pt" in caplog.text and "step_0000002.pt, which is intact" in caplog.text
    with pytest.raises(CheckpointError, match=r"truncated or damaged.*Intact.*step_0000002.pt"):
        read_checkpoint(trained, checkpoint=4)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="nerfhead.train"):
        tr = Trainer(two_datasets[0], _tiny(), trained)  # training resumes from it
    assert tr.step == 2 and "intact" in caplog.text
    assert (trained / "checkpoints" / "step_0000004.pt.unreadable").is_file()
    tr.fit(progress=False)
    assert read_checkpoint(trained)["step"] == 4


def test_moved_dataset_is_named_and_found_with_data(two_datasets, trained, tmp_path, capsys):
    import shutil

    from nerfhead.cli import main

    a, _ = two_datasets
    copy = tmp_path / "copy_of_a"
    shutil.copytree(a, copy)
    moved_run = tmp_path / "moved_run"
    shutil.copytree(trained, moved_run)
    import torch

    for ck in (moved_run / "checkpoints").glob("*.pt"):  # as if a was moved: the path is gone
        payload = torch.load(ck, weights_only=False)
        payload["dataset_dir"] = str(tmp_path / "gone")
        torch.save(payload, ck)
    drive = tmp_path / "drive.wav"
    from nerfhead.render.video import write_wav

    write_wav(drive, 0.2 * np.sin(np.arange(8000) / 5.0))
    out = tmp_path / "r.mp4"
    assert main(["render", str(moved_run), "--audio", str(drive), "--out", str(out),
                 "--device", "cpu", "--max-frames", "2"]) == 2
    err = capsys.readouterr().err
    assert "nerfhead render" in err and str(tmp_path / "gone") in err
    assert "no longer there" in err and "--data" in err and "preprocess" not in err
    assert not out.exists()
    assert main(["evaluate", str(moved_run), "--out", str(tmp_path / "ev"), "--device", "cpu"]) == 2
    assert "no longer there" in capsys.readouterr().err
    assert main(["render", str(moved_run), "--audio", str(drive), "--out", str(out), "--data",
                 str(copy), "--device", "cpu", "--max-frames", "2"]) == 0
    assert out.is_file()


# ------------------------------------------------------------------ 6. stale temporaries


def _killed_mid_write(target: Path) -> None:
    """A child process that dies (SIGKILL) inside an atomic write of ``target``."""
    code = ("import os, signal, sys\nfrom nerfhead.fileio import atomic_path\n"
            "with atomic_path(sys.argv[1]) as t:\n"
            "    t.write_bytes(b'half a checkpoint' * 1000)\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    subprocess.run([sys.executable, "-c", code, str(target)], cwd=Path(__file__).parent.parent)


def test_temporaries_of_a_killed_run_are_removed_and_live_ones_kept(two_datasets, trained, tmp_path):
    from nerfhead.fileio import temp_prefix
    from nerfhead.train.trainer import Trainer

    _killed_mid_write(trained / "checkpoints" / "step_0000006.pt")
    left = temps_under(trained)
    assert len(left) == 1 and left[0].stat().st_size > 0  # what a killed run leaves
    live = trained / "checkpoints" / f"{temp_prefix('step_0000008.pt')}abc.pt"  # this process's
    live.write_bytes(b"in progress")
    Trainer(two_datasets[0], _tiny(), trained)
    assert temps_under(trained) == [live]
    live.unlink()
    # and in a dataset folder (decode's half-written frame folder included)
    data = tmp_path / "data"
    (data / "ori_imgs").mkdir(parents=True)
    _killed_mid_write(data / "ori_imgs" / "3.jpg")
    assert len(temps_under(data)) == 1
    driver.run_steps(tmp_path / "v.mp4", data, None, steps=[])
    assert temps_under(data) == []


# ------------------------------------------------------------------ 4. output locations


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder no one can write: a read-only tmpfs when root (chmod does not stop root),
    else chmod 555. Skips where neither is possible."""
    d = tmp_path / "ro"
    d.mkdir()
    if os.geteuid() != 0:
        d.chmod(0o555)
        yield d
        d.chmod(0o755)
        return
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(d)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here (root without CAP_SYS_ADMIN)")
    yield d
    subprocess.run(["umount", str(d)], check=True)


def test_preprocess_out_on_a_read_only_filesystem(clips, read_only_dir, capsys):
    from nerfhead.cli import main

    out = read_only_dir / "data"
    assert main(["preprocess", str(clips("hdtf_2s")), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "preprocess --out" in err and str(read_only_dir) in err
    assert ("read-only filesystem" if os.geteuid() == 0 else "no permission") in err
    assert "Traceback" not in err


def test_read_only_check_names_the_cause_os_level(tmp_path, monkeypatch):
    """Runs everywhere: the OS answers EROFS / EACCES (mocked at the mkstemp boundary)."""
    import tempfile as _tempfile

    from nerfhead import fileio

    real = _tempfile.mkstemp
    for code, words in ((errno.EROFS, "read-only filesystem"), (errno.EACCES, "no permission")):
        def refuse(*a, dir=None, **k):
            if Path(dir) == tmp_path:
                raise OSError(code, os.strerror(code))
            return real(*a, dir=dir, **k)
        monkeypatch.setattr(fileio.tempfile, "mkstemp", refuse)
        with pytest.raises(OutputLocationError, match=words):
            fileio.check_output_dir(tmp_path, "nerfhead train --out")
        with pytest.raises(OutputLocationError, match=words):
            fileio.check_output_file(tmp_path / "x.mp4", "nerfhead render --out")


@pytest.mark.parametrize("command", ["preprocess", "train", "evaluate", "run"])
def test_out_that_is_an_existing_file_is_refused_before_work(command, clips, two_datasets,
                                                            trained, tmp_path, capsys):
    from nerfhead.cli import main

    out = tmp_path / "taken.txt"
    out.write_text("someone's notes")
    argv = {"preprocess": ["preprocess", str(clips("hdtf_2s"))],
            "train": ["train", str(two_datasets[0]), "--config", "tiny"],
            "evaluate": ["evaluate", str(trained), "--device", "cpu"],
            "run": ["run", str(clips("hdtf_2s"))]}[command]
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{command} --out {out} is an existing file" in err and "Traceback" not in err
    assert out.read_text() == "someone's notes"


def test_render_out_that_is_a_folder_fails_before_rendering(trained, tmp_path, monkeypatch, capsys):
    from nerfhead.cli import main
    from nerfhead.render.renderer import Renderer

    def never(*a, **k):
        raise AssertionError("rendering started")
    monkeypatch.setattr(Renderer, "sequence", never)
    folder = tmp_path / "videos"
    folder.mkdir()
    drive = tmp_path / "d.wav"
    from nerfhead.render.video import write_wav

    write_wav(drive, np.zeros(1600))
    assert main(["render", str(trained), "--audio", str(drive), "--out", str(folder), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "render --out" in err and "is an existing folder" in err and str(folder / "out.mp4") in err
    assert list(folder.iterdir()) == []


# ------------------------------------------------------------------ 5. full disk


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (root only; skipped elsewhere: the mocked test below runs everywhere)."""
    d = tmp_path / "small"
    d.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(d)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    yield d
    subprocess.run(["umount", str(d)], check=True)


def test_full_disk_is_named_before_decode_starts(clips, small_disk):
    video, out = clips("hdtf_2s"), small_disk / "data"
    with pytest.raises(StepError) as e:
        preprocess(video, out, cfg(decode={"crop_size": 512}))
    assert_refused(e.value, "decode", None, "no space left on device", "(tmpfs)",
                   "needs about", "frames and aud.wav")
    assert isinstance(e.value.__cause__, DiskFullError)
    assert_nothing_claimed(out)


def test_full_disk_during_the_audio_write_is_not_blamed_on_the_audio(clips, small_disk, tmp_path,
                                                                     monkeypatch, capsys):
    """The frames fit, aud.wav does not: once reported as "cannot decode the audio track"."""
    from nerfhead import fileio
    from nerfhead.cli import main

    video = clips("hdtf_2s")
    ref = tmp_path / "ref"
    preprocess(video, ref, steps=(DECODE,))
    pages = sum(-(-p.stat().st_size // 4096) * 4096 for p in (ref / "ori_imgs").iterdir())
    # leave room for the frames, the manifest and a little, not for the 64 KB of aud.wav
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (fileio.free_bytes(small_disk) - pages - 40 * 1024))
    monkeypatch.setattr(fileio, "require_space", lambda *a, **k: None)  # the write itself fails
    import preprocess.decode as decode_mod

    monkeypatch.setattr(decode_mod, "require_space", lambda *a, **k: None)
    out = small_disk / "data"
    assert main(["preprocess", str(video), "--out", str(out), "--crop-size", "128",
                 "--steps", "decode"]) == 1
    err = capsys.readouterr().err
    assert "no space left on device" in err and "step 'decode'" in err
    assert "cannot decode the audio" not in err and "Traceback" not in err
    filler.unlink()
    assert_nothing_claimed(out)


def test_full_disk_os_level(clips, tmp_path, monkeypatch):
    """Runs everywhere: the filesystem reports 100 KB free (mocked at shutil.disk_usage)."""
    import shutil as _shutil

    from nerfhead import fileio

    real = _shutil.disk_usage
    monkeypatch.setattr(fileio.shutil, "disk_usage",
                        lambda p: real(p)._replace(free=100 * 1024))
    video, out = clips("hdtf_2s"), tmp_path / "data"
    with pytest.raises(StepError) as e:
        preprocess(video, out)
    assert_refused(e.value, "decode", None, "no space left on device", "100 KB free", "needs about")
    assert_nothing_claimed(out)
    # every image write is checked: a failed cv2.imwrite on a full disk raises
    monkeypatch.setattr(fileio.shutil, "disk_usage", lambda p: real(p)._replace(free=0))
    import cv2

    monkeypatch.setattr(cv2, "imwrite", lambda *a, **k: False)
    with pytest.raises(DiskFullError, match="no space left"):
        fileio.write_image(tmp_path / "x.png", np.zeros((4, 4, 3), np.uint8))


def test_training_checks_the_checkpoints_space(two_datasets, tmp_path, monkeypatch, capsys):
    import shutil as _shutil

    from nerfhead import fileio
    from nerfhead.cli import main

    real = _shutil.disk_usage
    monkeypatch.setattr(fileio.shutil, "disk_usage", lambda p: real(p)._replace(free=64 * 1024))
    run = tmp_path / "run"
    assert main(["train", str(two_datasets[0]), "--config", "tiny", "--out", str(run), "--iters", "2",
                 "--device", "cpu", "--no-progress", "--set", "data.image_size=24"]) == 1
    err = capsys.readouterr().err
    assert "no space left on device" in err and "step_0000002.pt" in err
    assert "no checkpoint was written yet" in err
    assert not temps_under(run)


# ------------------------------------------------------------------ 6. Ctrl-C


@pytest.mark.parametrize("command, words", [("render", "renders from the first frame"),
                                            ("evaluate", "evaluates from the start"),
                                            ("train", "resumes")])
def test_interrupt_message_says_what_a_rerun_does(command, monkeypatch, capsys, words):
    import importlib

    from nerfhead.cli import SUBCOMMANDS, main

    mod = importlib.import_module(SUBCOMMANDS[command][0])

    def interrupted(args):
        raise KeyboardInterrupt
    monkeypatch.setattr(mod, "run", interrupted)
    argv = {"render": ["render", "RUN", "--audio", "x.wav"], "evaluate": ["evaluate", "RUN"],
            "train": ["train", "DATA", "--out", "RUN"]}[command]
    assert main(argv) == 130
    assert words in capsys.readouterr().err
