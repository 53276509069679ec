"""Hash-grid encoding: hand-computed layout, indices and weights; reference vs brute force;
gradcheck; half tables; CUDA kernel vs reference (``cuda`` marker)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nerfhead.ops.hashgrid import (HashGridConfig, HashGridEncoding, grid_vertex_index,
                                   hashgrid_encode, hashgrid_encode_reference)

# Tolerances of the CUDA kernel against the reference. The forward is designed to be
# bit-exact (see test_cuda_forward_bit_exact_fp32); gradients are sums in another order
# (table: float32 atomics over ~100s of points per coarse row; inputs: analytic formula vs
# autograd, values up to ~1e3), and half table grads round to half after summing.
FWD_ATOL_FP32 = 1e-6
FWD_ATOL_FP16 = 1e-3
GRAD_TABLE_TOL_FP32 = dict(rtol=1e-5, atol=1e-4)
GRAD_TABLE_TOL_FP16 = dict(rtol=2e-3, atol=1e-3)  # ~2 half ulps
GRAD_INPUT_TOL = dict(rtol=1e-4, atol=1e-3)


# ---------------------------------------------------------------- layout, by hand
def test_layout_small_config_by_hand():
    cfg = HashGridConfig(input_dim=3, num_levels=3, features_per_level=2, log2_hashmap_size=8,
                         base_resolution=3, per_level_scale=1.5)
    # s_l = 1.5**l * 3 - 1: 2, 3.5, 5.75 ; r_l = ceil(s_l) + 1: 3, 5, 7
    assert cfg.level_scales() == [2.0, 3.5, 5.75]
    assert cfg.level_resolutions() == [3, 5, 7]
    # r**3 = 27, 125, 343 -> next multiple of 8: 32, 128, 344 -> min(., 2**8 = 256): 32, 128, 256
    assert cfg.level_rows() == [32, 128, 256]
    assert cfg.level_is_dense() == [True, True, False]  # 343 > 256 rows: hashed
    assert cfg.level_offsets() == [0, 32, 160, 416]
    assert cfg.num_rows() == 416
    assert cfg.num_params() == 832
    assert cfg.out_dim == 6


def test_default_config_matches_tcnn_sizes():
    # 3D, 16 levels, base 16, scale 2 is not realistic but the sizes are easy: level 0 has
    # s = 15, r = 16, 16**3 = 4096 rows (dense); level 1 r = 32 -> 32768 (dense); level 2
    # r = 64 -> 262144 (dense, <= 2**19); level 3 r = 128 -> 2097152 > 2**19: hashed.
    cfg = HashGridConfig()
    assert cfg.level_resolutions()[:4] == [16, 32, 64, 128]
    assert cfg.level_rows()[:4] == [4096, 32768, 262144, 524288]
    assert cfg.level_is_dense()[:4] == [True, True, True, False]
    assert cfg.num_rows() == 4096 + 32768 + 262144 + 13 * 524288


def test_from_finest_resolution():
    cfg = HashGridConfig.from_finest_resolution(2048, base_resolution=16, num_levels=16)
    assert cfg.per_level_scale == pytest.approx(2 ** (7 / 15))
    assert cfg.level_scales()[-1] == pytest.approx(2047.0, rel=1e-6)


def test_bad_config_and_inputs_raise():
    with pytest.raises(ValueError, match="input_dim"):
        HashGridConfig(input_dim=4)
    with pytest.raises(ValueError, match="features_per_level"):
        HashGridConfig(features_per_level=3)
    cfg = HashGridConfig(input_dim=2, num_levels=2, log2_hashmap_size=6, base_resolution=4)
    with pytest.raises(ValueError, match="table must be"):
        hashgrid_encode_reference(torch.rand(4, 2), torch.zeros(5, 2), cfg)
    with pytest.raises(ValueError, match=r"x must be \[N, 2\]"):
        hashgrid_encode_reference(torch.rand(4, 3), torch.zeros(cfg.num_rows(), 2), cfg)


# ---------------------------------------------------------------- indices, by hand
# base 9 -> level 0 has s = 8, r = 9, 9**3 = 729 -> 736 rows > 2**9 = 512: hashed with 512 rows.
HASHED_CFG = HashGridConfig(input_dim=3, num_levels=1, features_per_level=1, log2_hashmap_size=9,
                            base_resolution=9, per_level_scale=2.0)


def test_hashed_index_by_hand():
    # vertex (3, 5, 7):
    #   3 * 1          = 3
    #   5 * 2654435761 = 13272178805 = 3 * 2**32 + 387276917  -> 387276917
    #   7 * 805459861  = 5638219027  = 1 * 2**32 + 1343251731 -> 1343251731
    # 512 = 2**9, so h % 512 is the xor of the low 9 bits:
    #   3 % 512 = 3 = 0b000000011; 387276917 % 512 = 117 = 0b001110101;
    #   1343251731 % 512 = 275 = 0b100010011; 3 ^ 117 = 118 = 0b001110110; 118 ^ 275 = 0b101100101 = 357
    assert not HASHED_CFG.level_is_dense()[0]
    assert grid_vertex_index(torch.tensor([[3, 5, 7]]), HASHED_CFG, 0).tolist() == [357]
    # The encoding looks the same row up: x = (v - 0.5) / 8 puts pos = x*8 + 0.5 exactly on v,
    # so corner 0 has weight 1 and the others weight 0. table[row] = row exposes which row.
    table = torch.arange(512, dtype=torch.float32).view(512, 1)
    x = torch.tensor([[2.5 / 8, 4.5 / 8, 6.5 / 8]])
    assert hashgrid_encode_reference(x, table, HASHED_CFG).item() == 357.0


def test_dense_index_by_hand():
    # base 5 -> s = 4, r = 5; 2D: 25 -> 32 rows (dense); 3D: 125 -> 128 rows (dense).
    cfg2 = HashGridConfig(input_dim=2, num_levels=1, features_per_level=1, log2_hashmap_size=9, base_resolution=5)
    assert cfg2.level_rows() == [32] and cfg2.level_is_dense() == [True]
    assert grid_vertex_index(torch.tensor([[2, 3]]), cfg2, 0).tolist() == [2 + 3 * 5]
    table = torch.arange(32, dtype=torch.float32).view(32, 1)
    x = torch.tensor([[1.5 / 4, 2.5 / 4]])  # pos = (2, 3) exactly
    assert hashgrid_encode_reference(x, table, cfg2).item() == 17.0
    # x = 1 puts pos at 4.5, so corner grid+1 = 5 lies one past the last vertex; tcnn keeps
    # indexing and wraps modulo the level's rows: (5, 5, 5) -> 5 + 25 + 125 = 155 % 128 = 27.
    cfg3 = HashGridConfig(input_dim=3, num_levels=1, features_per_level=1, log2_hashmap_size=9, base_resolution=5)
    assert cfg3.level_rows() == [128]
    assert grid_vertex_index(torch.tensor([[5, 5, 5]]), cfg3, 0).tolist() == [27]


# ---------------------------------------------------------------- weights, by hand
def test_bilinear_weights_by_hand():
    cfg = HashGridConfig(input_dim=2, num_levels=1, features_per_level=2, log2_hashmap_size=9, base_resolution=5)
    table = torch.zeros(32, 2)
    # grid (1, 2), frac (0.25, 0.5): pos = (1.25, 2.5) = x * 4 + 0.5 -> x = (0.1875, 0.5)
    # corners (1,2) (2,2) (1,3) (2,3) -> rows 11, 12, 16, 17; weights .375 .125 .375 .125
    table[[11, 12, 16, 17], 0] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    table[[11, 12, 16, 17], 1] = torch.tensor([10.0, 20.0, 30.0, 40.0])
    out = hashgrid_encode_reference(torch.tensor([[0.1875, 0.5]]), table, cfg)
    # .375*1 + .125*2 + .375*3 + .125*4 = 2.25
    assert out.tolist() == [[2.25, 22.5]]


def test_trilinear_weights_by_hand():
    cfg = HashGridConfig(input_dim=3, num_levels=1, features_per_level=2, log2_hashmap_size=9, base_resolution=5)
    table = torch.zeros(128, 2)
    for i in range(5):
        for j in range(5):
            for k in range(5):  # dense row = i + 5 j + 25 k
                table[i + 5 * j + 25 * k] = torch.tensor([1 + 2 * i + 4 * j + 8 * k, i * j * k])
    # pos = x * 4 + 0.5 = (1.25, 1.5, 1.75); trilinear interpolation reproduces both the
    # affine function and the product i*j*k exactly: 1 + 2.5 + 6 + 14 = 23.5, 1.25*1.5*1.75
    out = hashgrid_encode_reference(torch.tensor([[0.1875, 0.25, 0.3125]]), table, cfg)
    assert out.tolist() == [[23.5, 1.25 * 1.5 * 1.75]]


# ---------------------------------------------------------------- brute force
def _brute_force(x: np.ndarray, table: np.ndarray, cfg: HashGridConfig) -> np.ndarray:
    """One point, one level, one corner at a time, straight from the tcnn formulas."""
    D, L, F = cfg.input_dim, cfg.num_levels, cfg.features_per_level
    primes = (1, 2654435761, 805459861)
    out = np.zeros((len(x), L * F))
    offset = 0
    for lvl in range(L):
        scale = float(np.float32(2.0 ** (lvl * math.log2(cfg.per_level_scale)) * cfg.base_resolution - 1))
        res = math.ceil(scale) + 1
        rows = min(-(-res ** D // 8) * 8, 2 ** cfg.log2_hashmap_size)
        for n, p in enumerate(x):
            pos = [min(max(float(p[d]), 0.0), 1.0) * scale + 0.5 for d in range(D)]
            g = [math.floor(v) for v in pos]
            fr = [v - gi for v, gi in zip(pos, g)]
            for c in range(2 ** D):
                v = [g[d] + ((c >> d) & 1) for d in range(D)]
                w = 1.0
                for d in range(D):
                    w *= fr[d] if (c >> d) & 1 else 1 - fr[d]
                if res ** D <= rows:
                    idx = sum(v[d] * res ** d for d in range(D))
                else:
                    idx = 0
                    for d in range(D):
                        idx ^= (v[d] * primes[d]) % 2 ** 32
                out[n, lvl * F:(lvl + 1) * F] += w * table[offset + idx % rows]
        offset += rows
    return out


@pytest.mark.parametrize("dim", [2, 3])
def test_reference_matches_brute_force(dim):
    # base 6, scale 1.7: dense coarse levels, hashed fine levels (2**7 / 2**8 rows)
    cfg = HashGridConfig(input_dim=dim, num_levels=4, features_per_level=2, log2_hashmap_size=5 + dim,
                         base_resolution=6, per_level_scale=1.7)
    assert True in cfg.level_is_dense() and False in cfg.level_is_dense()
    gen = torch.Generator().manual_seed(dim)
    x = torch.rand(200, dim, generator=gen, dtype=torch.float64)
    x[:3] = torch.tensor([0.0, 1.0, 1.2])[:, None].expand(3, dim)  # edges and a clamped point
    table = torch.randn(cfg.num_rows(), 2, generator=gen, dtype=torch.float64)
    ref = hashgrid_encode_reference(x, table, cfg)
    expected = _brute_force(x.numpy(), table.numpy(), cfg)
    np.testing.assert_allclose(ref.numpy(), expected, rtol=1e-12, atol=1e-12)
    # float32 path agrees to float32 precision
    ref32 = hashgrid_encode_reference(x.float(), table.float(), cfg)
    np.testing.assert_allclose(ref32.numpy(), expected, rtol=1e-5, atol=1e-5)


def _points_away_from_cell_faces(cfg: HashGridConfig, n: int, seed: int, margin: float = 1e-3):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(4 * n, cfg.input_dim, generator=gen, dtype=torch.float64) * 0.98 + 0.01
    scales = torch.tensor(cfg.level_scales(), dtype=torch.float64).view(1, -1, 1)
    frac = torch.frac(x.unsqueeze(1) * scales + 0.5)
    keep = ((frac > margin) & (frac < 1 - margin)).flatten(1).all(1)
    return x[keep][:n]


@pytest.mark.parametrize("dim", [2, 3])
def test_gradcheck_reference(dim):
    cfg = HashGridConfig(input_dim=dim, num_levels=2, features_per_level=2, log2_hashmap_size=5,
                         base_resolution=4, per_level_scale=1.5)
    x = _points_away_from_cell_faces(cfg, 6, seed=dim).requires_grad_(True)
    table = torch.randn(cfg.num_rows(), 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: hashgrid_encode_reference(a, b, cfg), (x, table))


def test_half_table():
    cfg = HashGridConfig(input_dim=3, num_levels=3, features_per_level=2, log2_hashmap_size=8,
                         base_resolution=4, per_level_scale=1.5)
    enc = HashGridEncoding(cfg, dtype=torch.float16)
    with torch.no_grad():
        enc.table.copy_(torch.randn(cfg.num_rows(), 2))
    x = torch.rand(64, 3)
    out = enc(x)
    assert out.dtype == torch.float16 and out.shape == (64, 6)
    expected = _brute_force(x.double().numpy(), enc.table.detach().double().numpy(), cfg)
    np.testing.assert_allclose(out.detach().double().numpy(), expected, rtol=2e-3, atol=2e-3)
    out.float().sum().backward()
    assert enc.table.grad.dtype == torch.float16
    # each point spreads weight 1 over its 2**3 corners per level and feature
    assert enc.table.grad.float().sum().item() == pytest.approx(64 * 3 * 2, rel=1e-3)


def test_module_init_and_grads():
    cfg = HashGridConfig(input_dim=2, num_levels=4, features_per_level=4, log2_hashmap_size=8, base_resolution=4)
    enc = HashGridEncoding(cfg)
    assert enc.out_dim == 16 and enc.table.shape == (cfg.num_rows(), 4)
    assert enc.table.abs().max().item() <= 1e-4
    x = torch.rand(32, 2, requires_grad=True)
    enc(x).pow(2).sum().backward()
    assert enc.table.grad is not None and x.grad is not None and x.grad.abs().sum() > 0
    assert hashgrid_encode(x, enc.table, cfg, backend="torch").shape == (32, 16)


# ---------------------------------------------------------------- CUDA kernel vs reference
CUDA_CONFIGS = {
    2: HashGridConfig(input_dim=2, num_levels=8, features_per_level=2, log2_hashmap_size=12,
                      base_resolution=8, per_level_scale=1.6),
    3: HashGridConfig(input_dim=3, num_levels=8, features_per_level=2, log2_hashmap_size=14,
                      base_resolution=8, per_level_scale=1.6),
}


@pytest.mark.cuda
@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("features", [1, 2, 4, 8])
def test_cuda_matches_reference(dim, dtype, features):
    from nerfhead.ops._loader import extension_available, extension_error

    if not extension_available():
        pytest.skip(extension_error())
    base = CUDA_CONFIGS[dim]
    cfg = HashGridConfig(**{**base.__dict__, "features_per_level": features})
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.rand(4096, dim, device="cuda", generator=gen)
    x[:4] = torch.tensor([0.0, 1.0, -0.5, 1.5], device="cuda")[:, None]  # edges, clamped points
    table = (torch.randn(cfg.num_rows(), features, device="cuda", generator=gen) * 0.1).to(dtype)
    grad_out = torch.randn(4096, cfg.out_dim, device="cuda", generator=gen).to(dtype)

    results = {}
    for backend in ("cuda", "torch"):
        xb = x.clone().requires_grad_(True)
        tb = table.clone().requires_grad_(True)
        out = hashgrid_encode(xb, tb, cfg, backend=backend)
        out.backward(grad_out)
        results[backend] = (out.detach(), tb.grad, xb.grad)
    (o_c, gt_c, gx_c), (o_r, gt_r, gx_r) = results["cuda"], results["torch"]
    assert o_c.dtype == dtype and gt_c.dtype == dtype
    fp32 = dtype == torch.float32
    torch.testing.assert_close(o_c, o_r, rtol=0, atol=FWD_ATOL_FP32 if fp32 else FWD_ATOL_FP16)
    torch.testing.assert_close(gt_c.float(), gt_r.float(), **(GRAD_TABLE_TOL_FP32 if fp32 else GRAD_TABLE_TOL_FP16))
    torch.testing.assert_close(gx_c, gx_r, **GRAD_INPUT_TOL)
    assert gx_c[2:4].abs().max().item() == 0.0  # clamped inputs get no gradient


@pytest.mark.cuda
def test_cuda_forward_bit_exact_fp32():
    from nerfhead.ops._loader import extension_available, extension_error

    if not extension_available():
        pytest.skip(extension_error())
    cfg = CUDA_CONFIGS[3]
    x = torch.rand(10000, 3, device="cuda")
    table = torch.randn(cfg.num_rows(), 2, device="cuda")
    assert torch.equal(hashgrid_encode(x, table, cfg, backend="cuda"),
                       hashgrid_encode_reference(x, table, cfg))
