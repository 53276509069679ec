"""Dataset folders (nerfhead preprocess or SyncTalk layout) -> frames, poses, audio, rays.

What is read (DESIGN §3): ``transforms_{train,val}.json`` (focal_len, cx, cy, optional h/w,
frames with img_id / aud_id / transform_matrix), ``gt_imgs/<img_id>.jpg`` (targets),
``torso_imgs/<img_id>.png`` (RGBA torso, optional), ``bc.jpg`` (background plate),
audio features (``aud_mel.npy`` and ``aud_ow.npy`` side by side preferred, then either, then
SyncTalk's ``aud.npy`` [N,16,29] / [N,16,1024] / [N,512]), the same features of the clip's
speech in other voices (``aud_<kind>_voices.npy`` [V,N,16,C], optional: train.voice_augment),
``bs.npy`` [N,52] blendshapes (optional:
zeros with a warning), mouth landmarks from ``landmarks.npy`` [N,478,3] or
``ori_imgs/<i>.lms`` (68 iBUG points, SyncTalk).

Memory is bounded: arrays are memory-mapped, images are decoded on first use and kept in
an LRU cache of ``DataConfig.cache_size`` frames (resized to the training resolution). For
training on a GPU, ``TalkingHeadDataset.preload`` (``DataConfig.preload``) instead decodes
every frame of the split once onto the device, where the rays' colours are then gathered.

Ray sampling (``TalkingHeadDataset.sample``) is a pure function of the frame and the
``torch.Generator`` passed in, so the trainer can make it a function of (seed, step); the
colours it returns are the same bits from the cache and from preloaded frames.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch
from torch import Tensor

from nerfhead.audio.features import COMBINED
from nerfhead.data.cache import LRUCache
from nerfhead.data.preload import PreloadedFrames
from nerfhead.models.rays import Camera, nerf_matrix_to_ngp

log = logging.getLogger("nerfhead.data")

# Outer + inner lip contour in MediaPipe's 478-point mesh; iBUG-68 mouth is 48..67.
MEDIAPIPE_LIPS = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0,
                  37, 39, 40, 185, 78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 415,
                  310, 311, 312, 13, 82, 81, 80, 191)
IBUG_MOUTH = tuple(range(48, 68))
AUDIO_FILES = {"mel": "aud_mel.npy", "ow": "aud_ow.npy", "hubert": "aud_hu.npy",
               "precomputed": "aud.npy"}
#: the same features of the clip's speech in other voices, [V, N, T, C] (preprocess/audio.py)
VOICE_FILES = {"mel": "aud_mel_voices.npy", "ow": "aud_ow_voices.npy"}
#: kinds read as several files concatenated along the channels
COMBINED_AUDIO = COMBINED
#: what data.audio = auto picks: the first whose files all exist
AUTO_AUDIO_ORDER = ("mel+ow", "mel", "ow", "hubert", "precomputed")
#: kinds stored as a 50-Hz stream, two rows per video frame ([N, 2, C], ER-NeRF's layout),
#: read as windows of this many rows centred on each frame
STREAM_WINDOW = 16


class DatasetError(RuntimeError):
    """A dataset folder is missing something or holds a malformed file (named in the message)."""


#: the way forward for a dataset file that is damaged or cut short (a preprocessed dataset
#: checks its outputs by content, so a rerun redoes just the step that wrote the file)
_REWRITE = ("was it damaged, cut short or deleted after preprocessing (copied in part?)? Rerun "
            "`nerfhead preprocess VIDEO --out DATA` with the dataset's video and options, which "
            "redoes the step that wrote it, or copy the dataset folder again")


@dataclass
class DataConfig:
    """How a dataset folder is read and how training rays are drawn from it."""

    image_size: int = 0
    """Resize frames so the longer side has this many pixels (0: native resolution)."""
    audio: Literal["auto", "mel+ow", "mel", "ow", "hubert", "precomputed"] = "auto"
    """Audio feature: auto = mel+ow (aud_mel.npy and aud_ow.npy side by side, the best on
    held-out speech) where both exist, else aud_mel.npy, else aud_ow.npy, else HuBERT's
    aud_hu.npy (``audio.kinds`` with hubert, or an ER-NeRF/SyncTalk folder), else SyncTalk's
    aud.npy. A run resumed, or a stage started with --init, keeps its checkpoint's kind."""
    cache_size: int = 256
    """Decoded frames kept in memory (LRU; each is H*W*3 bytes per image kind)."""
    num_rays: int = 4096
    """Rays per training step (head and torso stages): one frame, random pixels."""
    patch_size: int = 32
    """Lips stage: the mouth box is sampled as a patch_size x patch_size grid of rays."""
    mouth_margin: float = 0.25
    """Lips stage: the lip landmarks' box is grown by this fraction of its size per side."""
    max_frames: int = 0
    """Use only the first max_frames frames of the split (0: all); for quick experiments."""
    preload: Literal["auto", "always", "never"] = "auto"
    """Training frames on the training device: auto = decode every training frame's target
    and the background behind its head (the torso stage: the plate) once at the start into
    uint8 tensors on the training device and gather each step's ray colours there, if they
    take at most ``PRELOAD_MEMORY_SHARE`` of its free memory (a CUDA device: half; the CPU:
    a tenth of the available RAM, since the workers of ``nerfhead batch`` may each take
    theirs at once) and, on the CPU, if the run draws at least as many
    frames as the clip has (else each frame would be decoded once up front for steps that
    never need it); otherwise the reason is logged and the cache is used. always = preload
    whatever the size; never = decode on use into the LRU cache of cache_size. The rays and
    their colours are the same bits either way. Preloaded frames spare each step the host's
    decodes, gathers and copies: on an H200 they were half the step's time (12.6 -> 35 it/s);
    on a 2-core CPU the tiny preset at 128 px ran 1.25x faster (docs/benchmarks.md)."""


