"""`nerfhead batch` on the real clips: two tiny speakers (3 s of each shared clip) and one with
a broken video, on a local Ray with 2 CPUs (without Ray installed: the sequential fall-back).
The grid speaker's training worker is killed once it has a checkpoint: Ray reports the lost
worker, the stage is submitted again and resumes from that checkpoint. A second test stops a
batch with Ctrl-C (SIGINT to its process group, as a terminal sends it) and reruns it."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from test_preprocess_e2e import FAST  # light geometry fits: these tests check the batch

try:
    import ray  # noqa: F401

    HAS_RAY = True
except ImportError:
    HAS_RAY = False
REPO = Path(__file__).resolve().parent.parent
# the audio encoder's refit for other voices (3000 steps by `nerfhead run`'s default) is
# tested on its own (test_voice_encoder.py); here 20 steps keep the path without its minutes
TRAIN = {"data.image_size": 64, "train.val_every": 1000, "train.checkpoint_every": 10,
         "train.voice_encoder_steps": 20}


def _speakers_file(root: Path, speakers: list[dict]) -> Path:
    doc = {"defaults": {"preset": "tiny", "max_seconds": 3, "crop_size": 256, "eval_frames": 4,
                        "iters": 40, "overrides": TRAIN, "preprocess_overrides": FAST},
           "speakers": speakers}
    path = root / "speakers.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _pid_of_attempt(log: Path, attempt: int) -> int | None:
    m = re.search(rf"attempt {attempt}, .*? pid (\d+)", log.read_text()) if log.is_file() else None
    return int(m.group(1)) if m else None


def _kill_training_once_it_has_a_checkpoint(out: Path, done: dict, stop: threading.Event):
    """Kill the worker process of grid's training (SIGKILL, as the OOM killer would)."""
    ckpts, log = out / "grid" / "run" / "checkpoints", out / "grid" / "logs" / "train_tiny.log"
    while not stop.wait(0.1):
        pid = _pid_of_attempt(log, 1)
        if pid and ckpts.is_dir() and any(ckpts.glob("step_*.pt")):
            done["step"] = max(int(p.stem.split("_")[1]) for p in ckpts.glob("step_*.pt"))
            os.kill(pid, signal.SIGKILL)
            done["pid"] = pid
            return


@pytest.fixture(scope="module")
def batch_run(tmp_path_factory, grid_video, hdtf_video, shared_dir):
    from nerfhead.audio.features import load_audio
    from nerfhead.cli import main
    from nerfhead.render.video import write_wav

    root = tmp_path_factory.mktemp("batch")
    broken = root / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)  # header, then junk
    speech = root / "speech.wav"  # another speaker's 1.2 s drives hdtf
    write_wav(speech, load_audio(shared_dir / "data" / "audio" / "radio31_8s.wav")[:19200])
    path = _speakers_file(root, [
        {"name": "grid", "video": str(grid_video), "iters": 100},
        {"name": "hdtf", "video": str(hdtf_video), "drive_audio": "speech.wav", "pose_from": "grid"},
        {"name": "broken", "video": "broken.mp4"},
    ])
    out = root / "out"
    killed: dict = {}
    stop = threading.Event()
    killer = threading.Thread(target=_kill_training_once_it_has_a_checkpoint, args=(out, killed, stop))
    if HAS_RAY:
        killer.start()
    t0 = time.perf_counter()
    try:
        rc = main(["batch", str(path), "--out", str(out), "--cpus", "2", "--preprocess-cpus", "1",
                   "--no-dashboard", "--live", "off"] + ([] if HAS_RAY else ["--no-ray"]))
    finally:
        stop.set()
        if killer.is_alive():
            killer.join()
    states = {n: json.loads((out / n / "batch.json").read_text()) for n in ("grid", "hdtf", "broken")}
    return SimpleNamespace(rc=rc, out=out, states=states, killed=killed, path=path,
                           seconds=time.perf_counter() - t0)


@pytest.mark.slow
def test_two_speakers_finish_and_a_broken_video_fails_alone(batch_run):
    from nerfhead.render.video import probe

    out, st = batch_run.out, batch_run.states
    assert batch_run.rc == 1  # one speaker failed
    assert st["grid"]["status"] == "done" and st["hdtf"]["status"] == "done", st
    assert st["broken"]["status"] == "failed"
    err = st["broken"]["error"]
    assert err.startswith("preprocess: ") and "broken.mp4" in err and "decode" in err, err
    for name in ("grid", "hdtf"):
        assert (out / name / "render.mp4").is_file() and (out / name / "eval" / "report.md").is_file()
    drive = probe(out / "hdtf" / "drive.mp4")  # hdtf speaking the other audio, with grid's poses
    assert drive["has_audio"] and drive["duration"] == pytest.approx(1.2, abs=0.1)
    rows = {r["speaker"]: r for r in csv.DictReader((out / "summary.csv").open())}
    assert list(rows) == ["grid", "hdtf", "broken"]
    for name in ("grid", "hdtf"):
        r = rows[name]
        assert 10 < float(r["psnr_full"]) < 60 and 10 < float(r["psnr_portrait"]) < 60
        assert 0 < float(r["ssim_full"]) <= 1 and int(r["eval_frames"]) == 4
        assert float(r["train_seconds"]) > 0 and float(r["render_fps"]) > 0
        assert r["error"] == "n/a"
    assert rows["broken"]["psnr_full"] == "n/a" and rows["broken"]["train_seconds"] == "n/a"
    assert "broken.mp4" in rows["broken"]["error"]
    md = (out / "summary.md").read_text()
    assert "| grid | done |" in md and "## Errors" in md and "**broken**" in md
    print(f"batch of 3 speakers: {batch_run.seconds:.0f} s")


