"""``nerfhead run VIDEO --preset P --out DIR``: preprocess -> train -> render -> evaluate.

Layout written::

    DIR/data/        dataset folder (nerfhead preprocess)
    DIR/run/         training run (one stage per preset; ``--preset head,lips,torso`` chains
                     stages, each started from the previous: DIR/run, DIR/run_lips, ...)
    DIR/val_audio.wav  the audio of the validation frames (never trained on)
    DIR/render.mp4   the last stage rendered with that audio and the validation poses
    DIR/eval/        metrics.json, report.md, per-frame plot, GT|render|error images

Every step resumes: preprocess skips finished steps, training continues from its newest
checkpoint, and render/evaluate are skipped when their outputs exist (``--force`` redoes them).
Each step runs through the same code as its own subcommand.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger("nerfhead.run")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("video", help="talking-head video with audio")
    p.add_argument("--preset", default="tiny",
                   help="training preset, or comma-separated stages (e.g. head,lips,torso) [tiny]")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--max-seconds", type=float, default=None, help="use only the first S seconds")
    p.add_argument("--crop-size", type=int, default=None, help="preprocess crop size (default 512)")
    p.add_argument("--iters", type=int, default=None, help="override train.iters for every stage")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="SECTION.FIELD=VALUE", help="training config override (repeatable)")
    p.add_argument("--eval-frames", type=int, default=None, help="evaluate at most N val frames")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:i]")
    p.add_argument("--force", action="store_true", help="redo render and evaluate")


def _subcommand(argv: list[str]) -> None:
    """Run ``nerfhead <argv>`` in this process; a non-zero exit stops the pipeline."""
    from nerfhead.cli import build_parser

    args = build_parser().parse_args(argv)
    if getattr(args, "_unavailable", None):
        raise SystemExit(args._unavailable)
    log.info("nerfhead %s", " ".join(argv))
    rc = int(args._run(args) or 0)
    if rc != 0:
        raise SystemExit(f"nerfhead run: step `nerfhead {argv[0]}` failed (exit {rc}); fix it "
                         f"and rerun the same command to resume")


def write_val_audio(data_dir: Path, dest: Path) -> Path:
    """The validation frames' stretch of aud.wav (frames are 640 samples at 16 kHz/25 fps)."""
    from nerfhead.audio.features import load_audio
    from nerfhead.render.poses import dataset_poses
    from nerfhead.render.video import write_wav

    _, ids = dataset_poses(data_dir, "val")
    samples = load_audio(data_dir / "aud.wav")
    seg = samples[int(ids[0]) * 640:(int(ids[-1]) + 1) * 640]
    tmp = dest.with_name(f".{dest.name}.tmp.wav")
    write_wav(tmp, seg, 16000)
    tmp.replace(dest)
    return dest


# ---------------------------------------------------------------------------- library API
# ``run`` below and ``nerfhead batch`` (nerfhead/batch/) call these one stage at a time.

def stage_names(preset: str) -> list[str]:
    """``"head,lips"`` -> ``["head", "lips"]``: the training stages of a preset string."""
    return [s.strip() for s in preset.split(",") if s.strip()]


def run_dir_of(out: Path, k: int, stage: str) -> Path:
    """Folder of the k-th training stage: OUT/run, then OUT/run_<stage>."""
    return Path(out) / ("run" if k == 0 else f"run_{Path(stage).stem}")


def preprocess(args, extra: list[str] | tuple = ()) -> Path:
    """``nerfhead preprocess`` into OUT/data (finished steps are skipped); ``extra``:
    further preprocess arguments (``--set``...). Returns the dataset folder."""
    data = Path(args.out) / "data"
    pre = ["preprocess", str(args.video), "--out", str(data)]
    if args.max_seconds:
        pre += ["--max-seconds", str(args.max_seconds)]
    if args.crop_size:
        pre += ["--crop-size", str(args.crop_size)]
    _subcommand(pre + list(extra))
    return data


def train(args, k: int, stage: str, init: Path | None) -> Path:
    """``nerfhead train`` of the k-th stage (resumes from its newest checkpoint), started
    from ``init`` (the previous stage's run) when given. Returns the run folder."""
    out = Path(args.out)
    run_dir = run_dir_of(out, k, stage)
    cmd = ["train", str(out / "data"), "--config", stage, "--out", str(run_dir), "--device",
           args.device, "--no-progress"]
    if args.iters:
        cmd += ["--iters", str(args.iters)]
    if init is not None:
        cmd += ["--init", str(init)]
    for o in args.overrides:
        cmd += ["--set", o]
    _subcommand(cmd)
    return run_dir


def render(args, run_dir: Path) -> bool:
    """OUT/render.mp4: the validation audio with the validation poses; False when skipped
    (the video exists and ``args.force`` is not set)."""
    out = Path(args.out)
    audio = write_val_audio(out / "data", out / "val_audio.wav")
    video = out / "render.mp4"
    if video.is_file() and not args.force:
        return False
    _subcommand(["render", str(run_dir), "--audio", str(audio), "--poses", "val", "--out",
                 str(video), "--device", args.device])
    return True


def evaluate(args, run_dir: Path) -> bool:
    """OUT/eval/metrics.json and report.md; False when skipped (metrics.json exists and
    ``args.force`` is not set)."""
    out = Path(args.out)
    metrics = out / "eval" / "metrics.json"
    if metrics.is_file() and not args.force:
        return False
    cmd = ["evaluate", str(run_dir), "--out", str(out / "eval"), "--device", args.device]
    if args.eval_frames:
        cmd += ["--max-frames", str(args.eval_frames)]
    _subcommand(cmd)
    return True


def run(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not Path(args.video).is_file():
        print(f"nerfhead run: video not found: {args.video}", file=sys.stderr)
        return 2
    preprocess(args)
    run_dir, prev = None, None
    for k, stage in enumerate(stage_names(args.preset)):
        run_dir = prev = train(args, k, stage, prev)
    render(args, run_dir)
    evaluate(args, run_dir)
    print(f"done: {out / 'render.mp4'}, {out / 'eval' / 'report.md'}")
    return 0