def check_dataset_dir(root) -> Path:
    """DatasetError naming what ``root`` is when it is not a finished dataset folder: missing,
    a file (a video given where the dataset goes?), or an unfinished preprocess."""
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"dataset: folder {root} does not exist (make it with `nerfhead "
                           f"preprocess VIDEO --out {root}`)")
    if not root.is_dir():
        kind = "a video" if root.suffix.lower() in (".mp4", ".mov", ".mkv", ".avi", ".webm",
                                                    ".m4v") else "a file"
        raise DatasetError(f"dataset: {root} is {kind}, not a dataset folder; make the dataset "
                           f"first with `nerfhead preprocess {root} --out DATA` and give DATA "
                           f"(or run everything with `nerfhead run {root} --out WORK`)")
    if not (root / "transforms_train.json").is_file():
        manifest = root / "manifest.json"
        if manifest.is_file():
            try:
                done = sorted(json.loads(manifest.read_text()).get("steps", {}))
            except (json.JSONDecodeError, OSError):
                done = []
            raise DatasetError(f"dataset: {root} is an unfinished preprocess (steps done: "
                               f"{', '.join(done) or 'none'}; no transforms_train.json): rerun "
                               f"`nerfhead preprocess VIDEO --out {root}` to finish it")
        raise DatasetError(f"dataset: {root} has no transforms_train.json; it is not a dataset "
                           "folder (nerfhead preprocess output or SyncTalk layout)")
    return root


def _load_json(path: Path) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError as e:
        raise DatasetError(f"dataset: {path} not found (run `nerfhead preprocess` first)") from e
    except json.JSONDecodeError as e:
        raise DatasetError(f"dataset: {path} is not valid JSON: {e}; {_REWRITE}") from e


def _image_size_of(root: Path, img_id: int) -> tuple[int, int] | None:
    for sub, ext in (("gt_imgs", "jpg"), ("ori_imgs", "jpg")):
        img = cv2.imread(str(root / sub / f"{img_id}.{ext}"))
        if img is not None:
            return img.shape[:2]
    return None


