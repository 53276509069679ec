"""A whole frame's device work from static inputs, captured once as a CUDA graph and replayed.

Per frame, :meth:`FrameRunner.render` copies the frame's inputs into buffers allocated once
(the camera pose through a pinned host buffer, the audio / expression / latent codes device to
device: no tensor is created for them), then runs the frame's device work: pose conversion,
pixel rays, box test, the steps of the fixed-shape loop (no read-back), and the torso field.
On CUDA that work is captured in a ``torch.cuda.CUDAGraph`` and replayed: one launch instead
of hundreds. Then one small read-back says whether rays are left (they finish eagerly, one
read-back per step) and whether a step asked for more slots than it had.

A graph needs fixed shapes, so each captured step shades a fixed number of samples. Shading
the buffers' whole capacity (2^21 slots) every step made the field shade 8.4 million
samples per 512x512 frame where the frame needed under 3.5 million (the H200 run of
2026-11-28, docs/benchmarks.md: no faster than the loop it replaced). So the first frame of
a model renders exactly (one read-back per step) and records the samples of each step; the
graph's steps get those counts plus headroom (``step_capacities``), and a later frame whose
step asks for more than its capacity still renders right (the rays that do not fit march in
the next step, or finish eagerly) and makes the next frame capture again with larger
capacities (they only grow, so a video recaptures a few times at most).

The graph holds the addresses of the weights, the occupancy bitfield and the buffers; when a
parameter or the grid changes (their ``_version`` counters), the graph is dropped, that frame
renders exactly and eagerly, and the next frame with unchanged weights captures again (so
validation during training, whose weights move between frames, never pays for captures).
Where capture fails (an op that cannot be captured, e.g. one that synchronises), the runner
says so once in the log and renders the same steps eagerly from the same static inputs.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from nerfhead.models.field import Conditions
from nerfhead.models.rays import Camera, full_frame_pixels, nerf_matrix_to_ngp, pixel_rays
from nerfhead.models.renderer import head_shader
from nerfhead.ops.raymarch_fixed import FixedLoop, steps_to_finish

if TYPE_CHECKING:
    from nerfhead.models.talking_head import TalkingHead

log = logging.getLogger("nerfhead.render")
_said: set[str] = set()


def _say_once(msg: str) -> None:
    if msg not in _said:
        _said.add(msg)
        log.info(msg)


class FrameRunner:
    """Renders frames of one camera size for ``model`` from static inputs (see module doc)."""

    def __init__(self, model: TalkingHead, camera: Camera, with_torso: bool, use_graph: bool):
        cfg, inf, dev = model.cfg, model.inference, model.device
        self.model, self.camera, self.with_torso = model, camera, with_torso
        self.use_graph = use_graph and dev.type == "cuda"
        self.loop = FixedLoop(model.grid, cfg.dt_gamma, cfg.max_steps, cfg.T_thresh, cfg.backend,
                              inf.schedule_for(dev), inf.capacity_for(dev))
        self.max_steps = min(inf.graph_steps, steps_to_finish(inf.schedule_for(dev), cfg.max_steps))
        self.capacities: list[int] | None = None  # of the fixed steps; None: measure first
        self.demand = torch.zeros(self.max_steps, dtype=torch.int64, device=dev)
        # pinned: the pose's host-to-device copy is asynchronous. Reusing the host buffer next
        # frame is safe because every frame reads a value back after the copy was queued.
        self.c2w_host = torch.zeros(4, 4, pin_memory=self.use_graph)
        self._c2w_np = self.c2w_host.numpy()
        self.c2w = torch.zeros(4, 4, device=dev)
        f = model.field
        self.cond = Conditions(audio=torch.zeros(cfg.audio_dim, device=dev),
                               expression=torch.zeros(f.num_expression, device=dev),
                               latent=torch.zeros(cfg.latent_dim, device=dev))
        self.torso_latent = torch.zeros(cfg.torso_latent_dim, device=dev)
        self.u, self.v = full_frame_pixels(camera, dev)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.graph_key: tuple | None = None
        self.pose: Tensor | None = None
        self.torso_rgba: Tensor | None = None

    # ------------------------------------------------------------------ inputs
    def set_inputs(self, c2w, cond: Conditions, torso_latent: Tensor) -> None:
        """Copy one frame's inputs into the static buffers (no tensor is created)."""
        # rows 0-2 only: the conversion reads no more, and a [3, 4] c2w works as before
        if isinstance(c2w, Tensor):
            self.c2w[:3].copy_(c2w[:3])
        else:
            self._c2w_np[:3] = c2w[:3] if isinstance(c2w, np.ndarray) else np.asarray(c2w)[:3]
            self.c2w.copy_(self.c2w_host, non_blocking=True)
        self.cond.audio.copy_(cond.audio)
        self.cond.expression.copy_(cond.expression)
        self.cond.latent.copy_(cond.latent)
        self.torso_latent.copy_(torso_latent)

    # ------------------------------------------------------------------ the frame
    def _body(self, capacities: list[int] | None) -> None:
        """The frame's device work. ``capacities``: fixed-shape steps without read-back (what
        the graph captures); None: every step exact with its read-back, recording each
        step's samples in ``self.capacities`` (with headroom) for the fixed steps."""
        m = self.model
        pose = nerf_matrix_to_ngp(self.c2w)
        rays_o, rays_d = pixel_rays(pose, self.camera, self.u, self.v)
        self.loop.start(rays_o, rays_d, 3, aabb=m.field.aabb, min_near=m.cfg.min_near,
                        buffers=self.loop.buffers)
        shader = head_shader(m.field, self.cond, m.inference, m.device)
        if capacities is None:
            used = self.loop.run_exact(shader)
            # one more step than measured: it finds no sample left and retires the rays
            # that the exact loop stopped on without compositing (so nothing is left after)
            self.capacities = step_capacities(used + [0], self.loop.kmax,
                                              self.loop.buffers.capacity)[:self.max_steps]
        else:
            self.loop.run_capacities(shader, capacities, self.demand)
        self.pose = pose
        self.torso_rgba = m.torso_rgba(self.u, self.v, pose, self.torso_latent, self.camera) \
            if self.with_torso else None

    def _key(self) -> tuple:
        m = self.model
        return tuple(p._version for p in m.parameters()) + \
            (m.grid.bitfield._version, m.grid.bitfield.data_ptr())

    def _capture(self) -> None:
        caps = list(self.capacities)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up: allocations, caches, lazy inits
            self._body(caps)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._body(caps)
        self.graph = graph
        _say_once(f"CUDA graph: captured the head{' + torso' if self.with_torso else ''} render "
                  f"of a {self.camera.width}x{self.camera.height} frame ({len(caps)} fixed "
                  f"steps, {sum(caps)} samples)")

    def run(self) -> None:
        """The device work of the frame whose inputs were set, then its finish."""
        key = self._key()
        if self.capacities is None or self.graph_key != key:
            # first frame, or new weights or grid: drop the stale graph (and its memory pool)
            # and render this frame exactly, measuring its steps; capture only when the next
            # frame has the same weights (a video), not on every validation frame of a
            # training run whose weights keep moving
            self.graph, self.graph_key = None, key
            self._body(None)
            return
        caps = self.capacities
        if self.use_graph:
            try:
                if self.graph is None:
                    self._capture()
                self.graph.replay()
            except Exception as e:  # noqa: BLE001 - any capture failure: render eagerly
                self.use_graph, self.graph = False, None
                _say_once(f"CUDA graph not used ({type(e).__name__}: {e}); rendering eagerly")
                self._body(caps)
        else:
            self._body(caps)
        # the frame's one read-back: rays left, and what each fixed step asked for
        left, *demand = torch.cat([self.loop.buffers.alive.any().reshape(1).long(),
                                   self.demand[:len(caps)]]).tolist()
        if any(d > c for d, c in zip(demand, caps)):
            # rays were deferred (this frame is still right): larger steps from the next frame
            self.capacities = step_capacities(
                [max(d, c) for d, c in zip(demand, caps)], self.loop.kmax, self.loop.buffers.capacity)
            self.graph = None
            log.debug("frame runner: a step asked for more samples than it had (%s > %s); "
                      "capturing again with more", demand, caps)
        m = self.model
        self.loop.finish(head_shader(m.field, self.cond, m.inference, m.device), rays_left=bool(left))

    @torch.no_grad()
    def render(self, c2w, cond: Conditions, torso_latent: Tensor) -> dict[str, Tensor]:
        """Head ``rgb`` [R, 3], ``alpha``, ``depth`` [R] (copies), ``pose`` [4, 4] and
        ``torso_rgba`` [R, 4] (None without torso) of one frame."""
        self.set_inputs(c2w, cond, torso_latent)
        self.run()
        image, depth, wsum = self.loop.outputs()
        return {"rgb": image.clone(), "alpha": wsum.clone(), "depth": depth.clone(),
                "pose": self.pose.clone(),
                "torso_rgba": None if self.torso_rgba is None else self.torso_rgba.clone()}


