"""``nerfhead motion export|fit|generate|bench`` and the motion options of ``nerfhead render``.

- ``export DATA|RUN --out motion.csv|.json``: the clip's per-frame motion (docs/motion.md);
- ``fit DATA|RUN``: fit the speaker's head-motion model (RUN/motion/head_motion.json);
- ``generate DATA|RUN --audio X --out motion.csv``: a motion file for new audio (generated
  head motion, the clip's expressions, blinks as ``--blink`` says), to edit and render;
- ``bench DATA|RUN``: generated head motion against the held-out part of the clip
  (``nerfhead.motion.bench``; also ``nerfhead bench motion``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger("nerfhead.motion")


def add_render_arguments(p: argparse.ArgumentParser) -> None:
    """The motion options of ``nerfhead render`` (and anything else that renders)."""
    p.add_argument("--motion", default=None, metavar="FILE",
                   help="poses and expressions from a motion file (CSV/JSON, e.g. an edited "
                        "`nerfhead motion export`); see docs/motion.md")
    p.add_argument("--blink", default="clip", metavar="{clip,natural,none,FILE}",
                   help="blinks: clip (as in the pose/expression source, default), natural "
                        "(synthesised at the speaker's measured rate and duration), none (eyes "
                        "open), or a file with blink_left/blink_right, blink or blink_at_s columns")
    p.add_argument("--expression", action="append", default=[], metavar="NAME=SCALE",
                   help="scale a blendshape curve, e.g. browInnerUp=1.5 (repeatable)")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed of --poses audio and --blink natural (default 0)")


def render_inputs_from_args(args, run, data_dir, num_frames: int, samples):
    """``nerfhead.motion.controls.render_inputs`` from parsed render arguments."""
    from nerfhead.motion.controls import render_inputs

    return render_inputs(data_dir, run, num_frames, samples, poses=args.poses,
                         pose_file=args.pose_file, pose_from=args.pose_from,
                         pose_mode=args.pose_mode, smooth_sigma=args.smooth_sigma,
                         motion=args.motion, blink=args.blink, expression=args.expression,
                         seed=args.seed)


def add_bench_arguments(b: argparse.ArgumentParser) -> None:
    b.add_argument("source", metavar="DATA|RUN", help="dataset folder or training run")
    b.add_argument("--out", default=None,
                   help="output folder (default RUN/motion/bench, or required for DATA)")
    b.add_argument("--seeds", type=int, default=5, help="generated sequences per statistic [5]")


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION")
    e = sub.add_parser("export", help="a clip's per-frame motion as CSV or JSON")
    e.add_argument("source", metavar="DATA|RUN", help="dataset folder or training run")
    e.add_argument("--out", required=True, help="motion.csv or motion.json")
    e.add_argument("--split", default="all", choices=["all", "train", "val"],
                   help="frames to export (default all)")
    e.add_argument("--checkpoint", default=None, help="RUN: checkpoint (default latest)")
    f = sub.add_parser("fit", help="fit the speaker's head-motion model (seconds)")
    f.add_argument("source", metavar="DATA|RUN", help="dataset folder or training run")
    f.add_argument("--out", default=None,
                   help="model file (default RUN/motion/head_motion.json; required for DATA)")
    g = sub.add_parser("generate", help="a motion file for new audio (generated head motion)")
    g.add_argument("source", metavar="DATA|RUN", help="dataset folder or training run")
    g.add_argument("--audio", required=True, help="driving audio (any audio or video file)")
    g.add_argument("--out", required=True, help="motion.csv or motion.json")
    g.add_argument("--model", default=None, help="head-motion model file (default: the run's, "
                   "else fitted now)")
    g.add_argument("--blink", default="natural", metavar="{clip,natural,none,FILE}",
                   help="blinks written into the file (default natural)")
    g.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    add_bench_arguments(sub.add_parser("bench", help="generated head motion against the clip's "
                                       "held-out part: statistics, plot, report"))


def _export(args) -> int:
    from nerfhead.fileio import check_output_file
    from nerfhead.motion.export import export_table, resolve_source
    from nerfhead.motion.table import write_motion

    out = check_output_file(args.out, "nerfhead motion export --out")
    data_dir, run = resolve_source(args.source, args.checkpoint)
    table = export_table(data_dir, args.split, run)
    write_motion(table, out)
    cond = table.meta["condition_columns"]
    print(f"{out}: {len(table)} frames ({len(table) / table.fps:.1f} s) of {data_dir}; the model "
          f"reads {', '.join(cond)}; columns explained in docs/motion.md")
    return 0


def _fit(args) -> int:
    from nerfhead.motion.export import resolve_source
    from nerfhead.motion.generator import fit_dataset, model_path

    data_dir, run = resolve_source(args.source)
    if args.out is None and run is None:
        raise ValueError("nerfhead motion fit DATA: give --out FILE (the dataset folder is "
                         "preprocess's; a RUN keeps its model in RUN/motion/)")
    out = Path(args.out) if args.out else model_path(run.run_dir)
    model = fit_dataset(data_dir)
    model.save(out)
    i = model.info
    print(f"{out}: fitted on {i['seconds']:.0f} s of poses ({i['stretches']} continuous "
          f"stretches, {i['cuts_found']} cuts) in {i['fit_seconds']:.1f} s")
    return 0


def _generate(args) -> int:
    import numpy as np

    from nerfhead.audio.features import default_num_frames, load_audio
    from nerfhead.fileio import check_output_file
    from nerfhead.motion.controls import render_inputs
    from nerfhead.motion.blink import derived_blink
    from nerfhead.motion.export import (condition_columns, dataset_fps, load_blendshapes,
                                        resolve_source, speaker_blinks)
    from nerfhead.motion.generator import HeadMotionModel
    from nerfhead.motion.table import MotionTable, write_motion

    out = check_output_file(args.out, "nerfhead motion generate --out")
    data_dir, run = resolve_source(args.source)
    samples = load_audio(args.audio)
    n = default_num_frames(len(samples))
    model = HeadMotionModel.load(args.model) if args.model else None
    inputs = render_inputs(data_dir, run, n, samples, poses="audio", blink=args.blink,
                           seed=args.seed, motion_model=model)
    expr = inputs.expressions  # None with --blink clip: the train frames' own, cycled
    if expr is None:
        bs = load_blendshapes(data_dir)
        expr = (bs[np.minimum(inputs.seq.frame_ids, len(bs) - 1)] if bs is not None
                else np.zeros((n, 52)))
    profile = speaker_blinks(data_dir)
    blinks = derived_blink(expr, profile) if profile is not None and profile.count else np.zeros((n, 2))
    cond, cond_src = condition_columns(run)
    table = MotionTable(inputs.pose6, np.asarray(expr, np.float64), np.nan_to_num(blinks),
                        dataset_fps(data_dir),
                        {"source": f"generated for {args.audio} by the head-motion model of "
                                   f"{data_dir} (seed {args.seed}, blinks {args.blink})",
                         "condition_columns": cond, "condition_source": cond_src,
                         "conventions": "docs/motion.md"})
    write_motion(table, out)
    print(f"{out}: {n} frames ({n / table.fps:.1f} s); {inputs.seq.source}")
    return 0


def bench(args) -> int:
    from nerfhead.motion.bench import run_bench
    from nerfhead.motion.export import resolve_source

    data_dir, run = resolve_source(args.source)
    if args.out is None and run is None:
        raise ValueError("bench motion DATA: give --out DIR (the dataset folder is preprocess's)")
    out = Path(args.out) if args.out else Path(run.run_dir) / "motion" / "bench"
    result = run_bench(data_dir, out, seeds=args.seeds)
    print(result["summary"])
    print(f"report: {out / 'motion_bench.md'}")
    return 0


def known_errors():
    from nerfhead.render.cli import known_errors as render_errors

    return render_errors()


def run(args) -> int:
    actions = {"export": _export, "fit": _fit, "generate": _generate, "bench": bench}
    if getattr(args, "action", None) not in actions:
        print("nerfhead motion: choose an action: export, fit, generate or bench", file=sys.stderr)
        return 2
    try:
        return actions[args.action](args)
    except known_errors() as e:
        print(f"nerfhead motion {args.action}: {e}", file=sys.stderr)
        return 2
