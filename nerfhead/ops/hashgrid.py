"""Multi-resolution hash-grid encoding (Instant-NGP), matching tiny-cuda-nn's ``HashGrid``.

Layout and math (tiny-cuda-nn ``encodings/grid.h``, GridType::Hash, Linear interpolation):

* Level ``l`` (0-based) has scale ``s_l = 2**(l * log2(per_level_scale)) * base_resolution - 1``
  and resolution ``r_l = ceil(s_l) + 1`` vertices per axis. The ``-1`` makes
  ``base_resolution`` count vertices, not cells. tcnn evaluates ``s_l`` with ``exp2f`` in
  float32 on the device; we evaluate it in float64 on the host and round once to float32, so
  for non-power-of-two ``per_level_scale`` a scale may differ from tcnn's by one float32 ulp.
* Rows (table entries of ``F`` features) per level: ``min(next_multiple(r_l**D, 8),
  2**log2_hashmap_size)``. Levels are stored one after another; ``level_offsets()`` gives the
  first row of each level plus the total. The table is ``[total_rows, F]``, row-major, so the
  flat parameter vector is exactly tcnn's ``params`` (``(offset_l + index) * F + f``).
* A point ``x`` in ``[0, 1]^D`` (inputs are clamped to that range; NaN counts as 0) maps to
  ``pos = x * s_l + 0.5`` (the 0.5 staggers levels against each other),
  ``grid = floor(pos)``, ``frac = pos - grid``. The 2**D corners ``grid + bits`` are looked up:
  - dense level (``r_l**D <= rows_l``): ``index = sum_d corner[d] * r_l**d``;
  - hashed level: ``index = xor_d (corner[d] * prime[d])`` in uint32 arithmetic with primes
    ``(1, 2654435761, 805459861)``;
  and in both cases ``index % rows_l`` (the 0.5 offset can put a dense corner one past the
  last vertex; tcnn wraps it the same way).
* Corner ``c`` (bit ``d`` of ``c`` selects ``+1`` on axis ``d``) gets the weight
  ``prod_d (frac[d] if bit else 1 - frac[d])``, multiplied in axis order; the level's
  output is ``sum_c w_c * table[offset_l + index_c]`` accumulated over ``c = 0 .. 2**D-1``.
* Output ``[N, L * F]``, level-major (``out[:, l*F + f]``), in the table's dtype. Half
  tables are interpolated in float32 and rounded once at the end (tcnn accumulates in half).

The kernels (``csrc/hashgrid_kernels.h``: one ``__host__ __device__`` body per item, run by
the CUDA launcher on CUDA tensors, backend ``cuda``, and by the C++ launcher on CPU tensors,
backend ``cpu``) compute ``pos`` with unfused multiply then add (tcnn uses ``fmaf``, which can
move a point sitting within one float32 ulp of a cell face to the other cell) and the weights
and sums in the same order as the reference below, so for float32/float16 tables their
forward output is bit-identical to ``hashgrid_encode_reference`` on both devices. The table
gradient sums in float32 (a float32 buffer cast to half for half tables): with atomics on the
GPU (the order, hence the last bits, vary), in a fixed order on the CPU (levels in parallel,
the points of a level in order: deterministic for any thread count). The input gradient is
analytic, ``scale_l * sum_c dweight_c/dfrac * value_c``, and zero on each axis where that
coordinate was clamped (outside [0, 1], NaN), as autograd gives for the reference.
The ``tcnn`` backend runs tinycudann's own HashGrid on our table (its parameter vector has
exactly this layout); expect the small differences above, not bit equality.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor, nn

from nerfhead.ops.backend import KERNEL_BACKENDS, resolve_backend

HASH_PRIMES = (1, 2654435761, 805459861)  # tcnn's coherent_prime_hash factors for D <= 3
MAX_LEVELS = 32  # the kernels pass per-level constants by value in fixed arrays
KERNEL_FEATURES = (1, 2, 4, 8)  # features per level the kernels are instantiated for
_UINT32 = 0xFFFFFFFF


@dataclass(frozen=True)
class HashGridConfig:
    """Shape of a multi-resolution hash grid (same meaning as tcnn's HashGrid JSON)."""

    input_dim: int = 3
    """D: dimensions of the encoded points, 2 or 3."""
    num_levels: int = 16
    """L: number of resolution levels (tcnn ``n_levels``), 1..32."""
    features_per_level: int = 2
    """F: features stored per table row (tcnn ``n_features_per_level``), 1, 2, 4 or 8."""
    log2_hashmap_size: int = 19
    """log2 of the maximum number of rows one level may use (tcnn ``log2_hashmap_size``)."""
    base_resolution: int = 16
    """Vertices per axis of the coarsest level (tcnn ``base_resolution``)."""
    per_level_scale: float = 2.0
    """Growth of the scale from one level to the next (tcnn ``per_level_scale``)."""

    def __post_init__(self) -> None:
        if self.input_dim not in (2, 3):
            raise ValueError(f"HashGridConfig.input_dim must be 2 or 3, got {self.input_dim}")
        if not 1 <= self.num_levels <= MAX_LEVELS:
            raise ValueError(f"HashGridConfig.num_levels must be in 1..{MAX_LEVELS}, got {self.num_levels}")
        if self.features_per_level not in KERNEL_FEATURES:
            raise ValueError(f"HashGridConfig.features_per_level must be one of {KERNEL_FEATURES}, "
                             f"got {self.features_per_level}")
        if not 3 <= self.log2_hashmap_size <= 30:
            raise ValueError(f"HashGridConfig.log2_hashmap_size must be in 3..30, got {self.log2_hashmap_size}")
        if self.base_resolution < 2:
            raise ValueError(f"HashGridConfig.base_resolution must be >= 2, got {self.base_resolution}")
        if not self.per_level_scale >= 1.0:
            raise ValueError(f"HashGridConfig.per_level_scale must be >= 1, got {self.per_level_scale}")

    @classmethod
    def from_finest_resolution(cls, finest_resolution: int, *, base_resolution: int = 16,
                               num_levels: int = 16, **kwargs) -> "HashGridConfig":
        """Config whose scale grows geometrically from ``base_resolution`` to ``finest_resolution``.

        ``per_level_scale = exp(ln(finest / base) / (num_levels - 1))``, the Instant-NGP /
        torch-ngp convention (``desired_resolution``). Because of tcnn's ``-1`` the last
        level then has ``ceil(finest - 1) + 1`` vertices, i.e. about ``finest``.
        """
        if finest_resolution < base_resolution:
            raise ValueError(f"finest_resolution {finest_resolution} < base_resolution {base_resolution}")
        scale = 1.0 if num_levels == 1 else math.exp(
            math.log(finest_resolution / base_resolution) / (num_levels - 1))
        return cls(base_resolution=base_resolution, num_levels=num_levels, per_level_scale=scale, **kwargs)

    @property
    def out_dim(self) -> int:
        return self.num_levels * self.features_per_level

    def level_scales(self) -> list[float]:
        """``s_l`` per level: computed in float64, returned as the float32 value actually used."""
        log2_pls = math.log2(self.per_level_scale)
        return [float(np.float32(math.exp2(lvl * log2_pls) * self.base_resolution - 1.0))
                for lvl in range(self.num_levels)]

    def level_resolutions(self) -> list[int]:
        """Vertices per axis ``r_l = ceil(s_l) + 1`` per level."""
        return [int(math.ceil(s)) + 1 for s in self.level_scales()]

    def level_rows(self) -> list[int]:
        """Table rows per level: ``min(next_multiple(r**D, 8), 2**log2_hashmap_size)``."""
        cap = 1 << self.log2_hashmap_size
        return [min((r ** self.input_dim + 7) // 8 * 8, cap) for r in self.level_resolutions()]

    def level_is_dense(self) -> list[bool]:
        """True where the level indexes its vertices directly (``r**D`` fits its rows)."""
        return [r ** self.input_dim <= n for r, n in zip(self.level_resolutions(), self.level_rows())]

    def level_offsets(self) -> list[int]:
        """First table row of each level, then the total row count (``num_levels + 1`` ints)."""
        out = [0]
        for n in self.level_rows():
            out.append(out[-1] + n)
        return out

    def num_rows(self) -> int:
        return self.level_offsets()[-1]

    def num_params(self) -> int:
        """Scalar parameters of the table (``num_rows() * features_per_level``), tcnn's n_params."""
        return self.num_rows() * self.features_per_level

    def tcnn_config(self) -> dict:
        """The equivalent tiny-cuda-nn encoding config."""
        return {"otype": "HashGrid", "n_levels": self.num_levels,
                "n_features_per_level": self.features_per_level,
                "log2_hashmap_size": self.log2_hashmap_size,
                "base_resolution": self.base_resolution,
                "per_level_scale": self.per_level_scale, "interpolation": "Linear"}


@lru_cache(maxsize=64)
def _level_constants(cfg: HashGridConfig) -> tuple[tuple[float, ...], tuple[int, ...], tuple[int, ...],
                                                   tuple[int, ...], tuple[bool, ...]]:
    return (tuple(cfg.level_scales()), tuple(cfg.level_resolutions()), tuple(cfg.level_offsets()),
            tuple(cfg.level_rows()), tuple(cfg.level_is_dense()))


def _check_inputs(x: Tensor, table: Tensor, cfg: HashGridConfig) -> None:
    if x.dim() != 2 or x.shape[1] != cfg.input_dim:
        raise ValueError(f"hashgrid: x must be [N, {cfg.input_dim}], got {tuple(x.shape)}")
    want = (cfg.num_rows(), cfg.features_per_level)
    if tuple(table.shape) != want:
        raise ValueError(f"hashgrid: table must be {list(want)} for this config, got {list(table.shape)}")
    if x.device != table.device:
        raise ValueError(f"hashgrid: x on {x.device} but table on {table.device}")
    if not x.is_floating_point() or not table.is_floating_point():
        raise TypeError(f"hashgrid: x and table must be floating point, got {x.dtype} and {table.dtype}")


def _vertex_index(g: Tensor, res: Tensor, size: Tensor, is_dense: Tensor) -> Tensor:
    """Row within its level of integer vertices ``g`` [..., L, D] (int64); tcnn's grid_index.

    res: [..., L, 1] vertices per axis, size: [..., L] rows, is_dense: [..., L] bool.
    """
    D = g.shape[-1]
    dense_idx = (g * res ** torch.arange(D, device=g.device)).sum(-1)     # sum_d g[d] * r**d
    primes = torch.tensor(HASH_PRIMES[:D], dtype=torch.int64, device=g.device)
    hashed = (g * primes) & _UINT32  # uint32 product: int64 wraps mod 2**64, low 32 bits are exact
    hash_idx = hashed[..., 0]
    for d in range(1, D):
        hash_idx = hash_idx ^ hashed[..., d]
    return torch.where(is_dense, dense_idx, hash_idx) % size


def grid_vertex_index(vertex: Tensor, cfg: HashGridConfig, level: int) -> Tensor:
    """Table row (within ``level``, add ``level_offsets()[level]`` for the global row) of
    integer grid vertices ``vertex`` [M, D] (int64): dense or hashed index modulo the level's rows."""
    _, resolutions, _, rows, dense = _level_constants(cfg)
    if not 0 <= level < cfg.num_levels:
        raise ValueError(f"level {level} out of range for {cfg.num_levels} levels")
    dev = vertex.device
    g = vertex.to(torch.int64).unsqueeze(-2)                                 # [M, 1, D]
    res = torch.tensor([[resolutions[level]]], dtype=torch.int64, device=dev)
    size = torch.tensor([rows[level]], dtype=torch.int64, device=dev)
    is_dense = torch.tensor([dense[level]], device=dev)
    return _vertex_index(g, res, size, is_dense).squeeze(-1)


def hashgrid_encode_reference(x: Tensor, table: Tensor, cfg: HashGridConfig) -> Tensor:
    """Pure-PyTorch hash-grid encoding, any device; differentiable wrt ``table`` and ``x``.

    x: [N, D] points, clamped to [0, 1]. table: [cfg.num_rows(), F].
    Returns [N, L * F] in ``table.dtype``. Computes in float64 when x or table is float64
    (for gradcheck), else in float32 (half tables are upcast, the result rounded once).
    """
    _check_inputs(x, table, cfg)
    scales, resolutions, offsets, rows, dense = _level_constants(cfg)
    dev, D, L = x.device, cfg.input_dim, cfg.num_levels
    work = torch.float64 if torch.float64 in (x.dtype, table.dtype) else torch.float32
    # Constants as float32 first: the values the CUDA kernel uses, then widened if needed.
    scale = torch.tensor(scales, dtype=torch.float32, device=dev).to(work).view(1, L, 1)
    res = torch.tensor(resolutions, dtype=torch.int64, device=dev).view(1, L, 1)
    size = torch.tensor(rows, dtype=torch.int64, device=dev).view(1, L)
    first_row = torch.tensor(offsets[:-1], dtype=torch.int64, device=dev).view(1, L)
    is_dense = torch.tensor(dense, dtype=torch.bool, device=dev).view(1, L)

    xc = torch.nan_to_num(x.to(work), nan=0.0).clamp(0.0, 1.0)
    pos = xc.unsqueeze(1) * scale + 0.5                                      # [N, L, D], two roundings
    grid_f = torch.floor(pos)
    frac = pos - grid_f
    grid = grid_f.detach().to(torch.int64)
    values = table.to(work)

    out = None
    for corner in range(1 << D):
        bits = [(corner >> d) & 1 for d in range(D)]
        g = grid + torch.tensor(bits, dtype=torch.int64, device=dev)        # [N, L, D]
        idx = _vertex_index(g, res, size, is_dense) + first_row              # [N, L]
        w = None
        for d in range(D):
            f = frac[..., d] if bits[d] else 1.0 - frac[..., d]
            w = f if w is None else w * f
        term = w.unsqueeze(-1) * values[idx]                                 # [N, L, F]
        out = term if out is None else out + term
    return out.reshape(x.shape[0], L * cfg.features_per_level).to(table.dtype)


class _HashGridKernel(torch.autograd.Function):
    """nerfhead._C kernels (CPU or CUDA, by device); grads to the table always, to x when it
    requires grad."""

    @staticmethod
    def forward(ctx, x: Tensor, table: Tensor, cfg: HashGridConfig) -> Tensor:
        from nerfhead.ops._loader import load_extension

        scales, resolutions, offsets, _, _ = _level_constants(cfg)
        C = load_extension()
        x32 = x.detach().to(torch.float32).contiguous()
        tab = table.detach().contiguous()
        out = C.hashgrid_forward(x32, tab, list(scales), list(resolutions), list(offsets))
        ctx.save_for_backward(x32, tab)
        ctx.cfg = cfg
        ctx.x_dtype = x.dtype
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        from nerfhead.ops._loader import load_extension

        x32, tab = ctx.saved_tensors
        scales, resolutions, offsets, _, _ = _level_constants(ctx.cfg)
        C = load_extension()
        g = grad_out.to(tab.dtype).contiguous()
        grad_x = grad_table = None
        if ctx.needs_input_grad[1]:
            grad_table = C.hashgrid_backward_table(g, x32, tab, list(scales), list(resolutions),
                                                   list(offsets))
        if ctx.needs_input_grad[0]:
            grad_x = C.hashgrid_backward_input(g, x32, tab, list(scales), list(resolutions),
                                               list(offsets)).to(ctx.x_dtype)
        return grad_x, grad_table, None


@lru_cache(maxsize=8)
def _tcnn_encoding(cfg: HashGridConfig, dtype: torch.dtype, device_index: int):
    import tinycudann as tcnn

    with torch.cuda.device(device_index):
        enc = tcnn.Encoding(cfg.input_dim, cfg.tcnn_config(), dtype=dtype)
    n = enc.params.numel()
    if n != cfg.num_params():
        raise RuntimeError(f"hashgrid backend 'tcnn': tinycudann allocates {n} parameters for "
                           f"{cfg.tcnn_config()}, nerfhead's layout expects {cfg.num_params()}")
    return enc


def _encode_tcnn(x: Tensor, table: Tensor, cfg: HashGridConfig) -> Tensor:
    # tcnn owns its parameters; functional_call swaps ours in for the call so autograd flows
    # to `table`. Its params vector has exactly our [rows, F] layout flattened.
    enc = _tcnn_encoding(cfg, table.dtype, x.device.index or 0)
    flat = table.reshape(-1)
    out = torch.func.functional_call(enc, {"params": flat}, (x.clamp(0.0, 1.0).float(),))
    return out.to(table.dtype)


def hashgrid_encode(x: Tensor, table: Tensor, cfg: HashGridConfig, backend: str = "auto") -> Tensor:
    """Encode points with a multi-resolution hash grid.

    x: [N, D] points in [0, 1] (clamped). table: [cfg.num_rows(), F] float32/float16
    (float64 on the torch backend). Returns [N, L * F] in ``table.dtype``, level-major.
    backend: ``auto`` (our kernels when ``nerfhead._C`` loads: ``cuda`` for CUDA tensors,
    ``cpu`` for CPU tensors; else torch), ``cpu``, ``cuda``, ``torch`` or ``tcnn``. The
    kernels compute in float32 (x is cast) and take float32/float16 tables; with ``auto``
    float64 inputs or tables use the torch reference (which then computes in float64).
    Gradients flow to ``table`` and, when it requires grad, to ``x`` on every backend.
    """
    _check_inputs(x, table, cfg)
    choice = resolve_backend("hashgrid", backend, x.device)
    if choice in KERNEL_BACKENDS and (table.dtype not in (torch.float32, torch.float16)
                                      or x.dtype == torch.float64):
        if backend != "auto":
            if table.dtype not in (torch.float32, torch.float16):
                raise TypeError(f"hashgrid backend {backend!r} takes float32/float16 tables, "
                                f"got {table.dtype}")
        else:
            choice = "torch"
    if choice in KERNEL_BACKENDS:
        return _HashGridKernel.apply(x, table, cfg)
    if choice == "tcnn":
        return _encode_tcnn(x, table, cfg)
    return hashgrid_encode_reference(x, table, cfg)


class HashGridEncoding(nn.Module):
    """Trainable hash-grid encoding: owns the ``[num_rows, F]`` table (tcnn's init, U(±1e-4))."""

    def __init__(self, cfg: HashGridConfig, dtype: torch.dtype = torch.float32, backend: str = "auto"):
        super().__init__()
        self.cfg = cfg
        self.backend = backend
        self.out_dim = cfg.out_dim
        self.table = nn.Parameter(torch.empty(cfg.num_rows(), cfg.features_per_level, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.table.uniform_(-1e-4, 1e-4)

    def forward(self, x: Tensor) -> Tensor:
        """x: [N, D] in [0, 1] -> [N, L * F] in the table's dtype."""
        return hashgrid_encode(x, self.table, self.cfg, self.backend)

    def extra_repr(self) -> str:
        c = self.cfg
        return (f"D={c.input_dim}, L={c.num_levels}, F={c.features_per_level}, "
                f"log2_T={c.log2_hashmap_size}, base={c.base_resolution}, "
                f"scale={c.per_level_scale:.4f}, rows={c.num_rows()}, dtype={self.table.dtype}")
