"""Streaming audio features: the offline features of ``nerfhead.audio.features``, computed
incrementally as audio arrives, for a live renderer.

``StreamingFeatures(kind)`` takes 16 kHz mono float samples in chunks of any size (``push``)
and returns, as soon as their look-ahead has arrived, one ``FrameAudio`` per video frame: the
[T, C] feature window of that frame and, for the model's temporal smoother, the windows of its
``smoother_window`` neighbours. ``finish`` flushes the end of a stream with the same edge
handling as the offline code. On the same audio the windows equal ``features.extract``'s
(tests/test_serve_stream.py; mel to 1e-5, ow to 1e-4: the embedding model is run in other
batch sizes).

Each front end keeps a bounded buffer (its ring): the mel front end about one STFT window of
samples, the ow front end one embedding receptive field (0.78 s) of samples and its 76 mel
frames; the windowing keeps ``T`` feature frames and the smoother ``smoother_window`` windows.

**Algorithmic latency** (``lookahead_seconds``): how far past a video frame's time the audio
must have arrived before that frame can be rendered, so the least delay between hearing a
sound and showing the face that says it, before any computing. ``mel``: half an STFT window
(25 ms) + the second half of the 16-frame window (70 ms) = 95 ms; ``ow``: the embedding's
receptive field reaches 402 ms past its centre, plus up to 70 ms until an embedding starts at
or after the 50/s row, plus 140 ms of window = up to 612 ms. The model's temporal smoother
adds ``(smoother_window - smoother_window // 2 - 1)`` frames of 40 ms (head preset, 8
windows: 120 ms; tiny preset, 4: 40 ms).
"""

from __future__ import annotations

from dataclasses import dataclass

from functools import lru_cache

import numpy as np

from nerfhead.audio import features as F


@dataclass
class FrameAudio:
    """The audio input of one video frame, ready for ``Renderer.render``."""

    index: int  #: video frame (time index / fps)
    windows: np.ndarray  #: [W, T, C] windows of frames index - W//2 .. index + W - W//2 - 1
    centre: int  #: row of ``windows`` holding frame ``index`` (pass as the render index)


# --------------------------------------------------------------------------- front ends
@lru_cache(maxsize=1)
def _mel_constants():
    """Hann window (torch's periodic one) and the mel filterbank of ``features.log_mel``."""
    n = np.arange(800)
    window = (0.5 - 0.5 * np.cos(2 * np.pi * n / 800)).astype(np.float32)
    return window, F.mel_filterbank().astype(np.float64)


def _log_mel_rows(padded: np.ndarray, n_fft: int = 800, hop: int = 160) -> np.ndarray:
    """``features.log_mel_frames`` in numpy: rows of windows ``j*hop .. j*hop + n_fft - 1``.

    numpy rather than torch here: a live server calls this 50 times a second for two rows,
    and torch's thread pool costs milliseconds per small op on a busy CPU (measured 14 ms
    per 20-ms push with 2 threads under load, 0.7 ms in numpy)."""
    window, fb = _mel_constants()
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop] * window
    spec = np.abs(np.fft.rfft(frames, axis=1))  # [rows, 401]
    mel = spec @ fb.T
    db = 20.0 * np.log10(np.maximum(mel, 1e-5)) - 20.0
    return np.clip(8.0 * (db + 100.0) / 100.0 - 4.0, -4.0, 4.0).astype(np.float32)


