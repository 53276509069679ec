"""Step ``audio``: per-frame audio features from ``aud.wav`` (``nerfhead.audio.features``).

Writes ``aud_mel.npy`` [N, 16, 80] always and ``aud_ow.npy`` [N, 16, 96] when the speech
embedding model (onnxruntime + openwakeword's shipped ONNX files) is installed; which kinds
were written is recorded in the manifest so training can pick one that exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from preprocess.steps import Step, StepContext, StepError, atomic_path

STEP = "audio"
FILES = {"mel": "aud_mel.npy", "ow": "aud_ow.npy"}
CHANNELS = {"mel": 80, "ow": 96}


@dataclass
class AudioConfig:
    """Audio features written for training."""

    #: feature kinds to write: 'mel' always works; 'ow' needs onnxruntime + openwakeword
    kinds: list[str] = field(default_factory=lambda: ["mel", "ow"])
    require_all: bool = False  #: fail instead of warning when a requested kind is not installed
    window: int = 16  #: feature frames per video frame


def _available(kind: str) -> bool:
    from nerfhead.audio.features import ow_available

    return kind == "mel" or (kind == "ow" and ow_available())


def _kinds(cfg: AudioConfig) -> list[str]:
    bad = [k for k in cfg.kinds if k not in FILES]
    if bad:
        raise StepError(STEP, f"unknown audio feature kind(s) {bad}; known: {sorted(FILES)}")
    return [k for k in cfg.kinds if _available(k)]


def run(ctx: StepContext) -> dict:
    from nerfhead.audio.features import AudioError, extract, load_audio

    cfg: AudioConfig = ctx.cfg.audio
    n = ctx.num_frames()
    fps = float(ctx.manifest["video"].get("fps", 25.0))
    missing = [k for k in cfg.kinds if k in FILES and not _available(k)]
    if missing and cfg.require_all:
        raise StepError(STEP, f"audio feature(s) {missing} not installed "
                              "(pip install onnxruntime openwakeword==0.4.0)")
    for k in missing:
        ctx.log.warning("audio feature %r skipped: onnxruntime/openwakeword not installed", k)
    try:
        samples = load_audio(ctx.path("aud.wav"))
    except AudioError as e:
        raise StepError(STEP, str(e), ctx.path("aud.wav")) from e
    written = {}
    for kind in _kinds(cfg):
        feat = extract(samples, kind=kind, num_frames=n, fps=fps, window=cfg.window)
        with atomic_path(ctx.path(FILES[kind])) as tmp:
            np.save(tmp, feat)
        written[kind] = {"file": FILES[kind], "shape": list(feat.shape),
                         "mean": float(feat.mean()), "std": float(feat.std())}
    return {"kinds": sorted(written), "features": written, "unavailable": missing}


def check(ctx: StepContext) -> None:
    n = ctx.num_frames()
    cfg: AudioConfig = ctx.cfg.audio
    for kind in _kinds(cfg):
        p = ctx.path(FILES[kind])
        try:
            arr = np.load(p, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise StepError(STEP, f"unreadable: {e}", p) from e
        if arr.shape != (n, cfg.window, CHANNELS[kind]) or arr.dtype != np.float32:
            raise StepError(STEP, f"expected float32 {(n, cfg.window, CHANNELS[kind])}, "
                                  f"got {arr.dtype} {arr.shape}", p)


def settings(cfg) -> dict:
    from nerfhead.config import to_dict

    # which kinds can run here is part of the fingerprint: installing onnxruntime later
    # makes a rerun add aud_ow.npy instead of trusting the old record
    return {**to_dict(cfg.audio), "available": [k for k in FILES if _available(k)]}


AUDIO = Step(STEP, inputs=("aud.wav",), outputs=tuple(FILES.values()), run=run, check=check,
             settings=settings, doc="log-mel (and speech-embedding) windows per frame")
