"""preprocess.driver with tiny fake steps: skipping, selective reruns, failures, --steps."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from preprocess import driver
from preprocess.steps import Step, StepError

CALLS: list[str] = []


def _check_file(name):
    def check(ctx):
        if not ctx.path(name).is_file():
            raise StepError(name, "missing", ctx.path(name))
    return check


def _run_a(ctx):
    CALLS.append("a")
    # output depends on the setting only through its parity (lets a test change the
    # setting without changing the bytes a.txt gets)
    ctx.path("a.txt").write_text(ctx.video.read_text() + str(ctx.cfg.a % 2))
    return {"lines": 1, "manifest": {"video": {"num_frames": 3}}}


def _run_b(ctx):
    CALLS.append("b")
    if ctx.cfg.fail_b:
        ctx.path("b.txt").write_text("half")
        raise RuntimeError("b exploded")
    ctx.path("b.txt").write_text(ctx.path("a.txt").read_text() * ctx.cfg.b)
    return {"copies": ctx.cfg.b}


def _run_c(ctx):
    CALLS.append("c")
    ctx.path("c.txt").write_text("c")


STEPS = [
    Step("a", ("@video",), ("a.txt",), _run_a, _check_file("a.txt"), lambda cfg: {"a": cfg.a}),
    Step("b", ("a.txt",), ("b.txt",), _run_b, _check_file("b.txt"), lambda cfg: {"b": cfg.b}),
    Step("c", ("@video",), ("c.txt",), _run_c, _check_file("c.txt"), lambda cfg: {}),
]


@pytest.fixture
def setup(tmp_path):
    CALLS.clear()
    video = tmp_path / "video.txt"
    video.write_text("v")
    data = tmp_path / "data"
    cfg = SimpleNamespace(a=1, b=2, fail_b=False)

    def go(only=None, force=False):
        CALLS.clear()
        res = driver.run_steps(video, data, cfg, only=only, force=force, steps=STEPS)
        return {r.name: r.status for r in res}
    return SimpleNamespace(video=video, data=data, cfg=cfg, go=go)


def manifest(data):
    return json.loads((data / "manifest.json").read_text())


def test_second_run_skips_everything(setup):
    assert setup.go() == {"a": "ran", "b": "ran", "c": "ran"}
    assert (setup.data / "b.txt").read_text() == "v1v1"
    m = manifest(setup.data)
    assert set(m["steps"]) == {"a", "b", "c"}
    assert m["video"] == {"num_frames": 3}  # promoted from a's stats
    assert "manifest" not in m["steps"]["a"]["stats"] and m["steps"]["a"]["stats"]["lines"] == 1
    assert m["steps"]["b"]["settings"] == {"b": 2} and m["steps"]["b"]["seconds"] >= 0
    assert set(m["versions"]) == {"nerfhead", "numpy", "mediapipe", "cv2", "torch"}
    assert setup.go() == {"a": "skipped", "b": "skipped", "c": "skipped"}
    assert CALLS == []
    assert not [p for p in setup.data.iterdir() if p.name.startswith(".")]  # no temp files left


def test_changed_setting_reruns_only_dependent_work(setup):
    setup.go()
    setup.cfg.b = 3
    assert setup.go() == {"a": "skipped", "b": "ran", "c": "skipped"}
    assert (setup.data / "b.txt").read_text() == "v1" * 3
    setup.cfg.a = 2  # a.txt changes ("v0"), so b must follow
    assert setup.go() == {"a": "ran", "b": "ran", "c": "skipped"}
    assert (setup.data / "b.txt").read_text() == "v0" * 3
    setup.cfg.a = 4  # a reruns but writes the same bytes: b's input hash is unchanged
    assert setup.go() == {"a": "ran", "b": "skipped", "c": "skipped"}


def test_changed_source_or_deleted_output_reruns(setup):
    setup.go()
    setup.video.write_text("w")
    assert setup.go() == {"a": "ran", "b": "ran", "c": "ran"}
    (setup.data / "c.txt").unlink()  # record matches but check fails
    assert setup.go() == {"a": "skipped", "b": "skipped", "c": "ran"}
    assert setup.go(force=True) == {"a": "ran", "b": "ran", "c": "ran"}


def test_a_copied_moved_or_touched_video_redoes_nothing(setup, tmp_path):
    """The video is identified by its content: a fresh copy (new mtime) or another path to
    the same bytes keeps every step; other bytes rerun the steps that read it."""
    import os
    import shutil

    setup.go()
    os.utime(setup.video, ns=(1, 1))
    assert setup.go() == {"a": "skipped", "b": "skipped", "c": "skipped"}
    moved = tmp_path / "elsewhere" / "same.txt"
    moved.parent.mkdir()
    shutil.copy(setup.video, moved)
    res = driver.run_steps(moved, setup.data, setup.cfg, steps=STEPS)
    assert {r.name: r.status for r in res} == {"a": "skipped", "b": "skipped", "c": "skipped"}
    setup.video.write_text("w")
    assert setup.go() == {"a": "ran", "b": "ran", "c": "ran"}


def test_a_record_from_path_and_mtime_days_is_upgraded_when_the_content_matches(setup, caplog):
    """Records written when the video was hashed by its path and mtime: accepted (and
    rewritten with the content hash) when the manifest's content fingerprint of the video is
    this video's and settings and code are unchanged; otherwise the step reruns."""
    import logging

    setup.go()
    m = manifest(setup.data)
    fresh = {k: dict(m["steps"][k]) for k in ("a", "c")}
    for k in ("a", "c"):  # what the old driver wrote: another inputs hash, so another fingerprint
        m["steps"][k].update(inputs_hash="0123456789abcdef", fingerprint="fedcba9876543210")
    m["video"]["source_fingerprint"] = driver.source_fingerprint(setup.video)
    (setup.data / "manifest.json").write_text(json.dumps(m))
    with caplog.at_level(logging.INFO, logger="preprocess"):
        assert setup.go() == {"a": "skipped", "b": "skipped", "c": "skipped"}
    assert "the record now uses their content" in caplog.text
    m = manifest(setup.data)
    assert all(m["steps"][k]["fingerprint"] == fresh[k]["fingerprint"] for k in ("a", "c"))
    # the same old records, but the manifest knows the video by other content: rerun
    m["steps"]["a"].update(inputs_hash="0123456789abcdef", fingerprint="fedcba9876543210")
    m["video"]["source_fingerprint"] = "not this video"
    (setup.data / "manifest.json").write_text(json.dumps(m))
    assert setup.go()["a"] == "ran"
    # ... or the step's settings changed since: rerun
    setup.go()
    m = manifest(setup.data)
    m["steps"]["a"].update(inputs_hash="0123456789abcdef", fingerprint="fedcba9876543210")
    m["video"]["source_fingerprint"] = driver.source_fingerprint(setup.video)
    (setup.data / "manifest.json").write_text(json.dumps(m))
    setup.cfg.a = 3
    assert setup.go()["a"] == "ran"


