"""A small synthetic talking-head dataset with known ground truth (tests, demos, benchmarks).

A shaded sphere (radius 9 cm, the "head") at the world origin is ray-traced with numpy from
OpenGL cameras 0.5 m away that turn a little from frame to frame. A dark "mouth" disc on
its lower front opens with a per-frame amplitude that is also written into the audio
features (so audio explains the mouth), two dark "eyes" close with eyeBlinkLeft/Right in
bs.npy, a flat "torso" box fills the bottom of the frame (torso_imgs/ RGBA) and the
background plate is a uniform colour. Written either as nerfhead preprocess output
(manifest.json, aud_mel.npy, landmarks.npy, h/w in the transforms) or as SyncTalk lays a
folder out (aud.npy [N, 16, 29], ori_imgs/<i>.lms, no h/w, no manifest).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from nerfhead.data.dataset import IBUG_MOUTH, MEDIAPIPE_LIPS
from nerfhead.fileio import write_image

RADIUS = 0.09
MOUTH_DIR = np.array([0.0, -0.45, 0.89])
EYE_DIRS = (np.array([-0.35, 0.3, 0.89]), np.array([0.35, 0.3, 0.89]))
BG = np.array([0.2, 0.3, 0.8])
TORSO = np.array([0.8, 0.5, 0.3])


def look_at_gl(eye: np.ndarray, target=(0.0, 0.0, 0.0), up=(0.0, 1.0, 0.0)) -> np.ndarray:
    """OpenGL camera-to-world (camera looks down -z, +y up) at ``eye`` facing ``target``."""
    target, up = np.asarray(target, float), np.asarray(up, float)
    z = eye - target
    z = z / np.linalg.norm(z)
    x = np.cross(up, z)
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, z, eye
    return c2w


def frame_params(n: int, seed: int = 0) -> dict:
    """Per-frame camera poses (OpenGL c2w), mouth opening in [0, 1] and blink in [0, 1]."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    yaw = 0.12 * np.sin(t * 0.37) + rng.normal(0, 0.01, n)
    pitch = 0.06 * np.sin(t * 0.23 + 1.0)
    eyes = [0.5 * np.array([np.sin(a) * np.cos(b), np.sin(b), np.cos(a) * np.cos(b)]) for a, b in zip(yaw, pitch)]
    mouth = 0.5 + 0.5 * np.sin(t * 0.9) * np.abs(np.sin(t * 0.13 + 0.5))
    blink = (np.sin(t * 0.5) > 0.85).astype(np.float64)
    return {"c2w": np.stack([look_at_gl(e) for e in eyes]), "mouth": mouth, "blink": blink}


def render_gl(c2w: np.ndarray, focal: float, size: int, mouth: float, blink: float,
              eye_angle: float = 0.12):
    """RGB [size, size, 3] float and head mask of the sphere scene seen from ``c2w`` (OpenGL);
    each eye is a dark cap of ``eye_angle`` radians, drawn while ``blink`` < 0.5."""
    c = (size - 1) / 2 + 0.5
    v, u = np.mgrid[0:size, 0:size].astype(np.float64)
    d_cam = np.stack([(u + 0.5 - c) / focal, -(v + 0.5 - c) / focal, -np.ones_like(u)], -1)
    d = d_cam @ c2w[:3, :3].T
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    o = c2w[:3, 3]
    b = d @ o
    disc = b ** 2 - (o @ o - RADIUS ** 2)
    hit = disc > 0
    t = -b - np.sqrt(np.maximum(disc, 0))
    n = (o + t[..., None] * d) / RADIUS
    col = 0.55 + 0.35 * n[..., [0, 1, 2]] * np.array([1.0, 0.6, 0.3])
    col = np.clip(col, 0, 1)
    mouth_cos = np.cos(0.12 + 0.25 * mouth)
    col[(n @ (MOUTH_DIR / np.linalg.norm(MOUTH_DIR))) > mouth_cos] = (0.35, 0.05, 0.05)
    for e in EYE_DIRS:
        if blink < 0.5:
            col[(n @ (e / np.linalg.norm(e))) > np.cos(eye_angle)] = (0.05, 0.05, 0.1)
    return np.where(hit[..., None], col, 0.0), hit


def project_gl(points: np.ndarray, c2w: np.ndarray, focal: float, size: int) -> np.ndarray:
    """Pixel (x, y) of world points [P, 3] in an OpenGL camera."""
    cam = (points - c2w[:3, 3]) @ c2w[:3, :3]
    c = size / 2
    return np.stack([cam[:, 0] / -cam[:, 2] * focal + c, -cam[:, 1] / -cam[:, 2] * focal + c], -1)


