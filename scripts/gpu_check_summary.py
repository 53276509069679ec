#!/usr/bin/env python3
"""Summary of a ``scripts/gpu_check.sh`` run: OUTDIR/summary.json from what the steps left.

Reads OUTDIR/steps.tsv (one line per finished step: name, exit status, seconds, log file)
and the files the steps wrote (env.json, info.json, tests.xml, bench_kernels.json,
bench_render_*.json, run/metrics.jsonl), and writes OUTDIR/summary.json (atomically) with
every step's status and the figures measured so far. gpu_check.sh calls it after each
step, so a later failure (or a killed run) never loses what was measured before it.

Usage: python3 scripts/gpu_check_summary.py OUTDIR [--print]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path


def _json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _steps(out: Path) -> list[dict]:
    steps = []
    tsv = out / "steps.tsv"
    if tsv.is_file():
        for line in tsv.read_text().splitlines():
            name, rc, secs, log = (line.split("\t") + ["", "", "", ""])[:4]
            steps.append({"name": name, "exit": int(rc), "seconds": int(secs), "log": log,
                          "ok": int(rc) == 0})
    return steps


def _tests(path: Path) -> dict | None:
    """pytest's JUnit XML -> counts and the names of failed tests."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    failed = []
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        if case.find("failure") is not None:
            counts["failed"] += 1
            failed.append(name)
        elif case.find("error") is not None:
            counts["errors"] += 1
            failed.append(name)
        elif case.find("skipped") is not None:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return {**counts, "failed_tests": failed}


def _render(path: Path) -> dict | None:
    r = _json(path)
    if r is None:
        return None
    keep = ("device", "resolution", "frames", "model", "fps_head", "fps_head_torso_compositing",
            "fps_with_encode", "ms_per_stage", "encode_error")
    out = {k: r.get(k) for k in keep}
    comp = r.get("compare")
    if comp:  # bench render --compare: the path before issue 12 against the current one
        out["compare"] = {name: {k: comp[name].get(k) for k in
                                 ("fps_head", "fps_head_torso_compositing", "ms_per_stage",
                                  "host_syncs", "kernel_launches")}
                          for name in ("old", "new", "eager") if name in comp}
        out["compare"]["speedup"] = comp.get("speedup")
    return out


def _train(run: Path, log: Path) -> dict | None:
    lines = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").is_file() else []
    vals = [v for v in (json.loads(x) for x in lines if x.strip()) if "psnr" in v]  # validations
    if not vals:
        return None
    last = vals[-1]
    out = {"steps": last["step"], "val_psnr": last["psnr"], "fit_wall_s": last.get("fit_wall_s"),
           "validations": [{k: v.get(k) for k in ("step", "psnr", "fit_wall_s")} for v in vals],
           "cuda_max_mem_mb": last.get("cuda_max_mem_mb")}
    if last.get("fit_wall_s"):
        # validations included; the window between the last two validations is closer to the
        # steady training rate
        out["iters_per_s"] = round(last["step"] / last["fit_wall_s"], 2)
        if len(vals) >= 2 and vals[-1]["fit_wall_s"] > vals[-2]["fit_wall_s"]:
            out["iters_per_s_last_window"] = round((vals[-1]["step"] - vals[-2]["step"])
                                                   / (vals[-1]["fit_wall_s"] - vals[-2]["fit_wall_s"]), 2)
    cfg = run / "config.yaml"
    if cfg.is_file():
        out["config"] = str(cfg)
    return out


def _render_video(log: Path) -> dict | None:
    """FPS of `nerfhead render --ahead 2` and `--ahead 0` from render_video.log."""
    if not log.is_file():
        return None
    fps = re.findall(r"render_ahead(\d+)\.mp4: (\d+) frames in [\d.]+ s \(([\d.]+) FPS\)", log.read_text())
    return {f"fps_ahead{a}": float(f) for a, _, f in fps} or None


def _bench_train(path: Path) -> dict | None:
    r = _json(path)
    if not r:
        return None
    return {k: r.get(k) for k in ("device", "stage", "iters_per_s", "ms_per_step", "ms_per_phase",
                                  "rays_per_step", "model")}