class _MelStream:
    """Incremental ``features.log_mel``: rows at 100/s, row j centred on sample 160 j."""

    rate = F.MEL_RATE
    channels = 80
    n_fft, hop = 800, 160
    half = n_fft // 2
    preemphasis = np.float32(0.97)

    def __init__(self):
        self.total = 0  #: raw samples received
        self.prev: np.ndarray | None = None  #: last raw sample (pre-emphasis state)
        self.pending: list[np.ndarray] = []  #: pre-emphasised samples before the buffer starts
        self.buf: np.ndarray | None = None  #: pre-emphasised, padded coordinates from buf_start
        self.buf_start = 0
        self.next = 0  #: next row to compute

    def lookahead_samples(self) -> int:
        return self.half  # row j needs samples up to 160 j + 400

    def _emphasise(self, x: np.ndarray) -> np.ndarray:
        # as log_mel: y[n] = x[n] - 0.97 x[n-1], y[0] = x[0]
        xx = x if self.prev is None else np.concatenate([self.prev, x])
        y = xx[1:] - self.preemphasis * xx[:-1]
        if self.prev is None:
            y = np.concatenate([x[:1], y])
        self.prev = x[-1:].copy()
        return y

    def _start(self) -> None:
        x = np.concatenate(self.pending)
        self.pending = []
        # left reflect padding of log_mel (torch 'reflect': x[400], ..., x[1])
        self.buf = np.concatenate([x[1:self.half + 1][::-1], x])
        self.buf_start = 0

    def _rows(self, end_padded: int) -> np.ndarray:
        """Rows whose windows end at or before padded sample ``end_padded``."""
        last = (end_padded - self.n_fft) // self.hop  # last complete row
        if self.buf is None or last < self.next:
            return np.zeros((0, self.channels), np.float32)
        a = self.next * self.hop - self.buf_start
        b = last * self.hop + self.n_fft - self.buf_start
        rows = _log_mel_rows(self.buf[a:b])
        self.next = last + 1
        return rows

    def _trim(self) -> None:
        # keep from the next row's window start, and the last 401 samples (end reflection)
        keep_from = min(self.next * self.hop, self.buf_start + len(self.buf) - (self.half + 1))
        cut = keep_from - self.buf_start
        if cut > 0:
            self.buf = self.buf[cut:]
            self.buf_start = keep_from

    def push(self, x: np.ndarray) -> np.ndarray:
        if len(x) == 0:
            return np.zeros((0, self.channels), np.float32)
        y = self._emphasise(np.asarray(x, np.float32))
        self.total += len(x)
        if self.buf is None:
            self.pending.append(y)
            if self.total <= self.half:
                return np.zeros((0, self.channels), np.float32)
            self._start()
        else:
            self.buf = np.concatenate([self.buf, y])
        rows = self._rows(self.buf_start + len(self.buf))
        self._trim()
        return rows

    def finish(self) -> np.ndarray:
        if self.total == 0:
            return np.zeros((0, self.channels), np.float32)
        if self.buf is None:  # shorter than half a window: log_mel pads zeros to 401 first
            self.pending.append(np.zeros(self.half + 1 - self.total, np.float32))
            self._start()
            n = self.half + 1
        else:
            n = self.total
        self.buf = np.concatenate([self.buf, self.buf[-(self.half + 1):-1][::-1]])  # right reflection
        last_row = n // self.hop
        return self._rows(last_row * self.hop + self.n_fft)


class _OwStream:
    """Incremental ``features._ow_stream``: speech embeddings resampled to 50/s."""

    rate = F.OW_RATE
    channels = F.OW_DIM
    hop, win = F.OW_MEL_HOP, F.OW_MEL_WIN
    pad = F.OW_WINDOW // 2 * F.OW_MEL_HOP  # the zeros speech_embeddings puts at each side

    def __init__(self):
        self.mel_sess, self.emb_sess = F._ow_sessions()
        self.total = 0
        self.pcm = np.zeros(self.pad, np.float32)  #: int16-scaled samples, padded coordinates
        self.pcm_start = 0
        self.spec = np.zeros((0, 32), np.float32)  #: ONNX mel rows from spec_start
        self.spec_start = 0
        self.next_mel = 0
        self.next_emb = 0  #: start (mel row) of the next embedding window
        self.times: list[float] = []  #: embedding times (s), the last few
        self.embs: list[np.ndarray] = []
        self.next_row = 0  #: next 50/s output row

    def lookahead_samples(self) -> int:
        # row g needs an embedding at or after g / 50 s: window start s >= 2 g (a multiple of
        # 8, so up to 7 mel rows later), which needs mel rows up to s + 75, i.e. samples up to
        # 160 s + 75 * 160 + 512 - pad; measured over all phases by the tests
        return (F.OW_STEP - 1) * self.hop + (F.OW_WINDOW - 1) * self.hop + self.win - self.pad

    def _mel(self) -> None:
        end = self.pcm_start + len(self.pcm)
        last = (end - self.win) // self.hop
        if last < self.next_mel:
            return
        a = self.next_mel * self.hop - self.pcm_start
        b = last * self.hop + self.win - self.pcm_start
        out = self.mel_sess.run(None, {"input": self.pcm[None, a:b]})[0]
        rows = np.squeeze(out, axis=(0, 1)) / 10.0 + 2.0
        self.spec = np.concatenate([self.spec, rows.astype(np.float32)])
        self.next_mel = last + 1
        cut = self.next_mel * self.hop - self.pcm_start
        self.pcm = self.pcm[cut:]
        self.pcm_start += cut

    def _embed(self) -> None:
        have = self.spec_start + len(self.spec)
        starts = []
        s = self.next_emb
        while s + F.OW_WINDOW <= have:
            starts.append(s)
            s += F.OW_STEP
        if not starts:
            return
        wins = np.stack([self.spec[t - self.spec_start:t - self.spec_start + F.OW_WINDOW]
                         for t in starts])[..., None].astype(np.float32)
        emb = self.emb_sess.run(None, {"input_1": wins})[0].reshape(-1, F.OW_DIM)
        # the same float expression as speech_embeddings
        t = (np.asarray(starts) + F.OW_WINDOW / 2) * (F.OW_MEL_HOP / F.SAMPLE_RATE) \
            - self.pad / F.SAMPLE_RATE
        self.times += t.tolist()
        self.embs += list(emb.astype(np.float32))
        self.next_emb = s
        cut = self.next_emb - self.spec_start
        self.spec = self.spec[cut:]
        self.spec_start = self.next_emb

    def _interp(self, rows: list[int]) -> np.ndarray:
        if not rows:
            return np.zeros((0, self.channels), np.float32)
        grid = np.asarray(rows) / F.OW_RATE
        times, emb = np.asarray(self.times), np.stack(self.embs)
        out = np.stack([np.interp(grid, times, emb[:, c]) for c in range(self.channels)], axis=1)
        self.next_row = rows[-1] + 1
        # keep the embedding at or before the next row's time (its left bracket) onwards
        t_next = self.next_row / F.OW_RATE
        k = max(0, int(np.searchsorted(times, t_next, side="right")) - 1)
        self.times, self.embs = self.times[k:], self.embs[k:]
        return out.astype(np.float32)

    def push(self, x: np.ndarray) -> np.ndarray:
        if len(x) == 0:
            return np.zeros((0, self.channels), np.float32)
        pcm = np.clip(np.asarray(x, np.float32) * 32768.0, -32768, 32767)
        self.total += len(x)
        self.pcm = np.concatenate([self.pcm, pcm])
        self._mel()
        self._embed()
        rows = []
        g = self.next_row
        while self.times and self.times[-1] >= g / F.OW_RATE:
            rows.append(g)
            g += 1
        return self._interp(rows)

    def finish(self) -> np.ndarray:
        if self.total == 0:
            return np.zeros((0, self.channels), np.float32)
        self.pcm = np.concatenate([self.pcm, np.zeros(self.pad, np.float32)])
        self._mel()
        if not self.times and len(self.spec) < F.OW_WINDOW:  # very short clip: edge-padded
            self.spec = np.pad(self.spec, ((0, F.OW_WINDOW - len(self.spec)), (0, 0)), mode="edge")
        self._embed()
        n = int(np.ceil(self.total / F.SAMPLE_RATE * F.OW_RATE))
        return self._interp(list(range(self.next_row, n)))