def _run_big(ctx):
    CALLS.append("big")
    ctx.path("big.bin").write_bytes(ctx.video.read_bytes() * (100 << 10))  # over SMALL_FILE


def _run_use(ctx):
    CALLS.append("use")
    ctx.path("use.txt").write_text(str(len(ctx.path("big.bin").read_bytes())))


BIG_STEPS = [
    Step("big", ("@video",), ("big.bin",), _run_big, _check_file("big.bin"), lambda cfg: {}),
    Step("use", ("big.bin",), ("use.txt",), _run_use, _check_file("use.txt"), lambda cfg: {}),
]


def test_a_dataset_copied_elsewhere_keeps_its_steps_and_old_records_are_upgraded(tmp_path, caplog):
    """Large files are identified by content: a copy of the dataset folder (every mtime new)
    skips every step; a large file rewritten with other bytes reruns its readers. A record
    from when large files were identified by mtime is accepted while the files are untouched
    (and upgraded), and not once one was touched."""
    import logging
    import os
    import shutil

    video = tmp_path / "v.txt"
    video.write_text("v")
    data = tmp_path / "data"

    def go(folder):
        CALLS.clear()
        res = driver.run_steps(video, folder, SimpleNamespace(), steps=BIG_STEPS)
        return {r.name: r.status for r in res}

    assert go(data) == {"big": "ran", "use": "ran"}
    copy = tmp_path / "copy"
    shutil.copytree(data, copy, copy_function=shutil.copy)  # new mtimes everywhere
    os.utime(copy / "big.bin", ns=(10**9, 10**9))
    assert go(copy) == {"big": "skipped", "use": "skipped"}
    (copy / "big.bin").write_bytes(b"w" * (100 << 10))  # same size, other bytes
    assert go(copy)["use"] == "ran"

    def make_legacy():  # what the driver wrote before: big.bin by size and mtime
        m = manifest(data)
        h = driver.inputs_hash(BIG_STEPS[1], data, video, m, legacy=True)
        m["steps"]["use"].update(inputs_hash=h, fingerprint="0123456789abcdef")
        (data / "manifest.json").write_text(json.dumps(m))

    make_legacy()
    with caplog.at_level(logging.INFO, logger="preprocess"):
        assert go(data) == {"big": "skipped", "use": "skipped"}
    assert "use: its record identified its inputs by path and time" in caplog.text
    fresh = driver.inputs_hash(BIG_STEPS[1], data, video, manifest(data))
    assert manifest(data)["steps"]["use"]["inputs_hash"] == fresh  # upgraded
    make_legacy()
    os.utime(data / "big.bin", ns=(10**9, 10**9))  # touched since the old record: rerun
    assert go(data)["use"] == "ran"


