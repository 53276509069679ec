"""Pose sources, video writing/reading, and rendering a tiny trained model to mp4."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from nerfhead.render import poses
from nerfhead.render.video import SourceFrames, VideoWriter, probe


def _pose(rotvec, t):
    m = np.eye(4)
    m[:3, :3] = Rotation.from_rotvec(rotvec).as_matrix()
    m[:3, 3] = t
    return m


def _write_transforms(path, mats, ids):
    frames = [{"img_id": int(i), "aud_id": int(i), "transform_matrix": m.tolist()}
              for i, m in zip(ids, mats)]
    path.write_text(json.dumps({"focal_len": 600.0, "cx": 32.0, "cy": 32.0, "h": 64, "w": 64,
                                "frames": frames}))


@pytest.fixture
def pose_dataset(tmp_path):
    """20 frames, 18 train / 2 val; yaw oscillates, camera ~0.8 m away along +z."""
    n = 20
    rng = np.random.default_rng(0)
    mats = np.stack([_pose([0.02 * rng.normal(), 0.2 * np.sin(i / 3), 0.0],
                           [0.01 * rng.normal(), 0.0, 0.8]) for i in range(n)])
    _write_transforms(tmp_path / "transforms_train.json", mats[:18], range(18))
    _write_transforms(tmp_path / "transforms_val.json", mats[18:], range(18, 20))
    return tmp_path, mats


def test_extend_indices_mirror_and_loop():
    assert poses.extend_indices(4, 10, "mirror").tolist() == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3]
    assert poses.extend_indices(4, 10, "loop").tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    assert poses.extend_indices(5, 3, "mirror").tolist() == [0, 1, 2]  # truncation
    assert poses.extend_indices(1, 3, "mirror").tolist() == [0, 0, 0]
    with pytest.raises(ValueError):
        poses.extend_indices(4, 3, "bounce")


def test_train_val_sources_and_lengths(pose_dataset):
    data, mats = pose_dataset
    seq = poses.build_sequence(data, 40, "train", mode="mirror")
    assert len(seq) == 40 and seq.tied_to_frames
    assert np.allclose(seq.c2w[17], mats[17]) and np.allclose(seq.c2w[18], mats[16])
    assert seq.frame_ids[:3].tolist() == [0, 1, 2] and seq.frame_ids[18] == 16
    seq = poses.build_sequence(data, 5, "val", mode="loop")
    assert seq.frame_ids.tolist() == [18, 19, 18, 19, 18]
    assert np.allclose(seq.c2w[2], mats[18])


def test_smooth_source_reduces_jitter_and_stays_rotations(pose_dataset):
    data, mats = pose_dataset
    seq = poses.build_sequence(data, 18, "smooth", smooth_sigma=2.0)
    r = seq.c2w[:, :3, :3].astype(np.float64)
    assert np.allclose(r @ r.transpose(0, 2, 1), np.eye(3), atol=1e-5)
    assert np.allclose(np.linalg.det(r), 1.0, atol=1e-5)
    jitter = lambda c: np.abs(np.diff(c[:, :3, 3], 2, axis=0)).sum()  # noqa: E731
    assert jitter(seq.c2w) < 0.5 * jitter(mats[:18])


def test_static_source_is_mean_pose(pose_dataset):
    data, mats = pose_dataset
    seq = poses.build_sequence(data, 7, "static")
    assert len(seq) == 7 and not seq.tied_to_frames
    assert np.allclose(seq.c2w[0], seq.c2w[6])
    assert np.allclose(seq.c2w[0, :3, 3], mats[:18, :3, 3].mean(0), atol=1e-6)
    # the mean of rotations about y alone is a rotation about y with about the mean angle
    rv = Rotation.from_matrix(seq.c2w[0, :3, :3]).as_rotvec()
    assert abs(rv[1] - np.mean([0.2 * np.sin(i / 3) for i in range(18)])) < 0.01


def test_pose_file_json_and_npy(pose_dataset, tmp_path):
    data, mats = pose_dataset
    npy = tmp_path / "p.npy"
    np.save(npy, mats[:3])
    seq = poses.build_sequence(data, 5, pose_file=npy, mode="mirror")
    assert np.allclose(seq.c2w, mats[[0, 1, 2, 1, 0]]) and not seq.tied_to_frames
    seq = poses.build_sequence(data, 2, pose_file=data / "transforms_val.json")
    assert np.allclose(seq.c2w, mats[18:])
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(ValueError, match="bad.json"):
        poses.build_sequence(data, 2, pose_file=bad)


def test_pose_from_other_clip_keeps_relative_motion(pose_dataset, tmp_path):
    data, mats = pose_dataset
    other = tmp_path / "other"
    other.mkdir()
    # another clip: a different framing (1.2 m, rotated 0.3 rad about x) with its own motion
    offset = _pose([0.3, 0, 0], [0.1, -0.05, 0.0])
    motion = np.stack([_pose([0, 0.1 * np.sin(i / 2), 0], [0, 0, 1.2]) for i in range(11)])
    src = offset[None] @ motion
    _write_transforms(other / "transforms_train.json", src[:10], range(10))
    _write_transforms(other / "transforms_val.json", src[10:], [10])
    seq = poses.build_sequence(data, 11, pose_from=other)
    m1, m2 = poses.mean_pose(mats[:18]), poses.mean_pose(src)
    for i in range(11):  # the motion relative to each clip's mean pose is the same
        assert np.allclose(np.linalg.inv(m1) @ seq.c2w[i], np.linalg.inv(m2) @ src[i], atol=1e-5)
    # and the mean of the transferred sequence sits at this speaker's mean pose
    assert np.allclose(poses.mean_pose(seq.c2w), m1, atol=1e-4)


def test_video_writer_duration_and_audio(tmp_path):
    out = tmp_path / "clip.mp4"
    sr = 16000
    audio = 0.2 * np.sin(2 * np.pi * 220 * np.arange(3 * sr) / sr)  # 3 s, longer than video
    with VideoWriter(out, fps=25, audio=audio, sr=sr) as vw:
        for i in range(50):  # 2 s of video
            vw.write(np.full((63, 48, 3), i * 5, np.uint8))  # odd height: padded to 64
    info = probe(out)
    assert info["has_audio"] and info["audio_codec"] == "aac"
    assert info["video_codec"] == "h264" and (info["width"], info["height"]) == (48, 64)
    assert info["duration"] == pytest.approx(2.0, abs=0.1)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left


AV_TOL_FRAMES = 0.1  #: a tone burst's onset in the delivered file against its flash frame


def test_video_writer_keeps_the_sound_on_its_frames(tmp_path):
    """What `render` delivers is in sync: tone bursts written under flash frames start on
    those frames when the mp4 is read back on its clock (AAC's encoder delay is undone by
    the file's edit list, as players undo it), and the flashes are on their frames."""
    from nerfhead.audio.features import load_audio

    sr, fps, n, flashes = 16000, 25, 125, (25, 50, 75, 100)
    spf = sr // fps
    audio = np.zeros(n * spf, np.float32)
    for f in flashes:
        audio[f * spf:(f + 1) * spf] = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(spf) / sr)
    out = tmp_path / "flashes.mp4"
    with VideoWriter(out, fps=fps, audio=audio, sr=sr) as vw:
        for i in range(n):
            vw.write(np.full((64, 64, 3), 255 if i in flashes else 0, np.uint8))
    heard = np.abs(load_audio(out, sr)) > 0.1
    on = np.flatnonzero(heard)
    onsets = on[np.r_[True, np.diff(on) > spf]] / spf  # in frames
    assert len(onsets) == len(flashes)
    # the first burst's onset may lead by AAC's pre-echo (a few samples), never lag
    assert np.abs(onsets - np.array(flashes)).max() < AV_TOL_FRAMES
    src = SourceFrames(out)
    bright = [i for i in range(n) if src[i].mean() > 128]
    assert bright == list(flashes)


