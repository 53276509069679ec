"""Render benchmark: frames per second and milliseconds per stage.

Stages of one frame, timed separately (CUDA is synchronised around each):

- ``audio``: audio encoder + temporal smoother for the frame (``TalkingHead.conditions``);
- ``rays``: pixel rays of the camera;
- ``march+composite``: occupancy-grid ray marching, field queries and compositing of the head
  (``render_head_inference``);
- ``torso``: the 2D torso field and its composite over the background;
- ``compositing``: to uint8 (on the device) + copy to the host + Portrait-Sync blend into an
  original frame;
- ``encode``: H.264 encoding of the frame (``VideoWriter``, measured per frame in a batch).

FPS is reported for the head only (audio + rays + march) and for head + torso + compositing
(the full per-frame path, without video encoding, which runs in ffmpeg's own process).

``--synthetic`` builds an untrained model of a preset (default ``tiny``) at the requested
resolution; its occupancy grid starts fully occupied and an untrained field is nearly
transparent, so rays march to ``max_steps``: an upper bound on the marching cost of a trained
model, whose grid is sparse and whose rays terminate early in the face.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

STAGES = ("audio", "rays", "march+composite", "torso", "compositing", "encode")


def synthetic_model(preset: str, resolution: int, device: str):
    from nerfhead.config import load_section
    from nerfhead.models.config import ModelConfig
    from nerfhead.models.talking_head import ModelMeta, TalkingHead

    cfg = load_section(ModelConfig, preset, "model")
    cam = {"focal": 1.2 * resolution, "cx": resolution / 2, "cy": resolution / 2,
           "height": resolution, "width": resolution}
    torch.manual_seed(0)
    model = TalkingHead(cfg, ModelMeta(audio_len=16, audio_channels=80, audio_kind="mel",
                                       num_latents=8, camera=cam)).to(device).eval()
    if model.torso is not None:
        model.has_torso.fill_(True)
    return model


def synthetic_pose() -> np.ndarray:
    """A camera 0.8 m in front of the head origin looking at it (transforms convention)."""
    c2w = np.eye(4, dtype=np.float32)
    c2w[2, 3] = 0.8
    return c2w


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def time_frame(model, c2w, feats, index: int, camera, times: dict, original=None, mask=None):
    """One frame through every stage, adding seconds per stage to ``times``."""
    from nerfhead.models.rays import full_frame_pixels, nerf_matrix_to_ngp, pixel_rays
    from nerfhead.models.renderer import render_head_inference
    from nerfhead.render.ahead import to_uint8_device
    from nerfhead.render.compositing import portrait_blend

    dev = model.device
    H, W = camera.height, camera.width

    def mark(name, t0):
        _sync(dev)
        t1 = time.perf_counter()
        times[name] = times.get(name, 0.0) + (t1 - t0)
        return t1

    t = time.perf_counter()
    cond = model.conditions(feats, index, np.zeros(52, np.float32), None)
    t = mark("audio", t)
    use_torso = model.torso is not None and bool(model.has_torso)  # a head-stage run has none
    inf = model.inference
    rgba = None
    if inf.loop == "fixed" and inf.cuda_graph and dev.type == "cuda":
        # rays, head and torso run in one CUDA graph: all of it counts as march+composite
        from nerfhead.models.frame_graph import frame_runner

        t = mark("rays", t)
        head = frame_runner(model, camera, use_torso).render(c2w, cond, model.torso_latent(None))
        rgba = head["torso_rgba"]
        t = mark("march+composite", t)
    else:
        pose = nerf_matrix_to_ngp(torch.as_tensor(c2w, dtype=torch.float64)).float().to(dev)
        u, v = full_frame_pixels(camera, dev)
        rays_o, rays_d = pixel_rays(pose, camera, u, v)
        t = mark("rays", t)
        head = render_head_inference(model.field, model.grid, model.cfg, rays_o, rays_d, cond,
                                     inference=inf, buffers=model._render_buffers)
        t = mark("march+composite", t)
        if use_torso:
            rgba = model.torso_where_visible(u, v, pose, model.torso_latent(None), camera, head["alpha"])
    back = model.background.reshape(-1, 3) if model.background.shape[:2] == (H, W) else \
        torch.ones(H * W, 3, device=dev)
    if rgba is not None:
        back = rgba[:, :3] * rgba[:, 3:] + back * (1 - rgba[:, 3:])
    rgb = (head["rgb"] + (1 - head["alpha"][:, None]) * back).reshape(H, W, 3).clamp(0, 1)
    t = mark("torso", t)
    frame = to_uint8_device(rgb).cpu().numpy()  # as Renderer.sequence: uint8 on the device
    if original is not None:
        frame = portrait_blend(frame, original, mask)
    mark("compositing", t)
    return frame


def _bench_inputs(camera, num_frames: int, warmup: int, feats, c2w):
    """Default features and pose, and the original frame and face mask of the Portrait-Sync
    blend that ``compositing`` times."""
    if feats is None:
        feats = np.random.default_rng(0).normal(size=(num_frames + warmup, 16, 80)).astype(np.float32)
    c2w = synthetic_pose() if c2w is None else c2w
    rng = np.random.default_rng(1)
    original = rng.integers(0, 256, (camera.height, camera.width, 3), dtype=np.uint8)
    mask = np.zeros((camera.height, camera.width), np.uint8)
    mask[camera.height // 4:camera.height * 3 // 4, camera.width // 4:camera.width * 3 // 4] = 255
    return feats, c2w, original, mask


def time_variants(model, camera, variants: dict, num_frames: int = 10, warmup: int = 2, feats=None,
                  c2w=None) -> tuple[dict, dict]:
    """The one timing loop of ``run_bench`` and ``run_compare``: each variant (name ->
    ``InferenceConfig``, or None for ``model.inference`` as it is) warms up, then the timed
    frames run interleaved (a, b, a, b, ...) so every variant sees the same machine load.
    Returns ({name: seconds per stage}, {name: the timed frames, uint8})."""
    feats, c2w, original, mask = _bench_inputs(camera, num_frames, warmup, feats, c2w)
    keep = model.inference
    times: dict = {name: {} for name in variants}
    frames: dict = {name: [] for name in variants}
    try:
        for name, inf in variants.items():
            model.inference = keep if inf is None else inf
            for i in range(warmup):
                time_frame(model, c2w, feats, i % len(feats), camera, {}, original, mask)
        for i in range(num_frames):
            for name, inf in variants.items():
                model.inference = keep if inf is None else inf
                frames[name].append(time_frame(model, c2w, feats, (warmup + i) % len(feats), camera,
                                               times[name], original, mask))
    finally:
        model.inference = keep
    return times, frames


def run_bench(model, camera, num_frames: int = 10, warmup: int = 2, feats=None, c2w=None) -> dict:
    """Time ``num_frames`` frames (after ``warmup``) and their H.264 encoding; the result dict."""
    from nerfhead.render.video import VideoWriter

    times, frames = time_variants(model, camera, {"current": None}, num_frames, warmup, feats, c2w)
    times, frames = times["current"], frames["current"]
    encode_error = ""
    try:
        import imageio_ffmpeg  # noqa: F401  (the encoder ships its ffmpeg in this package)
    except ImportError as e:
        encode_error = f"encode not timed: imageio-ffmpeg is not installed ({e})"
    result = _summarise(times, num_frames, model.device, camera, model)
    ms = result["ms_per_stage"]
    ms["encode"] = None
    if not encode_error:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            with VideoWriter(Path(tmp) / "bench.mp4", fps=25, audio=None) as vw:
                for f in frames:
                    vw.write(f)
            ms["encode"] = 1000.0 * (time.perf_counter() - t0) / num_frames
    full_ms = sum(ms[k] for k in STAGES if k != "encode")
    return {**result, "fps_with_encode": 1000.0 / (full_ms + ms["encode"]) if full_ms and ms["encode"] else None,
            "encode_error": encode_error}


def old_and_new() -> dict:
    """The two inference settings ``--compare`` times side by side: ``old`` is the path before
    issue 12 (compacting loop in chunks, training forward, float32, no graph), ``new`` the
    defaults of :class:`~nerfhead.models.config.InferenceConfig`."""
    from nerfhead.models.config import InferenceConfig

    return {"old": InferenceConfig(loop="compact", fused_heads=False, precision="float32",
                                   fused_mlp=False, cuda_graph=False, torso_alpha_eps=0.0),
            "new": InferenceConfig()}


def frame_counts(model, camera, c2w, feats, index: int = 0) -> dict:
    """Host syncs of one frame (``HostSyncCounter``: read-backs, nonzero, boolean masks) and,
    on CUDA, kernel launches (torch.profiler's count of launch calls)."""
    from nerfhead.ops.host_sync import HostSyncCounter

    with HostSyncCounter() as syncs:
        time_frame(model, c2w, feats, index, camera, {})
    launches = None
    if model.device.type == "cuda":
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            time_frame(model, c2w, feats, index, camera, {})
        launches = sum(e.count for e in prof.key_averages()
                       if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC",
                                    "cuLaunchKernelEx", "cudaGraphLaunch"))
    return {"host_syncs": syncs.total, "host_syncs_by_op": dict(syncs.by_op),
            "kernel_launches": launches}


