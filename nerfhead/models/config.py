"""ModelConfig: the ``model:`` section of a training preset; InferenceConfig: how a trained
model renders (not saved with it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# MediaPipe Face Landmarker blendshape category indices (ARKit names, alphabetical after
# "_neutral" = 0). The upper-face subset conditions the field so the eyes blink and the
# brows move; the mouth is left to audio.
BLENDSHAPE_INDEX = {
    "browDownLeft": 1, "browDownRight": 2, "browInnerUp": 3, "browOuterUpLeft": 4,
    "browOuterUpRight": 5, "eyeBlinkLeft": 9, "eyeBlinkRight": 10, "eyeSquintLeft": 19,
    "eyeSquintRight": 20, "eyeWideLeft": 21, "eyeWideRight": 22, "jawOpen": 25,
}
UPPER_FACE = ("eyeBlinkLeft", "eyeBlinkRight", "eyeSquintLeft", "eyeSquintRight", "eyeWideLeft",
              "eyeWideRight", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft",
              "browOuterUpRight")


@dataclass
class ModelConfig:
    """Architecture of the talking head (face field, audio, expression, torso, marching)."""

    aabb: tuple[float, float, float, float, float, float] = (-1.0, -0.5, -1.0, 1.0, 0.5, 1.0)
    """Head box in model units (metres x 4, ngp axes: y is the depth axis toward the camera)."""
    grid_levels: int = 16
    """Hash-grid levels of each of the three face planes."""
    grid_features: int = 2
    """Features per level per plane."""
    grid_log2_size: int = 14
    """log2 of the rows per level of each plane's table (ER-NeRF: 14)."""
    grid_base_resolution: int = 64
    """Coarsest plane resolution (vertices per axis)."""
    grid_finest_resolution: int = 512
    """Finest plane resolution."""
    plane_merge: Literal["concat", "sum", "product"] = "concat"
    """How the xy, yz, xz plane features combine (ER-NeRF concatenates)."""
    hidden_dim: int = 64
    """Width of the density and colour MLPs."""
    geo_feat_dim: int = 64
    """Features passed from the density MLP to the colour MLP."""
    sigma_layers: int = 3
    """Layers of the density MLP."""
    color_layers: int = 2
    """Layers of the colour MLP."""
    sh_degree: int = 4
    """Spherical-harmonics bands encoding the view direction."""
    audio_dim: int = 32
    """Size of the audio code."""
    audio_window: int = 8
    """Neighbouring frames mixed by the temporal attention smoother (1 disables it)."""
    expression: tuple[str, ...] = UPPER_FACE
    """Blendshapes (MediaPipe names) that condition the field."""
    latent_dim: int = 4
    """Per-frame latent (individual code) size fed to the colour MLP; 0 disables."""
    uncertainty: bool = True
    """Predict per-sample uncertainty (composited; used by the uncertainty-weighted loss)."""
    torso: bool = True
    """Build the 2D deformable torso field (trained in the torso stage)."""
    torso_levels: int = 16
    """Torso hash-grid levels (2D, image coordinates)."""
    torso_log2_size: int = 16
    """log2 rows per level of the torso table."""
    torso_finest_resolution: int = 1024
    """Finest torso grid resolution."""
    torso_hidden_dim: int = 32
    """Width of the torso MLPs."""
    torso_latent_dim: int = 8
    """Per-frame torso latent size (0 disables)."""
    occupancy_resolution: int = 128
    """Cells per axis of the occupancy grid (power of two)."""
    density_threshold: float = 10.0
    """Occupancy threshold (min with the grid's mean density, as torch-ngp)."""
    dt_gamma: float = 1.0 / 256
    """Step grows as t * dt_gamma (clamped to the grid's min / max step)."""
    max_steps: int = 1024
    """Most samples per ray (also sets the smallest step 2*sqrt(3)/max_steps)."""
    min_near: float = 0.05
    """Nearest sample distance from the camera."""
    T_thresh: float = 1e-4
    """Rays stop when transmittance falls below this."""
    backend: str = "auto"
    """Op backend: auto (our kernels: cuda for CUDA tensors, cpu (C++) for CPU tensors; torch
    references where nerfhead._C is missing), cpu, cuda, torch."""

    def expression_indices(self) -> list[int]:
        unknown = [n for n in self.expression if n not in BLENDSHAPE_INDEX]
        if unknown:
            raise ValueError(f"model.expression: unknown blendshape(s) {unknown}; "
                             f"known: {sorted(BLENDSHAPE_INDEX)}")
        return [BLENDSHAPE_INDEX[n] for n in self.expression]