def test_video_writer_failure_leaves_nothing(tmp_path):
    out = tmp_path / "broken.mp4"
    with pytest.raises(ValueError, match="uint8"):
        with VideoWriter(out, audio=None) as vw:
            vw.write(np.zeros((32, 32, 3), np.uint8))
            vw.write(np.zeros((32, 32, 3), np.float32))
    assert list(tmp_path.iterdir()) == []


def test_source_frames_random_access(tmp_path):
    path = tmp_path / "src.mp4"
    with VideoWriter(path, fps=25, crf=0) as vw:
        for i in range(40):
            vw.write(np.full((32, 32, 3), i * 6, np.uint8))
    src = SourceFrames(path, fps=25, start=0.0, chunk=8)
    for i in (0, 13, 12, 39, 5, 20):
        assert abs(int(src[i].mean()) - i * 6) <= 2, i
    with pytest.raises(IndexError):
        src[45]


# ------------------------------------------------------------------ a tiny trained model
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Synthetic 32x32 dataset (+ aud.wav, face masks, a source video and crop box) and a
    `tiny` model trained for 2 steps through the real `nerfhead train` command."""
    import cv2

    from nerfhead.cli import main
    from nerfhead.data.synthetic import make_dataset
    from nerfhead.render.video import write_wav

    root = tmp_path_factory.mktemp("tiny")
    data = make_dataset(root / "data", num_frames=22, size=32)
    sr = 16000
    write_wav(data / "aud.wav", 0.2 * np.sin(2 * np.pi * 180 * np.arange(22 * 640) / sr), sr)
    mask = np.zeros((32, 32), np.uint8)
    cv2.circle(mask, (16, 15), 8, 255, -1)
    for i in range(22):
        cv2.imwrite(str(data / "parsing" / f"{i}_face.png"), mask)
    # the "source video": 80x60 frames in which the 32x32 crop sat at (30, 10), drawn 2x (64 px)
    src = root / "source.mp4"
    with VideoWriter(src, fps=25, crf=0) as vw:
        for i in range(22):
            vw.write(np.full((60, 100, 3), 40 + i, np.uint8))
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["video"] = {"source": str(src), "crop_box": [30, -2, 64], "fps": 25,
                         "start_seconds": 0.0}
    (data / "manifest.json").write_text(json.dumps(manifest))
    run = root / "run"
    rc = main(["train", str(data), "--config", "tiny", "--out", str(run), "--iters", "2",
               "--device", "cpu", "--no-progress", "--set", "data.image_size=0",
               "--set", "model.max_steps=16", "--set", "data.num_rays=128"])
    assert rc == 0
    drive = root / "drive.wav"
    t = np.arange(sr) / sr
    write_wav(drive, 0.3 * np.sin(2 * np.pi * 200 * t) * (np.sin(2 * np.pi * 2 * t) > 0), sr)
    return root, data, run, drive


def test_render_tiny_model_to_mp4_with_audio(tiny_run):
    from nerfhead.cli import main

    root, data, run, drive = tiny_run
    out = root / "portrait.mp4"
    assert main(["render", str(run), "--audio", str(drive), "--out", str(out), "--portrait",
                 "--poses", "smooth", "--max-frames", "3", "--device", "cpu"]) == 0
    info = probe(out)
    assert info["has_audio"] and info["video_codec"] == "h264"
    assert info["duration"] == pytest.approx(3 / 25, abs=0.05)
    assert (info["width"], info["height"]) == (32, 32)


def test_render_paste_back_into_source_size(tiny_run):
    from nerfhead.cli import main

    root, data, run, drive = tiny_run
    out = root / "pasted.mp4"
    assert main(["render", str(run), "--audio", str(drive), "--out", str(out), "--paste-back",
                 "--poses", "static", "--max-frames", "2", "--device", "cpu"]) == 0
    info = probe(out)
    assert (info["width"], info["height"]) == (100, 60) and info["has_audio"]


def test_render_portrait_needs_frame_tied_poses(tiny_run):
    from nerfhead.cli import main

    root, data, run, drive = tiny_run
    with pytest.raises(SystemExit, match="portrait"):
        main(["render", str(run), "--audio", str(drive), "--out", str(root / "x.mp4"),
              "--portrait", "--poses", "static", "--max-frames", "2", "--device", "cpu"])
    assert not (root / "x.mp4").exists()


def test_evaluate_tiny_model_reports_missing_faces(tiny_run, tmp_path):
    from nerfhead.cli import main

    root, data, run, drive = tiny_run
    assert main(["evaluate", str(run), "--out", str(tmp_path), "--device", "cpu"]) == 0
    result = json.loads((tmp_path / "metrics.json").read_text())
    assert result["frames"] == 2 and result["split"] == "val"
    full = result["modes"]["full"]
    assert full["psnr"]["count"] == 2 and full["ssim"]["mean"] is not None
    # a shaded sphere is no face: LMD is absent and every frame is counted, nothing crashes
    assert result["faces_not_found"]["render"]["count"] == 2
    assert full["lmd"]["count"] == 0
    assert result["lpips"]["available"] or result["lpips"]["reason"]
    for name in ("report.md", "per_frame.png", "mouth_opening.png", *result["previews"]):
        assert (tmp_path / name).stat().st_size > 0
    # a head-only run: scored over the GT torso, and also as `render` delivers it (no body)
    assert "GT torso" in result["composite"] and "no body" in result["delivered_composite"]
    assert result["delivered"]["psnr"]["count"] == 2
    report = (tmp_path / "report.md").read_text()
    assert report.index("## Lip sync") < report.index("## Image quality")
    assert "delivers it" in report
    assert "not refitted for other voices" in result["audio_encoder"]  # says which encoder
    assert "- audio encoder: trained on the speaker's voice" in report


def test_evaluate_audio_from_another_clip(tiny_run, tmp_path):
    """--audio-from: every frame of a second clip, with its audio features, poses, camera and
    background plate; compared with its own frames."""
    import cv2

    from nerfhead.cli import main
    from nerfhead.data.synthetic import make_dataset

    root, data, run, drive = tiny_run
    clip = make_dataset(root / "clip2", num_frames=11, size=32, seed=7)
    for i in range(11):
        cv2.imwrite(str(clip / "parsing" / f"{i}_face.png"), np.full((32, 32), 255, np.uint8))
    assert main(["evaluate", str(run), "--audio-from", str(clip), "--out", str(tmp_path),
                 "--max-frames", "3", "--device", "cpu", "--previews", "1"]) == 0
    result = json.loads((tmp_path / "metrics.json").read_text())
    assert result["frames"] == 3 and result["per_frame"]["frame_ids"] == [0, 1, 2]
    assert "offsets" in result["mouth_opening"]["by_offset"]  # the lag search (no face: no best)
    assert result["data"] == str(clip) and result["split"].startswith("all")
    # a mask covering the whole frame makes portrait mode equal to the plain render vs ori_imgs
    assert result["modes"]["portrait"]["psnr"]["mean"] == pytest.approx(
        result["modes"]["full"]["psnr"]["mean"], abs=0.5)


def test_evaluate_in_another_voice(tiny_run, tmp_path, capsys):
    """--voice-shift: the evaluated frames are driven by their own audio in another voice,
    features computed from the shifted aud.wav on the clip's clock, and scored against the
    real frames as usual; the report says so. Combined with --drive it is refused."""
    from nerfhead.audio.features import extract, load_audio
    from nerfhead.audio.voice import rubberband_available
    from nerfhead.cli import main
    from nerfhead.eval.cli import clip_audio, voice_features

    if not rubberband_available():
        pytest.skip("the bundled ffmpeg has no rubberband filter")
    root, data, run, drive = tiny_run
    own = extract(load_audio(data / "aud.wav"), "mel", num_frames=22)
    up = voice_features(data, "mel", 22, clip_audio(data, 7.0))
    assert up.shape == own.shape
    # the 180-Hz tone moves up 7 semitones (to 270 Hz): its loudest mel band moves up too
    assert np.argmax(up[10].mean(0)) > np.argmax(own[10].mean(0))
    assert main(["evaluate", str(run), "--voice-shift", "4", "--out", str(tmp_path / "v"),
                 "--max-frames", "2", "--device", "cpu", "--previews", "0",
                 "--jitter-sources", ""]) == 0
    result = json.loads((tmp_path / "v" / "metrics.json").read_text())
    assert "shifted +4 semitones" in result["audio"]
    assert "+4 semitones" in (tmp_path / "v" / "report.md").read_text()
    assert main(["evaluate", str(run), "--voice-shift", "4", "--drive", str(data / "aud.wav"),
                 "--out", str(tmp_path / "d"), "--device", "cpu"]) == 2
    assert "--voice-shift" in capsys.readouterr().err


def test_evaluate_driven_by_other_speech_of_the_clips_length(tiny_run, tmp_path, capsys):
    """--speech WAV: the evaluated frames are driven by WAV's features (not the clip's own)
    and scored against the real frames; a file of another length is refused, naming both."""
    from nerfhead.audio.features import extract, load_audio
    from nerfhead.cli import main
    from nerfhead.eval.cli import clip_audio, voice_features
    from nerfhead.render.video import write_wav

    root, data, run, drive = tiny_run
    n = len(load_audio(data / "aud.wav"))
    speech = tmp_path / "other.wav"
    write_wav(speech, 0.2 * np.sin(2 * np.pi * 900 * np.arange(n - 300) / 16000), 16000)
    samples = clip_audio(data, speech=str(speech))
    assert len(samples) == n and np.all(samples[-300:] == 0)  # padded to the clip's length
    feats = voice_features(data, "mel", 22, samples)
    assert np.allclose(feats, extract(samples, "mel", num_frames=22))
    assert np.argmax(feats[10].mean(0)) > np.argmax(extract(load_audio(data / "aud.wav"), "mel",
                                                            num_frames=22)[10].mean(0))
    assert main(["evaluate", str(run), "--speech", str(speech), "--out", str(tmp_path / "s"),
                 "--max-frames", "2", "--device", "cpu", "--previews", "0",
                 "--jitter-sources", ""]) == 0
    result = json.loads((tmp_path / "s" / "metrics.json").read_text())
    assert result["audio"].startswith(f"{speech} (--speech")
    write_wav(speech, np.zeros(n + 2000), 16000)
    assert main(["evaluate", str(run), "--speech", str(speech), "--out", str(tmp_path / "t"),
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert str(speech) in err and "nerfhead respeak" in err
    assert main(["evaluate", str(run), "--speech", str(speech), "--voice-shift", "3",
                 "--device", "cpu"]) == 2


def test_bench_render_synthetic_reports_every_stage(capsys):
    from nerfhead.cli import main

    assert main(["bench", "render", "--synthetic", "--resolution", "16", "--frames", "1",
                 "--device", "cpu"]) == 0
    table = capsys.readouterr().out
    for stage in ("audio", "march+composite", "torso", "compositing", "encode",
                  "FPS head only", "FPS head+torso+composite"):
        assert stage in table
    from nerfhead.render.bench import run_bench, synthetic_model

    model = synthetic_model("tiny", 16, "cpu")
    res = run_bench(model, model.camera, num_frames=1, warmup=0)
    assert set(res["ms_per_stage"]) == {"audio", "rays", "march+composite", "torso",
                                        "compositing", "encode"}
    assert all(v > 0 for v in res["ms_per_stage"].values())
    assert res["fps_head"] > res["fps_head_torso_compositing"] > 0


def test_render_bad_inputs_fail_clearly(tiny_run, capsys):
    from nerfhead.cli import main

    root, data, run, drive = tiny_run
    assert main(["render", str(run), "--audio", str(root / "missing.wav"), "--device", "cpu"]) == 2
    assert "missing.wav" in capsys.readouterr().err
    assert main(["render", str(root / "no_run"), "--audio", str(drive), "--device", "cpu"]) == 2
    assert "no_run" in capsys.readouterr().err
    assert main(["render", str(run), "--audio", str(drive), "--pose-file",
                 str(root / "nope.npy"), "--device", "cpu"]) == 2
    assert "nope.npy" in capsys.readouterr().err


def test_render_of_a_head_only_run_warns_and_takes_the_gt_torso(tiny_run, caplog):
    """A run without a trained torso: `render` says the body is missing; --gt-torso puts the
    dataset's torso images behind the head (the synthetic torso box fills the bottom rows)."""
    import logging

    from nerfhead.cli import main
    from nerfhead.render.video import read_frames

    root, data, run, drive = tiny_run
    plain, with_torso = root / "headless.mp4", root / "gt_torso.mp4"
    with caplog.at_level(logging.WARNING, logger="nerfhead.render"):
        assert main(["render", str(run), "--audio", str(drive), "--out", str(plain),
                     "--poses", "train", "--max-frames", "2", "--device", "cpu"]) == 0
    assert "no trained torso" in caplog.text and "--gt-torso" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="nerfhead.render"):
        assert main(["render", str(run), "--audio", str(drive), "--out", str(with_torso),
                     "--poses", "train", "--max-frames", "2", "--device", "cpu", "--gt-torso"]) == 0
    assert "no trained torso" not in caplog.text
    a, b = next(read_frames(plain)), next(read_frames(with_torso))
    rows = slice(int(32 * 0.85), 32)  # inside the synthetic torso box, below the head
    cols = slice(int(32 * 0.3), int(32 * 0.7))
    torso = np.array([0.8, 0.5, 0.3]) * 255
    assert np.abs(b[rows, cols] - torso).mean() < np.abs(a[rows, cols] - torso).mean() - 30
    with pytest.raises(SystemExit, match="gt-torso"):
        main(["render", str(run), "--audio", str(drive), "--out", str(root / "y.mp4"),
              "--poses", "static", "--max-frames", "2", "--device", "cpu", "--gt-torso"])