def _summarise(times: dict, num_frames: int, dev, camera, model) -> dict:
    ms = {k: 1000.0 * times.get(k, 0.0) / num_frames for k in STAGES if k != "encode"}
    head_ms = ms["audio"] + ms["rays"] + ms["march+composite"]
    full_ms = head_ms + ms["torso"] + ms["compositing"]
    return {"device": str(dev), "resolution": [camera.height, camera.width], "frames": num_frames,
            "ms_per_stage": ms, "fps_head": 1000.0 / head_ms if head_ms else None,
            "fps_head_torso_compositing": 1000.0 / full_ms if full_ms else None,
            "torch_threads": torch.get_num_threads(),
            "backend": getattr(model.cfg, "backend", "auto")}


def run_compare(model, camera, num_frames: int = 10, warmup: int = 2, feats=None, c2w=None) -> dict:
    """The ``old`` and ``new`` inference settings (:func:`old_and_new`) on the same model,
    frames interleaved (old, new, old, new, ...) so both see the same machine load. Returns
    {"old": result, "new": result, "speedup": new over old}; each result as
    :func:`run_bench`'s without encode, plus host syncs (and CUDA kernel launches) per frame."""
    variants = old_and_new()
    if model.device.type == "cuda":
        # the current path without its CUDA graph (each step read back, the field shading
        # exactly the filled slots): what the graph itself buys
        from nerfhead.models.config import InferenceConfig

        variants["eager"] = InferenceConfig(cuda_graph=False)
    times, _ = time_variants(model, camera, variants, num_frames, warmup, feats, c2w)
    feats, c2w, _, _ = _bench_inputs(camera, num_frames, warmup, feats, c2w)
    keep, out = model.inference, {}
    try:
        for name, inf in variants.items():
            model.inference = inf
            out[name] = {**_summarise(times[name], num_frames, model.device, camera, model),
                         **frame_counts(model, camera, c2w, feats), "inference": repr(inf)}
    finally:
        model.inference = keep
    out["speedup"] = {k: out["new"][k] / out["old"][k] for k in ("fps_head", "fps_head_torso_compositing")
                      if out["new"][k] and out["old"][k]}
    return out


