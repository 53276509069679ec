"""Audio features per video frame, shaped [N, T, C] (dataset contract, COMMON.md).

Two kinds, and their combination:

* ``mel``: 80-band log-mel spectrogram at 100 frames/s (n_fft 800, hop 160, window 800 at
  16 kHz, 55-7600 Hz, Slaney mel scale: the Wav2Lip/SyncTalk front end), scaled to [-4, 4];
  per video frame a window of 16 mel frames (160 ms) centred on the frame's time -> [N, 16, 80].
* ``ow``: Google's speech-embedding model (96-d every 80 ms over a 775 ms receptive field),
  run with onnxruntime from the ONNX files that the ``openwakeword`` package ships (no
  download). Embeddings are linearly resampled to 50/s (two per video frame, the rate of the
  DeepSpeech/wav2vec features of ER-NeRF) and windowed 16 per frame -> [N, 16, 96].
* ``hubert``: HuBERT-large's last hidden layer (1024-d at 50/s; ``nerfhead.audio.hubert``:
  needs ``transformers`` and the model's weights), windowed 16 per frame -> [N, 16, 1024]:
  the feature of ER-NeRF and the 3D-Gaussian heads, for users who can have its weights.
* ``mel+ow``: both, each windowed on its own clock, concatenated per window row ->
  [N, 16, 176] (the encoder standardises every channel with the training clip's statistics,
  so the two scales need no matching). The best of the three on held-out GRID speech
  (docs/benchmarks.md, "Lip sync on held-out speech"): the spectrum gives the timing, the
  embedding the articulation.

Video frame ``i`` is taken to be at time ``i / fps`` seconds; feature frame ``j`` of a stream
at ``rate`` frames/s is at ``j / rate``. The window for frame ``i`` covers feature frames
``c - T/2 .. c + T/2 - 1`` with ``c = round(i * rate / fps)``; indices outside the stream repeat
its first/last frame (edge padding).

Audio is decoded by the ffmpeg that imageio-ffmpeg bundles, so any audio or video container
works; no librosa/torchaudio (both are heavy or pull another torch here).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("nerfhead.audio")

SAMPLE_RATE = 16000
MEL_RATE = 100.0  #: mel frames per second (hop 160 at 16 kHz)
OW_RATE = 50.0  #: rate the speech embeddings are resampled to
OW_DIM = 96


class AudioError(RuntimeError):
    """Audio could not be read or featurised; the message names the file."""


def load_audio(path: str | os.PathLike, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Decode the first audio stream of any audio/video file to float32 mono in [-1, 1], on
    the file's clock (``nerfhead.audio.clock``): gaps in its timestamps are silence, repeated
    audio is dropped, and in a video file sample ``t`` goes with the picture at time ``t``,
    as a player plays it. Timestamp jumps are logged as a warning."""
    from nerfhead.audio.clock import ClockError, load_on_clock

    path = Path(path)
    if path.is_dir():
        raise AudioError(f"{path} is a folder, not an audio file: give the audio or video file "
                         "with the speech (a dataset folder's speech is its aud.wav)")
    if not path.is_file():
        raise AudioError(f"audio file not found: {path}")
    check_wav_length(path)
    try:
        samples, found = load_on_clock(path, sr)
    except ClockError as e:
        raise AudioError(str(e)) from e
    if found["num_gaps"] or found["num_overlaps"]:
        log.warning("%s: its audio timestamps jump (%d gaps, %.2f s; %d overlaps, %.2f s): "
                    "placed by timestamp, as players play it (gaps are silence)", path,
                    found["num_gaps"], found["gap_seconds"], found["num_overlaps"],
                    found["overlap_seconds"])
    if samples.size == 0:
        raise AudioError(f"{path}: audio stream is empty")
    if not np.isfinite(samples).all():
        # float WAV/CAF samples pass through ffmpeg as they are: NaN would reach the features
        # (and the network) and the soundtrack; infinity would be clipped to a full-scale click
        bad = np.flatnonzero(~np.isfinite(samples))
        raise AudioError(f"{path}: {bad.size} of its {samples.size} samples are not numbers (NaN) "
                         f"or infinite, from {bad[0] / sr:.2f} s to {bad[-1] / sr:.2f} s: the file "
                         "is damaged (a float recording written by a failing program?); export it "
                         "again from its source")
    # decoded as float, a lossy codec's overshoot passes 1.0 (the 16-bit decode clipped it)
    return np.clip(samples, -1.0, 1.0)