def test_uint8_on_the_device_is_the_host_conversion_byte_for_byte():
    import torch

    from nerfhead.render.ahead import to_uint8_device
    from nerfhead.render.renderer import to_uint8

    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 64, 3, generator=g) * 1.2 - 0.1
    # exact halves between two levels (round half to even on both sides) and the ends
    x.view(-1)[:256] = (torch.arange(256, dtype=torch.float32) + 0.5) / 255.0
    x.view(-1)[256:260] = torch.tensor([0.0, 1.0, -0.0, 1.0 + 1e-7])
    dev = to_uint8_device(x)
    assert dev.dtype == torch.uint8 and dev.shape == x.shape
    assert np.array_equal(dev.numpy(), to_uint8(x))


def test_render_ahead_keeps_order_raises_and_stops_its_thread():
    import threading

    from nerfhead.render.ahead import render_ahead

    assert list(render_ahead(lambda: iter(range(7)), depth=2)) == list(range(7))
    assert list(render_ahead(lambda: iter(range(3)), depth=0)) == [0, 1, 2]

    def failing():
        yield 1
        raise ValueError("frame 2 failed")

    got = []
    with pytest.raises(ValueError, match="frame 2 failed"):
        for x in render_ahead(failing, depth=2):
            got.append(x)
    assert got == [1]
    made = []

    def endless():
        i = 0
        while True:
            made.append(i)
            yield i
            i += 1

    gen = render_ahead(endless, depth=2)
    assert [next(gen) for _ in range(3)] == [0, 1, 2]
    gen.close()  # the consumer stops: the thread ends, at most depth + 2 frames were made
    assert not any(t.name == "nerfhead-render-ahead" for t in threading.enumerate())
    assert len(made) <= 3 + 2 + 1


