"""HuBERT speech features (``hubert``): the last hidden layer of ``facebook/hubert-large-ls960-ft``
at 50 frames/s, 1024-d, the audio feature of ER-NeRF, SyncTalk's HuBERT option, TalkingGaussian
and GaussianTalker, which use it for the mouth to follow other people's speech (it was
trained on 960 hours of many speakers; not measured against ``mel+ow`` here, where its weights
cannot be downloaded). It needs the ``transformers`` package and the model's weights (1.26 GB).

Weights: a folder ``hubert-large-ls960-ft/`` in the HuggingFace layout (``config.json``,
``preprocessor_config.json``, ``model.safetensors`` or ``pytorch_model.bin``) in ``--weights
DIR``, ``$NERFHEAD_WEIGHTS`` or ``~/.cache/nerfhead`` (``nerfhead.weights.search_dirs``), or
the snapshot an earlier download left; else downloaded from the HuggingFace hub into
``~/.cache/nerfhead/huggingface`` unless ``NERFHEAD_OFFLINE=1``. What cannot be had raises ``WeightsUnavailable`` naming every place
looked at; nothing else is substituted.

The clock: HuBERT's convolutional front end turns each 400 samples into a frame every 320
(25 ms windows every 20 ms). The audio is given 200 samples of silence in front, so that
frame ``j`` is centred on ``j / 50`` s, the time ``frame_windows`` takes it to be (ER-NeRF's
extraction leaves the frames 12.5 ms later). Long audio is run in chunks of ``CHUNK_FRAMES``
with ``CONTEXT_FRAMES`` of audio either side that the transformer sees and the output drops,
so the features hardly depend on where a chunk ends: this model's convolutions and their
layer norms are exact per frame, its positional convolution reaches 64 frames either way, and
only attention across a chunk's edge, two seconds away, is cut.

Stored in a dataset as ``aud_hu.npy`` [N, 2, 1024] float32, ER-NeRF's layout: the two 50-Hz
frames of each video frame (a folder ER-NeRF or SyncTalk made with HuBERT loads as it is);
read as [N, 16, 1024] windows like every other kind (``nerfhead.data.dataset``).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

log = logging.getLogger("nerfhead.audio")

HUBERT_MODEL = "facebook/hubert-large-ls960-ft"  #: the checkpoint ER-NeRF and SyncTalk use
HUBERT_DIR = "hubert-large-ls960-ft"  #: its folder under a weights directory
HUBERT_RATE = 50.0  #: frames per second
HUBERT_DIM = 1024
HUBERT_FILE = "aud_hu.npy"  #: [N, 2, 1024] per video frame (ER-NeRF's layout)
KERNEL, STRIDE = 400, 320  #: receptive field and hop of the convolutional front end, samples
CHUNK_FRAMES = 1000  #: output frames per forward pass (20 s)
CONTEXT_FRAMES = 100  #: audio either side of a chunk that the transformer sees (2 s)


def transformers_available() -> bool:
    return importlib.util.find_spec("transformers") is not None


def find_local(weights_dir=None) -> Path | None:
    """The model's files on this machine, or None: the first ``hubert-large-ls960-ft`` folder
    with a config.json in the weights search path, else the snapshot an earlier download left
    in ``~/.cache/nerfhead/huggingface``."""
    from nerfhead.weights import cache_dir, search_dirs

    for d in search_dirs(weights_dir):
        if (d / HUBERT_DIR / "config.json").is_file():
            return d / HUBERT_DIR
    repo = cache_dir() / "huggingface" / ("models--" + HUBERT_MODEL.replace("/", "--"))
    snapshots = sorted((repo / "snapshots").glob("*/config.json"), key=lambda f: f.stat().st_mtime)
    return snapshots[-1].parent if snapshots else None


@lru_cache(maxsize=2)
def _load(source: str, device: str, cache: str | None):
    from transformers import HubertModel, Wav2Vec2FeatureExtractor

    extractor = Wav2Vec2FeatureExtractor.from_pretrained(source, cache_dir=cache)
    model = HubertModel.from_pretrained(source, cache_dir=cache).eval().to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    return extractor, model


def load_hubert(weights_dir=None, device: str | None = None):
    """(feature extractor, HubertModel in eval mode) from this machine's files, else the hub.
    ``WeightsUnavailable`` when neither works, with what was tried and why."""
    import torch

    from nerfhead.weights import WeightsUnavailable, cache_dir, search_dirs

    if not transformers_available():
        raise WeightsUnavailable("audio feature 'hubert' needs the transformers package "
                                 "(pip install transformers), which is not installed")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    local = find_local(weights_dir)
    if local is not None:
        try:
            return _load(str(local), device, None)
        except Exception as e:  # missing or damaged files come in many types: say which
            raise WeightsUnavailable(f"hubert weights in {local} cannot be loaded: {e}. "
                                     f"It must hold {HUBERT_MODEL} in the HuggingFace layout "
                                     "(config.json, preprocessor_config.json, "
                                     "model.safetensors or pytorch_model.bin)") from e
    tried = ", ".join(str(d / HUBERT_DIR) for d in search_dirs(weights_dir))
    if os.environ.get("NERFHEAD_OFFLINE", "0") == "1":
        reason = "downloads disabled (NERFHEAD_OFFLINE=1)"
    else:
        try:
            log.info("audio: loading %s from the HuggingFace hub (1.26 GB on first use)",
                     HUBERT_MODEL)
            return _load(HUBERT_MODEL, device, str(cache_dir() / "huggingface"))
        except Exception as e:  # network errors come in many types: report, do not hide
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            reason = f"download of {HUBERT_MODEL} failed: {first}"
    raise WeightsUnavailable(f"hubert weights ({HUBERT_MODEL}) unavailable: no {HUBERT_DIR}/ "
                             f"with a config.json in {tried}; {reason}. Download it where you "
                             f"have a network (`hf download {HUBERT_MODEL} --local-dir "
                             f"DIR/{HUBERT_DIR}`, huggingface_hub's command) and set "
                             "NERFHEAD_WEIGHTS=DIR")


def num_hubert_frames(num_samples: int) -> int:
    """Frames at 50/s that the audio covers: frame j exists while j / 50 s < its length."""
    return max(1, -(-num_samples // STRIDE))


def hubert_stream(samples: np.ndarray, sr: int = 16000, weights_dir=None,
                  device: str | None = None) -> np.ndarray:
    """[T, 1024] float32, frame j centred at j / 50 s, T = ``num_hubert_frames``."""
    import torch

    if sr != 16000:
        raise ValueError("hubert features need 16 kHz audio")
    extractor, model = load_hubert(weights_dir, device)
    samples = np.asarray(samples, np.float32).reshape(-1)
    total = num_hubert_frames(len(samples))
    # the extractor's normalisation (zero mean, unit variance for this model) over the whole
    # clip, as ER-NeRF does: chunks must not each be normalised on their own
    x = extractor(samples, sampling_rate=sr, return_tensors="np").input_values[0].astype(np.float32)
    half = (KERNEL - STRIDE) // 2 + STRIDE // 2  # 200: frame j centred on sample 320 j
    # zeros at the end too: the last frames' windows reach past the clip
    x = np.concatenate([np.zeros(half, np.float32), x,
                        np.zeros(total * STRIDE + KERNEL - half - len(x), np.float32)])
    dev = next(model.parameters()).device
    out = []
    with torch.inference_mode():
        for a in range(0, total, CHUNK_FRAMES):
            b = min(a + CHUNK_FRAMES, total)
            lo, hi = max(a - CONTEXT_FRAMES, 0), min(b + CONTEXT_FRAMES, total)
            piece = torch.from_numpy(x[lo * STRIDE:(hi - 1) * STRIDE + KERNEL])[None].to(dev)
            hidden = model(piece).last_hidden_state[0]  # [hi - lo, 1024]
            out.append(hidden[a - lo:b - lo].float().cpu().numpy())
    feat = np.concatenate(out)
    if feat.shape[0] != total:  # the convolution arithmetic above makes them equal
        raise RuntimeError(f"hubert: {feat.shape[0]} frames for {total} expected")
    return feat


def per_video_frame(stream: np.ndarray, num_frames: int, fps: float = 25.0) -> np.ndarray:
    """The stream as ER-NeRF stores it, [num_frames, 2, 1024]: row i holds 50-Hz frames 2i
    and 2i+1 (edge-padded past the end). Only for 25 fps video, whose frames are two apart."""
    if abs(fps * 2 - HUBERT_RATE) > 1e-6:
        raise ValueError(f"{HUBERT_FILE} holds two 50-Hz frames per video frame: 25 fps "
                         f"video only, got {fps:g}")
    idx = np.minimum(np.arange(2 * num_frames), len(stream) - 1)
    return np.ascontiguousarray(stream[idx].reshape(num_frames, 2, -1), dtype=np.float32)