@pytest.mark.slow
@pytest.mark.skipif(not HAS_RAY, reason="a lost Ray worker needs Ray (pip install -e .[batch])")
def test_a_lost_worker_is_retried_and_training_resumes(batch_run):
    out = batch_run.out
    assert "pid" in batch_run.killed, "the training worker was never seen with a checkpoint"
    train = batch_run.states["grid"]["stages"]["train_tiny"]
    assert train["attempts"] == 2 and train["status"] == "done"
    log = (out / "grid" / "logs" / "train_tiny.log").read_text()
    second = log[log.index("attempt 2,"):]
    resumed = re.search(r"resuming \S+step_(\d+)\.pt from step (\d+)", second)
    assert resumed and int(resumed.group(2)) >= batch_run.killed["step"] > 0
    assert _pid_of_attempt(out / "grid" / "logs" / "train_tiny.log", 2) != batch_run.killed["pid"]
    assert (out / "grid" / "run" / "checkpoints" / "step_0000100.pt").is_file()


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_a_rerun_resumes(batch_run, hdtf_video, tmp_path):
    from nerfhead.cli import main

    out = tmp_path / "out"
    # the dataset from the batch above (mtimes kept): preprocessing is up to date here
    shutil.copytree(batch_run.out / "hdtf" / "data", out / "hdtf" / "data")
    path = _speakers_file(tmp_path, [{"name": "hdtf", "video": str(hdtf_video), "iters": 60}])
    cmd = [sys.executable, "-m", "nerfhead", "batch", str(path), "--out", str(out), "--cpus", "2",
           "--no-dashboard", "--live", "off"] + ([] if HAS_RAY else ["--no-ray"])
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        ckpts = out / "hdtf" / "run" / "checkpoints"
        deadline = time.monotonic() + 300
        while not (ckpts.is_dir() and any(ckpts.glob("step_*.pt"))):
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "first.log").read_text()
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        rc = proc.wait(timeout=120)
    text = (tmp_path / "first.log").read_text()
    assert rc == 130, text
    assert "rerun the same command to resume" in text
    state = json.loads((out / "hdtf" / "batch.json").read_text())
    assert state["status"] == "interrupted" and state["stages"]["train_tiny"]["status"] == "interrupted"
    assert "interrupted" in (out / "summary.md").read_text()
    assert not (out / ".batch.lock").exists()
    stopped_at = max(int(p.stem.split("_")[1]) for p in ckpts.glob("step_*.pt"))
    assert stopped_at < 60
    for _ in range(50):  # nothing of the batch is left running (Ray's processes included)
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        pytest.fail("processes of the interrupted batch are still running")

    # the same file again, without Ray: the sequential fall-back resumes the training
    assert main(["batch", str(path), "--out", str(out), "--no-ray", "--live", "off"]) == 0
    log = (out / "hdtf" / "logs" / "train_tiny.log").read_text()
    last = log[log.rindex("=====", 0, log.rindex("=====")):]
    assert re.search(rf"resuming \S+ from step {stopped_at}\b", last), last
    assert (ckpts / "step_0000060.pt").is_file()
    state = json.loads((out / "hdtf" / "batch.json").read_text())
    assert state["status"] == "done" and state["stages"]["preprocess"]["status"] == "up to date"
    assert state["train_seconds"] > 0


@pytest.mark.slow
@pytest.mark.skipif(not HAS_RAY, reason="needs Ray (pip install -e .[batch])")
def test_joins_an_existing_cluster(tmp_path):
    """A cluster started apart (`ray start --head`), joined with --address: the stage runs
    there and its failure comes back with its cause."""
    ray_cli = Path(sys.executable).with_name("ray")
    head = subprocess.Popen([str(ray_cli) if ray_cli.exists() else "ray", "start", "--head", "--block",
                             "--port", "0", "--num-cpus", "2", "--include-dashboard", "false",
                             "--disable-usage-stats"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        address, lines = None, []
        for line in head.stdout:
            lines.append(line)
            m = re.search(r"ray start --address='([^']+)'", line)
            if m:
                address = m.group(1)
                break
        assert address, "".join(lines)
        (tmp_path / "broken.mp4").write_bytes(b"junk")
        path = tmp_path / "speakers.yaml"
        path.write_text(yaml.safe_dump([{"name": "broken", "video": "broken.mp4"}]))
        # the head uses a token (Ray >= 2.59); Ray reads RAY_AUTH_MODE when imported, hence
        # a fresh process
        env = dict(os.environ, RAY_AUTH_MODE="token")
        proc = subprocess.run([sys.executable, "-m", "nerfhead", "batch", str(path), "--out",
                               str(tmp_path / "out"), "--address", address, "--live", "off"],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert f"{address}: 1 node(s), 2 CPU" in proc.stdout
        state = json.loads((tmp_path / "out" / "broken" / "batch.json").read_text())
        assert state["stages"]["preprocess"]["status"] == "failed"
        assert "not a readable video" in state["error"]
    finally:
        head.terminate()  # `ray start --block` stops its processes on SIGTERM
        head.wait(timeout=60)
        # `ray start` recorded this head as the machine's current cluster, where a bare
        # ray.init() would try to join it: forget it (only if it is still ours)
        current = Path("/tmp/ray/ray_current_cluster")
        if address and current.is_file() and current.read_text().strip() == address:
            current.unlink()
