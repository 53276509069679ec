"""The renderer library: a trained run loaded once, rendering frames on request.

``Renderer`` is the one object that ``render``, ``evaluate --drive`` and ``serve`` render
through: it holds the run's model, its dataset's per-frame files (expressions, latents,
original crops for Portrait-Sync) and the map from dataset frames to per-frame latents, and
renders one frame from (audio feature windows and the index to speak, camera-to-world pose,
52 blendshapes, latent choice) with ``TalkingHead.render_frame``. ``Renderer.sequence``
renders a whole ``PoseSequence`` (what ``nerfhead render`` writes to mp4); the live server
calls ``Renderer.render`` once per frame with features from ``nerfhead.audio.stream``.

The helpers beside it (``DatasetFrames``, ``driving_features``, ``warn_missing_torso``, ...)
are what a renderer's caller needs to prepare its inputs; ``nerfhead.render.cli`` re-exports
them for older imports.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger("nerfhead.render")


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
        from nerfhead.data.dataset import DatasetError, read_array

        bs = self.root / "bs.npy"
        self.blendshapes = read_array(bs) if bs.is_file() else None
        man = self.root / "manifest.json"
        try:
            self.manifest = json.loads(man.read_text()) if man.is_file() else {}
        except ValueError as e:
            raise DatasetError(f"dataset: {man} is not valid JSON ({e}): damaged by hand or by "
                               "another tool; delete it and rerun `nerfhead preprocess VIDEO --out "
                               f"{self.root}` with the dataset's video and options, or copy the "
                               "dataset folder again") from e

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



class Renderer:
    """A trained run, loaded once, that renders frames.

    ``run``: a ``LoadedRun`` (``nerfhead.train.checkpoint.load_run``); ``frames``: the
    ``DatasetFrames`` of its dataset (per-frame blendshapes, latents' frame ids, original
    crops). ``Renderer.load`` builds both from a run folder.
    """

    def __init__(self, run, frames: DatasetFrames):
        self.run = run
        self.model = run.model
        self.frames = frames
        self._latents = latent_lookup(frames.root, self.model.latents.shape[0])

    @classmethod
    def load(cls, run_dir, device: str = "auto", checkpoint=None, data=None,
             audio_encoder: str = "refitted", prune_floaters: bool = True) -> "Renderer":
        """Load ``run_dir`` (newest checkpoint, or ``checkpoint``) on ``device`` with the
        dataset it was trained on (or ``data``); ``audio_encoder``, ``prune_floaters``: see
        ``load_run``."""
        from nerfhead.train.checkpoint import load_run, run_dataset

        run = load_run(run_dir, device=pick_device(device), checkpoint=checkpoint,
                       audio_encoder=audio_encoder, prune_floaters=prune_floaters)
        return cls(run, DatasetFrames(run_dataset(run, data)))

    # ------------------------------------------------------------------ what it renders
    @property
    def camera(self):
        return self.model.camera

    @property
    def audio_kind(self) -> str:
        return self.model.audio_kind

    @property
    def audio_window(self) -> int:
        """Feature windows the model's temporal smoother reads around the spoken one."""
        return int(self.model.cfg.audio_window)

    @property
    def data_dir(self) -> Path:
        return self.frames.root

    def features(self, samples) -> np.ndarray:
        """Offline features [N, T, C] of the run's kind for 16 kHz mono ``samples``."""
        from nerfhead.audio.features import extract

        if self.audio_kind == "precomputed":
            raise ValueError(f"{self.run.run_dir} was trained on precomputed features (aud.npy): "
                             "it cannot be driven by new audio")
        return extract(samples, kind=self.audio_kind)

    def latent_index(self, frame_id: int | None, mean_latent: bool = False) -> int | None:
        """The per-frame latent row of dataset frame ``frame_id`` (None: the mean latent)."""
        if mean_latent or frame_id is None:
            return None
        return self._latents.get(int(frame_id))

    # ------------------------------------------------------------------ rendering
    def render(self, c2w, audio_feats, index: int, expression=None, *, frame_id: int | None = None,
               mean_latent: bool = False, with_torso: bool = True, gt_torso: bool = False,
               camera=None) -> np.ndarray:
        """One frame, uint8 [H, W, 3] at the training resolution (or ``camera``'s).

        ``audio_feats`` [N, T, C] feature windows and ``index`` the one to speak (its
        neighbours feed the model's temporal smoother: ``audio_window`` of them);
        ``c2w`` [4, 4] camera-to-world (transforms-file convention); ``expression`` [52]
        blendshapes (None: those of dataset frame ``frame_id``); ``frame_id`` also picks the
        per-frame latent unless ``mean_latent``; ``gt_torso`` puts the head over that frame's
        torso image.
        """
        return self.render_device(c2w, audio_feats, index, expression, frame_id=frame_id,
                                  mean_latent=mean_latent, with_torso=with_torso,
                                  gt_torso=gt_torso, camera=camera).cpu().numpy()

    def render_device(self, c2w, audio_feats, index: int, expression=None, *,
                      frame_id: int | None = None, mean_latent: bool = False,
                      with_torso: bool = True, gt_torso: bool = False, camera=None):
        """``render``'s frame as a uint8 [H, W, 3] tensor on the model's device (converted
        there: the same bytes as ``to_uint8`` on the host, a quarter of float32's to copy)."""
        from nerfhead.render.ahead import to_uint8_device

        if expression is None:
            if frame_id is None:
                raise ValueError("Renderer.render: give an expression or a frame_id to take it from")
            expression = self.frames.expression(int(frame_id))
        bg = torso_background(self.model, self.frames, int(frame_id), camera) if gt_torso else None
        out = self.model.render_frame(c2w, audio_feats, index, expression,
                                      latent_index=self.latent_index(frame_id, mean_latent), bg=bg,
                                      with_torso=with_torso, camera=camera)
        return to_uint8_device(out["rgb"])

    def portrait(self, rgb: np.ndarray, frame_id: int) -> np.ndarray:
        """Portrait-Sync: ``rgb`` blended into dataset frame ``frame_id``'s original crop."""
        from nerfhead.render.compositing import portrait_blend

        orig = self.frames.original(frame_id)
        return portrait_blend(resize_to(rgb, *orig.shape[:2]), orig, self.frames.face_mask(frame_id))

    def sequence(self, audio_feats, seq, portrait: bool = False, with_torso: bool = True,
                 camera=None, times: StageTimes | None = None, progress: bool = True,
                 gt_torso: bool = False, expressions=None, mean_latent: bool = False,
                 ahead: int = 2):
        """Yield (frame index, rendered uint8 [H, W, 3], composited uint8 crop) for ``seq``.

        Without ``portrait`` the composited crop is the render itself. ``expressions``
        [N, 52] replaces the frames' blendshapes; ``mean_latent`` the frames' latents
        (``nerfhead.motion.controls``). Frames are rendered in a background thread up to
        ``ahead`` frames ahead of the caller (``nerfhead.render.ahead``; 0: none), so what
        the caller does with a frame (encode, paste back) overlaps the next renders; the
        frames are the same either way. ``times``: "render" (seconds of the rendering
        thread), "copy" (waiting for a frame to reach the host), "composite" (Portrait-Sync).
        """
        from tqdm import tqdm

        from nerfhead.render.ahead import HostFrame, render_ahead

        times = times or StageTimes()
        n = min(len(seq), len(audio_feats))

        def produce():
            for i in range(n):
                fid = int(seq.frame_ids[i])
                t0 = time.perf_counter()
                frame = self.render_device(seq.c2w[i], audio_feats, i,
                                           None if expressions is None else expressions[i],
                                           frame_id=fid, mean_latent=mean_latent,
                                           with_torso=with_torso, gt_torso=gt_torso, camera=camera)
                host = HostFrame(frame)
                times.add("render", time.perf_counter() - t0)
                yield i, fid, host

        with tqdm(total=n, desc="render", unit="frame", disable=not progress) as bar:
            for i, fid, host in render_ahead(produce, ahead):
                t0 = time.perf_counter()
                rgb = host.numpy()
                t1 = time.perf_counter()
                times.add("copy", t1 - t0)
                crop = self.portrait(rgb, fid) if portrait else rgb
                times.add("composite", time.perf_counter() - t1)
                bar.update(1)
                yield i, rgb, crop