def read_transforms(path) -> tuple[np.ndarray, Camera, np.ndarray, np.ndarray]:
    """Read a transforms_*.json file.

    Returns ``(c2w, camera, frame_ids, aud_ids)``: c2w [N, 4, 4] float32 exactly as in the
    file (OpenGL, metres), the pinhole ``Camera`` (size from ``h``/``w`` when present, else
    from the first frame's image, else ``2*cy`` x ``2*cx``), ``img_id`` [N] and ``aud_id``
    [N] int64 (``aud_id`` defaults to ``img_id`` when absent).
    """
    path = Path(path)
    meta = _load_json(path)
    try:
        focal = float(meta["focal_len"])
        cx, cy = float(meta["cx"]), float(meta["cy"])
        frames = meta["frames"]
    except (KeyError, TypeError, ValueError) as e:
        raise DatasetError(f"dataset: {path} lacks focal_len/cx/cy/frames ({e})") from e
    if not frames:
        raise DatasetError(f"dataset: {path} has no frames")
    try:
        c2w = np.asarray([f["transform_matrix"] for f in frames], dtype=np.float32)
        img_ids = np.asarray([int(f["img_id"]) for f in frames], dtype=np.int64)
        aud_ids = np.asarray([int(f.get("aud_id", f["img_id"])) for f in frames], dtype=np.int64)
    except (KeyError, TypeError, ValueError) as e:
        raise DatasetError(f"dataset: {path}: malformed frame entry ({e})") from e
    if c2w.shape[1:] != (4, 4) or not np.isfinite(c2w).all():
        raise DatasetError(f"dataset: {path}: transform_matrix must be finite 4x4, got {c2w.shape[1:]}")
    if "h" in meta and "w" in meta:
        h, w = int(meta["h"]), int(meta["w"])
    else:
        hw = _image_size_of(path.parent, int(img_ids[0]))
        h, w = hw if hw else (round(2 * cy), round(2 * cx))
    return c2w, Camera(focal=focal, cx=cx, cy=cy, height=h, width=w), img_ids, aud_ids


def read_array(path: Path) -> np.ndarray:
    """``np.load(path, mmap_mode="r")``; a damaged file is a DatasetError naming it."""
    try:
        return np.load(path, mmap_mode="r")
    except (ValueError, OSError, EOFError) as e:
        raise DatasetError(f"dataset: cannot read {path}: {e}; {_REWRITE}") from e


def _load_audio_file(p: Path) -> np.ndarray:
    try:
        arr = np.load(p, mmap_mode="r")
    except ValueError as e:
        raise DatasetError(f"dataset: cannot read audio features {p}: {e}; {_REWRITE}") from e
    if arr.ndim == 2:
        arr = arr[:, None, :]
    if arr.ndim != 3 or arr.shape[0] == 0:
        raise DatasetError(f"dataset: {p} must be [N, T, C] or [N, C], got {arr.shape}")
    return arr


def _stream_windows(arr: np.ndarray, p: Path) -> np.ndarray:
    """[N, 2, C] (two 50-Hz rows per 25-fps frame) -> [N, STREAM_WINDOW, C] windows centred
    on each frame, edge-padded: what ``nerfhead.audio.features.extract`` gives new audio. A
    read-only strided view of the stream (edge rows added), not a copy: the windows overlap
    eightfold, and each split of a 5-minute clip would otherwise hold 0.5 GB of them."""
    if arr.shape[1] != 2:
        raise DatasetError(f"dataset: {p} must be [N, 2, C] (two 50-Hz feature frames per "
                           f"video frame, ER-NeRF's layout), got {arr.shape}")
    n, c = arr.shape[0], arr.shape[2]
    half = STREAM_WINDOW // 2  # frame i's window: stream rows 2i - half .. 2i + half - 1
    stream = np.asarray(arr, np.float32).reshape(2 * n, c)
    padded = np.concatenate([np.repeat(stream[:1], half, axis=0), stream,
                             np.repeat(stream[-1:], half - 1, axis=0)])
    rows, cols = padded.strides
    return np.lib.stride_tricks.as_strided(padded, shape=(n, STREAM_WINDOW, c),
                                           strides=(2 * rows, rows, cols), writeable=False)


def audio_files(kind: str) -> list[str]:
    """The feature files a kind reads (one, or one per part of a combined kind)."""
    return [AUDIO_FILES[k] for k in COMBINED_AUDIO.get(kind, (kind,))]


