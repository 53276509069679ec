"""``nerfhead bench kernels|render|train|serve|motion``.

``kernels``: the op micro-benchmarks of ``nerfhead.ops.bench_kernels`` (hash grid, marching).
``render``: frames per second and ms per stage of a trained run (``RUN``) or of an untrained
model of a preset (``--synthetic``), see ``nerfhead.render.bench``; prints a table and, with
``--json``, writes the numbers.
``train``: training iterations per second and milliseconds per phase of a step
(``nerfhead.train.bench``).
``serve``: the live server end to end with WebRTC clients in the same process
(``nerfhead.serve.bench``).
``motion``: head motion generated from audio against the held-out poses
(``nerfhead.motion.bench``).
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="target", metavar="TARGET")
    # kernels: options are read by nerfhead.ops.bench_kernels.run(args) (imported only in run
    # so that `nerfhead --help` never imports torch)
    k = sub.add_parser("kernels", help="op micro-benchmarks (hash grid, ray marching)")
    k.add_argument("--device", default="auto", help="auto, cpu or cuda[:i]")
    k.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    k.add_argument("--full", action="store_true",
                   help="training sizes on CPU too (the default on a GPU): 2^18 points, 65,536 rays")
    k.add_argument("--points", type=int, default=None, help="points per encode call")
    k.add_argument("--rays", type=int, default=None, help="rays per march+composite call")
    k.add_argument("--levels", type=int, default=None, help="hash-grid levels [16]")
    k.add_argument("--repeats", type=int, default=None, help="timed calls per row (median)")
    k.add_argument("--json", default=None, help="also write the results here")
    r = sub.add_parser("render", help="render FPS and ms per stage")
    r.add_argument("run_dir", nargs="?", metavar="RUN", help="trained run folder")
    r.add_argument("--synthetic", action="store_true", help="untrained model of --preset instead of a run")
    r.add_argument("--preset", default="tiny", help="--synthetic: model preset (default tiny)")
    r.add_argument("--resolution", type=int, default=512,
                   help="square frame size (synthetic; for a run: 0 keeps its training size) [512]")
    r.add_argument("--frames", type=int, default=10, help="timed frames (after 2 warm-up) [10]")
    r.add_argument("--device", default="auto", help="auto, cpu or cuda[:i]")
    r.add_argument("--json", default=None, help="also write the results here")
    r.add_argument("--compare", action="store_true",
                   help="first time the inference path before issue 12 ('old': compacting loop, "
                        "training forward, float32) against the current one ('new'), frames "
                        "interleaved, with host syncs (and CUDA kernel launches) per frame")
    r.add_argument("--profile", default=None, metavar="FILE",
                   help="also profile 3 frames with torch.profiler and write the top operators "
                        "(by device time on CUDA, else CPU time) to FILE")
    t = sub.add_parser("train", help="training iterations per second and where a step's time "
                                      "goes (data, grid update, forward, backward, optimizer)")
    t.add_argument("run_or_data", metavar="RUN_OR_DATA",
                   help="a run folder (its dataset, settings and weights) or a dataset folder")
    t.add_argument("--config", default=None,
                   help="dataset: preset or YAML of the training settings (default tiny)")
    t.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="SECTION.FIELD=VALUE", help="override a setting (repeatable)")
    t.add_argument("--data", default=None, help="run: dataset folder (default: the run's)")
    t.add_argument("--steps", type=int, default=20, help="steps per pass (plain, then timed) [20]")
    t.add_argument("--warmup", type=int, default=3, help="warm-up steps [3]")
    t.add_argument("--device", default="auto", help="auto, cpu or cuda[:i]")
    t.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: chosen from the free cores; 0: torch's)")
    t.add_argument("--profile", default=None, metavar="FILE",
                   help="also write torch.profiler's operator table of 5 steps to FILE")
    t.add_argument("--json", default=None, help="also write the results here")
    from nerfhead.serve.bench import add_arguments as add_serve_arguments

    add_serve_arguments(sub.add_parser("serve", help="the live server end to end: FPS, A/V "
                                       "offset and latency per WebRTC session (docs/serve.md)"))
    from nerfhead.motion.cli import add_bench_arguments

    add_bench_arguments(sub.add_parser("motion", help="head motion generated from audio against "
                                       "the clip's held-out part (docs/motion.md)"))


def run(args) -> int:
    if args.target == "kernels":
        try:
            from nerfhead.ops import bench_kernels
        except ImportError as e:
            print(f"nerfhead bench kernels: the kernel benchmarks cannot be loaded: {e}",
                  file=sys.stderr)
            return 1
        return int(bench_kernels.run(args) or 0)
    if args.target == "render":
        if not args.synthetic and not args.run_dir:
            print("nerfhead bench render: give a RUN folder or --synthetic", file=sys.stderr)
            return 2
        from nerfhead.render.bench import main

        main(args)
        return 0
    if args.target == "train":
        from nerfhead.train.bench import main as train_main
        from nerfhead.train.checkpoint import CheckpointError
        from nerfhead.data.dataset import DatasetError
        from nerfhead.config import ConfigError

        try:
            train_main(args)
        except (DatasetError, CheckpointError, ConfigError, FileNotFoundError) as e:
            print(f"nerfhead bench train: {e}", file=sys.stderr)
            return 2
        return 0
    if args.target == "motion":
        from nerfhead.motion.cli import run as motion_run

        args.action = "bench"
        return motion_run(args)
    if args.target == "serve":
        from nerfhead.serve.bench import run as serve_run

        return serve_run(args)
    print("nerfhead bench: choose a target: kernels, render, train, serve or motion", file=sys.stderr)
    return 2
