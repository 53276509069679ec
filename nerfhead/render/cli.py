"""``nerfhead render RUN --audio X``: a trained model speaks new audio, written to mp4.

Steps: load the run into a ``nerfhead.render.renderer.Renderer``; decode the driving audio and
compute its features of the run's kind (``nerfhead.audio.features.extract``); build the pose
sequence (``nerfhead.render.poses``); render every frame with ``Renderer.sequence`` (in a
background thread two frames ahead, converted to uint8 on the device, so that blending,
paste-back and encoding of a frame overlap the next renders: ``nerfhead.render.ahead``);
optionally blend into the original crop (``--portrait``) and paste back into the full source
video (``--paste-back``); write H.264 + AAC through the bundled ffmpeg (temp file, renamed).

Frames are rendered at the run's training resolution (its camera); ``--portrait`` outputs the
original crop's size (the render is upscaled before blending) and ``--paste-back`` the source
video's size. Poses longer than the audio are truncated; shorter ones are extended by ``--pose-mode``
(``mirror``: ping-pong without jumps, the default; ``loop``: wrap around).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

# the library this command drives; the names stay importable from here for older callers
from nerfhead.render.renderer import (DatasetFrames, Renderer, StageTimes, driving_features,  # noqa: F401
                                      latent_lookup, pick_device, render_sequence, resize_to,
                                      to_uint8, torso_background, warn_if_silent,
                                      warn_missing_torso)

log = logging.getLogger("nerfhead.render")
#: what ``nerfhead`` prints after Ctrl-C (a partial video is not kept: nothing to resume from)
ON_INTERRUPT = ("interrupted; the partial video was not kept (its temporary file is removed), "
                "so rerunning the command renders from the first frame again")


def add_loading_arguments(p: argparse.ArgumentParser) -> None:
    """``--audio-encoder`` and ``--keep-floaters``, for every command that renders a run
    (render, evaluate, serve): how ``load_run`` loads it."""
    from nerfhead.train.checkpoint import AUDIO_ENCODERS

    p.add_argument("--audio-encoder", default="refitted", choices=AUDIO_ENCODERS,
                   help="refitted (default): the run's audio encoder, refitted for other voices "
                        "where training did that (train.voice_encoder_steps, `nerfhead run`'s "
                        "default); trained: the encoder as the speaker's own voice trained it, "
                        "which the refit keeps: compare the two on your own driving audio")
    p.add_argument("--keep-floaters", action="store_true",
                   help="render the occupancy grid as trained: by default the pieces of it apart "
                        "from the head (floaters: specks in empty space) are cleared on loading")
    from nerfhead.audio.level import LEVEL_CHOICES

    p.add_argument("--audio-level", default="match", choices=LEVEL_CHOICES,
                   help="match (default): new driving audio is scaled, for the features only, to "
                        "the speech level of the clip the run was trained on (a quieter or "
                        "louder recording would drive the mouth as if whispered or shouted: "
                        "docs/lipsync.md); keep: the features of the audio as given")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN", help="training run folder")
    p.add_argument("--audio", required=True,
                   help="driving audio: any audio or video file (its first audio stream)")
    p.add_argument("--audio-features", default=None,
                   help="precomputed features [N,T,C] .npy (needed for runs trained on 'precomputed')")
    p.add_argument("--out", default=None, help="output mp4, replaced if it exists (default "
                   "RUN/renders/<audio>.mp4, or <audio>-2.mp4 ... when that exists)")
    p.add_argument("--poses", default=None, choices=["train", "val", "smooth", "static", "audio"],
                   help="pose source of this speaker (default train); audio: head motion generated "
                        "from the driving audio by the speaker's head-motion model (docs/motion.md)")
    p.add_argument("--pose-file", default=None, help="poses from a transforms JSON or .npy [N,4,4]")
    p.add_argument("--pose-from", default=None, metavar="DATA2",
                   help="poses of another preprocessed clip, moved into this speaker's space")
    p.add_argument("--pose-mode", default="mirror", choices=["mirror", "loop"],
                   help="how poses are extended when the audio is longer (default mirror)")
    p.add_argument("--smooth-sigma", type=float, default=2.0, help="--poses smooth: Gaussian sigma in frames")
    p.add_argument("--portrait", action="store_true",
                   help="Portrait-Sync: blend the face into the original frame with the parsing face mask")
    p.add_argument("--paste-back", action="store_true",
                   help="paste the crop into the full-resolution source video (crop box from manifest.json)")
    p.add_argument("--source", default=None,
                   help="--paste-back: source video (default: the one preprocessed)")
    p.add_argument("--blend", default="feather", choices=["feather", "laplacian"],
                   help="--paste-back seam blend (default feather)")
    p.add_argument("--feather", type=int, default=16, help="--paste-back feather width in source pixels")
    p.add_argument("--no-torso", action="store_true", help="head over the background plate only")
    p.add_argument("--gt-torso", action="store_true",
                   help="for a run without a trained torso: put the dataset's torso image "
                        "(torso_imgs) of each pose's frame behind the head (needs poses from the "
                        "dataset: train, val or smooth)")
    p.add_argument("--data", default=None, help="dataset folder (default: the run's)")
    p.add_argument("--checkpoint", default=None, help="checkpoint file (default: the run's latest)")
    add_loading_arguments(p)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:i]")
    p.add_argument("--max-frames", type=int, default=None, help="render at most this many frames")
    p.add_argument("--ahead", type=int, default=2,
                   help="frames rendered ahead of the video encoder, in a background thread "
                        "(default 2; 0: render and encode in turn)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: the cores not busy with other processes, "
                        "from the 1-minute load average, at least 1; 0: torch's default)")
    from nerfhead.motion.cli import add_render_arguments

    add_render_arguments(p)


def render_video(args) -> Path:
    from nerfhead.render.compositing import paste_back
    from nerfhead.fileio import check_output_file, clean_stale_temps, require_space, unused_path
    from nerfhead.render.video import SourceFrames, VideoWriter
    from nerfhead.threads import set_torch_threads

    if args.out:  # before any work: a folder or an unwritable place fails now, not at the end
        check_output_file(args.out, "nerfhead render --out")
        refuse_input_as_output(args, Path(args.out))
    set_torch_threads(getattr(args, "threads", None), pick_device(args.device), "nerfhead render")
    renderer = Renderer.load(args.run_dir, args.device, args.checkpoint, args.data, args.audio_encoder,
                             not args.keep_floaters)
    run, frames, data_dir = renderer.run, renderer.frames, renderer.data_dir
    gt_torso = getattr(args, "gt_torso", False)
    warn_missing_torso(run, args.no_torso, gt_torso)
    feats, samples = driving_features(run, args.audio, args.audio_features, args.max_frames,
                                      level=args.audio_level, data_dir=data_dir)
    from nerfhead.motion.cli import render_inputs_from_args

    inputs = render_inputs_from_args(args, run, data_dir, len(feats), samples)
    seq = inputs.seq
    if args.portrait and not seq.tied_to_frames:
        raise SystemExit(f"--portrait blends into the frames the poses came from; poses "
                         f"'{seq.source}' are not tied to frames of {data_dir} (use --poses "
                         f"train, val or smooth)")
    if gt_torso and not seq.tied_to_frames:
        raise SystemExit(f"--gt-torso uses the torso image of each pose's frame; poses "
                         f"'{seq.source}' are not tied to frames of {data_dir} (use --poses "
                         f"train, val or smooth)")
    if args.out:
        out = Path(args.out)
    else:  # a default name never replaces an earlier render (another a/talk.mp3 after b/talk.wav)
        out = unused_path(Path(run.run_dir) / "renders" / f"{Path(args.audio).stem}.mp4")
    check_output_file(out, "nerfhead render --out")
    refuse_input_as_output(args, out)
    clean_stale_temps(out.parent, depth=0)
    # H.264 at crf 18 stays well under 1/10 of the raw frames; the encoder's temporaries double it
    require_space(out.parent, 2 * len(feats) * (run.camera.height * run.camera.width * 3 // 10 + 4096),
                  out.name)
    source = None
    if args.paste_back:
        box = frames.crop_box()
        video = frames.manifest.get("video", {})
        src_path = args.source or video.get("source")
        if not src_path:
            raise SystemExit(f"--paste-back: no --source and {data_dir}/manifest.json names none")
        source = SourceFrames(src_path, fps=float(video.get("fps", 25)),
                              start=float(video.get("start_seconds", 0.0)))
    log.info("rendering %d frames (%s poses, %s) to %s", len(feats), seq.source,
             "portrait" if args.portrait else "plain", out)
    t_start = time.perf_counter()
    times = StageTimes()
    with VideoWriter(out, fps=25, audio=samples, sr=16000) as writer:
        for i, _, crop in renderer.sequence(feats, seq, args.portrait, not args.no_torso,
                                            times=times, gt_torso=gt_torso,
                                            expressions=inputs.expressions,
                                            mean_latent=inputs.mean_latent,
                                            ahead=getattr(args, "ahead", 2)):
            t0 = time.perf_counter()
            if source is not None:
                frame = source[int(seq.frame_ids[i])]
                crop = paste_back(frame, crop, box, feather=args.feather, method=args.blend)
            t1 = time.perf_counter()
            writer.write(crop)
            times.add("paste-back", t1 - t0)
            times.add("encode", time.perf_counter() - t1)
    dt = time.perf_counter() - t_start
    log.info("wrote %s: %d frames in %.1f s (%.2f FPS); seconds per stage: %s", out, writer.frames,
             dt, writer.frames / dt, {k: round(v, 2) for k, v in times.seconds.items()})
    return out


def refuse_input_as_output(args, out: Path) -> None:
    """The video is written over ``out`` at the end: refuse an ``out`` that is one of the
    inputs (``--audio talk.mp4 --out talk.mp4`` replaced the speech with the render)."""
    import errno

    from nerfhead.fileio import OutputLocationError

    if not out.exists():
        return
    for flag in ("audio", "source", "pose_file", "motion", "blink", "audio_features"):
        given = getattr(args, flag, None)
        if given and Path(given).exists() and out.samefile(given):
            raise OutputLocationError(
                errno.EEXIST, f"--out {out} is the --{flag.replace('_', '-')} "
                f"file: the render would replace it. Give another --out, e.g. "
                f"{out.with_name(out.stem + '_render.mp4')}")


def known_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean bad input (named in their message), reported without a traceback."""
    from nerfhead.audio.features import AudioError
    from nerfhead.data.dataset import DatasetError
    from nerfhead.fileio import DiskFullError, OutputLocationError
    from nerfhead.train.checkpoint import CheckpointError
    from nerfhead.weights import WeightsUnavailable

    # WeightsUnavailable: a run on HuBERT features rendered where its weights cannot be had
    return (AudioError, DatasetError, CheckpointError, FileNotFoundError, ValueError,
            OutputLocationError, DiskFullError, WeightsUnavailable)


def run(args) -> int:
    import sys

    try:
        out = render_video(args)
    except known_errors() as e:
        print(f"nerfhead render: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0
