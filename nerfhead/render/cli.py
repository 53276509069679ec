"""``nerfhead render RUN --audio X``: a trained model speaks new audio, written to mp4.

Steps: load the run (``nerfhead.train.checkpoint.load_run``); decode the driving audio and
compute its features of the run's kind (``nerfhead.audio.features.extract``); build the pose
sequence (``nerfhead.render.poses``); render every frame with ``TalkingHead.render_frame``;
optionally blend into the original crop (``--portrait``) and paste back into the full source
video (``--paste-back``); write H.264 + AAC through the bundled ffmpeg (temp file, renamed).

Frames are rendered at the run's training resolution (its camera); ``--portrait`` outputs the
original crop's size (the render is upscaled before blending) and ``--paste-back`` the source
video's size. Poses longer than the audio are truncated; shorter ones are extended by ``--pose-mode``
(``mirror``: ping-pong without jumps, the default; ``loop``: wrap around).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger("nerfhead.render")
#: what ``nerfhead`` prints after Ctrl-C (a partial video is not kept: nothing to resume from)
ON_INTERRUPT = ("interrupted; the partial video was not kept (its temporary file is removed), "
                "so rerunning the command renders from the first frame again")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN", help="training run folder")
    p.add_argument("--audio", required=True,
                   help="driving audio: any audio or video file (its first audio stream)")
    p.add_argument("--audio-features", default=None,
                   help="precomputed features [N,T,C] .npy (needed for runs trained on 'precomputed')")
    p.add_argument("--out", default=None, help="output mp4 (default RUN/renders/<audio>.mp4)")
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
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:i]")
    p.add_argument("--max-frames", type=int, default=None, help="render at most this many frames")
    from nerfhead.motion.cli import add_render_arguments

    add_render_arguments(p)


def pick_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: no CUDA device is available here")
    return name


class DatasetFrames:
    """Per-frame files of a dataset folder, read on demand: original crops, face masks,
    blendshapes, GT images, and the manifest's crop box. Missing files raise naming them."""

    def __init__(self, data_dir):
        self.root = Path(data_dir)
        bs = self.root / "bs.npy"
        self.blendshapes = np.load(bs, mmap_mode="r") if bs.is_file() else None
        man = self.root / "manifest.json"
        self.manifest = json.loads(man.read_text()) if man.is_file() else {}

    def _image(self, sub: str, name: str, ext: str, flags=None):
        import cv2

        path = self.root / sub / f"{name}.{ext}"
        img = cv2.imread(str(path), cv2.IMREAD_COLOR if flags is None else flags)
        if img is None:
            raise FileNotFoundError(f"{path} is missing or unreadable")
        return img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)

    def original(self, i: int) -> np.ndarray:
        return self._image("ori_imgs", str(int(i)), "jpg")

    def gt(self, i: int) -> np.ndarray:
        """``gt_imgs/<i>.jpg`` (background replaced by the plate), else the original crop."""
        if (self.root / "gt_imgs" / f"{int(i)}.jpg").is_file():
            return self._image("gt_imgs", str(int(i)), "jpg")
        return self.original(i)

    def torso(self, i: int) -> np.ndarray | None:
        """``torso_imgs/<i>.png`` as RGBA uint8, or None when the dataset has none."""
        import cv2

        if not (self.root / "torso_imgs" / f"{int(i)}.png").is_file():
            return None
        img = cv2.imread(str(self.root / "torso_imgs" / f"{int(i)}.png"), cv2.IMREAD_UNCHANGED)
        if img is None or img.ndim != 3 or img.shape[2] != 4:
            raise FileNotFoundError(f"{self.root / 'torso_imgs' / f'{int(i)}.png'} is not an RGBA image")
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA)

    def face_mask(self, i: int) -> np.ndarray:
        import cv2

        return self._image("parsing", f"{int(i)}_face", "png", cv2.IMREAD_GRAYSCALE)

    def expression(self, i: int) -> np.ndarray:
        if self.blendshapes is None or i >= len(self.blendshapes):
            return np.zeros(52, np.float32)
        return np.asarray(self.blendshapes[int(i)], np.float32)

    def crop_box(self) -> list[float]:
        box = self.manifest.get("video", {}).get("crop_box") or self.manifest.get("crop_box")
        if not box or len(box) != 3:
            raise ValueError(f"{self.root / 'manifest.json'}: no crop box [x0, y0, side] "
                             f"recorded; --paste-back needs it")
        return box