def test_render_ahead_writes_the_same_video_as_frame_by_frame(tiny_run, tmp_path):
    """`nerfhead render` (frames rendered ahead in a thread, uint8 on the device) encodes the
    frames the earlier loop made (render_frame -> to_uint8 on the host, one after the other):
    the same frames byte for byte, and the same decoded video."""
    from nerfhead.cli import main
    from nerfhead.render.poses import build_sequence
    from nerfhead.render.renderer import Renderer, driving_features, to_uint8
    from nerfhead.render.video import read_frames

    root, data, run, drive = tiny_run
    out = tmp_path / "ahead.mp4"
    assert main(["render", str(run), "--audio", str(drive), "--out", str(out), "--poses", "train",
                 "--max-frames", "5", "--device", "cpu", "--no-torso", "--threads", "1"]) == 0
    r = Renderer.load(run, "cpu")
    feats, samples = driving_features(r.run, drive, max_frames=5)
    seq = build_sequence(data, len(feats), "train")
    before = [to_uint8(r.model.render_frame(seq.c2w[i], feats, i, r.frames.expression(int(f)),
                                            latent_index=r.latent_index(int(f)),
                                            with_torso=False)["rgb"])
              for i, f in enumerate(seq.frame_ids[:5])]
    ahead = [rgb for _, rgb, _ in r.sequence(feats, seq, with_torso=False, progress=False, ahead=2)]
    inline = [rgb for _, rgb, _ in r.sequence(feats, seq, with_torso=False, progress=False, ahead=0)]
    assert len(ahead) == 5
    for a, b, c in zip(before, ahead, inline):
        assert np.array_equal(a, b) and np.array_equal(a, c)
    ref = tmp_path / "before.mp4"
    with VideoWriter(ref, fps=25, audio=samples, sr=16000) as vw:
        for f in before:
            vw.write(f)
    got, want = list(read_frames(out)), list(read_frames(ref))
    assert len(got) == len(want) == 5
    if not all(np.array_equal(a, b) for a, b in zip(got, want)):
        # Once, on a loaded CI machine, the two encodings decoded apart (not reproduced here,
        # where both are repeatable). Render and encode both again: a real difference between
        # render's frames and the frame-by-frame ones fails again; which side moved is said.
        again = tmp_path / "again.mp4"
        assert main(["render", str(run), "--audio", str(drive), "--out", str(again), "--poses",
                     "train", "--max-frames", "5", "--device", "cpu", "--no-torso", "--threads",
                     "1"]) == 0
        ref2 = tmp_path / "before2.mp4"
        with VideoWriter(ref2, fps=25, audio=samples, sr=16000) as vw:
            for f in before:
                vw.write(f)
        got2, want2 = list(read_frames(again)), list(read_frames(ref2))
        same = lambda x, y: all(np.array_equal(a, b) for a, b in zip(x, y))  # noqa: E731
        print(f"render_ahead video check, second try: render repeatable {same(got, got2)}, "
              f"reference repeatable {same(want, want2)}, equal now {same(got2, want2)}")
        assert same(got2, want2)


