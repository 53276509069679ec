"""`nerfhead batch` without real work: the speakers file, the driver (stages replaced by fakes,
sequential executor), the progress bars, the summary table, the lock. The runs on the real
clips are in test_batch_e2e.py."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest
import yaml

from nerfhead.batch import executors, stages
from nerfhead.batch.executors import BatchOptions, SequentialExecutor
from nerfhead.batch.lock import BatchLock, BatchLocked
from nerfhead.batch.scheduler import Batch
from nerfhead.batch.spec import SpeakersFileError, load_speakers
from nerfhead.batch.stages import StageResult, failure_cause, jobs_for
from nerfhead.batch.summary import write_summary
from nerfhead.cli import build_parser


def _write(tmp_path: Path, doc, name="speakers.yaml") -> Path:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return path


@pytest.fixture
def video(tmp_path) -> Path:
    v = tmp_path / "clips" / "a.mp4"
    v.parent.mkdir()
    v.write_bytes(b"stands in for a video: the stages are faked in these tests")
    return v


# ------------------------------------------------------------------------------ speakers file

@pytest.mark.parametrize("doc, expected", [
    ("speakers: [", "not valid YAML"),
    ({"speakers": []}, "non-empty list of speakers"),
    ({"speaker": [{"name": "a", "video": "a.mp4"}]}, "unknown top-level key(s) ['speaker']"),
    ({"speakers": [{"name": "a"}]}, "speaker #1 (a): 'video' is required"),
    ({"speakers": [{"name": "a", "video": "clips/a.mp4", "itres": 5}]},
     "speaker #1 (a): unknown field(s) ['itres']"),
    ({"speakers": [{"name": "a", "video": "clips/a.mp4"}, {"name": "A", "video": "clips/a.mp4"}]},
     "speaker #2 (A): name already used by speaker #1"),
    ({"speakers": [{"name": "a/b", "video": "clips/a.mp4"}]}, "name must be letters"),
    ({"speakers": [{"name": "a", "video": "clips/a.mp4", "iters": -3}]},
     "'iters' must be a positive integer, got -3"),
    ({"speakers": [{"name": "a", "video": "clips/a.mp4", "preset": "hed"}]},
     "training stage 'hed': no preset named 'hed'"),
    ({"speakers": [{"name": "a", "video": "clips/a.mp4", "overrides": ["train.itres=5"]}]},
     "itres"),
    ({"speakers": [{"name": "a", "video": "clips/a.mp4", "overrides": ["iters=5"]}]},
     "must look like section.field=value"),
    ({"speakers": [{"name": "a", "video": "clips/a.mp4",
                    "preprocess_overrides": {"decode.crop_sise": 256}}]}, "crop_sise"),
    ({"speakers": [{"name": "a", "video": "clips/a.mp4", "pose_from": "val"}]},
     "'pose_from' chooses the poses of the driven render; it needs 'drive_audio'"),
    ({"defaults": {"name": "x"}, "speakers": [{"name": "a", "video": "clips/a.mp4"}]},
     "'defaults' cannot set 'name'"),
    ({"speakers": [{"name": "a", "video": "clips/a.mp4", "audio_feature": "wav2vec"}]},
     "'audio_feature' must be 'auto' or 'hubert', got 'wav2vec'"),
])
def test_speakers_file_errors_name_file_entry_and_field(tmp_path, video, doc, expected):
    path = _write(tmp_path, doc)
    with pytest.raises(SpeakersFileError) as err:
        load_speakers(path)
    assert str(path) in str(err.value)
    assert expected in str(err.value)


def test_speakers_defaults_paths_overrides_and_inputs(tmp_path, video):
    (tmp_path / "poses.json").write_text("{}")
    (tmp_path / "speech.wav").write_bytes(b"RIFF")
    path = _write(tmp_path, {
        "defaults": {"preset": "tiny", "iters": 30, "overrides": {"data.image_size": 64}},
        "speakers": [
            {"name": "a", "video": "clips/a.mp4", "preset": "tiny,lips", "max_seconds": 3,
             "drive_audio": "speech.wav", "pose_from": "b"},
            {"name": "b", "video": "clips/a.mp4", "iters": 50, "overrides": ["train.lr_net=0.01"],
             "drive_audio": "speech.wav", "pose_from": "poses.json"},
            {"name": "c", "video": "clips/missing.mp4"},
            {"name": "d", "video": "clips/a.mp4", "drive_audio": "speech.wav", "pose_from": "nobody"},
        ]})
    a, b, c, d = load_speakers(path)
    assert a.video == video and a.stages == ["tiny", "lips"] and a.iters == 30
    assert a.overrides == ["data.image_size=64"] and a.max_seconds == 3.0
    assert b.iters == 50 and b.overrides == ["train.lr_net=0.01"]  # a speaker's own field wins
    assert a.input_error is None and b.input_error is None
    assert "clips/missing.mp4 not found" in c.input_error
    assert "pose_from 'nobody'" in d.input_error
    out = tmp_path / "out"
    assert a.pose_speaker({"a", "b"}) == "b"
    assert a.pose_arguments(out) == ["--pose-from", str(out / "b" / "data")]
    assert b.pose_arguments(out) == ["--pose-file", str(tmp_path / "poses.json")]
    # the stages of a speaker: nerfhead run's, plus the driven render
    assert [j.label for j in jobs_for(a, out / "a", out)] == [
        "preprocess", "train tiny (1/2)", "train lips (2/2)", "render", "evaluate", "drive"]
    assert [j.key for j in jobs_for(c, out / "c", out)] == [
        "preprocess", "train_tiny", "render", "evaluate"]


def test_run_args_are_what_nerfhead_run_parses(tmp_path, video):
    path = _write(tmp_path, [{"name": "a", "video": "clips/a.mp4", "preset": "head,lips",
                              "max_seconds": 4, "crop_size": 256, "iters": 7, "eval_frames": 3,
                              "overrides": {"data.image_size": 64, "train.val_every": 1000}}])
    (spec,) = load_speakers(path)
    got = spec.run_args(tmp_path / "out" / "a", "cpu")
    want = build_parser().parse_args(
        ["run", str(video), "--preset", "head,lips", "--out", str(tmp_path / "out" / "a"),
         "--max-seconds", "4.0", "--crop-size", "256", "--iters", "7", "--eval-frames", "3",
         "--device", "cpu", "--set", "data.image_size=64", "--set", "train.val_every=1000"])
    assert vars(got) == vars(want)


def test_words_and_transcript_become_run_options(tmp_path, video):
    """`words` (a timings file, or auto) and `transcript` reach nerfhead run's --words and
    --transcript, paths relative to the file; a missing one fails only its speaker; both at
    once are refused up front."""
    (tmp_path / "said.txt").write_text("hello\n")
    path = _write(tmp_path, [
        {"name": "a", "video": "clips/a.mp4", "transcript": "said.txt"},
        {"name": "b", "video": "clips/a.mp4", "words": "auto"},
        {"name": "c", "video": "clips/a.mp4", "words": "gone.json"}])
    a, b, c = load_speakers(path)
    assert a.run_args(tmp_path / "o", "cpu").transcript == str(tmp_path / "said.txt")
    assert b.run_args(tmp_path / "o", "cpu").words == "auto" and b.input_error is None
    assert a.run_args(tmp_path / "o", "cpu").audio_feature == "auto"
    hub = load_speakers(_write(tmp_path, [{"name": "h", "video": "clips/a.mp4",
                                           "audio_feature": "hubert"}]))[0]
    assert hub.run_args(tmp_path / "o", "cpu").audio_feature == "hubert"
    assert "words " + str(tmp_path / "gone.json") + " not found" in c.input_error
    bad = _write(tmp_path, [{"name": "a", "video": "clips/a.mp4", "words": "w.json",
                             "transcript": "said.txt"}])
    with pytest.raises(SpeakersFileError, match="both give the words"):
        load_speakers(bad)


# ------------------------------------------------------------------------------ stage helpers

def test_failure_cause_is_the_failing_steps_own_line():
    lines = ["INFO something", "nerfhead preprocess failed: preprocess step 'decode' (x.mp4): "
             "not a readable video", "done"]
    generic = SystemExit("nerfhead run: step `nerfhead preprocess` failed (exit 1); fix it and "
                         "rerun the same command to resume")
    assert failure_cause(generic, lines) == "preprocess step 'decode' (x.mp4): not a readable video"
    assert failure_cause(SystemExit("--device cuda: no CUDA device"), []) == "--device cuda: no CUDA device"
    assert failure_cause(ValueError("bad"), []) == "ValueError: bad"


def test_reporting_bars_report_and_restore_tqdm(monkeypatch):
    import tqdm as tqdm_module

    from nerfhead.batch import progress

    monkeypatch.setattr(progress, "REPORT_EVERY_S", 0.0)
    original = tqdm_module.tqdm
    sent = []
    with progress.report_bars_to(sent.append) as finished:
        from tqdm import tqdm

        for _ in tqdm(range(6), desc="render", unit="frame", disable=True):  # disabled: counts
            pass
        bar = tqdm(total=600, desc="train head", unit="it")
        bar.update(150)
        bar.close()
    assert tqdm_module.tqdm is original
    assert {"progress": "train head 150/600 it 25%", "fraction": 0.25} in sent
    assert [(b["desc"], b["n"], b["total"]) for b in finished] == [("render", 6, 6),
                                                                   ("train head", 150, 600)]


# ------------------------------------------------------------------------------ driver

class FakeStages:
    """Replaces stages.execute: records the calls, fails or interrupts where told."""

    def __init__(self, fail=None, interrupt=None):
        self.calls, self.fail, self.interrupt = [], fail or {}, interrupt or set()

    def __call__(self, job, args, bars):
        key = (job.speaker.name, job.key)
        self.calls.append(key)
        assert args.out == str(job.out) and args.video == str(job.speaker.video)
        if key in self.interrupt:
            self.interrupt.discard(key)  # once
            raise KeyboardInterrupt
        if key in self.fail:
            print(f"nerfhead train: {self.fail[key]}", file=__import__("sys").stderr)
            raise SystemExit("nerfhead run: step `nerfhead train` failed (exit 2); fix it and "
                             "rerun the same command to resume")
        if job.stage == "render":
            bars.append({"desc": "render", "n": 10, "total": 10, "elapsed": 2.0})
            return True, {"frames": 10, "render_seconds": 2.0, "fps": 5.0}
        return True, {}


def _batch(tmp_path, specs, fake, monkeypatch):
    monkeypatch.setattr(stages, "execute", fake)
    opts = BatchOptions(out=tmp_path / "out", use_ray=False)
    return Batch(specs, opts, SequentialExecutor(opts))


def test_sequential_batch_isolates_a_failure_and_writes_the_summary(tmp_path, video, monkeypatch):
    path = _write(tmp_path, [{"name": "a", "video": "clips/a.mp4", "preset": "tiny,lips"},
                             {"name": "b", "video": "clips/a.mp4"},
                             {"name": "c", "video": "clips/gone.mp4"}])
    specs = load_speakers(path)
    fake = FakeStages(fail={("a", "train_lips"): "training diverged at step 12"})
    states = _batch(tmp_path, specs, fake, monkeypatch).run()
    assert fake.calls == [("a", "preprocess"), ("b", "preprocess"), ("a", "train_tiny"),
                          ("b", "train_tiny"), ("a", "train_lips"), ("b", "render"),
                          ("b", "evaluate")]
    assert states["a"]["status"] == "failed"
    assert states["a"]["error"] == "train lips (2/2): training diverged at step 12"
    assert states["b"]["status"] == "done" and states["b"]["render_fps"] == 5.0
    assert states["c"]["status"] == "failed" and "gone.mp4 not found" in states["c"]["error"]
    saved = json.loads((tmp_path / "out" / "a" / "batch.json").read_text())
    assert saved["stages"]["train_lips"]["status"] == "failed"
    assert (tmp_path / "out" / "a" / "logs" / "train_lips.log").read_text().count(
        "training diverged") == 2  # the step's line and the stage's verdict
    write_summary(specs, tmp_path / "out")
    rows = list(csv.DictReader((tmp_path / "out" / "summary.csv").open()))
    assert [r["speaker"] for r in rows] == ["a", "b", "c"]
    assert rows[1]["render_fps"] == "5.0" and rows[1]["psnr_full"] == "n/a"
    assert "diverged" in rows[0]["error"]
    md = (tmp_path / "out" / "summary.md").read_text()
    assert "## Errors" in md and "**c**: check: video" in md


def test_ctrl_c_stops_and_a_rerun_goes_on(tmp_path, video, monkeypatch):
    specs = load_speakers(_write(tmp_path, [{"name": "a", "video": "clips/a.mp4"},
                                            {"name": "b", "video": "clips/a.mp4"}]))
    fake = FakeStages(interrupt={("a", "train_tiny")})
    batch = _batch(tmp_path, specs, fake, monkeypatch)
    states = batch.run()
    assert batch.interrupted
    assert {n: s["status"] for n, s in states.items()} == {"a": "interrupted", "b": "interrupted"}
    assert states["a"]["stages"]["train_tiny"]["status"] == "interrupted"
    fake.calls.clear()
    states = _batch(tmp_path, specs, fake, monkeypatch).run()
    assert all(s["status"] == "done" for s in states.values())
    # every stage is entered again: the stages themselves skip or resume (nerfhead run's rules)
    assert fake.calls.count(("a", "preprocess")) == 1 and ("a", "train_tiny") in fake.calls


def test_a_folder_keeps_its_video(tmp_path, video, monkeypatch):
    other = video.with_name("b.mp4")
    other.write_bytes(b"x")
    out = tmp_path / "out"
    (out / "a").mkdir(parents=True)
    (out / "a" / "batch.json").write_text(json.dumps({"video": str(other)}))
    specs = load_speakers(_write(tmp_path, [{"name": "a", "video": "clips/a.mp4"}]))
    fake = FakeStages()
    states = _batch(tmp_path, specs, fake, monkeypatch).run()
    assert fake.calls == []
    assert "holds the work of another video" in states["a"]["error"]


def test_without_ray_a_clear_message_and_the_sequential_executor(monkeypatch, caplog, tmp_path):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *a, **k):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with caplog.at_level(logging.WARNING, logger="nerfhead.batch"):
        ex = executors.make_executor(BatchOptions(out=tmp_path))
    assert isinstance(ex, SequentialExecutor)
    assert "Ray is not installed" in caplog.text and ".[batch]" in caplog.text
    with pytest.raises(executors.ClusterUnavailable, match="--address auto needs Ray"):
        executors.make_executor(BatchOptions(out=tmp_path, address="auto"))


def test_cli_exit_codes(tmp_path, video, monkeypatch, capsys):
    from nerfhead.cli import main

    bad = _write(tmp_path, {"speakers": [{"name": "a"}]}, "bad.yaml")
    assert main(["batch", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "'video' is required" in capsys.readouterr().err
    good = _write(tmp_path, [{"name": "a", "video": "clips/a.mp4"}])
    assert main(["batch", str(good), "--out", str(tmp_path / "o"), "--dry-run"]) == 0
    assert "a: " in capsys.readouterr().out and not (tmp_path / "o").exists()
    monkeypatch.setattr(stages, "execute", FakeStages(fail={("a", "train_tiny"): "no"}))
    assert main(["batch", str(good), "--out", str(tmp_path / "o"), "--no-ray", "--live", "off"]) == 1
    assert "1 of 1 speaker(s) failed: a" in capsys.readouterr().err
    assert not (tmp_path / "o" / ".batch.lock").exists()  # released


def test_one_batch_per_folder(tmp_path):
    lock = BatchLock(tmp_path).acquire()
    with pytest.raises(BatchLocked, match="in use by another nerfhead batch"):
        BatchLock(tmp_path).acquire()
    lock.release()
    (tmp_path / ".batch.lock").write_text(json.dumps({"host": __import__("socket").gethostname(),
                                                       "pid": 2 ** 22 + 7}))  # no such process
    BatchLock(tmp_path).acquire().release()


# ------------------------------------------------------------------------------ summary

def test_summary_reads_metrics_defensively(tmp_path, video):
    specs = load_speakers(_write(tmp_path, [{"name": n, "video": "clips/a.mp4"} for n in "abc"]))
    out = tmp_path / "out"
    mode = lambda psnr, **kw: {"psnr": {"mean": psnr}, "ssim": {"mean": 0.9}, **kw}  # noqa: E731
    (out / "a" / "eval").mkdir(parents=True)
    (out / "a" / "eval" / "metrics.json").write_text(json.dumps({
        "frames": 12, "modes": {"full": mode(30.5, lmd={"mean": None, "count": 0}),
                                "portrait": mode(35.25)},
        "lpips": {"available": False}, "syncnet": {"available": False, "reason": "no weights"},
        "lipsync_proxy": {"render": {"best_correlation": 0.41, "best_offset": 1}}}))
    (out / "b" / "eval").mkdir(parents=True)
    (out / "b" / "eval" / "metrics.json").write_text(json.dumps({  # a newer evaluation
        "frames": 8, "modes": {"full": mode(28.0, lmd_speech={"mean": 2.5}), "portrait": mode(33.0)},
        "head_jitter": {"mean": 0.012}, "mouth_opening": {"correlation": 0.7}}))
    (out / "b" / "eval_other_voice").mkdir(parents=True)  # run's score under another voice
    (out / "b" / "eval_other_voice" / "metrics.json").write_text(json.dumps({
        "frames": 8, "head_jitter": {"mean": 9.0},
        "mouth_opening": {"correlation": 0.55, "amplitude_ratio": 0.7}}))
    (out / "a" / "batch.json").write_text(json.dumps({"status": "done", "stage": "evaluate",
                                                       "train_seconds": 61.0, "render_fps": 4.5}))
    (out / "c").mkdir()
    (out / "c" / "batch.json").write_text(json.dumps({"status": "failed", "stage": "preprocess",
                                                       "train_seconds": 0.0, "error": "bad | video"}))
    write_summary(specs, out)
    rows = {r["speaker"]: r for r in csv.DictReader((out / "summary.csv").open())}
    a, b, c = rows["a"], rows["b"], rows["c"]
    assert float(a["psnr_full"]) == 30.5 and float(a["psnr_portrait"]) == 35.25
    assert a["lmd_full"] == "n/a" and a["lpips_full"] == "n/a" and a["lse_c"] == "n/a"
    assert float(a["sync_proxy_r"]) == 0.41 and float(a["train_seconds"]) == 61.0
    assert float(b["lmd_speech_full"]) == 2.5 and a["lmd_speech_full"] == "n/a"
    assert float(b["head_jitter"]) == 0.012 and a["head_jitter"] == "n/a"
    assert float(b["mouth_opening_r"]) == 0.7 and b["status"] == "not run"
    assert float(b["other_voice_r"]) == 0.55 and float(b["other_voice_amplitude"]) == 0.7
    assert a["other_voice_r"] == "n/a" and float(b["head_jitter"]) == 0.012  # its own, not the other's
    assert all(c[k] == "n/a" for k in ("psnr_full", "train_seconds", "render_fps", "eval_frames"))
    md = (out / "summary.md").read_text()
    assert "| a | done | evaluate | 61 | 4.5 | 12 | 30.5 | 35.25 |" in md
    assert "**c**: bad \\| video" in md


def test_an_unreachable_cluster_is_a_clear_error(tmp_path, video, monkeypatch, capsys):
    ray = pytest.importorskip("ray", exc_type=ImportError)
    from nerfhead.cli import main

    def refuse(**kw):
        raise ConnectionError(f"Failed to connect to Ray cluster at {kw.get('address')}")

    monkeypatch.setattr(ray, "init", refuse)
    good = _write(tmp_path, [{"name": "a", "video": "clips/a.mp4"}])
    assert main(["batch", str(good), "--out", str(tmp_path / "o"), "--address", "10.0.0.9:6379"]) == 2
    err = capsys.readouterr().err
    assert "cannot join the Ray cluster at 10.0.0.9:6379" in err and "RAY_AUTH_MODE=token" in err
    assert not (tmp_path / "o" / ".batch.lock").exists()
