"""``nerfhead preprocess VIDEO --out DATA``: a talking-head video to a training dataset folder.

Reruns resume: steps whose inputs, settings and code are unchanged are skipped (see
``preprocess.driver``). ``--steps`` runs a subset whose dependencies are already done.
"""

from __future__ import annotations

import argparse
import os
import sys


STEPS_HELP = """steps, in order (manifest keys): decode (25 fps head crop + 16 kHz audio),
speech (refuses a silent or early-ending audio track), landmarks (MediaPipe 478 + blendshapes +
68-point .lms), av_sync (audio vs mouth: offset, drift, previews/av_sync.png; refuses
out-of-sync audio), parsing (head/neck/torso masks), scenes (shot cuts, foreign-session
frames), background (bc.jpg, gt_imgs, torso_imgs), face_fit (focal length + coarse pose;
--set face_fit.focal=PX fixes the focal), tracking (stable head keypoints), bundle_adjustment
(poses -> transforms_*.json), audio (aud_mel.npy, aud_ow.npy), previews (previews/*.png)

A dataset folder belongs to one video: another video into the same --out is refused
(--force-new moves the old folder aside). Errors and what to do: docs/troubleshooting.md"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = STEPS_HELP
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("video", help="source video (any container/codec ffmpeg reads, with audio)")
    p.add_argument("--out", required=True, metavar="DATA", help="dataset folder to write")
    p.add_argument("--config", default="preprocess",
                   help="preset name in configs/ or a YAML path (default: preprocess)")
    p.add_argument("--steps", default=None, metavar="a,b",
                   help="run only these steps (comma-separated); default: all, in order")
    p.add_argument("--force", action="store_true", help="rerun the selected steps even if up to date")
    p.add_argument("--max-seconds", type=float, default=None, metavar="S",
                   help="use only the first S seconds of the video")
    p.add_argument("--start-seconds", type=float, default=None, metavar="S",
                   help="skip the first S seconds of the video")
    p.add_argument("--crop-size", type=int, default=None, metavar="PX",
                   help="side of the square frames (default from the config: 512)")
    p.add_argument("--rotate", type=int, default=None, choices=[0, 90, 180, 270],
                   help="turn the picture clockwise by this many degrees (for a video whose "
                        "rotation metadata is missing or wrong)")
    p.add_argument("--allow-silence", action="store_true",
                   help="preprocess even when the audio has too little speech or ends early "
                        "(warns instead of refusing)")
    p.add_argument("--force-new", action="store_true",
                   help="start a new dataset: move an existing --out folder aside "
                        "(OUT.replaced-<time>) instead of resuming or refusing it")
    p.add_argument("--weights", default=None, metavar="DIR",
                   help="folder with model files (face_landmarker.task, sfm/ ...)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="processes for per-frame work (default: all cores); outputs do not "
                        "depend on it")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress line (log lines only)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override any config field, e.g. --set landmarks.max_gap=20")


def run(args: argparse.Namespace) -> int:
    from nerfhead.config import ConfigError, parse_overrides
    from preprocess.config import load_preprocess_config
    from preprocess.driver import run_steps, summary
    from nerfhead.fileio import OutputLocationError, disk_full_cause
    from preprocess.steps import StepError

    try:
        overrides = parse_overrides(args.set)
        dec = overrides.setdefault("decode", {})
        if args.max_seconds is not None:
            dec["max_seconds"] = args.max_seconds
        if args.start_seconds is not None:
            dec["start_seconds"] = args.start_seconds
        if args.crop_size is not None:
            dec["crop_size"] = args.crop_size
        if args.workers is not None:
            overrides["workers"] = args.workers
        if args.rotate is not None:
            dec["rotate"] = args.rotate
        if args.allow_silence:
            overrides.setdefault("speech", {})["allow_silence"] = True
        if args.weights:
            overrides["weights_dir"] = args.weights
            # steps that resolve model files without a weights_dir still look here
            previous = os.environ.get("NERFHEAD_WEIGHTS")
            os.environ["NERFHEAD_WEIGHTS"] = os.pathsep.join(
                [args.weights] + ([previous] if previous else []))
        cfg = load_preprocess_config(args.config, overrides)
    except (ConfigError, FileNotFoundError) as e:
        print(f"nerfhead preprocess: config error: {e}", file=sys.stderr)
        return 2
    only = [s.strip() for s in args.steps.split(",") if s.strip()] if args.steps else None
    try:
        results = run_steps(args.video, args.out, cfg, only=only, force=args.force,
                            force_new=args.force_new, progress=not args.no_progress)
    except OutputLocationError as e:
        print(f"nerfhead preprocess: {e}", file=sys.stderr)
        return 2
    except StepError as e:
        full = disk_full_cause(e)
        if full is not None:  # the headline is the full disk, whatever the step was doing
            print(f"nerfhead preprocess failed in step '{e.step}': {full}; finished steps are "
                  "kept and a rerun resumes", file=sys.stderr)
        else:
            print(f"nerfhead preprocess failed: {e}", file=sys.stderr)
        return 1
    print(summary(results))
    print(f"dataset: {os.path.abspath(args.out)}")
    return 0