def format_compare(result: dict) -> str:
    o, n = result["old"], result["new"]
    e = result.get("eager")  # CUDA: the current path without its graph
    extra = lambda v: "" if e is None else v  # noqa: E731
    lines = [f"render benchmark, old vs new inference path, on {o['device']} at "
             f"{o['resolution'][1]}x{o['resolution'][0]}, {o['frames']} frames each, interleaved "
             f"({result.get('model', '')})",
             f"{'stage (ms/frame)':<28}{'old':>10}{'new':>10}{'old/new':>10}" + extra(f"{'eager':>10}")]
    for k in o["ms_per_stage"]:
        a, b = o["ms_per_stage"][k], n["ms_per_stage"][k]
        lines.append(f"{k:<28}{a:>10.2f}{b:>10.2f}" + (f"{a / b:>10.2f}" if b else f"{'':>10}")
                     + extra(f"{e['ms_per_stage'][k]:>10.2f}" if e else ""))
    for label, key in (("FPS head only", "fps_head"),
                       ("FPS head+torso+composite", "fps_head_torso_compositing")):
        lines.append(f"{label:<28}{o[key]:>10.2f}{n[key]:>10.2f}{n[key] / o[key]:>9.2f}x"
                     + extra(f"{e[key]:>10.2f}" if e else ""))
    lines.append(f"{'host syncs per frame':<28}{o['host_syncs']:>10}{n['host_syncs']:>10}{'':>10}"
                 + extra(f"{e['host_syncs']:>10}" if e else ""))
    if o.get("kernel_launches") is not None:
        lines.append(f"{'kernel launches per frame':<28}{o['kernel_launches']:>10}{n['kernel_launches']:>10}"
                     + f"{'':>10}" + extra(f"{e['kernel_launches']:>10}" if e else ""))
    if e is not None:
        lines.append("(eager: the new path without its CUDA graph)")
    return "\n".join(lines)


