// Multi-resolution hash-grid encoding (tiny-cuda-nn's HashGrid, Linear interpolation).
//
// The math and layout are documented in nerfhead/ops/hashgrid.py; this file computes the
// same function as hashgrid_encode_reference. Per-level constants (float32 scale,
// resolution, first row) come from Python so both sides use identical values.
//
// Bit-exactness with the PyTorch reference: pos = x * scale + 0.5 is computed with
// __fmul_rn / __fadd_rn (never contracted into an FMA, even under --use_fast_math), the
// corner weights are multiplied in axis order and the corners summed in the same order as
// the reference, all in float32. Half tables are read as float32 and the result is rounded
// once (__float2half_rn, round-to-nearest-even like torch's cast).
//
// Gradients:
//  * table: one thread per (point, level) scatters w * dL/dout with float32 atomicAdd into
//    a float32 buffer. For half tables the buffer is cast to half at the end: accumulating
//    many small contributions directly in half (atomicAdd on __half2) would lose them.
//    Atomics make the summation order, hence the last bits, nondeterministic.
//  * inputs: one thread per point loops over levels (no atomics, deterministic):
//    d out / d x_d = scale * sum_c (+-prod_{e != d} factor_e(c)) * value_c, zero where
//    the input was clamped (outside [0, 1], NaN, inf), as autograd gives for the reference.
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <vector>

#include "nerfhead.h"