def check_wav_length(path: Path) -> None:
    """Refuse a RIFF WAV file whose header promises more audio than the file holds (copied
    or downloaded in part): ffmpeg decodes what is there without a word, so a render would
    be silently shorter than the speech. A header of a recording that never finished
    (data size 0 or 0xFFFFFFFF, "unknown") is not a promise and passes."""
    import shlex
    import struct

    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return
        byte_rate = 0
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return
            cid, n = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if cid == b"fmt " and n >= 16:
                fmt = f.read(16)
                byte_rate = struct.unpack("<HHIIHH", fmt)[3] if len(fmt) == 16 else 0
                f.seek(n - 16 + (n & 1), 1)
            elif cid == b"data":
                have = size - f.tell()
                if n in (0, 0xFFFFFFFF) or n <= have:
                    return
                rate = float(byte_rate or 1)
                unit = "s" if byte_rate else "bytes"
                raise AudioError(
                    f"{path} is truncated: its WAV header promises {n / rate:.2f} {unit} of "
                    f"audio but the file holds only {have / rate:.2f} {unit} (copied or "
                    "downloaded in part?); copy or export it again. To use the part that is "
                    f"there, rewrite it first: ffmpeg -i {shlex.quote(str(path))} whole.wav")
            else:
                f.seek(n + (n & 1), 1)


# ---------------------------------------------------------------------------------------- mel
def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear (3 bands per 200 Hz) below 1 kHz, logarithmic above."""
    f = np.asarray(f, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    logstep = np.log(6.4) / 27.0
    lin = f / f_sp
    log = min_log_hz / f_sp + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep
    return np.where(f >= min_log_hz, log, lin)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_filterbank(sr: int = SAMPLE_RATE, n_fft: int = 800, n_mels: int = 80,
                   fmin: float = 55.0, fmax: float = 7600.0) -> np.ndarray:
    """[n_mels, n_fft//2+1] triangular filters, area-normalised (Slaney), float32."""
    fft_freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    mel_pts = np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2)
    hz_pts = _mel_to_hz(mel_pts)
    lower = (fft_freqs[None, :] - hz_pts[:-2, None]) / np.diff(hz_pts)[:-1, None]
    upper = (hz_pts[2:, None] - fft_freqs[None, :]) / np.diff(hz_pts)[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (hz_pts[2:] - hz_pts[:-2]))[:, None]
    return weights.astype(np.float32)