def test_evaluate_drive_names_the_audio_encoder_and_refuses_one_it_lacks(tiny_run, tmp_path, capsys):
    """`evaluate --drive` end to end on a run: drive.mp4, metrics.json and report.md, which
    say which audio encoder rendered; `--audio-encoder trained` on a run never refitted is the
    same encoder, and on a run refitted by an older nerfhead (no trained encoder kept) it is
    refused naming why."""
    import torch

    from nerfhead.cli import main
    from nerfhead.train.checkpoint import list_checkpoints

    root, data, run, drive = tiny_run
    assert main(["evaluate", str(run), "--drive", str(drive), "--out", str(tmp_path / "d"),
                 "--max-frames", "6", "--device", "cpu", "--audio-encoder", "trained"]) == 0
    result = json.loads((tmp_path / "d" / "metrics.json").read_text())
    assert result["frames"] == 6 and (tmp_path / "d" / "drive.mp4").stat().st_size > 0
    assert "not refitted" in result["audio_encoder"]
    assert "- audio encoder: trained on the speaker's voice" in (tmp_path / "d" / "report.md").read_text()

    old = tmp_path / "old_refit"
    (old / "checkpoints").mkdir(parents=True)
    ck = torch.load(list_checkpoints(run)[-1], weights_only=False)
    ck["voice_fit"] = {"steps": 10, "seconds": 1.0, "voices": 2, "error_own": 0.0,
                       "error_before": [1.0], "error_after": [0.5]}
    torch.save(ck, old / "checkpoints" / "step_0000002.pt")
    capsys.readouterr()
    assert main(["evaluate", str(old), "--drive", str(drive), "--out", str(tmp_path / "e"),
                 "--max-frames", "6", "--device", "cpu", "--audio-encoder", "trained"]) == 2
    err = capsys.readouterr().err
    assert "older nerfhead" in err and "--audio-encoder trained cannot be had" in err
    assert not (tmp_path / "e").exists()