def test_failure_leaves_no_record_and_rerun_redoes_it(setup):
    setup.go()
    setup.cfg.b = 5
    setup.cfg.fail_b = True
    with pytest.raises(StepError, match="b exploded"):
        setup.go()
    m = manifest(setup.data)
    assert "b" not in m["steps"] and "a" in m["steps"]  # c never ran this time but keeps its record
    assert "c" in m["steps"]
    setup.cfg.b = 2  # back to the settings b had recorded before: still must rerun
    setup.cfg.fail_b = False
    assert setup.go() == {"a": "skipped", "b": "ran", "c": "skipped"}
    assert (setup.data / "b.txt").read_text() == "v1v1"


def test_interrupt_closes_the_progress_line_and_keeps_no_record(setup):
    """Ctrl-C in a step (a KeyboardInterrupt, not an Exception): the progress line is closed,
    so a library caller (nerfhead batch) gets its logging back and no stale line is fed."""
    import logging

    from preprocess import progress

    setup.go()
    handlers = list(logging.getLogger().handlers)

    def interrupted(ctx):
        raise KeyboardInterrupt

    import dataclasses

    steps = [STEPS[0], dataclasses.replace(STEPS[1], run=interrupted), STEPS[2]]
    setup.cfg.b = 3
    with pytest.raises(KeyboardInterrupt):
        driver.run_steps(setup.video, setup.data, setup.cfg, steps=steps, progress=True)
    assert progress._CURRENT is None
    assert logging.getLogger().handlers == handlers
    assert "b" not in manifest(setup.data)["steps"]


def test_steps_subset_needs_its_dependencies_done(setup):
    with pytest.raises(StepError, match=r"step 'b' needs \['a'\]"):
        setup.go(only=["b"])
    with pytest.raises(StepError, match="unknown step"):
        setup.go(only=["zzz"])
    assert setup.go(only=["a", "b"]) == {"a": "ran", "b": "ran"}
    assert setup.go(only=["b"]) == {"b": "skipped"}
    assert setup.go(only=["c"]) == {"c": "ran"}