def log_mel(samples: np.ndarray, sr: int = SAMPLE_RATE, n_fft: int = 800, hop: int = 160,
            win: int = 800, n_mels: int = 80, fmin: float = 55.0, fmax: float = 7600.0,
            preemphasis: float = 0.97) -> np.ndarray:
    """[frames, n_mels] float32 log-mel at ``sr / hop`` frames/s, frame j centred at j*hop.

    Pre-emphasis, |STFT| (Hann window), mel, 20*log10 - 20 dB, then min -100 dB mapped
    linearly to [-4, 4] (the normalisation of the Wav2Lip front end that SyncTalk uses).
    """
    x = torch.as_tensor(np.asarray(samples, dtype=np.float32))
    if x.ndim != 1:
        raise ValueError(f"log_mel expects mono samples [S], got shape {tuple(x.shape)}")
    if preemphasis:
        x = torch.cat([x[:1], x[1:] - preemphasis * x[:-1]])
    if x.numel() < n_fft // 2 + 1:  # reflect padding needs more samples than half a window
        x = torch.nn.functional.pad(x, (0, n_fft // 2 + 1 - x.numel()))
    padded = torch.nn.functional.pad(x[None, None], (n_fft // 2, n_fft // 2), mode="reflect")[0, 0]
    return log_mel_frames(padded, sr, n_fft, hop, win, n_mels, fmin, fmax)


def log_mel_frames(padded: torch.Tensor, sr: int = SAMPLE_RATE, n_fft: int = 800, hop: int = 160,
                   win: int = 800, n_mels: int = 80, fmin: float = 55.0,
                   fmax: float = 7600.0) -> np.ndarray:
    """The log-mel frames of ``log_mel`` from already pre-emphasised and padded samples:
    frame j from samples ``j*hop .. j*hop + n_fft - 1`` of ``padded`` (``torch.stft`` with
    ``center=False``, which is what ``center=True`` runs after its reflect padding). The
    streaming front end (``nerfhead.audio.stream``) calls this on its ring buffer."""
    spec = torch.stft(padded, n_fft=n_fft, hop_length=hop, win_length=win,
                      window=torch.hann_window(win), center=False,
                      return_complex=True).abs()  # [F, frames]
    fb = torch.from_numpy(_filterbank(sr, n_fft, n_mels, fmin, fmax))
    mel = fb @ spec
    db = 20.0 * torch.log10(torch.clamp(mel, min=1e-5)) - 20.0
    norm = torch.clamp(8.0 * (db + 100.0) / 100.0 - 4.0, -4.0, 4.0)
    return norm.T.contiguous().numpy().astype(np.float32)


@lru_cache(maxsize=4)
def _filterbank(sr, n_fft, n_mels, fmin, fmax) -> np.ndarray:
    return mel_filterbank(sr, n_fft, n_mels, fmin, fmax)


# -------------------------------------------------------------------------------- windowing
def default_num_frames(num_samples: int, sr: int = SAMPLE_RATE, fps: float = 25.0) -> int:
    """Video frames covered by the audio: frame i exists while i / fps < duration."""
    return max(1, int(np.ceil(num_samples / sr * fps - 1e-6)))


def frame_windows(feat: np.ndarray, num_frames: int, fps: float = 25.0, window: int = 16,
                  rate: float = MEL_RATE) -> np.ndarray:
    """[num_frames, window, C] windows of ``feat`` [T, C] (``rate`` frames/s), one per video
    frame, centred on the frame's time, edge-padded at both ends."""
    feat = np.asarray(feat)
    if feat.ndim != 2 or feat.shape[0] == 0:
        raise ValueError(f"frame_windows expects a non-empty [T, C] array, got {feat.shape}")
    centres = np.rint(np.arange(num_frames) * rate / fps).astype(np.int64)
    offsets = np.arange(window) - window // 2
    idx = np.clip(centres[:, None] + offsets[None, :], 0, feat.shape[0] - 1)
    return np.ascontiguousarray(feat[idx])


# ----------------------------------------------------------------------- speech embedding (ow)
def _ow_model_dir() -> Path | None:
    spec = importlib.util.find_spec("openwakeword")  # locate without importing (it pulls sklearn)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "resources" / "models"


def ow_available() -> bool:
    """True when onnxruntime and openwakeword's shipped speech-embedding models are present."""
    d = _ow_model_dir()
    return (importlib.util.find_spec("onnxruntime") is not None and d is not None
            and (d / "melspectrogram.onnx").is_file() and (d / "embedding_model.onnx").is_file())


@lru_cache(maxsize=1)
def _ow_sessions():
    if not ow_available():
        raise AudioError("audio feature 'ow' needs onnxruntime and openwakeword==0.4.0 "
                         "(pip install onnxruntime openwakeword==0.4.0); not installed")
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    d = _ow_model_dir()
    mel = ort.InferenceSession(str(d / "melspectrogram.onnx"), opts, providers=["CPUExecutionProvider"])
    emb = ort.InferenceSession(str(d / "embedding_model.onnx"), opts, providers=["CPUExecutionProvider"])
    return mel, emb


OW_WINDOW, OW_STEP = 76, 8  #: the embedding model's input: 76 mel frames; one output per 8
OW_MEL_HOP, OW_MEL_WIN = 160, 512  #: the ONNX mel model's hop and window, samples


def speech_embeddings(samples: np.ndarray, sr: int = SAMPLE_RATE, batch: int = 256):
    """Speech embeddings [K, 96] and the time (s) of each one's receptive-field centre."""
    if sr != SAMPLE_RATE:
        raise ValueError("speech embeddings need 16 kHz audio")
    mel_sess, emb_sess = _ow_sessions()
    pcm = np.clip(np.asarray(samples, np.float32) * 32768.0, -32768, 32767)
    # pad half a receptive field of silence each side so the first/last frames get an
    # embedding centred on them rather than only ones half a second inside the clip
    pad = OW_WINDOW // 2 * 160
    pcm = np.concatenate([np.zeros(pad, np.float32), pcm, np.zeros(pad, np.float32)])
    spec = np.squeeze(mel_sess.run(None, {"input": pcm[None, :]})[0], axis=(0, 1)) / 10.0 + 2.0
    if spec.shape[0] < OW_WINDOW:  # clips shorter than ~50 ms: one window, padded with its edge
        spec = np.pad(spec, ((0, OW_WINDOW - spec.shape[0]), (0, 0)), mode="edge")
    starts = np.arange(0, max(spec.shape[0] - OW_WINDOW, 0) + 1, OW_STEP)
    wins = np.stack([spec[s:s + OW_WINDOW] for s in starts])[..., None].astype(np.float32)
    out = [emb_sess.run(None, {"input_1": wins[i:i + batch]})[0].reshape(-1, OW_DIM)
           for i in range(0, len(wins), batch)]
    # the ONNX mel model frames the audio every OW_MEL_HOP samples (frames = (S - 512) // 160
    # + 1, no centring); the exact hop, not length / frames, so that an embedding's time does
    # not depend on how long the clip is (the streamed features of nerfhead.audio.stream
    # equal these)
    mel_hop = OW_MEL_HOP / sr
    times = (starts + OW_WINDOW / 2) * mel_hop - pad / sr
    return np.concatenate(out).astype(np.float32), times


def _ow_stream(samples: np.ndarray, sr: int) -> np.ndarray:
    """Embeddings resampled to OW_RATE frames/s (frame j at j / OW_RATE s)."""
    emb, times = speech_embeddings(samples, sr)
    grid = np.arange(int(np.ceil(len(samples) / sr * OW_RATE))) / OW_RATE
    return np.stack([np.interp(grid, times, emb[:, c]) for c in range(emb.shape[1])],
                    axis=1).astype(np.float32)


# ---------------------------------------------------------------------------------- extract
#: kinds made of others, concatenated along the channels in this order
COMBINED = {"mel+ow": ("mel", "ow")}
KINDS = ("mel", "ow", "hubert", *COMBINED)


def extract(path_or_samples, kind: str = "mel", num_frames: int | None = None,
            fps: float = 25.0, window: int = 16, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Audio features for ``num_frames`` video frames: float32 [N, window, C].

    ``path_or_samples``: a file (any audio/video container) or float mono samples at ``sr``.
    ``num_frames`` defaults to the frames the audio covers at ``fps``.
    """
    if isinstance(path_or_samples, (str, os.PathLike)):
        samples = load_audio(path_or_samples, sr)
    else:
        samples = np.asarray(path_or_samples, dtype=np.float32)
    if num_frames is None:
        num_frames = default_num_frames(len(samples), sr, fps)
    if kind in COMBINED:
        return np.concatenate([extract(samples, k, num_frames, fps, window, sr)
                               for k in COMBINED[kind]], axis=2)
    if kind == "mel":
        feat, rate = log_mel(samples, sr), sr / 160.0
    elif kind == "ow":
        feat, rate = _ow_stream(samples, sr), OW_RATE
    elif kind == "hubert":
        from nerfhead.audio.hubert import HUBERT_RATE, hubert_stream

        feat, rate = hubert_stream(samples, sr), HUBERT_RATE
    else:
        raise ValueError(f"unknown audio feature kind {kind!r}; use one of {', '.join(KINDS)}")
    return frame_windows(feat, num_frames, fps, window, rate).astype(np.float32)
