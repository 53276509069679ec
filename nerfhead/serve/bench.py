"""``nerfhead bench serve RUN``: the live server measured end to end, in one process.

The server is started on a free local port; ``--sessions`` WebRTC clients (aiortc, standing in
for browsers, each in its own process) each send ``--audio`` as their microphone, paced in real time
(``aiortc.contrib.media.MediaPlayer``), and receive the speaker's video and audio for
``--seconds``. Reported per session: frames rendered per second, frames dropped and repeated,
the A/V offset (mean and max: how old the picture shown is against the sound), the server's
latency (from a microphone chunk's arrival to its sound and its frame leaving the server), the
frames and distinct pictures the client received per second. The network and the browser's
jitter buffer come on top of the latency (a local link adds little; the page shows the
browser's buffer from ``getStats``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing
import socket
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

log = logging.getLogger("nerfhead.serve")


def add_arguments(b: argparse.ArgumentParser) -> None:
    b.add_argument("run_dir", metavar="RUN", help="training run folder")
    b.add_argument("--audio", required=True, help="audio each client sends as its microphone")
    b.add_argument("--seconds", type=float, default=20.0, help="seconds to stream [20]")
    b.add_argument("--sessions", type=int, default=1, help="clients at once [1]")
    b.add_argument("--device", default="auto", help="auto, cpu or cuda[:i]")
    b.add_argument("--motion", default="auto", choices=["auto", "model", "clip"])
    b.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads for rendering (default 1; see docs/serve.md)")
    b.add_argument("--json", default=None, help="also write the results here")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _client(base: str, audio: str, seconds: float) -> dict:
    import aiohttp
    from aiortc import RTCPeerConnection, RTCSessionDescription
    from aiortc.contrib.media import MediaPlayer

    player = MediaPlayer(audio, loop=True)
    pc = RTCPeerConnection()
    pc.addTrack(player.audio)
    pc.addTransceiver("video", direction="recvonly")
    frames: list[tuple[float, bytes]] = []
    audio_samples = [0]

    @pc.on("track")
    def on_track(track):
        async def read():
            while True:
                try:
                    f = await track.recv()
                except Exception:
                    return
                if track.kind == "video":
                    img = f.to_ndarray(format="rgb24")
                    frames.append((time.monotonic(), img[::4, ::4].tobytes()))
                else:
                    audio_samples[0] += f.samples
        asyncio.ensure_future(read())

    await pc.setLocalDescription(await pc.createOffer())
    async with aiohttp.ClientSession() as http:
        r = await http.post(f"{base}/api/offer", json={"sdp": pc.localDescription.sdp,
                                                       "type": pc.localDescription.type})
        answer = await r.json()
        if r.status != 200:
            await pc.close()
            return {"error": answer}
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        await asyncio.sleep(seconds)
        stats = await (await http.get(f"{base}/api/sessions/{answer['session']}")).json()
    await pc.close()
    player.audio.stop()
    if frames:
        span = max(frames[-1][0] - frames[0][0], 1e-6)
        # a picture counts as new when it differs from the last by more than the codec's noise
        imgs = [np.frombuffer(b, np.uint8).astype(np.int16) for _, b in frames]
        distinct = sum(np.abs(a - b).mean() > 1.0 for a, b in zip(imgs, imgs[1:])) + 1
        stats.update(client_fps=round((len(frames) - 1) / span, 2),
                     client_distinct_fps=round(distinct / span, 2))
    stats["client_audio_s"] = round(audio_samples[0] / 48000, 2)  # aiortc decodes Opus at 48 kHz
    return stats


def _client_process(base: str, audio: str, seconds: float) -> dict:
    return asyncio.run(_client(base, audio, seconds))


def run(args) -> int:
    from aiohttp import web

    from nerfhead.serve.app import ServeConfig, build_app, load_server

    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    cfg = ServeConfig(port=_free_port(), max_sessions=max(1, args.sessions),
                      max_session_seconds=args.seconds + 60)
    server = load_server(args.run_dir, cfg, args.device, motion=args.motion)
    r = server.renderer

    async def main():
        runner = web.AppRunner(build_app(server))
        await runner.setup()
        await web.TCPSite(runner, cfg.host, cfg.port).start()
        base = f"http://{cfg.host}:{cfg.port}"
        loop = asyncio.get_running_loop()
        # each client in its own process, as browsers would be: their decoding must not take
        # the server's interpreter
        ctx = multiprocessing.get_context("spawn")
        try:
            with ProcessPoolExecutor(args.sessions, mp_context=ctx) as pool:
                return await asyncio.gather(*[
                    loop.run_in_executor(pool, _client_process, base, args.audio, args.seconds)
                    for _ in range(args.sessions)])
        finally:
            await runner.cleanup()

    results = asyncio.run(main())
    head = {"run": str(r.run.run_dir), "size": f"{r.camera.width}x{r.camera.height}",
            "device": str(r.model.device), "audio_kind": r.audio_kind,
            "sessions": args.sessions, "seconds": args.seconds,
            "threads": args.threads, "render_ms_estimate": round(1000 * server.expected_render, 1),
            "motion": server.motion_source}
    print(json.dumps(head))
    keys = ("render_fps", "rendered", "render_ms", "client_fps", "client_distinct_fps", "dropped", "repeated",
            "av_offset_mean_ms", "av_offset_max_ms", "latency_ms", "delay_ms", "lookahead_ms",
            "silence_filled_s", "quiet_dropped_s", "client_audio_s")
    for i, s in enumerate(results):
        print(f"session {i}: " + ", ".join(f"{k} {s.get(k)}" for k in keys)
              + (f"; error {s['error']}" if s.get("error") else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**head, "results": results}, f, indent=1)
    return 0 if all(not s.get("error") for s in results) else 1