def load_audio_features(root: Path, kind: str = "auto") -> tuple[np.ndarray, str]:
    """Audio features [N, T, C] (memory-mapped; a [N, C] file becomes [N, 1, C]; a combined
    kind is its parts concatenated along C, in memory) and their kind."""
    order = AUTO_AUDIO_ORDER if kind == "auto" else [kind]
    for k in order:
        paths = [root / f for f in audio_files(k)]
        if not all(p.exists() for p in paths):
            continue
        parts = [_load_audio_file(p) for p in paths]
        if k == "hubert":
            parts = [_stream_windows(parts[0], paths[0])]
        if len(parts) == 1:
            return parts[0], k
        if len({(a.shape[0], a.shape[1]) for a in parts}) != 1:
            raise DatasetError(f"dataset: {k} needs {', '.join(map(str, paths))} with the same "
                               f"frames and window, got {[a.shape for a in parts]} (rerun "
                               "preprocess's audio step)")
        return np.concatenate([np.asarray(a, np.float32) for a in parts], axis=2), k
    looked = sorted({f for k in order for f in audio_files(k)})
    raise DatasetError(f"dataset: no audio features in {root} for {kind} (looked for {looked}); "
                       "rerun `nerfhead preprocess VIDEO --out DATA` with the dataset's video and "
                       "options: its audio step writes them")


def load_audio_voices(root: Path, kind: str, audio_shape: tuple[int, ...]) -> np.ndarray | None:
    """The features of ``kind`` in the clip's other voices, [V, N, T, C] (memory-mapped
    float16; a combined kind concatenated in memory), or None when the dataset has none for
    every part of the kind. Their frames, window and channels must match the clip's own
    features (``audio_shape``): a mismatch is a stale file, an error naming it."""
    parts = COMBINED_AUDIO.get(kind, (kind,))
    paths = [root / VOICE_FILES[k] for k in parts if k in VOICE_FILES]
    if len(paths) != len(parts) or not all(p.exists() for p in paths):
        return None
    arrays = []
    for p in paths:
        try:
            arrays.append(np.load(p, mmap_mode="r"))
        except ValueError as e:
            raise DatasetError(f"dataset: cannot read voice features {p}: {e}; {_REWRITE}") from e
    shapes = [a.shape for a in arrays]
    # every part: [V, N, T, C_part] with the clip's N and T, the same V, channels adding up
    n, t, c = audio_shape
    if (any(len(s) != 4 or s[1:3] != (n, t) or s[0] != shapes[0][0] for s in shapes)
            or sum(s[3] for s in shapes) != c):
        raise DatasetError(f"dataset: {', '.join(map(str, paths))}: voice features {shapes} do "
                           f"not match the clip's own {tuple(audio_shape)} (stale files: rerun "
                           "preprocess's audio step)")
    if len(arrays) == 1:
        return arrays[0]
    return np.concatenate([np.asarray(a) for a in arrays], axis=3)


def _read_rgb(path: Path, size: tuple[int, int], flags=cv2.IMREAD_COLOR) -> np.ndarray:
    img = cv2.imread(str(path), flags)
    if img is None:
        raise DatasetError(f"dataset: cannot read image {path}; {_REWRITE}")
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    code = cv2.COLOR_BGRA2RGBA if img.shape[2] == 4 else cv2.COLOR_BGR2RGB
    img = cv2.cvtColor(img, code)
    h, w = size
    if img.shape[:2] != (h, w):
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(img)


@dataclass
class RayBatch:
    """Pixels of one frame: coordinates, targets and the background behind the head."""

    u: Tensor  #: [R] pixel columns (int64)
    v: Tensor  #: [R] pixel rows (int64)
    rgb: Tensor  #: [R, 3] target colours in [0, 1]
    bg: Tensor  #: [R, 3] background colour per ray (torso-over-plate or plate)
    patch: tuple[int, int] | None = None  #: (h, w) when the rays form a row-major patch


