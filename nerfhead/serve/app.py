"""The ``nerfhead serve`` web app (aiohttp): the page, WebRTC sessions, and an API to push audio.

Routes (everything under ``/api`` needs the token when one is set: ``Authorization: Bearer
TOKEN`` or ``?token=TOKEN``):

- ``GET /``: the page (start/stop, microphone or a file, the speaker's video and audio, the
  A/V offset and frame rate of the session);
- ``GET /api/health``: the run, sessions in use and the cap, the delay and look-ahead;
- ``POST /api/offer`` ``{"sdp", "type"}``: a WebRTC session (the browser's microphone track, if
  it sends one, drives it); answers ``{"sdp", "type", "session"}``;
- ``POST /api/sessions``: a session without WebRTC (frames at ``.../frame``), for API clients;
- ``POST /api/sessions/ID/audio``: push audio: any file ffmpeg reads, or raw PCM with
  ``Content-Type: audio/L16`` or ``?format=s16le`` (``&rate=16000&channels=1``);
- ``GET /api/sessions/ID/ws``: WebSocket; binary messages are PCM s16le (``?rate=&channels=``),
  the server answers each with the session's stats as JSON, or an error;
- ``GET /api/sessions/ID``: stats; ``GET /api/sessions/ID/frame``: the frame shown now (JPEG);
  ``DELETE /api/sessions/ID``: end it.

A session over the cap gets ``503 {"error": "busy", ...}``; bad audio ``400`` with the reason,
to that client only; a session ends (its render task, peer connection and buffers freed) when
its peer goes away, at the session length limit, or, without WebRTC, after ``idle_seconds``
without a request.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nerfhead.audio.features import SAMPLE_RATE, AudioError, load_audio
from nerfhead.serve.session import FPS, LiveSession, SessionLimits

log = logging.getLogger("nerfhead.serve")


@dataclass
class ServeConfig:
    """Settings of ``nerfhead serve``."""

    host: str = "127.0.0.1"
    """Address to bind; 127.0.0.1 serves this machine only (0.0.0.0: every interface)."""
    port: int = 8080
    """TCP port."""
    token: str | None = None
    """Access token for /api (None: no token; then bind only where you trust every client)."""
    max_sessions: int = 2
    """Sessions at once; one more gets a 503 "busy"."""
    max_session_seconds: float = 600.0
    """A session ends after this long."""
    max_upload_mb: float = 20.0
    """Largest request body (uploaded audio), MiB."""
    idle_seconds: float = 60.0
    """A session without WebRTC ends after this long without a request."""
    jitter: float = 0.1
    """Seconds the input may lag before silence fills in (see nerfhead.serve.session)."""
    seed: int = 0
    """Seed of the head motion and blinks (session n uses seed + n)."""
    audio_level: str = "match"
    """match: each session's audio is scaled, for the features only, towards the speech level of
    the clip the run was trained on, following the last 10 s of speech
    (``nerfhead.audio.level.LiveLevelMatch``); keep: the features of the audio as given."""


CONNECT_GRACE = 20.0  #: seconds a WebRTC peer may stay unconnected before its session ends


class Busy(RuntimeError):
    pass


class Server:
    """The sessions of one loaded run. ``renderer``: a ``Renderer``; ``motion_model``: the
    speaker's ``HeadMotionModel`` or None (the clip's poses play)."""

    def __init__(self, renderer, cfg: ServeConfig, motion_model=None, clock=None):
        import time

        from nerfhead.audio.stream import streaming_features

        self.renderer, self.cfg, self.motion_model = renderer, cfg, motion_model
        self.clock = clock or time.monotonic
        self.sessions: dict[str, LiveSession] = {}
        self.tasks: dict[str, list[asyncio.Task]] = {}
        self.peers: dict[str, object] = {}
        self.activity: dict[str, float] = {}
        self.unconnected: dict[str, float] = {}  #: since when a peer is not connected
        self.count = 0
        self.render_pool = ThreadPoolExecutor(1, thread_name_prefix="nerfhead-render")
        self.level_target = None  #: dBFS the sessions' speech is brought to (None: as given)
        if cfg.audio_level == "match":
            from nerfhead.audio.level import training_level_db

            self.level_target = training_level_db(renderer.data_dir)
            if self.level_target is not None:
                log.info("session audio is brought to the training clip's speech level, %.1f dBFS, "
                         "for the features (--audio-level keep: as given)", self.level_target)
        # warm-up: one frame of silence at the start of the motion, timed (three times: the
        # first calls pay one-off costs), which is also the picture before a session's first
        # frame; sessions then refine the estimate with every frame they render
        feats = streaming_features(renderer.audio_kind, FPS, smoother_window=renderer.audio_window)
        fa = (feats.push(np.zeros(SAMPLE_RATE, np.float32)) or feats.finish())[0]
        motion = self._motion(0)
        c2w, expr = motion.frame(0, np.zeros(640, np.float32))
        self.motion_source, self.blink_source = motion.source, motion.blink_source
        times = []
        for _ in range(3):
            t = time.perf_counter()
            self.idle_frame = renderer.render(c2w, fa.windows, fa.centre, expr, mean_latent=True)
            times.append(time.perf_counter() - t)
        self.expected_render = min(times[1:])
        log.info("warm-up render: %.0f ms per frame (%s)", 1000 * self.expected_render,
                 renderer.model.device)

    def _motion(self, seed: int):
        from nerfhead.motion.live import LiveMotion

        run_dir = self.renderer.run.run_dir
        return LiveMotion(self.renderer.data_dir, run_dir, seed=seed,
                          use_model=self.motion_model is not None, model=self.motion_model)

    def limits(self) -> SessionLimits:
        return SessionLimits(jitter=self.cfg.jitter, max_seconds=self.cfg.max_session_seconds)

    # ------------------------------------------------------------------ sessions
    def open_session(self) -> LiveSession:
        if len(self.sessions) >= self.cfg.max_sessions:
            raise Busy(f"all {self.cfg.max_sessions} sessions are in use; try again later "
                       "(the server's --max-sessions)")
        self.count += 1
        s = LiveSession(self.renderer, self._motion(self.cfg.seed + self.count),
                        self.expected_render, self.limits(), clock=self.clock,
                        idle_frame=self.idle_frame, level_target=self.level_target)
        self.sessions[s.id] = s
        self.activity[s.id] = self.clock()
        self.tasks[s.id] = [asyncio.get_running_loop().create_task(self._render_loop(s))]
        log.info("session %s opened (%d/%d); delay %.0f ms", s.id, len(self.sessions),
                 self.cfg.max_sessions, 1000 * s.delay)
        return s

    async def close_session(self, sid: str, reason: str) -> None:
        s = self.sessions.pop(sid, None)
        if s is None:
            return
        s.closed = reason
        current = asyncio.current_task()
        for t in self.tasks.pop(sid, []):
            if t is not current:
                t.cancel()
        pc = self.peers.pop(sid, None)
        if pc is not None:
            await pc.close()
        self.activity.pop(sid, None)
        self.unconnected.pop(sid, None)
        log.info("session %s closed: %s; %s", sid, reason, json.dumps(s.stats()))

    async def _render_loop(self, s: LiveSession) -> None:
        loop = asyncio.get_running_loop()
        try:
            while s.closed is None:
                if s.expired:
                    await self.close_session(s.id, "session length limit reached "
                                             f"({self.cfg.max_session_seconds:.0f} s)")
                    return
                s.step()
                item = s.next_render()
                if item is None:
                    await asyncio.sleep(0.005)
                    continue
                t = s.now()
                idx, rgb, dt = await loop.run_in_executor(self.render_pool, s.render, item)
                # the wait for the shared render thread counts: it delays this frame as much
                s.rendered(idx, rgb, dt, waited=s.now() - t)
                # the next session's delay starts from what rendering costs now
                self.expected_render += 0.05 * (dt - self.expected_render)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # this session fails alone; the others go on
            log.exception("session %s: rendering failed", s.id)
            s.error = f"rendering failed: {e}"
            await self.close_session(s.id, s.error)

    async def janitor(self) -> None:
        """End sessions whose peer went away or that sat idle (without WebRTC)."""
        while True:
            await asyncio.sleep(0.5)
            now = self.clock()
            for sid in list(self.sessions):
                pc = self.peers.get(sid)
                if pc is not None and pc.connectionState in ("failed", "closed"):
                    await self.close_session(sid, f"peer connection {pc.connectionState}")
                elif pc is not None and pc.connectionState != "connected":
                    # never connected, or lost without a goodbye: give it CONNECT_GRACE
                    since = self.unconnected.setdefault(sid, now)
                    if now - since > CONNECT_GRACE:
                        await self.close_session(sid, f"peer {pc.connectionState} for "
                                                 f"{CONNECT_GRACE:.0f} s")
                elif pc is not None:
                    self.unconnected.pop(sid, None)
                elif pc is None and now - self.activity.get(sid, now) > self.cfg.idle_seconds:
                    await self.close_session(sid, f"no request for {self.cfg.idle_seconds:.0f} s")

    async def shutdown(self) -> None:
        for sid in list(self.sessions):
            await self.close_session(sid, "server stopped")
        self.render_pool.shutdown(wait=False, cancel_futures=True)


# ---------------------------------------------------------------------------------- audio in
def pcm_params(rate, channels) -> tuple[int, int]:
    """The ``rate`` and ``channels`` of raw PCM as given in a query or Content-Type (text or
    int) -> ints; ValueError naming the parameter and what it takes."""
    out = []
    for name, value, low, high in (("rate", rate, 1000, 192000), ("channels", channels, 1, 8)):
        try:
            v = int(str(value).strip())
        except ValueError:
            raise ValueError(f"PCM {name} {value!r} is not a whole number (e.g. rate=16000, "
                             "channels=1)") from None
        if not low <= v <= high:
            raise ValueError(f"PCM {name} {v} is out of range ({low} to {high}"
                             f"{' samples per second' if name == 'rate' else ''})")
        out.append(v)
    return out[0], out[1]


class PcmStream:
    """One stream of raw s16le PCM (a WebSocket's chunks, or one request's body) -> 16 kHz
    mono float32. Other rates are resampled by one libswresample context (PyAV) kept across
    the chunks: resampling each chunk on its own puts a step at every chunk's edge (up to 0.39
    of full scale on a 440-Hz tone at 48 kHz cut in 37 chunks; here the chunked stream equals
    the whole one). ValueError naming what is wrong with a chunk."""

    def __init__(self, rate, channels):
        self.rate, self.channels = pcm_params(rate, channels)
        self._resampler = None
        if self.rate != SAMPLE_RATE:
            import av

            self._resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)

    def push(self, body: bytes) -> np.ndarray:
        """The samples of the next chunk (the resampler holds back a few ms until the next)."""
        if body[:4] in (b"RIFF", b"RIFX", b"RF64") and body[8:12] == b"WAVE":
            # its header would play as a click, and its own rate and channels be ignored
            raise ValueError("this is a WAV file, not raw PCM: send it as a file (no format=s16le, "
                             "no Content-Type audio/L16) and its header is read; over the "
                             "WebSocket, send the samples without the header")
        ch = self.channels
        if len(body) % (2 * ch):
            raise ValueError(f"PCM s16le with {ch} channel(s): {len(body)} bytes is not a whole "
                             f"number of {2 * ch}-byte samples")
        x = np.frombuffer(body, "<i2").astype(np.float32).reshape(-1, ch).mean(1) / 32768.0
        if self._resampler is None or not len(x):
            return x
        import av

        frame = av.AudioFrame.from_ndarray(x[None], format="flt", layout="mono")
        frame.sample_rate = self.rate
        return self._resampled(self._resampler.resample(frame))

    def flush(self) -> np.ndarray:
        """The samples the resampler still holds (at the end of the stream)."""
        return self._resampled(self._resampler.resample(None)) if self._resampler else \
            np.zeros(0, np.float32)

    @staticmethod
    def _resampled(frames) -> np.ndarray:
        parts = [f.to_ndarray().reshape(-1) for f in frames]
        return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)


def decode_pcm(body: bytes, rate: int, channels: int) -> np.ndarray:
    """One body of s16le PCM -> 16 kHz mono float32; ValueError naming what is wrong."""
    stream = PcmStream(rate, channels)
    x = stream.push(body)
    return np.concatenate([x, stream.flush()]) if len(body) else x


def decode_file(body: bytes) -> np.ndarray:
    """Any file ffmpeg reads -> 16 kHz mono float32; AudioError naming the cause."""
    if not body:
        raise AudioError("the request has no audio (empty body)")
    with tempfile.NamedTemporaryFile(prefix="nerfhead-serve-", suffix=".upload") as f:
        f.write(body)
        f.flush()
        try:
            return load_audio(f.name)
        except AudioError as e:
            raise AudioError(str(e).replace(f.name, "the uploaded file")) from None


# ---------------------------------------------------------------------------------- the app
def build_app(server: Server):
    from aiohttp import WSMsgType, web
    from aiohttp.helpers import parse_mimetype

    cfg = server.cfg
    BUSY = {"error": "busy"}

    def error(status: int, msg: str, **extra):
        return web.json_response({"error": msg, **extra}, status=status)

    @web.middleware
    async def auth(request, handler):
        if cfg.token and request.path.startswith("/api"):
            got = request.query.get("token") or ""
            header = request.headers.get("Authorization", "")
            if header.startswith("Bearer "):
                got = header[7:]
            if not hmac.compare_digest(got.encode(), cfg.token.encode()):
                return error(401, "missing or wrong token (give Authorization: Bearer TOKEN or "
                                  "?token=TOKEN)")
        return await handler(request)

    def session_of(request) -> LiveSession:
        sid = request.match_info["sid"]
        s = server.sessions.get(sid)
        if s is None:
            raise web.HTTPNotFound(text=json.dumps({"error": f"no session {sid} (ended or "
                                                    "never opened)"}),
                                   content_type="application/json")
        server.activity[sid] = server.clock()
        return s

    def busy_response(e: Busy):
        return web.json_response({**BUSY, "message": str(e), "max_sessions": cfg.max_sessions},
                                 status=503, headers={"Retry-After": "10"})

    async def page(request):
        from nerfhead.serve.page import PAGE

        return web.Response(text=PAGE, content_type="text/html")

    async def health(request):
        r = server.renderer
        return web.json_response({
            "run": str(r.run.run_dir), "step": r.run.step, "audio_kind": r.audio_kind,
            "size": [r.camera.width, r.camera.height], "fps": FPS,
            "sessions": len(server.sessions), "max_sessions": cfg.max_sessions,
            "expected_render_ms": round(1000 * server.expected_render, 1),
            "motion": server.motion_source, "blinks": server.blink_source})

    async def offer(request):
        from aiortc import RTCPeerConnection, RTCSessionDescription

        from nerfhead.serve.tracks import audio_track, consume_audio, video_track

        try:
            body = await request.json()
            desc = RTCSessionDescription(sdp=body["sdp"], type=body["type"])
        except (ValueError, KeyError, TypeError):
            return error(400, "the offer must be JSON {\"sdp\": ..., \"type\": \"offer\"}")
        try:
            s = server.open_session()
        except Busy as e:
            return busy_response(e)
        pc = RTCPeerConnection()
        server.peers[s.id] = pc

        @pc.on("track")
        def on_track(track):
            if track.kind == "audio":
                server.tasks[s.id].append(asyncio.ensure_future(consume_audio(track, s)))

        @pc.on("connectionstatechange")
        async def on_state():
            if pc.connectionState in ("failed", "closed"):
                await server.close_session(s.id, f"peer connection {pc.connectionState}")

        try:
            await pc.setRemoteDescription(desc)
            pc.addTrack(audio_track(s))
            pc.addTrack(video_track(s))
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as e:  # a malformed SDP: this client's error only
            await server.close_session(s.id, f"bad offer: {e}")
            return error(400, f"cannot answer this WebRTC offer: {e}")
        return web.json_response({"sdp": pc.localDescription.sdp, "type": pc.localDescription.type,
                                  "session": s.id, "delay_ms": round(1000 * s.delay, 1)})

    async def create(request):
        try:
            s = server.open_session()
        except Busy as e:
            return busy_response(e)
        return web.json_response({"session": s.id, "delay_ms": round(1000 * s.delay, 1),
                                  "lookahead_ms": round(1000 * s.lookahead, 1)})

    async def stats(request):
        return web.json_response(session_of(request).stats())

    async def delete(request):
        s = session_of(request)
        await server.close_session(s.id, "closed by the client")
        return web.json_response(s.stats())

    async def push(request):
        s = session_of(request)
        body = await request.read()
        loop = asyncio.get_running_loop()
        fmt = request.query.get("format")
        if fmt not in (None, "s16le"):
            return error(400, f"bad audio: format={fmt!r} is not known: give format=s16le for raw "
                              "16-bit PCM, or no format for a file (WAV, MP3, ...)", session=s.id)
        if request.content_type in ("multipart/form-data", "application/json"):
            return error(400, f"bad audio: the body is {request.content_type}, not audio: send the "
                              "file itself as the request body (curl --data-binary @speech.wav), "
                              "not as a form upload (-F) or inside JSON", session=s.id)
        if not body:  # raw PCM too: a push of nothing is a client's mistake, not 0 s of audio
            s.error = "the request has no audio (empty body)"
            return error(400, f"bad audio: {s.error}", session=s.id)
        try:
            if request.content_type == "audio/l16" or fmt == "s16le":
                params = parse_mimetype(request.headers.get("Content-Type", "")).parameters
                x = decode_pcm(body, request.query.get("rate", params.get("rate", SAMPLE_RATE)),
                               request.query.get("channels", params.get("channels", 1)))
            else:
                x = await loop.run_in_executor(None, decode_file, body)
            queued = s.push_audio(x)
        except (ValueError, AudioError) as e:
            s.error = str(e)
            return error(400, f"bad audio: {e}", session=s.id)
        return web.json_response({"session": s.id, "seconds": round(len(x) / SAMPLE_RATE, 3),
                                  "queued_s": round(queued, 3)})

    async def frame(request):
        import cv2

        s = session_of(request)
        k = max(0, int((s.now() - s.delay) * FPS))
        j, rgb = s.frame_at(k)
        ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        return web.Response(body=jpg.tobytes(), content_type="image/jpeg",
                            headers={"X-Frame-Index": str(k),
                                     "X-Rendered-Index": "" if j is None else str(j),
                                     "X-AV-Offset-Ms": "" if j is None else f"{1000 * (k - j) / FPS:.0f}"})

    async def websocket(request):
        s = session_of(request)
        try:  # one resampler for the connection: its chunks are one stream
            pcm = PcmStream(request.query.get("rate", SAMPLE_RATE), request.query.get("channels", 1))
        except ValueError as e:
            return error(400, str(e))
        ws = web.WebSocketResponse(max_msg_size=int(cfg.max_upload_mb * 2 ** 20))
        await ws.prepare(request)
        async for msg in ws:
            server.activity[s.id] = server.clock()
            if s.closed is not None:
                await ws.send_json({"error": f"session ended: {s.closed}"})
                break
            if msg.type == WSMsgType.BINARY:
                try:
                    s.push_audio(pcm.push(msg.data))
                    await ws.send_json(s.stats())
                except ValueError as e:
                    s.error = str(e)
                    await ws.send_json({"error": f"bad audio: {e}"})
            elif msg.type == WSMsgType.TEXT:
                await ws.send_json(s.stats() if msg.data.strip() == "stats" else
                                   {"error": "text messages: only 'stats'; send audio as binary "
                                             "PCM s16le"})
        return ws

    janitor = web.AppKey("janitor", asyncio.Task)

    async def on_startup(app):
        app[janitor] = asyncio.get_running_loop().create_task(server.janitor())

    async def on_cleanup(app):
        app[janitor].cancel()
        await server.shutdown()

    app = web.Application(middlewares=[auth], client_max_size=int(cfg.max_upload_mb * 2 ** 20))
    app.router.add_get("/", page)
    app.router.add_get("/api/health", health)
    app.router.add_post("/api/offer", offer)
    app.router.add_post("/api/sessions", create)
    app.router.add_get("/api/sessions/{sid}", stats)
    app.router.add_delete("/api/sessions/{sid}", delete)
    app.router.add_post("/api/sessions/{sid}/audio", push)
    app.router.add_get("/api/sessions/{sid}/frame", frame)
    app.router.add_get("/api/sessions/{sid}/ws", websocket)
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


def load_server(run_dir, cfg: ServeConfig, device: str = "auto", checkpoint=None, data=None,
                motion: str = "auto", audio_encoder: str = "refitted",
                prune_floaters: bool = True) -> Server:
    """Load a run and its head-motion model, and warm up (``motion``: auto, model, clip;
    ``audio_encoder``, ``prune_floaters``: see ``nerfhead.train.checkpoint.load_run``)."""
    from nerfhead.render.renderer import Renderer

    renderer = Renderer.load(run_dir, device, checkpoint, data, audio_encoder, prune_floaters)
    model = None
    if motion != "clip":
        from nerfhead.data.dataset import DatasetError
        from nerfhead.motion.generator import load_or_fit

        try:
            model = load_or_fit(renderer.data_dir, Path(renderer.run.run_dir))
        except (ValueError, DatasetError) as e:
            if motion == "model":
                raise
            log.warning("no head-motion model (%s): the clip's poses play, smoothed and mirrored", e)
    return Server(renderer, cfg, model)