def test_dependencies_from_inputs_and_outputs():
    real_like = [
        Step("decode", ("@video",), ("ori_imgs", "aud.wav"), _run_c, _check_file("x"), dict),
        Step("landmarks", ("ori_imgs/*.jpg",), ("bs.npy", "ori_imgs/*.lms"), _run_c, _check_file("x"), dict),
        Step("audio", ("aud.wav",), ("aud_mel.npy",), _run_c, _check_file("x"), dict),
        Step("previews", ("ori_imgs/*.jpg", "ori_imgs/*.lms"), ("previews/x.png",), _run_c,
             _check_file("x"), dict),
    ]
    names = lambda s: [d.name for d in driver.dependencies(s, real_like)]  # noqa: E731
    assert names(real_like[1]) == ["decode"]
    assert names(real_like[2]) == ["decode"]
    assert names(real_like[3]) == ["decode", "landmarks"]


def test_summary_table_lists_each_step():
    text = driver.summary([driver.StepResult("decode", "ran", 1.25),
                           driver.StepResult("audio", "skipped", 0.0)])
    assert "decode" in text and "1.2" in text and "skipped" in text and "total" in text


def test_manifest_as_input_hashes_its_data_not_its_bookkeeping(setup):
    def run_d(ctx):
        ctx.path("d.txt").write_text(str(ctx.manifest["video"]))

    reads_manifest = Step("d", ("manifest.json",), ("d.txt",), run_d, _check_file("d.txt"),
                          lambda cfg: {})
    steps = STEPS + [reads_manifest]
    run = lambda: {r.name: r.status for r in  # noqa: E731
                   driver.run_steps(setup.video, setup.data, setup.cfg, steps=steps)}
    assert run()["d"] == "ran"
    assert run()["d"] == "skipped"  # the manifest's timestamps and records changed meanwhile


def test_preset_loads_and_rejects_unknown_fields():
    from nerfhead.config import ConfigError
    from preprocess.config import load_preprocess_config

    cfg = load_preprocess_config("preprocess", {"landmarks": {"max_gap": 3}, "weights_dir": "/w"})
    assert cfg.decode.crop_size == 512 and cfg.decode.fps == 25.0
    assert cfg.landmarks.max_gap == 3 and cfg.weights_dir == "/w" and cfg.workers is None
    assert load_preprocess_config(None, {"workers": 2}).workers == 2
    assert cfg.audio.kinds == ["mel", "ow"]
    assert [s.name for s in driver.default_steps()] == [
        "decode", "speech", "landmarks", "av_sync", "parsing", "scenes", "background", "face_fit",
        "tracking",
        "bundle_adjustment", "audio", "previews"]
    for step in driver.default_steps():
        step.settings(cfg)  # every step finds its section
    with pytest.raises(ConfigError, match="crop_sise"):
        load_preprocess_config("preprocess", {"decode": {"crop_sise": 256}})
    with pytest.raises(ConfigError, match="expected an integer"):
        load_preprocess_config(None, {"decode": {"crop_size": "big"}})


def test_cli_reports_bad_input_and_missing_dependencies(tmp_path, capsys):
    from nerfhead.cli import main

    rc = main(["preprocess", str(tmp_path / "nope.mp4"), "--out", str(tmp_path / "d")])
    err = capsys.readouterr().err
    assert rc == 1 and "decode" in err and "nope.mp4" in err and "not found" in err
    rc = main(["preprocess", str(tmp_path / "nope.mp4"), "--out", str(tmp_path / "d"),
               "--steps", "audio"])
    err = capsys.readouterr().err
    assert rc == 1 and "needs ['decode']" in err
    rc = main(["preprocess", "x.mp4", "--out", str(tmp_path / "d"), "--set", "decode.fps=fast"])
    assert rc == 2 and "config error" in capsys.readouterr().err