def collect(out: Path) -> dict:
    steps = _steps(out)
    env = _json(out / "env.json") or {}
    info = _json(out / "info.json")
    bench = _json(out / "bench_kernels.json")
    summary = {
        "outdir": str(out),
        "mode": env.get("mode"),
        "env": env,
        "ok": bool(steps) and all(s["ok"] for s in steps),
        "failed_steps": [s["name"] for s in steps if not s["ok"]],
        "steps": steps,
        "results": {
            "backends": info.get("backends") if info else None,
            "extension": info.get("extension") if info else None,
            "tests": _tests(out / "tests.xml"),
            "bench_kernels": bench.get("rows") if bench else None,
            "bench_render_synthetic": _render(out / "bench_render_synthetic.json"),
            "train": _train(out / "run", out / "train.log"),
            "bench_render_run": _render(out / "bench_render_run.json"),
            "bench_train": _bench_train(out / "bench_train.json"),
            "render_video": _render_video(out / "render_video.log"),
        },
    }
    return summary


def write(out: Path, summary: dict) -> Path:
    path = out / "summary.json"
    fd, tmp = tempfile.mkstemp(dir=out, prefix=".summary_", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(summary, f, indent=1)
    os.replace(tmp, path)
    return path


def brief(summary: dict) -> str:
    lines = [f"gpu_check {'PASSED' if summary['ok'] else 'FAILED'} ({summary['mode']} mode), "
             f"{summary['outdir']}"]
    for s in summary["steps"]:
        lines.append(f"  {'ok  ' if s['ok'] else 'FAIL'} {s['name']:<24} {s['seconds']:>5d} s  (exit {s['exit']})")
    r = summary["results"]
    if r["tests"]:
        t = r["tests"]
        lines.append(f"  tests: {t['passed']} passed, {t['failed']} failed, {t['errors']} errors, "
                     f"{t['skipped']} skipped")
    for row in r["bench_kernels"] or []:
        lines.append(f"  bench {row['workload']:<16} {row['backend']:<8} {row['ms']:9.2f} ms  "
                     f"{row['speedup']:6.1f}x vs torch")
    for key in ("bench_render_synthetic", "bench_render_run"):
        if r[key]:
            lines.append(f"  {key}: {r[key]['fps_head']:.1f} FPS head, "
                         f"{r[key]['fps_head_torso_compositing']:.1f} FPS head+torso+compositing")
            c = r[key].get("compare")
            if c:
                lines.append(f"    before issue 12: {c['old']['fps_head']:.1f} FPS head, "
                             f"{c['old']['fps_head_torso_compositing']:.1f} FPS head+torso+compositing; "
                             f"host syncs per frame {c['old']['host_syncs']} -> {c['new']['host_syncs']}"
                             + (f", kernel launches {c['old']['kernel_launches']} -> "
                                f"{c['new']['kernel_launches']}" if c['new'].get('kernel_launches') else ""))
                if "eager" in c:
                    lines.append(f"    without the CUDA graph: {c['eager']['fps_head']:.1f} FPS head, "
                                 f"{c['eager']['fps_head_torso_compositing']:.1f} FPS head+torso+compositing")
    if r["train"]:
        t = r["train"]
        lines.append(f"  train: {t['steps']} steps, {t.get('iters_per_s')} it/s, val PSNR {t['val_psnr']:.2f} dB")
    if r.get("bench_train"):
        b = r["bench_train"]
        phases = ", ".join(f"{k} {v:.1f}" for k, v in b["ms_per_phase"].items())
        lines.append(f"  bench_train: {b['iters_per_s']:.1f} it/s; ms per step: {phases}")
    if r.get("render_video"):
        lines.append("  nerfhead render: " + ", ".join(f"{k} {v:.1f}" for k, v in r["render_video"].items()))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("outdir", type=Path)
    ap.add_argument("--print", action="store_true", help="also print a short summary")
    args = ap.parse_args(argv)
    summary = collect(args.outdir)
    write(args.outdir, summary)
    if args.print:
        print(brief(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