def resize_to(img: np.ndarray, h: int, w: int) -> np.ndarray:
    import cv2

    if img.shape[:2] == (h, w):
        return img
    interp = cv2.INTER_AREA if img.shape[0] > h else cv2.INTER_LINEAR
    return cv2.resize(img, (w, h), interpolation=interp)


def to_uint8(t) -> np.ndarray:
    arr = t.detach().float().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)
    return np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)


def latent_lookup(data_dir, num_latents: int) -> dict[int, int]:
    """img_id -> per-frame latent row: the position of the frame in the train split."""
    from nerfhead.render.poses import dataset_poses

    _, ids = dataset_poses(data_dir, "train")
    return {int(f): k for k, f in enumerate(ids) if k < num_latents}


@dataclass
class StageTimes:
    """Accumulated seconds per stage, for progress logs and ``bench``."""

    seconds: dict = field(default_factory=dict)

    def add(self, name: str, dt: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + dt


def render_sequence(run, audio_feats, seq, frames: DatasetFrames, portrait=False, with_torso=True,
                    camera=None, times: StageTimes | None = None, progress=True, gt_torso=False,
                    expressions=None, mean_latent=False):
    """Yield (frame index, rendered uint8 [H, W, 3], composited uint8 crop) for ``seq``.

    Without --portrait the composited crop is the render resized to the original crop size.
    ``gt_torso``: the head goes over the frame's torso image on the plate instead of the plate.
    ``expressions`` [N, 52] replaces the frames' blendshapes; ``mean_latent`` the frames'
    latents (``nerfhead.motion.controls``).
    """
    import torch
    from tqdm import tqdm

    from nerfhead.render.compositing import portrait_blend

    model = run.model
    lut = latent_lookup(frames.root, model.latents.shape[0])
    times = times or StageTimes()
    n = min(len(seq), len(audio_feats))
    for i in tqdm(range(n), desc="render", unit="frame", disable=not progress):
        fid = int(seq.frame_ids[i])
        t0 = time.perf_counter()
        bg = torso_background(model, frames, fid, camera) if gt_torso else None
        expr = frames.expression(fid) if expressions is None else expressions[i]
        out = model.render_frame(seq.c2w[i], audio_feats, i, expr,
                                 latent_index=None if mean_latent else lut.get(fid), bg=bg,
                                 with_torso=with_torso, camera=camera)
        rgb = to_uint8(out["rgb"])
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        times.add("render", t1 - t0)
        if portrait:
            orig = frames.original(fid)
            mask = frames.face_mask(fid)
            crop = portrait_blend(resize_to(rgb, *orig.shape[:2]), orig, mask)
        else:
            crop = rgb
        times.add("composite", time.perf_counter() - t1)
        yield i, rgb, crop


def torso_background(model, frames: DatasetFrames, fid: int, camera=None) -> np.ndarray:
    """The frame's torso image (torso_imgs) over the run's plate, float [H, W, 3] in [0, 1]."""
    cam = camera or model.camera
    plate = model.background.detach().cpu().numpy()
    plate = resize_to(plate, cam.height, cam.width)
    torso = frames.torso(fid)
    if torso is None:
        raise FileNotFoundError(f"--gt-torso: {frames.root / 'torso_imgs' / f'{fid}.png'} is "
                                "missing (the dataset has no torso images)")
    t = resize_to(torso, cam.height, cam.width).astype(np.float32) / 255.0
    return t[..., :3] * t[..., 3:] + plate * (1 - t[..., 3:])


def warn_missing_torso(run, no_torso: bool, gt_torso: bool) -> str | None:
    """The warning for a run whose torso was never trained (None when there is nothing to say)."""
    model = run.model
    if no_torso or gt_torso or (model.torso is not None and bool(model.has_torso)):
        return None
    msg = (f"{run.run_dir} has no trained torso (stage {run.stage}): the video shows the head "
           "floating over the background plate with no neck or body. Train the torso stage "
           "(`nerfhead train DATA --config torso --init RUN`), or pass --gt-torso to put the "
           "dataset's torso images behind the head, or --no-torso to silence this warning.")
    log.warning(msg)
    return msg


def driving_features(run, audio_path, features_path=None, max_frames=None):
    """(features [N, T, C] of the run's kind, samples float32 at 16 kHz)."""
    from nerfhead.audio.features import extract, load_audio

    samples = load_audio(audio_path)
    warn_if_silent(samples, audio_path)
    kind = run.model.audio_kind
    if features_path is not None:
        feats = np.load(features_path).astype(np.float32)
        if feats.ndim == 2:
            feats = feats[:, None, :]
    elif kind == "precomputed":
        raise SystemExit(f"{run.run_dir}: this run was trained on precomputed features "
                         f"(aud.npy); pass --audio-features for {audio_path}")
    else:
        feats = extract(samples, kind=kind)
    if max_frames:
        feats = feats[:max_frames]
    if len(feats) == 0:
        raise SystemExit(f"{audio_path}: the audio is shorter than one video frame")
    return feats, samples


def warn_if_silent(samples, audio_path) -> None:
    """Warn when the driving audio has no speech, or long silent stretches (the face will not talk there)."""
    from nerfhead.audio.vad import find_speech, format_ranges

    report = find_speech(samples)
    if report.speech_seconds == 0:
        log.warning("%s: no speech found in its %.1f s (%s): the rendered mouth will not move",
                    audio_path, report.seconds, report.detector)
    elif gaps := report.silent_longer_than(2.0):
        log.warning("%s: no speech in %s (%s)", audio_path, format_ranges(gaps), report.detector)


def render_video(args) -> Path:
    from nerfhead.render.compositing import paste_back
    from nerfhead.fileio import check_output_file, clean_stale_temps, require_space
    from nerfhead.render.video import SourceFrames, VideoWriter
    from nerfhead.train.checkpoint import load_run, run_dataset

    if args.out:  # before any work: a folder or an unwritable place fails now, not at the end
        check_output_file(args.out, "nerfhead render --out")
    device = pick_device(args.device)
    run = load_run(args.run_dir, device=device, checkpoint=args.checkpoint)
    data_dir = run_dataset(run, args.data)
    frames = DatasetFrames(data_dir)
    gt_torso = getattr(args, "gt_torso", False)
    warn_missing_torso(run, args.no_torso, gt_torso)
    feats, samples = driving_features(run, args.audio, args.audio_features, args.max_frames)
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
    out = Path(args.out) if args.out else Path(run.run_dir) / "renders" / f"{Path(args.audio).stem}.mp4"
    check_output_file(out, "nerfhead render --out")
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
        for i, _, crop in render_sequence(run, feats, seq, frames, args.portrait, not args.no_torso,
                                          times=times, gt_torso=gt_torso,
                                          expressions=inputs.expressions,
                                          mean_latent=inputs.mean_latent):
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


def known_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean bad input (named in their message), reported without a traceback."""
    from nerfhead.audio.features import AudioError
    from nerfhead.data.dataset import DatasetError
    from nerfhead.fileio import DiskFullError, OutputLocationError
    from nerfhead.train.checkpoint import CheckpointError

    return (AudioError, DatasetError, CheckpointError, FileNotFoundError, ValueError,
            OutputLocationError, DiskFullError)


def run(args) -> int:
    import sys

    try:
        out = render_video(args)
    except known_errors() as e:
        print(f"nerfhead render: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0
