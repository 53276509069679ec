"""A whole frame's device work from static inputs, captured once as a CUDA graph and replayed.

Per frame, :meth:`FrameRunner.render` copies the frame's inputs into buffers allocated once
(the camera pose through a pinned host buffer, the audio / expression / latent codes device to
device: no tensor is created for them), then runs the frame's device work: pose conversion,
pixel rays, box test, ``graph_steps`` steps of the fixed-shape loop (no read-back; the
field shades the whole capacity), and the torso field. On CUDA that work is captured in a
``torch.cuda.CUDAGraph`` on the first frame (after a warm-up on a side stream, as PyTorch
requires) and replayed afterwards: one launch instead of hundreds. Then one value is read
back (are rays left?) and the rays still alive finish eagerly with one read-back per step.

The graph holds the addresses of the weights, the occupancy bitfield and the buffers; when a
parameter or the grid changes (their ``_version`` counters), the graph is dropped, that frame
renders eagerly, and the next frame with unchanged weights captures again (so validation
during training, whose weights move between frames, never pays for captures).
Where capture fails (an op that cannot be captured, e.g. one that synchronises), the runner
says so once in the log and renders eagerly from the same static inputs.
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
        self.steps = min(inf.graph_steps, steps_to_finish(inf.schedule_for(dev), cfg.max_steps))
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
    def _body(self) -> None:
        """The frame's device work, fixed shapes, no read-back (what the graph captures)."""
        m = self.model
        pose = nerf_matrix_to_ngp(self.c2w)
        rays_o, rays_d = pixel_rays(pose, self.camera, self.u, self.v)
        self.loop.start(rays_o, rays_d, 3, aabb=m.field.aabb, min_near=m.cfg.min_near,
                        buffers=self.loop.buffers)
        self.loop.run_fixed(head_shader(m.field, self.cond, m.inference, m.device), self.steps)
        self.pose = pose
        self.torso_rgba = m.torso_rgba(self.u, self.v, pose, self.torso_latent, self.camera) \
            if self.with_torso else None

    def _key(self) -> tuple:
        m = self.model
        return tuple(p._version for p in m.parameters()) + \
            (m.grid.bitfield._version, m.grid.bitfield.data_ptr())

    def _capture(self) -> None:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up: allocations, caches, lazy inits
            self._body()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._body()
        self.graph = graph
        _say_once(f"CUDA graph: captured the head{' + torso' if self.with_torso else ''} render "
                  f"of a {self.camera.width}x{self.camera.height} frame ({self.steps} fixed steps)")

    def run(self) -> None:
        """The device work of the frame whose inputs were set, then its finish."""
        key = self._key() if self.use_graph else None
        if self.use_graph and self.graph_key != key:
            # new weights or grid: drop the stale graph (and its memory pool) and render this
            # frame eagerly; capture only when the next frame has the same weights (a video),
            # not on every validation frame of a training run whose weights keep moving
            self.graph, self.graph_key = None, key
            self._body()
        elif self.use_graph:
            try:
                if self.graph is None:
                    self._capture()
                self.graph.replay()
            except Exception as e:  # noqa: BLE001 - any capture failure: render eagerly
                self.use_graph, self.graph = False, None
                _say_once(f"CUDA graph not used ({type(e).__name__}: {e}); rendering eagerly")
                self._body()
        else:
            self._body()
        m = self.model
        self.loop.finish(head_shader(m.field, self.cond, m.inference, m.device))

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


__all__ = ["FrameRunner", "frame_runner"]
