"""scripts/gpu_check.sh: its --cpu dry run passes (every part that needs no GPU), writes a
JSON summary with what it measured, keeps it when a part fails, and exits non-zero then."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from nerfhead.data.synthetic import make_dataset
from nerfhead.render.video import write_wav
from nerfhead.ops._loader import extension_available, extension_error

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "gpu_check.sh"
TINY = ["--bench-points", "256", "--bench-rays", "32", "--bench-repeats", "1", "--bench-levels", "2",
        "--render-resolution", "16", "--render-frames", "1"]

pytestmark = pytest.mark.skipif(not extension_available(), reason=extension_error() or "no extension")


def _run(*args, timeout=600):
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def test_cpu_dry_run_passes_and_summarises(tmp_path):
    data = make_dataset(tmp_path / "syn", num_frames=20, size=32)
    write_wav(data / "aud.wav", 0.2 * np.sin(2 * np.pi * 180 * np.arange(20 * 640) / 16000), 16000)
    out = tmp_path / "check"
    proc = _run(out, "--cpu", "--data", data, "--tests", "morton or packbits", "--train-iters", 4,
                "--train-set", "data.image_size=32", "--train-set", "data.num_rays=128", *TINY)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] and summary["mode"] == "cpu" and summary["failed_steps"] == []
    assert [s["name"] for s in summary["steps"]] == ["env", "build", "extension", "tests", "bench_kernels",
                                                     "bench_render_synthetic", "train", "bench_render_run",
                                                     "bench_train", "render_video"]
    assert all((out / s["log"]).is_file() for s in summary["steps"])
    r = summary["results"]
    assert r["backends"]["hashgrid"]["cpu"] == "" and r["backends"]["raymarch"]["cpu"] == ""
    assert r["tests"]["passed"] == 2 and r["tests"]["failed"] == 0 and r["tests"]["errors"] == 0
    rows = {(row["workload"], row["backend"]): row for row in r["bench_kernels"]}
    for workload in ("encode 3D", "encode 2D", "march+composite"):
        assert rows[(workload, "torch")]["speedup"] == 1.0 and rows[(workload, "cpu")]["ms"] > 0
    for key in ("bench_render_synthetic", "bench_render_run"):
        assert r[key]["resolution"] == [16, 16] and r[key]["fps_head"] > 0
        assert r[key]["fps_head_torso_compositing"] > 0
        comp = r[key]["compare"]  # --compare: the path before issue 12 against the current one
        assert comp["new"]["host_syncs"] < comp["old"]["host_syncs"] and comp["speedup"]["fps_head"] > 0
    assert r["train"]["steps"] == 4 and 5 < r["train"]["val_psnr"] < 60 and r["train"]["iters_per_s"] > 0
    assert [v["step"] for v in r["train"]["validations"]] == [2, 4]
    bt = r["bench_train"]  # nerfhead bench train of the run: it/s and where a step's time goes
    assert bt["iters_per_s"] > 0 and bt["stage"] == "head"
    assert bt["ms_per_phase"]["forward"] > 0 and bt["ms_per_phase"]["backward"] > 0
    assert set(r["render_video"]) == {"fps_ahead2", "fps_ahead0"}  # nerfhead render, both ways
    assert all(v > 0 for v in r["render_video"].values())
    assert "gpu_check PASSED (cpu mode)" in proc.stdout
    # a second run into the same folder is refused (no run overwrites another's work)
    again = _run(out, "--cpu", "--skip-build")
    assert again.returncode == 2 and "not empty" in again.stderr


def test_a_failing_part_keeps_the_others_and_fails_the_run(tmp_path):
    out = tmp_path / "check"
    # no test matches: pytest exits 5, the tests part fails; the later part still runs
    proc = _run(out, "--cpu", "--only", "env,tests,bench_kernels", "--tests", "no_such_test_name", *TINY)
    assert proc.returncode == 1, proc.stdout[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert not summary["ok"] and summary["failed_steps"] == ["tests"]
    assert [s["name"] for s in summary["steps"]] == ["env", "tests", "bench_kernels"]
    assert summary["env"]["torch"] and summary["env"]["mode"] == "cpu"
    rows = summary["results"]["bench_kernels"]
    assert {r["backend"] for r in rows} == {"torch", "cpu"} and all(r["ms"] > 0 for r in rows)
    assert "gpu_check FAILED" in proc.stdout


def test_bad_arguments_are_refused_before_anything_runs(tmp_path):
    proc = _run(tmp_path / "x", "--cpu", "--data", tmp_path / "nowhere")
    assert proc.returncode == 2 and "not a dataset folder" in proc.stderr
    assert not (tmp_path / "x").exists()
    proc = _run("--cpu")
    assert proc.returncode == 2 and "give OUTDIR" in proc.stderr
    proc = _run(tmp_path / "y", "--bogus")
    assert proc.returncode == 2 and "unknown option --bogus" in proc.stderr