def profile_frames(model, camera, feats=None, c2w=None, frames: int = 3, rows: int = 40) -> str:
    """torch.profiler over ``frames`` frames of the full path: the operators and kernels that
    take the time, sorted by device time on CUDA (self time), else by CPU time."""
    from torch.profiler import ProfilerActivity, profile

    dev = model.device
    if feats is None:
        feats = np.random.default_rng(0).normal(size=(frames + 1, 16, 80)).astype(np.float32)
    c2w = synthetic_pose() if c2w is None else c2w
    time_frame(model, c2w, feats, 0, camera, {})  # warm-up outside the trace
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=acts, record_shapes=False) as prof:
        for i in range(frames):
            time_frame(model, c2w, feats, (1 + i) % len(feats), camera, {})
    key = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    head = f"torch.profiler, {frames} frames at {camera.width}x{camera.height} on {dev}, sorted by {key}\n"
    return head + prof.key_averages().table(sort_by=key, row_limit=rows)


def format_table(result: dict) -> str:
    lines = [f"render benchmark on {result['device']} at {result['resolution'][1]}x"
             f"{result['resolution'][0]}, {result['frames']} frames ({result.get('model', '')})",
             f"{'stage':<18}{'ms/frame':>10}"]
    lines += [f"{k:<18}{v:>10.2f}" if v is not None else f"{k:<18}{'n/a':>10}"
              for k, v in result["ms_per_stage"].items()]
    lines += [f"{'FPS head only':<28}{result['fps_head']:>8.2f}",
              f"{'FPS head+torso+composite':<28}{result['fps_head_torso_compositing']:>8.2f}"]
    if result.get("fps_with_encode"):
        lines.append(f"{'FPS incl. H.264 encode':<28}{result['fps_with_encode']:>8.2f}")
    if result.get("encode_error"):
        lines.append(result["encode_error"])
    return "\n".join(lines)


def main(args) -> dict:
    """``nerfhead bench render``: args.run_dir or args.synthetic, resolution, frames, device."""
    from nerfhead.render.cli import pick_device

    device = pick_device(args.device)
    if args.synthetic:
        model = synthetic_model(args.preset, args.resolution, device)
        camera, label = model.camera, f"synthetic untrained '{args.preset}' model"
        feats, c2w = None, None
    else:
        from nerfhead.data.dataset import load_audio_features
        from nerfhead.render.poses import dataset_poses
        from nerfhead.train.checkpoint import load_run

        run = load_run(args.run_dir, device=device)
        model = run.model
        camera = run.camera.scaled(args.resolution, args.resolution) if args.resolution else run.camera
        feats, _ = load_audio_features(Path(run.dataset_dir), model.audio_kind)
        c2w = dataset_poses(run.dataset_dir, "val")[0][0]
        label = f"run {run.run_dir} step {run.step}"
    compare = getattr(args, "compare", False)
    if compare:  # the top-level figures are the new path's (without H.264 encode)
        comp = run_compare(model, camera, args.frames, feats=feats, c2w=c2w)
        comp["model"] = label
        print(format_compare(comp))
        result = {**comp["new"], "model": label, "compare": comp}
    else:
        result = run_bench(model, camera, args.frames, feats=feats, c2w=c2w)
        result["model"] = label
        print(format_table(result))
    if getattr(args, "profile", None):
        if compare:
            keep, tables = model.inference, []
            for name, inf in old_and_new().items():
                model.inference = inf
                tables.append(f"=== {name}: {inf!r}\n" + profile_frames(model, camera, feats, c2w))
            model.inference = keep
            table = "\n\n".join(tables)
        else:
            table = profile_frames(model, camera, feats, c2w)
        Path(args.profile).write_text(table)
        print(f"profile of 3 frames{' per path' if compare else ''} written to {args.profile}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result