namespace nerfhead {
namespace {

constexpr int kMaxLevels = 32;  // matches MAX_LEVELS in nerfhead/ops/hashgrid.py
constexpr int kThreads = 256;

// Per-level constants, passed by value (kernel parameter space).
struct LevelParams {
    float scale[kMaxLevels];
    uint32_t resolution[kMaxLevels];
    uint32_t offset[kMaxLevels + 1];  // first row of each level, then the total
    uint32_t dense_mask;              // bit l set: level l indexes densely
    uint32_t num_levels;
};

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }

// Clamp to [0, 1] (NaN -> 0, as torch.nan_to_num(nan=0) then clamp), then grid cell and
// fractional position. Returns whether the gradient passes the clamp.
template <int D>
__device__ __forceinline__ bool locate(const float* __restrict__ x, float scale, uint32_t grid[D],
                                       float frac[D]) {
    bool inside = true;
#pragma unroll
    for (int d = 0; d < D; ++d) {
        const float xd = x[d];
        inside = inside && (xd >= 0.0f && xd <= 1.0f);
        const float xc = fminf(fmaxf(xd, 0.0f), 1.0f);  // fmaxf(NaN, 0) == 0
        const float pos = __fadd_rn(__fmul_rn(xc, scale), 0.5f);
        const float cell = floorf(pos);
        grid[d] = static_cast<uint32_t>(static_cast<int>(cell));
        frac[d] = __fsub_rn(pos, cell);
    }
    return inside;
}

// tcnn's grid_index: dense row-major index or xor of prime products (uint32 wrap), mod rows.
template <int D>
__device__ __forceinline__ uint32_t vertex_index(const uint32_t v[D], uint32_t resolution,
                                                 uint32_t rows, bool dense) {
    constexpr uint32_t kPrimes[3] = {1u, 2654435761u, 805459861u};
    uint32_t index = 0;
    if (dense) {
        uint32_t stride = 1;
#pragma unroll
        for (int d = 0; d < D; ++d) {
            index += v[d] * stride;
            stride *= resolution;
        }
    } else {
#pragma unroll
        for (int d = 0; d < D; ++d) index ^= v[d] * kPrimes[d];
    }
    return index % rows;
}

// Corner c: vertex grid + bits(c) and weight prod_d (bit ? frac : 1 - frac) in axis order.
template <int D>
__device__ __forceinline__ float corner(uint32_t c, const uint32_t grid[D], const float frac[D],
                                        uint32_t v[D]) {
    float w = 1.0f;
#pragma unroll
    for (int d = 0; d < D; ++d) {
        const bool hi = (c >> d) & 1u;
        v[d] = grid[d] + (hi ? 1u : 0u);
        w = __fmul_rn(w, hi ? frac[d] : __fsub_rn(1.0f, frac[d]));
    }
    return w;
}

template <int D, int F, typename T>
__global__ void hashgrid_forward_kernel(const float* __restrict__ x, const T* __restrict__ table,
                                        T* __restrict__ out, int64_t n_points, LevelParams p) {
    const int64_t n = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    const uint32_t level = blockIdx.y;
    if (n >= n_points) return;
    uint32_t grid[D];
    float frac[D];
    locate<D>(x + n * D, p.scale[level], grid, frac);
    const uint32_t rows = p.offset[level + 1] - p.offset[level];
    const bool dense = (p.dense_mask >> level) & 1u;
    const T* level_table = table + static_cast<int64_t>(p.offset[level]) * F;

    float acc[F];
#pragma unroll
    for (int f = 0; f < F; ++f) acc[f] = 0.0f;
#pragma unroll
    for (uint32_t c = 0; c < (1u << D); ++c) {
        uint32_t v[D];
        const float w = corner<D>(c, grid, frac, v);
        const T* row = level_table + static_cast<int64_t>(vertex_index<D>(v, p.resolution[level], rows, dense)) * F;
#pragma unroll
        for (int f = 0; f < F; ++f) acc[f] = __fadd_rn(acc[f], __fmul_rn(w, to_float(row[f])));
    }
    T* o = out + n * (static_cast<int64_t>(p.num_levels) * F) + level * F;
#pragma unroll
    for (int f = 0; f < F; ++f) o[f] = from_float<T>(acc[f]);
}

template <int D, int F, typename T>
__global__ void hashgrid_backward_table_kernel(const T* __restrict__ grad_out, const float* __restrict__ x,
                                               float* __restrict__ grad_table, int64_t n_points,
                                               LevelParams p) {
    const int64_t n = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    const uint32_t level = blockIdx.y;
    if (n >= n_points) return;
    uint32_t grid[D];
    float frac[D];
    locate<D>(x + n * D, p.scale[level], grid, frac);
    const uint32_t rows = p.offset[level + 1] - p.offset[level];
    const bool dense = (p.dense_mask >> level) & 1u;
    float g[F];
    const T* go = grad_out + n * (static_cast<int64_t>(p.num_levels) * F) + level * F;
#pragma unroll
    for (int f = 0; f < F; ++f) g[f] = to_float(go[f]);
    float* level_grad = grad_table + static_cast<int64_t>(p.offset[level]) * F;
#pragma unroll
    for (uint32_t c = 0; c < (1u << D); ++c) {
        uint32_t v[D];
        const float w = corner<D>(c, grid, frac, v);
        float* row = level_grad + static_cast<int64_t>(vertex_index<D>(v, p.resolution[level], rows, dense)) * F;
#pragma unroll
        for (int f = 0; f < F; ++f) atomicAdd(row + f, w * g[f]);
    }
}

template <int D, int F, typename T>
__global__ void hashgrid_backward_input_kernel(const T* __restrict__ grad_out, const float* __restrict__ x,
                                               const T* __restrict__ table, float* __restrict__ grad_x,
                                               int64_t n_points, LevelParams p) {
    const int64_t n = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (n >= n_points) return;
    float total[D];
#pragma unroll
    for (int d = 0; d < D; ++d) total[d] = 0.0f;
    bool inside = true;
    for (uint32_t level = 0; level < p.num_levels; ++level) {
        uint32_t grid[D];
        float frac[D];
        inside = locate<D>(x + n * D, p.scale[level], grid, frac);
        if (!inside) break;
        const uint32_t rows = p.offset[level + 1] - p.offset[level];
        const bool dense = (p.dense_mask >> level) & 1u;
        const T* level_table = table + static_cast<int64_t>(p.offset[level]) * F;
        const T* go = grad_out + n * (static_cast<int64_t>(p.num_levels) * F) + level * F;
        float dfrac[D];
#pragma unroll
        for (int d = 0; d < D; ++d) dfrac[d] = 0.0f;
#pragma unroll
        for (uint32_t c = 0; c < (1u << D); ++c) {
            uint32_t v[D];
            corner<D>(c, grid, frac, v);
            const T* row = level_table + static_cast<int64_t>(vertex_index<D>(v, p.resolution[level], rows, dense)) * F;
            float dot = 0.0f;  // dL/dout . value_c
#pragma unroll
            for (int f = 0; f < F; ++f) dot += to_float(go[f]) * to_float(row[f]);
#pragma unroll
            for (int d = 0; d < D; ++d) {
                float dw = ((c >> d) & 1u) ? 1.0f : -1.0f;  // d weight_c / d frac_d
#pragma unroll
                for (int e = 0; e < D; ++e) {
                    if (e != d) dw *= ((c >> e) & 1u) ? frac[e] : 1.0f - frac[e];
                }
                dfrac[d] += dw * dot;
            }
        }
#pragma unroll
        for (int d = 0; d < D; ++d) total[d] += p.scale[level] * dfrac[d];
    }
#pragma unroll
    for (int d = 0; d < D; ++d) grad_x[n * D + d] = inside ? total[d] : 0.0f;
}

LevelParams make_level_params(int64_t dim, const std::vector<double>& scales,
                              const std::vector<int64_t>& resolutions, const std::vector<int64_t>& offsets) {
    const size_t L = scales.size();
    TORCH_CHECK(L >= 1 && L <= kMaxLevels, "hashgrid: 1..", kMaxLevels, " levels supported, got ", L);
    TORCH_CHECK(resolutions.size() == L && offsets.size() == L + 1,
                "hashgrid: need one resolution per level and num_levels + 1 offsets");
    TORCH_CHECK(offsets[0] == 0 && offsets[L] < (int64_t(1) << 32), "hashgrid: bad level offsets");
    LevelParams p{};
    p.num_levels = static_cast<uint32_t>(L);
    for (size_t l = 0; l <= L; ++l) p.offset[l] = static_cast<uint32_t>(offsets[l]);
    for (size_t l = 0; l < L; ++l) {
        const int64_t rows = offsets[l + 1] - offsets[l];
        TORCH_CHECK(rows > 0 && resolutions[l] >= 2 && resolutions[l] < (int64_t(1) << 31),
                    "hashgrid: bad level ", l, " (rows ", rows, ", resolution ", resolutions[l], ")");
        p.scale[l] = static_cast<float>(scales[l]);  // already a float32 value
        p.resolution[l] = static_cast<uint32_t>(resolutions[l]);
        // dense when resolution**dim fits the level's rows (no uint32 overflow: stop early)
        uint64_t vertices = 1;
        bool dense = true;
        for (int64_t d = 0; d < dim && dense; ++d) {
            vertices *= static_cast<uint64_t>(resolutions[l]);
            dense = vertices <= static_cast<uint64_t>(rows);
        }
        if (dense) p.dense_mask |= (1u << l);
    }
    return p;
}

void check_common(const at::Tensor& x, const at::Tensor& table, const std::vector<int64_t>& level_offsets) {
    NH_CHECK_INPUT(x);
    NH_CHECK_INPUT(table);
    TORCH_CHECK(x.scalar_type() == at::kFloat, "hashgrid: x must be float32, got ", x.scalar_type());
    TORCH_CHECK(x.dim() == 2 && (x.size(1) == 2 || x.size(1) == 3), "hashgrid: x must be [N, 2|3], got ",
                x.sizes());
    TORCH_CHECK(table.dim() == 2, "hashgrid: table must be [rows, F], got ", table.sizes());
    const int64_t F = table.size(1);
    TORCH_CHECK(F == 1 || F == 2 || F == 4 || F == 8, "hashgrid: features per level must be 1, 2, 4 or 8, got ", F);
    TORCH_CHECK(table.scalar_type() == at::kFloat || table.scalar_type() == at::kHalf,
                "hashgrid: table must be float32 or float16, got ", table.scalar_type());
    TORCH_CHECK(x.device() == table.device(), "hashgrid: x and table on different devices");
    TORCH_CHECK(!level_offsets.empty() && table.size(0) == level_offsets.back(), "hashgrid: table has ",
                table.size(0), " rows, the config needs ", level_offsets.empty() ? 0 : level_offsets.back());
}

// Calls fn.template operator()<D, F, T>() for the runtime (dim, features, dtype).
template <typename Fn>
void dispatch(int64_t dim, int64_t features, at::ScalarType dtype, const Fn& fn) {
#define NH_HG_CASE_F(D_, T_)                                   \
    switch (features) {                                        \
        case 1: fn.template operator()<D_, 1, T_>(); break;    \
        case 2: fn.template operator()<D_, 2, T_>(); break;    \
        case 4: fn.template operator()<D_, 4, T_>(); break;    \
        case 8: fn.template operator()<D_, 8, T_>(); break;    \
        default: TORCH_CHECK(false, "hashgrid: unsupported F ", features); \
    }
#define NH_HG_CASE_D(T_)                                                       \
    if (dim == 2) { NH_HG_CASE_F(2, T_) } else { NH_HG_CASE_F(3, T_) }
    if (dtype == at::kHalf) {
        NH_HG_CASE_D(__half)
    } else {
        NH_HG_CASE_D(float)
    }
#undef NH_HG_CASE_D
#undef NH_HG_CASE_F
}

template <typename T> T* ptr(const at::Tensor& t) { return reinterpret_cast<T*>(t.data_ptr()); }

// Kernel launchers as functors with a templated call operator, for dispatch().
struct LaunchForward {
    const at::Tensor &x, &table, &out;
    const LevelParams& p;
    dim3 blocks;
    cudaStream_t stream;
    template <int D, int F, typename T> void operator()() const {
        hashgrid_forward_kernel<D, F, T>
            <<<blocks, kThreads, 0, stream>>>(ptr<float>(x), ptr<T>(table), ptr<T>(out), x.size(0), p);
    }
};

struct LaunchBackwardTable {
    const at::Tensor &grad_out, &x, &grad_table;
    const LevelParams& p;
    dim3 blocks;
    cudaStream_t stream;
    template <int D, int F, typename T> void operator()() const {
        hashgrid_backward_table_kernel<D, F, T>
            <<<blocks, kThreads, 0, stream>>>(ptr<T>(grad_out), ptr<float>(x), ptr<float>(grad_table), x.size(0), p);
    }
};

struct LaunchBackwardInput {
    const at::Tensor &grad_out, &x, &table, &grad_x;
    const LevelParams& p;
    dim3 blocks;
    cudaStream_t stream;
    template <int D, int F, typename T> void operator()() const {
        hashgrid_backward_input_kernel<D, F, T><<<blocks, kThreads, 0, stream>>>(
            ptr<T>(grad_out), ptr<float>(x), ptr<T>(table), ptr<float>(grad_x), x.size(0), p);
    }
};

}  // namespace

