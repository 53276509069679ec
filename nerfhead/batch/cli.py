"""``nerfhead batch SPEAKERS.yaml --out DIR``: preprocess, train, render and evaluate many
speakers as Ray tasks, with a live status table and one results table.

Examples::

    nerfhead batch speakers.yaml --out work/batch                  # local Ray, this machine's cores
    nerfhead batch speakers.yaml --out /shared/batch --address auto  # an existing Ray cluster
    nerfhead batch speakers.yaml --out work/batch --no-ray         # one stage after another

Each speaker goes into DIR/<name>/ with ``nerfhead run``'s layout and resume rules: rerunning
the same command skips finished work and continues interrupted work. DIR/summary.md and
DIR/summary.csv hold one row per speaker; DIR/<name>/logs/ each stage's output. The speakers
file and the cluster recipe: docs/batch.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = __doc__.split("\n", 3)[3]
    p.add_argument("speakers", metavar="SPEAKERS.yaml", help="speakers file (docs/batch.md)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (DIR/<name>/ per speaker)")
    p.add_argument("--address", default=None,
                   help="join an existing Ray cluster (ray.init address: auto, HOST:PORT or "
                        "ray://HOST:10001); DIR, the videos and the weights must be on a file "
                        "system every node sees at the same path")
    p.add_argument("--no-ray", action="store_true",
                   help="run the stages one after another in this process, without Ray")
    p.add_argument("--cpus", type=int, default=None,
                   help="local Ray: CPUs it may use (default: all cores of this machine)")
    p.add_argument("--preprocess-cpus", type=int, default=2,
                   help="cores a preprocessing task declares, its torch/OpenCV threads (default "
                        "2; capped by the largest node, or this machine without Ray)")
    p.add_argument("--train-cpus", type=int, default=None,
                   help="cores (torch threads) of a training/render/evaluate task without GPU "
                        "(Ray default 1; --no-ray default: the preset's train.cpu_threads)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu"],
                   help="auto: training and rendering on one GPU per task when there are GPUs; "
                        "cpu: never use GPUs")
    p.add_argument("--retries", type=int, default=2,
                   help="resubmissions of a stage whose Ray worker or node was lost (default 2)")
    p.add_argument("--no-dashboard", action="store_true",
                   help="local Ray: do not start the Ray dashboard")
    p.add_argument("--dry-run", action="store_true",
                   help="validate the speakers file and list each speaker's stages; run nothing")
    p.add_argument("--live", choices=["auto", "on", "off"], default="auto",
                   help="redraw the status table in place (auto: on a terminal with rich)")


def _positive(name: str, value) -> str | None:
    return None if value is None or value >= 1 else f"{name} must be at least 1, got {value}"


def dashboard_line(url: str | None, args: argparse.Namespace) -> str:
    if url:
        return url
    if args.address:
        return "none runs on that cluster (ray start --head --include-dashboard true, with ray[default])"
    if args.no_dashboard:
        return "off (--no-dashboard)"
    return 'not running: it needs Ray\'s dashboard packages (pip install "ray[default]")'


def run(args: argparse.Namespace) -> int:
    from nerfhead.batch.display import StatusDisplay, plain_table
    from nerfhead.batch.executors import BatchOptions, ClusterUnavailable, make_executor
    from nerfhead.batch.scheduler import Batch
    from nerfhead.batch.spec import SpeakersFileError, load_speakers
    from nerfhead.batch.stages import jobs_for
    from nerfhead.batch.summary import write_summary

    for problem in (_positive("--cpus", args.cpus), _positive("--preprocess-cpus", args.preprocess_cpus),
                    _positive("--train-cpus", args.train_cpus),
                    None if args.retries >= 0 else "--retries must be 0 or more"):
        if problem:
            print(f"nerfhead batch: {problem}", file=sys.stderr)
            return 2
    if args.no_ray and args.address:
        print("nerfhead batch: --address needs Ray; drop --no-ray", file=sys.stderr)
        return 2
    try:
        specs = load_speakers(args.speakers)
    except SpeakersFileError as e:
        print(f"nerfhead batch: {e}", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    if args.dry_run:
        for s in specs:
            stages = " -> ".join(j.label for j in jobs_for(s, out / s.name, out))
            note = f"  (will fail: {s.input_error})" if s.input_error else ""
            print(f"{s.name}: {s.video} -> {out / s.name}: {stages}{note}")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    opts = BatchOptions(out=out, use_ray=not args.no_ray, address=args.address, cpus=args.cpus,
                        preprocess_cpus=args.preprocess_cpus, train_cpus=args.train_cpus,
                        device=args.device, retries=args.retries, dashboard=not args.no_dashboard)
    from nerfhead.batch.lock import BatchLock, BatchLocked

    try:
        lock = BatchLock(out).acquire()
    except BatchLocked as e:
        print(f"nerfhead batch: {e}", file=sys.stderr)
        return 2
    executor = None
    try:
        try:
            executor = make_executor(opts)
        except ClusterUnavailable as e:
            print(f"nerfhead batch: {e}", file=sys.stderr)
            return 2
        print(f"nerfhead batch: {len(specs)} speaker(s) into {out} on {executor.name}")
        if executor.name.startswith("Ray"):
            print(f"Ray dashboard: {dashboard_line(executor.dashboard, args)}")
        print(f"per-stage logs: {out}/<speaker>/logs/")
        batch = Batch(specs, opts, executor)
        live = {"auto": None, "on": True, "off": False}[args.live]
        with StatusDisplay(batch.rows, live=live):
            states = batch.run()
    finally:
        if executor is not None:
            executor.close()
        lock.release()
    csv_path, md_path = write_summary(specs, out)
    print(plain_table(batch.rows()))
    print(f"summary: {md_path}, {csv_path}")
    failed = [n for n, st in states.items() if st["status"] == "failed"]
    if batch.interrupted:
        print("interrupted: finished stages, preprocessing steps and training checkpoints are "
              "kept; rerun the same command to resume", file=sys.stderr)
        return 130
    if failed:
        print(f"nerfhead batch: {len(failed)} of {len(specs)} speaker(s) failed: "
              f"{', '.join(failed)} (errors in {md_path}; fix and rerun the same command: the "
              f"others are not redone)", file=sys.stderr)
        return 1
    return 0
