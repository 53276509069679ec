"""``nerfhead evaluate RUN``: metrics on frames the model never trained on.

Default: the validation split (last 1/11 of the clip) of the run's dataset, driven by the
dataset's own audio features for those frames and rendered with their tracked poses.
``--audio-from CLIP``: another preprocessed clip of the same speaker; every frame of it is
rendered with its audio features, its poses and its camera, and compared with its frames.
``--voice-shift SEMITONES``: the same frames driven by their speech in another voice (pitch
and formants shifted, timing kept: ``nerfhead.audio.voice``), still scored against the real
mouth: how well the model follows a voice other than the speaker's, with ground truth.
``--speech WAV``: the same frames driven by WAV, the clip's words at their own times in
another voice (``nerfhead respeak``: a speech synthesiser's voices, each word fitted into the
span the speaker took), scored against the real mouth: lip sync for other speakers, with
ground truth.

Renders are made at the run's training resolution; GT, originals and masks are resized to it
(INTER_AREA). Landmarks for LMD are detected on frames resized to 512x512. Outputs in
``--out`` (default RUN/eval): metrics.json, report.md (lip sync first), per_frame.png,
frame_<id>.png, mouth_strip.png (mouth crops over one second of speech, GT above render),
mouth_opening.png (the rendered and GT mouth-opening curves against time).

Composites: a run with a trained torso is scored as ``nerfhead render`` delivers it (head and
torso over the plate). A head-only run (head or lips stage) is scored, as ER-NeRF / SyncTalk
score the head, over the GT torso image of each frame; the report also scores the image a user
of ``nerfhead render`` gets from such a run (the head over the plate, no body) and says which
is which.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from nerfhead.threads import set_torch_threads

log = logging.getLogger("nerfhead.eval")
#: what ``nerfhead`` prints after Ctrl-C (results are written at the end only)
ON_INTERRUPT = "interrupted; nothing was written, so rerunning the command evaluates from the start"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN", help="training run folder")
    p.add_argument("--data", default=None, help="dataset folder (default: the run's)")
    p.add_argument("--audio-from", default=None, metavar="CLIP",
                   help="evaluate on another preprocessed clip of the same speaker (its audio, "
                        "poses and frames)")
    p.add_argument("--drive", default=None, metavar="AUDIO",
                   help="instead of comparing with GT frames: render the run speaking AUDIO "
                        "(any speaker) and report how its mouth follows it (energy proxy, "
                        "opening spread against the speaker's footage); a video of someone "
                        "speaking is also a reference: the rendered mouth opening is "
                        "correlated with that speaker's; writes drive.mp4")
    p.add_argument("--voice-shift", type=float, default=0.0, metavar="SEMITONES",
                   help="drive the evaluated frames by their own speech in another voice (pitch "
                        "and formants shifted by SEMITONES, e.g. 4 or -3; timing kept) and "
                        "score them against the real frames as usual: lip sync for other "
                        "voices, with ground truth")
    p.add_argument("--speech", default=None, metavar="WAV",
                   help="drive the evaluated frames by WAV instead of the clip's own audio: the "
                        "clip's words at the same times in another voice (`nerfhead respeak`), "
                        "of the clip's length; scored against the real frames as usual")
    p.add_argument("--drive-poses", default="val", choices=["train", "val", "smooth"],
                   help="--drive: pose source of the run's dataset (default val)")
    p.add_argument("--out", default=None, help="output folder (default RUN/eval, or "
                                               "RUN/eval_drive_<audio> with --drive)")
    p.add_argument("--max-frames", type=int, default=None, help="evaluate at most this many frames")
    p.add_argument("--previews", type=int, default=4, help="GT|render|error PNGs to write")
    p.add_argument("--no-torso", action="store_true", help="render without the torso")
    p.add_argument("--checkpoint", default=None, help="checkpoint (default: the run's latest)")
    from nerfhead.render.cli import add_loading_arguments

    add_loading_arguments(p)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:i]")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: the cores not busy with other processes, "
                        "from the 1-minute load average, at least 1; 0: torch's default, one "
                        "per core whoever else runs)")
    from nerfhead.motion.jitter import add_arguments as add_jitter_arguments

    add_jitter_arguments(p)
    p.add_argument("--syncnet", default=None,
                   help="SyncNet weights (syncnet_v2.model) for LSE-C/LSE-D; default: "
                        "nerfhead.weights lookup, reported unavailable when absent")


def eval_frames(data_dir: Path, clip: bool):
    """(c2w, camera, img_ids, aud_ids, split name) of the frames to evaluate."""
    from nerfhead.data.dataset import read_transforms

    if not clip:
        c2w, cam, ids, aud = read_transforms(data_dir / "transforms_val.json")
        return c2w, cam, ids, aud, "val"
    parts = [read_transforms(data_dir / f"transforms_{s}.json") for s in ("train", "val")]
    return (np.concatenate([p[0] for p in parts]), parts[0][1], np.concatenate([p[2] for p in parts]),
            np.concatenate([p[3] for p in parts]), "all (--audio-from clip)")


def load_lpips(device):
    from nerfhead.eval.lpips import LPIPS, LPIPSUnavailable

    try:
        return LPIPS.load(device=device), None
    except LPIPSUnavailable as e:
        return None, str(e)


def load_detector():
    from nerfhead.eval.lipsync import FaceLandmarks
    from nerfhead.weights import WeightsUnavailable

    try:
        return FaceLandmarks(), None
    except (WeightsUnavailable, ImportError, RuntimeError) as e:
        return None, str(e)


def syncnet_weights_found(path) -> bool:
    from nerfhead.weights import WeightsUnavailable, resolve

    try:
        resolve("syncnet", path=path)
        return True
    except WeightsUnavailable:
        return False


def clip_audio(data_dir: Path, voice_shift: float = 0.0, speech: str | None = None
               ) -> np.ndarray | None:
    """The clip's aud.wav, in another voice when ``voice_shift`` (semitones) is not 0, or
    ``speech`` (a file of the clip's length: its words said by another voice) instead."""
    from nerfhead.audio.features import AudioError, load_audio

    wav = data_dir / "aud.wav"
    option = "--speech" if speech else "--voice-shift"
    if not wav.is_file():
        if voice_shift or speech:
            raise SystemExit(f"nerfhead evaluate {option}: {wav} not found; the other voice is "
                             "made from, or measured against, the clip's audio track")
        return None
    samples = load_audio(wav)
    if speech:
        other = load_audio(speech)
        per_frame = 16000 // 25
        if abs(len(other) - len(samples)) > per_frame:
            raise AudioError(f"--speech {speech} lasts {len(other) / 16000:.2f} s "
                             f"but the clip's audio ({wav}) {len(samples) / 16000:.2f} s: it must "
                             "say the clip's words at the clip's times (`nerfhead respeak WORDS "
                             f"--like {data_dir}` makes such a file)")
        return np.pad(other, (0, max(0, len(samples) - len(other))))[:len(samples)]
    if voice_shift:
        from nerfhead.audio.voice import shift_voice

        samples = shift_voice(samples, voice_shift)
    return samples


def heard_features(data_dir: Path, kind: str, feats: np.ndarray, samples: np.ndarray | None, args,
                   run) -> tuple[np.ndarray, str | None]:
    """The features the run hears for audio other than its training clip's: ``samples`` (another
    voice), else the clip's aud.wav (``--audio-from``), brought to the training clip's speech
    level (``--audio-level match``, ``nerfhead.audio.level``); ``feats``, the clip's stored
    features, where its level already matches. Returns them and what was done to the level."""
    from nerfhead.audio.features import KINDS
    from nerfhead.audio.level import bring_to_training_level

    given = samples
    level = getattr(args, "audio_level", "match")
    if given is None:
        if level == "keep":  # the clip's stored features are the audio as given
            return feats, f"{data_dir / 'aud.wav'}: level kept as given"
        if kind not in KINDS or not (data_dir / "aud.wav").is_file():
            return feats, None
        from nerfhead.audio.features import load_audio

        given = load_audio(data_dir / "aud.wav")
    source = str(getattr(args, "speech", None) or data_dir / "aud.wav")
    heard, match = bring_to_training_level(given, Path(args.data or run.dataset_dir), level,
                                           source=source)
    if samples is None and not match.applied:
        return feats, match.note
    return voice_features(data_dir, kind, len(feats), heard), match.note


def voice_features(data_dir: Path, kind: str, num_frames: int, samples: np.ndarray) -> np.ndarray:
    """``kind`` features [num_frames, 16, C] of ``samples`` on the clip's frame clock."""
    import json

    from nerfhead.audio.features import KINDS, extract

    if kind not in KINDS:
        raise SystemExit(f"nerfhead evaluate --voice-shift/--speech: the run reads {kind!r} audio features, "
                         "which nerfhead cannot compute from a waveform; it works for runs on "
                         f"{', '.join(KINDS)}")
    fps = 25.0
    if (data_dir / "manifest.json").is_file():
        manifest = json.loads((data_dir / "manifest.json").read_text())
        fps = float(manifest.get("video", {}).get("fps", fps))
    return extract(samples, kind=kind, num_frames=num_frames, fps=fps)


def val_audio(data_dir: Path, aud_ids: np.ndarray, samples: np.ndarray | None = None
              ) -> np.ndarray | None:
    """The waveform that drives the evaluated frames (aud.wav from the first aud_id on;
    ``samples``: the clip's audio already read, e.g. in another voice)."""
    if samples is None:
        samples = clip_audio(data_dir)
    if samples is None:
        return None
    per_frame = 16000 // 25
    if not np.all(np.diff(aud_ids) == 1):
        log.warning("evaluated frames are not contiguous in the audio; lip-sync proxy uses "
                    "the audio of each frame stitched in order")
        return np.concatenate([samples[a * per_frame:(a + 1) * per_frame] for a in aud_ids])
    return samples[int(aud_ids[0]) * per_frame:(int(aud_ids[-1]) + 1) * per_frame]


def strip_frame_ids(audio: np.ndarray | None, ids: np.ndarray) -> tuple[int, ...]:
    """Frame ids of the second of speech shown in mouth_strip.png (chosen from the audio
    alone, before rendering, so only those frames are kept)."""
    from nerfhead.eval.lipsync import FPS, audio_energy_per_frame, speech_frames, speech_window

    if audio is None or len(ids) == 0:
        return ()
    energy = audio_energy_per_frame(audio, len(ids))
    start = speech_window(energy, speech_frames(energy), min(FPS, len(ids)))
    return () if start is None else tuple(int(f) for f in ids[start:start + FPS])


def composite_description(gt_torso: bool, clip: bool, no_torso: bool) -> str:
    plate = "the clip's bc.jpg" if clip else "the run's bc.jpg"
    if not gt_torso:
        return f"head and torso rendered by the model, over {plate} (what `nerfhead render` delivers)"
    why = "--no-torso" if no_torso else "the run has no trained torso"
    return (f"rendered head over the frame's GT torso image (torso_imgs) on {plate} ({why}); "
            "as ER-NeRF / SyncTalk judge the head stage. No user receives this image: the GT "
            "torso comes from the very frames being scored")


def delivered_description(gt_torso: bool, clip: bool, no_torso: bool) -> str:
    plate = "the clip's bc.jpg" if clip else "the run's bc.jpg"
    if not gt_torso:
        return "the composite measured above"
    return (f"the rendered head over {plate} with no body ("
            + ("--no-torso" if no_torso else "no trained torso: train the torso stage, or "
               "`nerfhead render --gt-torso` to put the dataset's torso images behind the head")
            + ")")


def evaluate(args) -> dict:
    """Render the evaluated frames, measure them and write the report (see the module's doc).
    A failure leaves no empty output folder behind (``fileio.output_dir``)."""
    import contextlib

    from nerfhead.fileio import output_dir

    with contextlib.ExitStack() as made:
        if args.out:  # before any work: an unwritable place fails now, not after every frame
            made.enter_context(output_dir(args.out, "nerfhead evaluate --out"))
        return _evaluate(args, made)


def _evaluate(args, made) -> dict:
    from nerfhead.data.dataset import load_audio_features
    from nerfhead.eval.report import SequenceEvaluator, write_report
    from nerfhead.eval.lipsync import syncnet_scores
    from nerfhead.render.cli import DatasetFrames, pick_device, resize_to, to_uint8
    from nerfhead.data.dataset import check_dataset_dir
    from nerfhead.fileio import output_dir
    from nerfhead.train.checkpoint import load_run, run_dataset
    from tqdm import tqdm

    device = pick_device(args.device)
    set_torch_threads(getattr(args, "threads", None), device, "nerfhead evaluate")
    run = load_run(args.run_dir, device=device, checkpoint=args.checkpoint,
                   audio_encoder=args.audio_encoder, prune_floaters=not args.keep_floaters)
    made.enter_context(output_dir(Path(args.out) if args.out else Path(run.run_dir) / "eval",
                                  "nerfhead evaluate --out"))
    model = run.model
    clip = args.audio_from is not None
    data_dir = check_dataset_dir(args.audio_from) if clip else run_dataset(run, args.data)
    c2w, cam, ids, aud_ids, split = eval_frames(data_dir, clip)
    feats, kind = load_audio_features(data_dir, model.audio_kind)
    shift = float(getattr(args, "voice_shift", 0.0) or 0.0)
    speech = getattr(args, "speech", None)
    samples = clip_audio(data_dir, shift, speech) if shift or speech else None
    level_note = None
    if samples is not None or clip:  # audio other than the training clip's own
        feats, level_note = heard_features(data_dir, kind, feats, samples, args, run)
    if args.max_frames:
        c2w, ids, aud_ids = c2w[:args.max_frames], ids[:args.max_frames], aud_ids[:args.max_frames]
    if aud_ids.max() >= len(feats):
        raise SystemExit(f"{data_dir}: audio features have {len(feats)} frames but frame "
                         f"{int(aud_ids.max())} is evaluated")
    # render at the training resolution with this clip's intrinsics
    camera = cam.scaled(run.camera.height, run.camera.width)
    H, W = camera.height, camera.width
    frames = DatasetFrames(data_dir)
    plate = None
    if clip and (data_dir / "bc.jpg").is_file():  # this clip's own background plate
        import cv2

        plate = cv2.cvtColor(cv2.imread(str(data_dir / "bc.jpg")), cv2.COLOR_BGR2RGB)
        plate = resize_to(plate, H, W).astype(np.float32) / 255.0
    # A run without a trained torso (head or lips stage) is judged as ER-NeRF/SyncTalk judge
    # the head: composited over the GT torso image of the frame on the plate; otherwise the
    # full-frame metric would mostly measure the missing torso.
    gt_torso = not (model.torso is not None and bool(model.has_torso)) or args.no_torso
    if gt_torso and plate is None:
        plate = model.background.detach().cpu().numpy()
        if plate.shape[:2] != (H, W):
            plate = resize_to(plate, H, W)
    lpips, lpips_reason = load_lpips(device)
    detector, det_reason = load_detector()
    if detector is None:
        log.warning("landmark detector unavailable (%s): no LMD or lip-sync proxy", det_reason)
    k = min(args.previews, len(ids))
    preview = tuple(int(ids[j]) for j in np.linspace(0, len(ids) - 1, k).astype(int)) if k else ()
    audio = val_audio(data_dir, aud_ids, samples)
    strip = strip_frame_ids(audio, ids)
    ev = SequenceEvaluator(detector, lpips, lpips_reason, preview, det_reason, strip_frames=strip)
    renders = [] if syncnet_weights_found(args.syncnet) else None  # kept only for SyncNet
    feats_seq = np.asarray(feats)[aud_ids]  # the audio of the evaluated frames, in order
    for j in tqdm(range(len(ids)), desc="evaluate", unit="frame"):
        fid = int(ids[j])
        # frames never trained on have no per-frame latent: the mean latent is used.
        # One render over the plate is what `nerfhead render` delivers; the composite
        # measured puts the same head over the GT torso when no torso was trained.
        out = model.render_frame(c2w[j], feats_seq, j, frames.expression(fid), latent_index=None,
                                 bg=plate, with_torso=not args.no_torso, camera=camera)
        delivered = to_uint8(out["rgb"])
        render, torso = delivered, frames.torso(fid) if gt_torso else None
        if torso is not None:
            t = resize_to(torso, H, W).astype(np.float32) / 255.0
            bg = t[..., :3] * t[..., 3:] + plate * (1 - t[..., 3:])
            alpha = out["head_alpha"].cpu().numpy()[..., None]
            render = to_uint8(np.clip(out["head_rgb"].cpu().numpy() + (1 - alpha) * bg, 0, 1))
        gt = resize_to(frames.gt(fid), H, W)
        original = resize_to(frames.original(fid), H, W)
        mask = resize_to(frames.face_mask(fid), H, W)
        ev.add(fid, render, gt, original, mask, delivered=delivered if torso is not None else None)
        if renders is not None:
            renders.append(render)
    info = {"run": str(run.run_dir), "step": run.step, "stage": run.stage, "data": str(data_dir),
            "split": split, "resolution": [H, W], "device": device, "audio_kind": kind,
            "audio_encoder": run.audio_encoder_note(),
            "floaters": run.floaters_note(),
            "torso": ("GT torso image over the plate (no trained torso)" if gt_torso
                      else "rendered by the torso field"),
            "composite": composite_description(gt_torso, clip, args.no_torso),
            "delivered_composite": delivered_description(gt_torso, clip, args.no_torso),
            "audio": (f"{speech} (--speech: the clip's words in another voice; features {kind}) "
                      f"for the evaluated frames, scored against the frames of {data_dir}"
                      if speech else
                      f"{data_dir / 'aud.wav'} (features {kind}) for the evaluated frames"
                      + (f", in another voice: pitch and formants shifted {shift:+g} semitones "
                         "(--voice-shift)" if shift else "")),
            "audio_level": level_note}
    result = ev.finish(audio, info)
    result["syncnet"] = syncnet_scores(renders or [], audio, args.syncnet, device,
                                       landmarks=ev.render_landmarks)
    from nerfhead.motion.jitter import evaluate_jitter

    result["jitter"] = evaluate_jitter(model, c2w, feats_seq, [frames.expression(int(f)) for f in ids],
                                       camera, detector, ev.render_landmarks, ev.gt_landmarks,
                                       data_dir, run, audio, [s for s in args.jitter_sources.split(",")
                                                              if s], args.jitter_frames,
                                       detector_reason=det_reason)
    if detector is not None:
        detector.close()
    out_dir = Path(args.out) if args.out else Path(run.run_dir) / "eval"
    return write_report(result, ev.previews, out_dir, ev.strip)


def drive_run(args) -> dict:
    """``--drive AUDIO``: see ``nerfhead.eval.drive``."""
    from nerfhead.eval.drive import drive
    from nerfhead.fileio import output_dir
    from nerfhead.render.cli import pick_device
    from nerfhead.train.checkpoint import load_run

    device = pick_device(args.device)
    set_torch_threads(getattr(args, "threads", None), device, "nerfhead evaluate --drive")
    run = load_run(args.run_dir, device=device, checkpoint=args.checkpoint,
                   audio_encoder=args.audio_encoder, prune_floaters=not args.keep_floaters)
    detector, reason = load_detector()
    if detector is None:  # missing weights, as any missing input: exit 2 with the cause
        from nerfhead.weights import WeightsUnavailable

        raise WeightsUnavailable(f"it needs the face landmark detector: {reason}")
    out = Path(args.out) if args.out else Path(run.run_dir) / f"eval_drive_{Path(args.drive).stem}"
    try:
        with output_dir(out, "nerfhead evaluate --drive --out"):  # no empty folder if it fails
            return drive(run, args.drive, Path(args.data or run.dataset_dir), out,
                         poses=args.drive_poses, max_frames=args.max_frames, detector=detector,
                         level=getattr(args, "audio_level", "match"))
    finally:
        detector.close()


def run(args) -> int:
    import sys

    from nerfhead.render.cli import known_errors

    if args.drive and (getattr(args, "voice_shift", 0.0) or getattr(args, "speech", None)):
        print("nerfhead evaluate: --voice-shift and --speech change the voice of the evaluated "
              "clip's own speech (scored against its frames); --drive already brings another "
              "voice. Use one of them", file=sys.stderr)
        return 2
    if getattr(args, "voice_shift", 0.0) and getattr(args, "speech", None):
        print("nerfhead evaluate: --speech already replaces the clip's speech; shift the voice "
              "of that file beforehand, or give one of --speech and --voice-shift", file=sys.stderr)
        return 2
    if args.drive:
        try:
            r = drive_run(args)
        except known_errors() as e:
            print(f"nerfhead evaluate --drive: {e}", file=sys.stderr)
            return 2
        z = r["lipsync_proxy"].get("zero_offset_correlation")
        print(f"{r['frames']} frames driven by {args.drive}: energy proxy at offset 0 "
              f"{'n/a' if z is None else f'{z:.3f}'}, opening spread "
              f"{r['render_opening']['std']} (speaker {r['speaker_opening_std']})")
        if r.get("footage"):
            c = r["footage"]["opening_correlation"]
            o = r["footage"].get("opening_by_offset") or {}
            best = ("" if o.get("best_offset") is None else
                    f" ({o['best_correlation']:.3f} at its best offset, {o['best_offset']:+d} "
                    "frames; report.md says more)" if o["best_offset"] else "")
            print(f"mouth-opening correlation with the driving footage's speaker: "
                  f"{'n/a' if c is None else f'{c:.3f}'}{best}")
        return 0
    try:
        result = evaluate(args)
    except known_errors() as e:
        print(f"nerfhead evaluate: {e}", file=sys.stderr)
        return 2
    full, por = result["modes"]["full"], result["modes"]["portrait"]
    fmt = lambda s: "n/a" if s.get("mean") is None else f"{s['mean']:.3f}"  # noqa: E731
    print(f"{result['frames']} frames: PSNR {fmt(full['psnr'])} / portrait {fmt(por['psnr'])}, "
          f"SSIM {fmt(full['ssim'])}, LMD {fmt(full['lmd'])}; report in "
          f"{Path(args.out) if args.out else Path(result['run']) / 'eval'}/report.md")
    return 0