at::Tensor hashgrid_forward(const at::Tensor& x, const at::Tensor& table, const std::vector<double>& level_scales,
                            const std::vector<int64_t>& level_resolutions, const std::vector<int64_t>& level_offsets) {
    check_common(x, table, level_offsets);
    const LevelParams p = make_level_params(x.size(1), level_scales, level_resolutions, level_offsets);
    const int64_t N = x.size(0), F = table.size(1);
    at::Tensor out = at::empty({N, static_cast<int64_t>(p.num_levels) * F}, table.options());
    if (N == 0) return out;
    c10::DeviceGuard guard(x.device());
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.device().index());
    const dim3 blocks(static_cast<unsigned>((N + kThreads - 1) / kThreads), p.num_levels);
    dispatch(x.size(1), F, table.scalar_type(), LaunchForward{x, table, out, p, blocks, stream});
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return out;
}

at::Tensor hashgrid_backward_table(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& table,
                                   const std::vector<double>& level_scales,
                                   const std::vector<int64_t>& level_resolutions,
                                   const std::vector<int64_t>& level_offsets) {
    check_common(x, table, level_offsets);
    NH_CHECK_INPUT(grad_out);
    const LevelParams p = make_level_params(x.size(1), level_scales, level_resolutions, level_offsets);
    const int64_t N = x.size(0), F = table.size(1);
    TORCH_CHECK(grad_out.scalar_type() == table.scalar_type() && grad_out.dim() == 2 && grad_out.size(0) == N &&
                    grad_out.size(1) == static_cast<int64_t>(p.num_levels) * F,
                "hashgrid: grad_out must be [N, L*F] in the table's dtype, got ", grad_out.sizes());
    at::Tensor grad = at::zeros(table.sizes(), table.options().dtype(at::kFloat));
    if (N > 0) {
        c10::DeviceGuard guard(x.device());
        cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.device().index());
        const dim3 blocks(static_cast<unsigned>((N + kThreads - 1) / kThreads), p.num_levels);
        dispatch(x.size(1), F, table.scalar_type(), LaunchBackwardTable{grad_out, x, grad, p, blocks, stream});
        C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    return table.scalar_type() == at::kFloat ? grad : grad.to(table.scalar_type());
}

at::Tensor hashgrid_backward_input(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& table,
                                   const std::vector<double>& level_scales,
                                   const std::vector<int64_t>& level_resolutions,
                                   const std::vector<int64_t>& level_offsets) {
    check_common(x, table, level_offsets);
    NH_CHECK_INPUT(grad_out);
    const LevelParams p = make_level_params(x.size(1), level_scales, level_resolutions, level_offsets);
    const int64_t N = x.size(0), F = table.size(1);
    TORCH_CHECK(grad_out.scalar_type() == table.scalar_type() && grad_out.dim() == 2 && grad_out.size(0) == N &&
                    grad_out.size(1) == static_cast<int64_t>(p.num_levels) * F,
                "hashgrid: grad_out must be [N, L*F] in the table's dtype, got ", grad_out.sizes());
    at::Tensor grad_x = at::empty_like(x);
    if (N == 0) return grad_x;
    c10::DeviceGuard guard(x.device());
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.device().index());
    const dim3 blocks(static_cast<unsigned>((N + kThreads - 1) / kThreads));
    dispatch(x.size(1), F, table.scalar_type(), LaunchBackwardInput{grad_out, x, table, grad_x, p, blocks, stream});
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return grad_x;
}

}  // namespace nerfhead