class TalkingHeadDataset:
    """One split of a dataset folder; frames are decoded lazily (see module docstring).

    Attributes: ``camera`` (at the training resolution), ``poses`` [N, 4, 4] model-frame
    c2w (torch), ``poses_file`` (as in the file), ``img_ids``, ``aud_ids``, ``audio``
    [Na, T, C] (memmap), ``audio_kind``, ``blendshapes`` [Nb, 52] (memmap or zeros).
    """

    def __init__(self, root, cfg: DataConfig | None = None, split: str = "train"):
        self.root = Path(root)
        self.cfg = cfg or DataConfig()
        self.split = split
        check_dataset_dir(self.root)
        c2w, cam, img_ids, aud_ids = read_transforms(self.root / f"transforms_{split}.json")
        if self.cfg.max_frames > 0:
            c2w, img_ids, aud_ids = (a[: self.cfg.max_frames] for a in (c2w, img_ids, aud_ids))
        self.native_camera = cam
        if self.cfg.image_size > 0:
            s = self.cfg.image_size / max(cam.height, cam.width)
            cam = cam.scaled(max(1, round(cam.height * s)), max(1, round(cam.width * s)))
        self.camera = cam
        self.poses_file = c2w
        self.poses = torch.from_numpy(nerf_matrix_to_ngp(c2w.astype(np.float64)).astype(np.float32))
        self.img_ids, self.aud_ids = img_ids, aud_ids
        self.audio, self.audio_kind = load_audio_features(self.root, self.cfg.audio)
        #: [V, N, T, C] the same speech in other voices (train.voice_augment), or None
        self.audio_voices = load_audio_voices(self.root, self.audio_kind, self.audio.shape)
        if aud_ids.max() >= self.audio.shape[0] or aud_ids.min() < 0:
            raise DatasetError(f"dataset: transforms_{split}.json uses aud_id up to {aud_ids.max()} "
                               f"but the audio features have {self.audio.shape[0]} frames")
        self.blendshapes = self._load_optional("bs.npy", (52,))
        if self.blendshapes is None:
            log.warning("dataset %s: no bs.npy; expressions are zero (eyes will not blink)", self.root)
            self.blendshapes = np.zeros((int(img_ids.max()) + 1, 52), np.float32)
        self.landmarks = self._load_optional("landmarks.npy", (478, 3))
        self.has_torso_imgs = (self.root / "torso_imgs").is_dir()
        self._cache = LRUCache(self.cfg.cache_size)
        self._background: np.ndarray | None = None
        #: the split's frames on the training device (``preload``), or None: the cache
        self.preloaded: PreloadedFrames | None = None
        self._lms_cache = LRUCache(max(16, self.cfg.cache_size))

    # ------------------------------------------------------------------ arrays
    def _load_optional(self, name: str, tail: tuple[int, ...]) -> np.ndarray | None:
        p = self.root / name
        if not p.exists():
            return None
        arr = read_array(p)
        if arr.shape[1:] != tail:
            raise DatasetError(f"dataset: {p} must be [N, {', '.join(map(str, tail))}], got {arr.shape}")
        if arr.shape[0] <= self.img_ids.max():
            raise DatasetError(f"dataset: {p} has {arr.shape[0]} frames but img_id reaches {self.img_ids.max()}")
        return arr

    def __len__(self) -> int:
        return len(self.img_ids)

    def expression(self, i: int) -> np.ndarray:
        """The 52 blendshapes of frame ``i`` of this split (float32)."""
        return np.asarray(self.blendshapes[self.img_ids[i]], dtype=np.float32)

    # ------------------------------------------------------------------ images
    @property
    def size(self) -> tuple[int, int]:
        return self.camera.height, self.camera.width

    def background(self) -> np.ndarray:
        """bc.jpg at the training resolution, uint8 [H, W, 3]."""
        if self._background is None:
            self._background = _read_rgb(self.root / "bc.jpg", self.size)
        return self._background

    def image(self, i: int) -> np.ndarray:
        """Target frame ``i`` (gt_imgs/<img_id>.jpg), uint8 [H, W, 3], cached."""
        return self._cache.get(("gt", int(self.img_ids[i])), lambda: self.decode_image(i))

    def head_background(self, i: int) -> np.ndarray:
        """What lies behind the head in frame ``i``: torso_imgs RGBA over bc.jpg (uint8)."""
        if not self.has_torso_imgs:
            return self.background()
        return self._cache.get(("torso", int(self.img_ids[i])), lambda: self.decode_head_background(i))

    # the two decoders of the cache and of preload (the same pixels whichever holds them)
    def decode_image(self, i: int) -> np.ndarray:
        return _read_rgb(self.root / "gt_imgs" / f"{int(self.img_ids[i])}.jpg", self.size)

    def decode_head_background(self, i: int) -> np.ndarray:
        img_id = int(self.img_ids[i])
        rgba = _read_rgb(self.root / "torso_imgs" / f"{img_id}.png", self.size, cv2.IMREAD_UNCHANGED)
        if rgba.shape[2] != 4:
            raise DatasetError(f"dataset: torso_imgs/{img_id}.png must be RGBA")
        a = rgba[..., 3:].astype(np.float32) / 255.0
        out = rgba[..., :3] * a + self.background() * (1.0 - a)
        return np.round(out).astype(np.uint8)

    def cache_nbytes(self) -> int:
        return self._cache.nbytes()

    def preload(self, device, head_backgrounds: bool = True, progress: bool = False,
                draws: int | None = None) -> PreloadedFrames | None:
        """Apply data.preload for training on ``device`` (``nerfhead.data.preload``): every
        frame's target (and, with ``head_backgrounds``, its head_background; the torso stage
        needs only the plate) decoded into ``self.preloaded``, or the cache kept, saying why.
        ``draws``: the frames the run's steps will draw (None: unknown). A frame that cannot
        be read raises its DatasetError here. Returns ``self.preloaded``."""
        from nerfhead.data.preload import preload_frames

        frames = preload_frames(self, torch.device(device), head_backgrounds, progress, draws)
        if frames is not None:
            self.preloaded = frames
        return self.preloaded

    # ------------------------------------------------------------------ mouth
    def mouth_box(self, i: int) -> tuple[int, int, int, int]:
        """Square box (x0, y0, x1, y1), exclusive end, around the lips at training resolution."""
        img_id = int(self.img_ids[i])
        if self.landmarks is not None:
            pts = np.asarray(self.landmarks[img_id][list(MEDIAPIPE_LIPS), :2], np.float32)
        else:
            pts = self._lms_cache.get(img_id, lambda: self._read_lms(img_id))[list(IBUG_MOUTH)]
        sx, sy = self.camera.width / self.native_camera.width, self.camera.height / self.native_camera.height
        pts = pts * np.array([sx, sy], np.float32)
        (x0, y0), (x1, y1) = pts.min(0), pts.max(0)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        half = max(x1 - x0, y1 - y0) * (0.5 + self.cfg.mouth_margin)
        half = max(half, self.cfg.patch_size / 2)  # at least one ray per pixel of the patch
        H, W = self.size
        half = min(half, min(H, W) / 2)
        x0 = int(np.clip(round(cx - half), 0, W - 2 * half))
        y0 = int(np.clip(round(cy - half), 0, H - 2 * half))
        side = round(2 * half)
        return x0, y0, x0 + side, y0 + side

    def _read_lms(self, img_id: int) -> np.ndarray:
        p = self.root / "ori_imgs" / f"{img_id}.lms"
        try:
            pts = np.loadtxt(p, dtype=np.float32)
        except (OSError, ValueError) as e:
            raise DatasetError(f"dataset: lips stage needs landmarks.npy or {p} ({e})") from e
        if pts.shape != (68, 2):
            raise DatasetError(f"dataset: {p} must hold 68 x 2 landmarks, got {pts.shape}")
        return pts

    # ------------------------------------------------------------------ rays
    def sample(self, i: int, mode: str, generator: torch.Generator, num_rays: int | None = None,
               bg_kind: str = "head") -> RayBatch:
        """Pixels of frame ``i`` for one training step: ``pixels`` and their ``colours``."""
        u, v, patch = self.pixels(i, mode, generator, num_rays)
        rgb, bg = self.colours(i, u, v, bg_kind)
        return RayBatch(u=u, v=v, rgb=rgb, bg=bg, patch=patch)

    def pixels(self, i: int, mode: str, generator: torch.Generator,
               num_rays: int | None = None) -> tuple[Tensor, Tensor, tuple[int, int] | None]:
        """Pixel columns u and rows v [R] (int64, CPU) of frame ``i`` drawn from ``generator``,
        and the patch shape (or None).

        mode: ``random`` (``num_rays`` uniform pixels of the whole frame) or ``mouth``
        (a ``patch_size``² grid covering the mouth box, randomly jittered by up to one
        stride).
        """
        H, W = self.size
        if mode == "random":
            n = num_rays or self.cfg.num_rays
            flat = torch.randint(0, H * W, (n,), generator=generator)
            u, v, patch = flat % W, flat // W, None
        elif mode == "mouth":
            x0, y0, x1, _ = self.mouth_box(i)
            P = self.cfg.patch_size
            stride = max(1, (x1 - x0) // P)
            off = torch.randint(0, stride, (2,), generator=generator)
            ar = torch.arange(P)
            v, u = torch.meshgrid(y0 + off[1] + ar * stride, x0 + off[0] + ar * stride, indexing="ij")
            u, v = u.reshape(-1).clamp(0, W - 1), v.reshape(-1).clamp(0, H - 1)
            patch = (P, P)
        else:
            raise ValueError(f"unknown ray sampling mode {mode!r} (random or mouth)")
        return u, v, patch

    def colours(self, frames: int | Tensor, u: Tensor, v: Tensor,
                bg_kind: str = "head") -> tuple[Tensor, Tensor]:
        """Target and background colours [R, 3] in [0, 1] at pixels (u, v) of frame
        ``frames`` (one index, or one per ray [R]). bg_kind: ``head`` (torso-over-plate: the
        head stages) or ``plate`` (bc.jpg: the torso stage, where the torso field explains
        the torso). From the preloaded frames when they hold that background (on their
        device, one gather per image), else from the cache (on the CPU, per frame)."""
        p = self.preloaded
        if p is not None and (bg_kind == "plate" or p.backgrounds is not None):
            return p.colours(torch.as_tensor(frames, dtype=torch.long).expand_as(u), u, v, bg_kind)
        if not isinstance(frames, Tensor):
            return self._cached_colours(int(frames), u, v, bg_kind)
        rgb, bg = torch.empty(u.shape[0], 3), torch.empty(u.shape[0], 3)
        for i in frames.unique().tolist():
            rays = frames == i
            rgb[rays], bg[rays] = self._cached_colours(i, u[rays], v[rays], bg_kind)
        return rgb, bg

    def _cached_colours(self, i: int, u: Tensor, v: Tensor, bg_kind: str) -> tuple[Tensor, Tensor]:
        rgb = torch.from_numpy(self.image(i))[v, u].float() / 255.0
        bg_img = self.head_background(i) if bg_kind == "head" else self.background()
        return rgb, torch.from_numpy(bg_img)[v, u].float() / 255.0


FINGERPRINT_FILES = ("transforms_train.json", "transforms_val.json", *AUDIO_FILES.values(), "bs.npy")


def content_hash(root) -> str:
    """Hash of what training reads that identifies a dataset: the transforms files (poses and
    camera, unique to a clip's preprocessing) in full, and the audio features and blendshapes
    by size and their first and last 64 KiB. The same data moved elsewhere hashes the same."""
    import hashlib

    root = Path(root)
    h = hashlib.sha256()
    for name in FINGERPRINT_FILES:
        p = root / name
        if not p.is_file():
            continue
        h.update(name.encode())
        size = p.stat().st_size
        h.update(str(size).encode())
        with open(p, "rb") as f:
            if name.endswith(".json") or size <= 128 << 10:
                h.update(f.read())
            else:
                h.update(f.read(64 << 10))
                f.seek(size - (64 << 10))
                h.update(f.read())
    return h.hexdigest()[:16]


def dataset_fingerprint(root) -> dict:
    """Record of a dataset folder (kept in the run's config and checkpoints): path, frame
    counts, layout, the source video when known, and ``content_hash``."""
    root = Path(root)
    out = {"path": str(root.resolve())}
    for split in ("train", "val"):
        p = root / f"transforms_{split}.json"
        if p.exists():
            out[f"{split}_frames"] = len(_load_json(p).get("frames", []))
    out["layout"] = "nerfhead" if (root / "manifest.json").exists() else "synctalk"
    try:
        source = json.loads((root / "manifest.json").read_text()).get("video", {}).get("source")
    except (OSError, json.JSONDecodeError, AttributeError):
        source = None
    if source:
        out["source"] = source
    out["content"] = content_hash(root)
    return out


def is_dataset_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / "transforms_train.json").exists()