def render_sequence(run, audio_feats, seq, frames: DatasetFrames, portrait=False, with_torso=True,
                    camera=None, times: StageTimes | None = None, progress=True, gt_torso=False,
                    expressions=None, mean_latent=False):
    """``Renderer(run, frames).sequence(...)``: see ``Renderer.sequence``."""
    return Renderer(run, frames).sequence(audio_feats, seq, portrait, with_torso, camera, times,
                                          progress, gt_torso, expressions, mean_latent)


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


def driving_features(run, audio_path, features_path=None, max_frames=None, *, level: str = "match",
                     data_dir=None, report: dict | None = None):
    """(features [N, T, C] of the run's kind, samples float32 at 16 kHz as given). ``level``
    "match": the features are of the samples brought to the speech level of ``data_dir``'s
    aud.wav (default the run's dataset), the clip the run was trained on
    (``nerfhead.audio.level``); "keep": as given. ``report`` gets the level's ``note``."""
    from nerfhead.audio.features import extract, load_audio
    from nerfhead.audio.level import bring_to_training_level

    samples = load_audio(audio_path)
    warn_if_clipped(samples, audio_path)
    warn_if_silent(samples, audio_path)
    kind = run.model.audio_kind
    if features_path is not None:
        feats = load_feature_file(features_path, run.model.meta)
    elif kind == "precomputed":
        raise SystemExit(f"{run.run_dir}: this run was trained on precomputed features "
                         f"(aud.npy); pass --audio-features for {audio_path}")
    else:
        heard, match = bring_to_training_level(
            samples, data_dir if data_dir is not None else getattr(run, "dataset_dir", None),
            level, source=str(audio_path))
        if report is not None:
            report["note"] = match.note
        feats = extract(heard, kind=kind)
    if max_frames:
        feats = feats[:max_frames]
    if len(feats) == 0:
        raise SystemExit(f"{audio_path}: the audio is shorter than one video frame")
    return feats, samples