HEADROOM = 1.15
"""Capacity of a fixed step over the samples the measured frame's step had: the head moves
and the mouth opens from frame to frame (the next frames' steps ask for a few percent
more or less); a step that asks for more defers rays and recaptures, so this only trades
shading wasted slots against recaptures."""


def step_capacities(samples: list[int], kmax: int, limit: int) -> list[int]:
    """Capacity of each fixed step for steps that shaded ``samples``: with ``HEADROOM``,
    at least one ray's ``kmax`` samples, rounded up to an eighth of the next power of two
    (a handful of distinct sizes, not one per frame), at most ``limit`` (the buffers)."""
    caps = []
    for n in samples:
        need = int(n * HEADROOM) + kmax
        quantum = max(kmax, (1 << max(0, (need - 1).bit_length())) // 8)
        caps.append(min(limit, -(-need // quantum) * quantum))
    return caps


def frame_runner(model: TalkingHead, camera: Camera, with_torso: bool) -> FrameRunner:
    """The model's runner for this camera and torso setting (one kept at a time)."""
    key = (camera.height, camera.width, camera.focal, camera.cx, camera.cy, with_torso,
           str(model.device), repr(model.inference))
    runner = model._frame_runners.get(key)
    if runner is None:
        model._frame_runners.clear()
        runner = FrameRunner(model, camera, with_torso, use_graph=model.inference.cuda_graph)
        model._frame_runners[key] = runner
    return runner


__all__ = ["FrameRunner", "frame_runner", "step_capacities"]
