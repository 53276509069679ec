"""``nerfhead serve RUN``: stream a trained speaker to the browser over WebRTC (docs/serve.md)."""

from __future__ import annotations

import argparse
import logging
import sys

log = logging.getLogger("nerfhead.serve")
ON_INTERRUPT = "stopped; every session was closed"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from nerfhead.serve.app import ServeConfig

    d = ServeConfig()
    p.add_argument("run_dir", metavar="RUN", help="training run folder")
    p.add_argument("--host", default=d.host,
                   help=f"address to bind (default {d.host}: this machine only; 0.0.0.0 for every "
                        "interface, then set --token)")
    p.add_argument("--port", type=int, default=d.port, help=f"TCP port (default {d.port})")
    p.add_argument("--token", default=None,
                   help="access token the API asks for (Bearer header or ?token=); open the page "
                        "as http://HOST:PORT/?token=TOKEN")
    p.add_argument("--max-sessions", type=int, default=d.max_sessions,
                   help=f"sessions at once; one more is answered 'busy' (default {d.max_sessions})")
    p.add_argument("--max-session-seconds", type=float, default=d.max_session_seconds,
                   help=f"a session ends after this long (default {d.max_session_seconds:.0f})")
    p.add_argument("--max-upload-mb", type=float, default=d.max_upload_mb,
                   help=f"largest uploaded audio, MiB (default {d.max_upload_mb:.0f})")
    p.add_argument("--idle-seconds", type=float, default=d.idle_seconds,
                   help="a session without WebRTC ends after this long without a request "
                        f"(default {d.idle_seconds:.0f})")
    p.add_argument("--motion", default="auto", choices=["auto", "model", "clip"],
                   help="head motion: the speaker's head-motion model (fitted now if the run has "
                        "none), or the clip's poses; auto: the model when one can be fitted")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of head motion and blinks")
    p.add_argument("--data", default=None, help="dataset folder (default: the run's)")
    p.add_argument("--checkpoint", default=None, help="checkpoint (default: the run's latest)")
    from nerfhead.render.cli import add_loading_arguments

    add_loading_arguments(p)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:i]")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads for rendering (default 1: rendering shares the CPU "
                        "with video encoding and the network; 0: torch's choice)")


def run(args) -> int:
    try:
        import aiohttp  # noqa: F401
        import aiortc  # noqa: F401
    except ImportError as e:
        print(f"nerfhead serve needs aiohttp and aiortc ({e}); install them with "
              "pip install -e '.[serve]'", file=sys.stderr)
        return 1
    from aiohttp import web

    from nerfhead.render.cli import known_errors
    from nerfhead.serve.app import ServeConfig, build_app, load_server

    if args.max_sessions < 1:
        print("nerfhead serve: --max-sessions must be at least 1", file=sys.stderr)
        return 2
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    cfg = ServeConfig(host=args.host, port=args.port, token=args.token,
                      max_sessions=args.max_sessions, max_session_seconds=args.max_session_seconds,
                      max_upload_mb=args.max_upload_mb, idle_seconds=args.idle_seconds,
                      seed=args.seed, audio_level=args.audio_level)
    if cfg.host not in ("127.0.0.1", "localhost", "::1") and not cfg.token:
        log.warning("serving on %s without --token: anyone who reaches this port can open "
                    "sessions and push audio", cfg.host)
    try:
        server = load_server(args.run_dir, cfg, args.device, args.checkpoint, args.data, args.motion,
                             args.audio_encoder, not args.keep_floaters)
    except known_errors() as e:
        print(f"nerfhead serve: {e}", file=sys.stderr)
        return 2
    url = f"http://{cfg.host}:{cfg.port}/" + (f"?token={cfg.token}" if cfg.token else "")
    print(f"nerfhead serve: {args.run_dir} at {url} (up to {cfg.max_sessions} sessions; "
          f"{1000 * server.expected_render:.0f} ms per frame here)", flush=True)
    web.run_app(build_app(server), host=cfg.host, port=cfg.port, print=None)
    return 0