def load_feature_file(path, meta) -> np.ndarray:
    """``--audio-features``: per-frame features [N, T, C] (or [N, C] for T = 1) of the kind the
    run was trained on (``meta``: its ``ModelMeta``); ValueError naming the file otherwise."""
    from pathlib import Path

    path = Path(path)
    want = f"[N, {meta.audio_len}, {meta.audio_channels}]"
    if not path.is_file():
        raise FileNotFoundError(f"--audio-features {path}: " + ("a folder, not an .npy file"
                                                               if path.is_dir() else "not found"))
    try:
        feats = np.load(path)
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"--audio-features {path}: not a readable .npy array ({e}); save the "
                         f"features with numpy.save as a float {want} array") from None
    if not np.issubdtype(feats.dtype, np.number):
        raise ValueError(f"--audio-features {path}: holds {feats.dtype} values, not numbers")
    feats = feats.astype(np.float32)
    if feats.ndim == 2 and meta.audio_len == 1:
        feats = feats[:, None, :]
    if feats.ndim != 3 or feats.shape[1:] != (meta.audio_len, meta.audio_channels):
        raise ValueError(f"--audio-features {path}: shape {feats.shape}, but this run was trained "
                         f"on {meta.audio_kind} features {want} per video frame: features of "
                         "another kind or window? Make them as the run's dataset was made, or "
                         "leave --audio-features out to compute them from --audio")
    bad = np.flatnonzero(~np.isfinite(feats).reshape(len(feats), -1).all(axis=1))
    if bad.size:
        raise ValueError(f"--audio-features {path}: the features of {bad.size} frame(s) hold NaN "
                         f"or infinite values (frame {bad[0]} first, counting from 0); make them "
                         "again from the audio")
    return feats


def warn_if_clipped(samples, audio_path) -> None:
    """Warn when the driving audio is clipped: distorted speech gives features the model never
    saw (and the voice detector may hear no speech in it at all)."""
    from nerfhead.audio.level import CLIPPED_FRACTION, clipped_fraction

    clipped = clipped_fraction(samples)
    if clipped > CLIPPED_FRACTION:
        log.warning("%s: %.0f%% of its samples are at full scale: the sound is clipped (recorded "
                    "or amplified too loud), and the mouth follows distorted speech poorly. Use a "
                    "recording made at a lower level (turning a clipped file down does not undo "
                    "the clipping)", audio_path, 100 * clipped)


def warn_if_silent(samples, audio_path) -> None:
    """Warn when the driving audio has no speech, or long silent stretches (the face will not talk there)."""
    from nerfhead.audio.vad import find_speech, format_ranges

    report = find_speech(samples)
    if report.speech_seconds == 0:
        from nerfhead.audio.channels import cancelling_channels

        cause = cancelling_channels(audio_path) if audio_path else None
        log.warning("%s: no speech found in its %.1f s (%s): the rendered mouth will not move%s",
                    audio_path, report.seconds, report.detector, f"; {cause}" if cause else "")
    elif gaps := report.silent_longer_than(2.0):
        log.warning("%s: no speech in %s (%s)", audio_path, format_ranges(gaps), report.detector)