@dataclass
class InferenceConfig:
    """How ``TalkingHead.render_frame`` renders (speed only: the image stays the same within
    the tolerances named in tests/test_fast_render.py). Not part of a checkpoint: set it on
    ``model.inference``."""

    loop: Literal["fixed", "compact"] = "fixed"
    """fixed: the whole frame in one fixed-shape loop (``render_rays_fixed``: static buffers,
    one host sync per step); compact: the earlier loop (``render_rays_inference`` in chunks of
    65,536 rays, compacting the alive rays with boolean masks: several syncs per step)."""
    schedule: tuple[int, ...] | None = None
    """fixed loop: samples per alive ray at steps 0, 1, 2, ... (the last repeats). None =
    auto: (8, 16, 32, 64) on CUDA, where a step costs launches and a read-back and a sample
    little; (2, 4, 8, 16, 32, 64) on CPU, where steps cost nothing and every sample shaded
    after a ray turned opaque is wasted (about 9% fewer samples on the trained tiny run)."""
    capacity: int = 0
    """fixed loop: slots of the compacted sample list (the field's batch in one step); 0 =
    auto: 2^21 on CUDA, 2^19 on CPU (the earlier loop's largest batch, 65,536 rays x 8, so
    a CPU render needs no more memory than before)."""

    read_back: bool = True
    """fixed loop: read back the filled slots once per step (the field shades only those);
    False: no read-back per step, the field shades the whole capacity (for CUDA graphs)."""
    fused_heads: bool | None = None
    """One GEMM for the first layers of the heads that read the position encoding (audio
    attention, expression attention, density), the frame's audio / expression codes folded
    into the density layer's weights, the latent into the colour layer's bias, and no
    uncertainty head (nothing uses it at inference). False: the training forward without its
    uncertainty head. None = auto: True on CUDA; False on CPU, where the training forward's
    fewer, wider GEMMs measured as fast or faster (docs/benchmarks.md)."""
    precision: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """MLP precision through torch.autocast: auto = float16 on CUDA, float32 on CPU (a CPU has
    no fast half GEMM; bfloat16 there is the CPU stand-in used by the tests)."""
    fused_mlp: bool = True
    """Run the MLPs through tiny-cuda-nn's FullyFusedMLP when ``tinycudann`` imports and the
    tensors are on CUDA (logged once either way)."""
    cuda_graph: bool = True
    """Capture a frame's device work (rays, the steps of the fixed loop without read-back,
    each shading what that step needed in the first, measured frame plus headroom; torso)
    in a CUDA graph and replay it (CUDA only; where capture fails the frame renders eagerly,
    said once in the log)."""
    torso_alpha_eps: float = 1e-3
    """The torso field runs only on pixels whose head alpha is below ``1 - torso_alpha_eps``
    (elsewhere the head hides it: a pixel's colour moves by at most ``torso_alpha_eps``,
    ``TalkingHead.torso_where_visible``); 0: on every pixel. Eager path only (one host sync
    per frame): inside a CUDA graph the torso runs on every pixel, before the head finishes."""
    graph_steps: int = 16
    """At most this many steps of the fixed loop inside the CUDA graph (as many as the first,
    measured frame needed, plus one); rays still alive after them finish eagerly with one
    read-back per step."""

    def fused_heads_for(self, device) -> bool:
        """Whether the fused inference shader runs on ``device`` (``fused_heads`` or auto)."""
        import torch

        if self.fused_heads is not None:
            return bool(self.fused_heads)
        return torch.device(device).type == "cuda"

    def schedule_for(self, device) -> tuple[int, ...]:
        """The k schedule on ``device`` (``schedule``, or its auto value)."""
        import torch

        if self.schedule is not None:
            return tuple(int(k) for k in self.schedule)
        return (8, 16, 32, 64) if torch.device(device).type == "cuda" else (2, 4, 8, 16, 32, 64)

    def capacity_for(self, device) -> int:
        """The capacity in slots on ``device`` (``capacity``, or its auto value)."""
        import torch  # here: the config module stays importable without torch

        if self.capacity:
            return int(self.capacity)
        return 1 << 21 if torch.device(device).type == "cuda" else 1 << 19