def make_dataset(root, num_frames: int = 44, size: int = 64, layout: str = "nerfhead",
                 seed: int = 0, distinct_frames: int | None = None, eye_angle: float = 0.12) -> Path:
    """Write the synthetic dataset into ``root`` and return it (``layout``: nerfhead|synctalk).

    ``distinct_frames``: render only this many frames and make the images of frame ``i``
    symbolic links to those of frame ``i % distinct_frames`` (poses, audio and blendshapes
    still differ per frame) -- a cheap stand-in for a long clip in memory measurements.
    ``eye_angle``: size of the eyes (radians of the sphere; larger eyes make blinks easy to learn).
    """
    root = Path(root)
    for sub in ("gt_imgs", "ori_imgs", "torso_imgs", "parsing"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    focal = 1.2 * size
    p = frame_params(num_frames, seed)
    bg = np.broadcast_to(BG, (size, size, 3))
    torso_mask = np.zeros((size, size), bool)
    torso_mask[int(size * 0.8):, int(size * 0.2):int(size * 0.8)] = True
    ring = np.array([[np.cos(a) * 0.03, -0.04 + np.sin(a) * 0.015, 0.08] for a in np.linspace(0, 2 * np.pi, 20)])
    landmarks = np.zeros((num_frames, 478, 3), np.float32)
    for i in range(num_frames):
        if distinct_frames and i >= distinct_frames:
            j = i % distinct_frames
            for sub, ext in (("gt_imgs", "jpg"), ("ori_imgs", "jpg"), ("torso_imgs", "png")):
                (root / sub / f"{i}.{ext}").symlink_to(root / sub / f"{j}.{ext}")
            landmarks[i] = landmarks[j]
            continue
        head, hit = render_gl(p["c2w"][i], focal, size, p["mouth"][i], p["blink"][i], eye_angle)
        torso_rgba = np.zeros((size, size, 4))
        torso_rgba[torso_mask] = (*TORSO, 1.0)
        torso_rgba[hit] = 0.0
        img = np.where(hit[..., None], head, np.where(torso_mask[..., None], TORSO, bg))
        save = lambda path, x: write_image(path, cv2.cvtColor(
            (np.clip(x, 0, 1) * 255).round().astype(np.uint8),
            cv2.COLOR_RGBA2BGRA if x.shape[-1] == 4 else cv2.COLOR_RGB2BGR))
        save(root / "gt_imgs" / f"{i}.jpg", img)
        save(root / "ori_imgs" / f"{i}.jpg", img)
        save(root / "torso_imgs" / f"{i}.png", torso_rgba)
        lips = project_gl(ring, p["c2w"][i], focal, size)
        landmarks[i, list(MEDIAPIPE_LIPS[:20]), :2] = lips
        landmarks[i, list(MEDIAPIPE_LIPS[20:]), :2] = lips
        if layout == "synctalk":
            lms = np.zeros((68, 2), np.float32)
            lms[list(IBUG_MOUTH)] = lips
            np.savetxt(root / "ori_imgs" / f"{i}.lms", lms, "%f")
    write_image(root / "bc.jpg", cv2.cvtColor((bg * 255).round().astype(np.uint8), cv2.COLOR_RGB2BGR))
    rng = np.random.default_rng(seed + 1)
    channels = 29 if layout == "synctalk" else 80
    audio = rng.normal(0, 0.1, (num_frames, 16, channels)).astype(np.float32)
    audio[:, :, : channels // 2] += p["mouth"][:, None, None].astype(np.float32)  # mouth is audible
    np.save(root / ("aud.npy" if layout == "synctalk" else "aud_mel.npy"), audio)
    bs = np.zeros((num_frames, 52), np.float32)
    bs[:, 9] = bs[:, 10] = p["blink"]
    np.save(root / "bs.npy", bs)
    n_val = num_frames // 11
    for split, ids in (("train", range(num_frames - n_val)), ("val", range(num_frames - n_val, num_frames))):
        meta = {"focal_len": focal, "cx": size / 2, "cy": size / 2,
                "frames": [{"img_id": i, "aud_id": i, "transform_matrix": p["c2w"][i].tolist()} for i in ids]}
        if layout == "nerfhead":
            meta.update(h=size, w=size)
        (root / f"transforms_{split}.json").write_text(json.dumps(meta))
    if layout == "nerfhead":
        np.save(root / "landmarks.npy", landmarks)
        (root / "manifest.json").write_text(json.dumps({"synthetic": True, "frames": num_frames}))
    return root