FRONT_ENDS = {"mel": _MelStream, "ow": _OwStream}


# --------------------------------------------------------------------------- windowing
class StreamingFeatures:
    """Push audio, get each video frame's feature windows once their look-ahead has arrived.

    ``kind``: "mel" or "ow" (the run's ``audio_kind``); ``window``: T feature frames per video
    frame (16); ``smoother_window``: windows the model's temporal smoother reads (the run's
    ``audio_window``; 1 for the bare windows).
    """

    def __init__(self, kind: str, fps: float = 25.0, window: int = 16, smoother_window: int = 1):
        if kind not in FRONT_ENDS:
            why = ("HuBERT reads whole utterances: its features are not computed from live "
                   "audio here" if kind == "hubert" else
                   "a run trained on precomputed features cannot be driven live")
            raise ValueError(f"streaming features of kind {kind!r}: only {sorted(FRONT_ENDS)} "
                             f"can be computed from live audio ({why}); serve a run trained "
                             "on mel or ow features, or render the audio with `nerfhead render`")
        self.kind, self.fps, self.window = kind, fps, window
        self.smoother = max(1, int(smoother_window))
        self.front = FRONT_ENDS[kind]()
        self.rate = self.front.rate
        self.rows: list[np.ndarray] = []  #: feature rows from rows_start
        self.rows_start = 0
        self.rows_total = 0
        self.next_window = 0  #: next video frame whose [T, C] window is made
        self.wins: list[np.ndarray] = []  #: windows from wins_start (smoother context)
        self.wins_start = 0
        self.next_frame = 0  #: next FrameAudio to hand out
        self.finished = False

    # ------------------------------------------------------------------ latency
    @property
    def lookahead_seconds(self) -> float:
        """Algorithmic latency: audio needed past a frame's time before it is ready (s)."""
        T = self.window
        rows_ahead = T - T // 2 - 1
        feat = self.front.lookahead_samples() / F.SAMPLE_RATE + rows_ahead / self.rate
        return feat + (self.smoother - self.smoother // 2 - 1) / self.fps

    @property
    def samples_in(self) -> int:
        return self.front.total

    # ------------------------------------------------------------------ streaming
    def _centre(self, i: int) -> int:
        return int(np.rint(i * self.rate / self.fps))

    def _windows(self, final_rows: int | None, num_frames: int | None) -> None:
        """Make the [T, C] windows whose rows are all in (or, at the end, clipped to the last)."""
        T = self.window
        offsets = np.arange(T) - T // 2
        while True:
            i = self.next_window
            if num_frames is not None and i >= num_frames:
                break
            c = self._centre(i)
            if final_rows is None and c + T - T // 2 - 1 >= self.rows_total:
                break
            hi = (final_rows if final_rows is not None else self.rows_total) - 1
            idx = np.clip(c + offsets, 0, hi) - self.rows_start
            self.wins.append(np.stack([self.rows[k] for k in idx]))
            self.next_window += 1
        # rows older than the next window's first row are no longer needed
        first = max(0, self._centre(self.next_window) - T // 2)
        cut = min(first - self.rows_start, len(self.rows))
        if cut > 0:
            del self.rows[:cut]
            self.rows_start += cut

    def _frames(self, final: bool) -> list[FrameAudio]:
        W = self.smoother
        out = []
        while self.next_frame < self.next_window:
            i = self.next_frame
            need = i + W - W // 2 - 1
            if not final and need >= self.next_window:
                break
            hi = self.next_window - 1
            idx = [min(max(i - W // 2 + k, 0), hi) - self.wins_start for k in range(W)]
            out.append(FrameAudio(i, np.stack([self.wins[k] for k in idx]), W // 2))
            self.next_frame += 1
        first = max(0, self.next_frame - W // 2)
        cut = min(first - self.wins_start, len(self.wins))
        if cut > 0:
            del self.wins[:cut]
            self.wins_start += cut
        return out

    def _add_rows(self, rows: np.ndarray) -> None:
        self.rows.extend(list(rows))
        self.rows_total += len(rows)

    def push(self, samples: np.ndarray) -> list[FrameAudio]:
        """Add 16 kHz mono float samples; the frames that became ready, in order."""
        if self.finished:
            raise RuntimeError("StreamingFeatures.push after finish")
        samples = np.asarray(samples, np.float32).reshape(-1)
        self._add_rows(self.front.push(samples))
        self._windows(None, None)
        return self._frames(final=False)

    def finish(self) -> list[FrameAudio]:
        """End of the stream: the remaining frames, edge-padded as the offline features are."""
        if self.finished:
            return []
        self.finished = True
        self._add_rows(self.front.finish())
        if self.rows_total == 0:
            return []
        n = F.default_num_frames(self.front.total, F.SAMPLE_RATE, self.fps)
        self._windows(self.rows_total, n)
        return self._frames(final=True)


class CombinedStreamingFeatures:
    """The streaming windows of a combined kind (``mel+ow``): one ``StreamingFeatures`` per
    part, each on its own clock, and each frame's windows concatenated along the channels as
    ``features.extract`` concatenates them. A frame is handed out when every part has it, so
    the latency is the slowest part's."""

    def __init__(self, kinds, fps: float = 25.0, window: int = 16, smoother_window: int = 1):
        self.parts = [StreamingFeatures(k, fps, window, smoother_window) for k in kinds]
        self.ready: list[list[FrameAudio]] = [[] for _ in self.parts]
        self.next_frame = 0  #: next FrameAudio to hand out

    @property
    def lookahead_seconds(self) -> float:
        return max(p.lookahead_seconds for p in self.parts)

    @property
    def samples_in(self) -> int:
        return self.parts[0].samples_in

    def _joined(self) -> list[FrameAudio]:
        n = min(len(r) for r in self.ready)
        out = [FrameAudio(self.ready[0][i].index,
                          np.concatenate([r[i].windows for r in self.ready], axis=2),
                          self.ready[0][i].centre) for i in range(n)]
        for r in self.ready:
            del r[:n]
        self.next_frame += n
        return out

    def push(self, samples: np.ndarray) -> list[FrameAudio]:
        for part, ready in zip(self.parts, self.ready):
            ready.extend(part.push(samples))
        return self._joined()

    def finish(self) -> list[FrameAudio]:
        for part, ready in zip(self.parts, self.ready):
            ready.extend(part.finish())
        return self._joined()


def streaming_features(kind: str, fps: float = 25.0, window: int = 16, smoother_window: int = 1):
    """``StreamingFeatures`` for a run's ``audio_kind``, or the combined stream of a combined
    kind; ValueError for a kind that cannot be computed from live audio."""
    if kind in F.COMBINED:
        return CombinedStreamingFeatures(F.COMBINED[kind], fps, window, smoother_window)
    return StreamingFeatures(kind, fps, window, smoother_window)
