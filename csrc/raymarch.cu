// Ray marching family of nerfhead._C: near/far from a box, Morton codes, occupancy
// bitfield, training march (count pass + fill pass), training composite (forward and
// backward), and the two inference steps (march a few samples, composite them).
//
// PyTorch references: nerfhead/ops/occupancy.py, raymarch.py, raymarch_inference.py.
// The march performs the same float32 operations in the same order as
// `march_segment_reference`; products and sums go through __fmul_rn/__fadd_rn so that
// --use_fast_math / --fmad cannot contract them into FMAs, and reciprocals use __frcp_rn,
// so both implementations emit bit-identical samples.
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <cfloat>
#include <cstdint>
#include <vector>

#include "nerfhead.h"

namespace nerfhead {
namespace {

constexpr int kThreads = 256;

inline int num_blocks(int64_t n) { return static_cast<int>((n + kThreads - 1) / kThreads); }

template <typename T>
inline T* ptr(const at::Tensor& t) { return t.data_ptr<T>(); }

// Constants of one march, already rounded to float32 by the Python side (march_params).
struct MarchParams {
    float bound;        // half-size of cascade 0
    float inv_bound;    // float32(1 / bound)
    float outer;        // half-size of the coarsest cascade
    float dt_gamma, dt_min, dt_max;
    float dt_to_cells;  // float32(G / (2 * bound)): dt in cascade-0 cells
    float cell2;        // 2 / G (exact: G is a power of two)
    float Gf;
    int C, G;
    uint64_t G3;
};

__device__ __forceinline__ float clampf(float x, float lo, float hi) { return fminf(fmaxf(x, lo), hi); }

__device__ __forceinline__ float step_size(float t, const MarchParams& p) {
    return clampf(__fmul_rn(t, p.dt_gamma), p.dt_min, p.dt_max);
}

__host__ __device__ __forceinline__ uint32_t expand_bits(uint32_t v) {
    v = (v * 0x00010001u) & 0xFF0000FFu;
    v = (v * 0x00000101u) & 0x0F00F00Fu;
    v = (v * 0x00000011u) & 0xC30C30C3u;
    v = (v * 0x00000005u) & 0x49249249u;
    return v;
}

__host__ __device__ __forceinline__ uint32_t compact_bits(uint32_t v) {
    v &= 0x49249249u;
    v = (v | (v >> 2)) & 0xC30C30C3u;
    v = (v | (v >> 4)) & 0x0F00F00Fu;
    v = (v | (v >> 8)) & 0xFF0000FFu;
    v = (v | (v >> 16)) & 0x0000FFFFu;
    return v;
}

__host__ __device__ __forceinline__ uint32_t morton(uint32_t x, uint32_t y, uint32_t z) {
    return expand_bits(x) | (expand_bits(y) << 1) | (expand_bits(z) << 2);
}

__device__ __forceinline__ int cell_coord(float x, float rb, const MarchParams& p) {
    // ((x / mip_bound + 1) / 2) * G, clamped to [0, G-1], truncated
    const float u = __fmul_rn(__fmul_rn(__fadd_rn(__fmul_rn(x, rb), 1.f), 0.5f), p.Gf);
    return static_cast<int>(clampf(u, 0.f, p.Gf - 1.f));
}

__device__ __forceinline__ float exit_distance(int cell, bool forward, float mb, float x, float rd,
                                               const MarchParams& p) {
    const float edge = static_cast<float>(cell + (forward ? 1 : 0));
    const float face = __fmul_rn(__fadd_rn(__fmul_rn(edge, p.cell2), -1.f), mb);
    return __fmul_rn(__fsub_rn(face, x), rd);
}

// March one ray from t until far, `max_samples` new samples, or `count` reaching
// `max_steps`; emit(t, dt, x, y, z) for every sample in an occupied cell. In an empty cell
// the ray jumps to the cell's exit and on to the next multiple of its step (torch-ngp).
template <typename Emit>
__device__ void march_segment(float ox, float oy, float oz, float dx, float dy, float dz, float far,
                              float& t, int& count, int max_samples, int max_steps,
                              const uint8_t* __restrict__ bits, const MarchParams& p, Emit emit) {
    const float rdx = __frcp_rn(dx), rdy = __frcp_rn(dy), rdz = __frcp_rn(dz);
    const bool fx = !signbit(dx), fy = !signbit(dy), fz = !signbit(dz);
    int emitted = 0;
    while (t < far && emitted < max_samples && count < max_steps) {
        const float x = clampf(__fadd_rn(ox, __fmul_rn(t, dx)), -p.outer, p.outer);
        const float y = clampf(__fadd_rn(oy, __fmul_rn(t, dy)), -p.outer, p.outer);
        const float z = clampf(__fadd_rn(oz, __fmul_rn(t, dz)), -p.outer, p.outer);
        const float dt = step_size(t, p);
        int e_pos = 0, e_dt = 0;
        frexpf(__fmul_rn(fmaxf(fmaxf(fabsf(x), fabsf(y)), fabsf(z)), p.inv_bound), &e_pos);
        frexpf(__fmul_rn(dt, p.dt_to_cells), &e_dt);
        const int level = min(p.C - 1, max(0, max(e_pos, e_dt)));
        const float mb = scalbnf(p.bound, level);
        const float rb = scalbnf(p.inv_bound, -level);
        const int nx = cell_coord(x, rb, p), ny = cell_coord(y, rb, p), nz = cell_coord(z, rb, p);
        const uint64_t index = static_cast<uint64_t>(level) * p.G3 + morton(nx, ny, nz);
        if ((bits[index >> 3] >> (index & 7)) & 1) {
            emit(t, dt, x, y, z);
            t = __fadd_rn(t, dt);
            ++emitted;
            ++count;
        } else {
            const float tx = exit_distance(nx, fx, mb, x, rdx, p);
            const float ty = exit_distance(ny, fy, mb, y, rdy, p);
            const float tz = exit_distance(nz, fz, mb, z, rdz, p);
            const float target = __fadd_rn(t, fmaxf(fminf(tx, fminf(ty, tz)), 0.f));
            do {
                t = __fadd_rn(t, step_size(t, p));
            } while (t < target);
        }
    }
}

// ------------------------------------------------------------------ kernels
__global__ void near_far_kernel(int64_t R, const float* __restrict__ o, const float* __restrict__ d,
                                const float* __restrict__ aabb, float min_near, float* nears, float* fars) {
    const int64_t n = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (n >= R) return;
    float near = -FLT_MAX, far = FLT_MAX;
    bool first = true;
    for (int a = 0; a < 3; ++a) {
        const float rd = __frcp_rn(d[3 * n + a]);
        const float t1 = __fmul_rn(__fsub_rn(aabb[a], o[3 * n + a]), rd);
        const float t2 = __fmul_rn(__fsub_rn(aabb[3 + a], o[3 * n + a]), rd);
        const float lo = fminf(t1, t2), hi = fmaxf(t1, t2);
        near = first ? lo : fmaxf(near, lo);
        far = first ? hi : fminf(far, hi);
        first = false;
    }
    const bool miss = near > far || far < min_near;
    nears[n] = miss ? FLT_MAX : fmaxf(near, min_near);
    fars[n] = miss ? FLT_MAX : far;
}

__global__ void morton_kernel(int64_t M, const int* __restrict__ coords, int* out) {
    const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (i >= M) return;
    out[i] = static_cast<int>(morton(coords[3 * i], coords[3 * i + 1], coords[3 * i + 2]));
}

__global__ void morton_invert_kernel(int64_t M, const int* __restrict__ codes, int* out) {
    const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (i >= M) return;
    const uint32_t c = static_cast<uint32_t>(codes[i]);
    out[3 * i] = compact_bits(c);
    out[3 * i + 1] = compact_bits(c >> 1);
    out[3 * i + 2] = compact_bits(c >> 2);
}

__global__ void packbits_kernel(int64_t B, const float* __restrict__ grid, float thresh, uint8_t* out) {
    const int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (b >= B) return;
    uint8_t bits = 0;
    for (int k = 0; k < 8; ++k) bits |= (grid[8 * b + k] > thresh ? 1 : 0) << k;
    out[b] = bits;
}

// Training march. Count pass: offsets == nullptr, writes counts. Fill pass: writes samples
// from offsets[n]; the march is deterministic, so it emits exactly counts[n] samples.
__global__ void march_train_kernel(int64_t R, const float* __restrict__ o, const float* __restrict__ d,
                                   const float* __restrict__ nears, const float* __restrict__ fars,
                                   const float* __restrict__ noise, const uint8_t* __restrict__ bits,
                                   MarchParams p, int max_steps, const int64_t* __restrict__ offsets,
                                   int* counts, float* pos, float* dirs, float* deltas, float* t_starts,
                                   float* t_ends, int64_t* ray_indices) {
    const int64_t n = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (n >= R) return;
    const float ox = o[3 * n], oy = o[3 * n + 1], oz = o[3 * n + 2];
    const float dx = d[3 * n], dy = d[3 * n + 1], dz = d[3 * n + 2];
    const float near = nears[n];
    float t = __fadd_rn(near, __fmul_rn(step_size(near, p), noise[n]));
    int count = 0;
    if (offsets == nullptr) {
        march_segment(ox, oy, oz, dx, dy, dz, fars[n], t, count, max_steps, max_steps, bits, p,
                      [](float, float, float, float, float) {});
        counts[n] = count;
        return;
    }
    int64_t s = offsets[n];
    march_segment(ox, oy, oz, dx, dy, dz, fars[n], t, count, max_steps, max_steps, bits, p,
                  [&](float ts, float dt, float x, float y, float z) {
                      pos[3 * s] = x, pos[3 * s + 1] = y, pos[3 * s + 2] = z;
                      dirs[3 * s] = dx, dirs[3 * s + 1] = dy, dirs[3 * s + 2] = dz;
                      deltas[s] = dt;
                      t_starts[s] = ts;
                      t_ends[s] = __fadd_rn(ts, dt);
                      ray_indices[s] = n;
                      ++s;
                  });
}

__global__ void composite_train_fwd_kernel(int64_t R, int C, const float* __restrict__ sigmas,
                                           const float* __restrict__ rgbs, const float* __restrict__ deltas,
                                           const float* __restrict__ ts, const int* __restrict__ info,
                                           float T_thresh, float* weights, float* weights_sum, float* depth,
                                           float* image) {
    const int64_t n = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (n >= R) return;
    const int64_t off = info[2 * n];
    const int cnt = info[2 * n + 1];
    float T = 1.f, ws = 0.f, dep = 0.f;
    float* img = image + n * C;
    for (int i = 0; i < cnt; ++i) {
        const int64_t s = off + i;
        const float alpha = 1.f - expf(-sigmas[s] * deltas[s]);
        const float w = alpha * T;
        weights[s] = w;
        ws += w;
        dep += w * ts[s];
        for (int c = 0; c < C; ++c) img[c] += w * rgbs[s * C + c];
        T *= 1.f - alpha;
        if (T < T_thresh) break;
    }
    weights_sum[n] = ws;
    depth[n] = dep;
}

// Every output is O = sum_i w_i v_i (v = rgb channel, t for depth, 1 for weights_sum, and
// the one-hot of i for weights). With q_i = sum_O dL/dO * v_i:
//   dL/dsigma_j = delta_j * (T_{j+1} q_j - sum_{i>j} w_i q_i),   dL/drgb_jc = dL/dimage_c * w_j.
// Pass 1 sums w_i q_i over the composited samples; pass 2 walks them again.
__global__ void composite_train_bwd_kernel(int64_t R, int C, const float* __restrict__ g_weights,
                                           const float* __restrict__ g_ws, const float* __restrict__ g_depth,
                                           const float* __restrict__ g_image, const float* __restrict__ sigmas,
                                           const float* __restrict__ rgbs, const float* __restrict__ deltas,
                                           const float* __restrict__ ts, const int* __restrict__ info,
                                           float T_thresh, float* g_sigmas, float* g_rgbs) {
    const int64_t n = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (n >= R) return;
    const int64_t off = info[2 * n];
    const int cnt = info[2 * n + 1];
    const float* gi = g_image + n * C;
    auto q_of = [&](int64_t s) {
        float q = g_weights[s] + g_ws[n] + g_depth[n] * ts[s];
        for (int c = 0; c < C; ++c) q += gi[c] * rgbs[s * C + c];
        return q;
    };
    float T = 1.f, total = 0.f;
    for (int i = 0; i < cnt; ++i) {
        const int64_t s = off + i;
        const float alpha = 1.f - expf(-sigmas[s] * deltas[s]);
        total += alpha * T * q_of(s);
        T *= 1.f - alpha;
        if (T < T_thresh) break;
    }
    T = 1.f;
    float prefix = 0.f;
    for (int i = 0; i < cnt; ++i) {
        const int64_t s = off + i;
        const float alpha = 1.f - expf(-sigmas[s] * deltas[s]);
        const float w = alpha * T;
        const float q = q_of(s);
        prefix += w * q;
        T *= 1.f - alpha;
        g_sigmas[s] = deltas[s] * (T * q - (total - prefix));
        for (int c = 0; c < C; ++c) g_rgbs[s * C + c] = gi[c] * w;
        if (T < T_thresh) break;
    }
}

// Inference step 1: up to k samples for each alive ray from its state (t, count).
__global__ void march_infer_kernel(int64_t n_alive, int k, const int64_t* __restrict__ alive, float* rays_t,
                                   int* counts, const float* __restrict__ o, const float* __restrict__ d,
                                   const float* __restrict__ fars, const uint8_t* __restrict__ bits,
                                   MarchParams p, int max_steps, float* pos, float* deltas, float* ts) {
    const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (i >= n_alive) return;
    const int64_t r = alive[i];
    float t = rays_t[i];
    int count = counts[i];
    int64_t s = i * k;
    march_segment(o[3 * r], o[3 * r + 1], o[3 * r + 2], d[3 * r], d[3 * r + 1], d[3 * r + 2], fars[r], t,
                  count, k, max_steps, bits, p, [&](float t0, float dt, float x, float y, float z) {
                      pos[3 * s] = x, pos[3 * s + 1] = y, pos[3 * s + 2] = z;
                      deltas[s] = dt;
                      ts[s] = __fmul_rn(__fadd_rn(t0, __fadd_rn(t0, dt)), 0.5f);
                      ++s;
                  });
    rays_t[i] = t;
    counts[i] = count;
}

// Inference step 2: composite the k slots of each alive ray into its running outputs.
__global__ void composite_infer_kernel(int64_t n_alive, int k, int C, const int64_t* __restrict__ alive,
                                       float* T_state, const float* __restrict__ sigmas,
                                       const float* __restrict__ rgbs, const float* __restrict__ deltas,
                                       const float* __restrict__ ts, float T_thresh, float* weights_sum,
                                       float* depth, float* image, bool* dead) {
    const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (i >= n_alive) return;
    const int64_t r = alive[i];
    float T = T_state[i], ws = weights_sum[r], dep = depth[r];
    float* img = image + r * C;
    bool is_dead = false;
    for (int j = 0; j < k; ++j) {
        const int64_t s = i * k + j;
        if (deltas[s] == 0.f) {  // the march ended (far or max_steps) before this slot
            is_dead = true;
            break;
        }
        const float alpha = 1.f - expf(-sigmas[s] * deltas[s]);
        const float w = alpha * T;
        ws += w;
        dep += w * ts[s];
        for (int c = 0; c < C; ++c) img[c] += w * rgbs[s * C + c];
        T *= 1.f - alpha;
        if (T < T_thresh) {
            is_dead = true;
            break;
        }
    }
    T_state[i] = T;
    weights_sum[r] = ws;
    depth[r] = dep;
    dead[i] = is_dead;
}

MarchParams make_params(double bound, double inv_bound, double dt_gamma, double dt_min, double dt_max,
                        double dt_to_cells, int64_t cascades, int64_t resolution) {
    TORCH_CHECK(cascades >= 1 && resolution >= 2 && resolution <= 1024 && (resolution & (resolution - 1)) == 0,
                "raymarch: need cascades >= 1 and a power-of-two resolution <= 1024");
    MarchParams p;
    p.bound = static_cast<float>(bound);
    p.inv_bound = static_cast<float>(inv_bound);
    p.outer = scalbnf(p.bound, static_cast<int>(cascades - 1));
    p.dt_gamma = static_cast<float>(dt_gamma);
    p.dt_min = static_cast<float>(dt_min);
    p.dt_max = static_cast<float>(dt_max);
    p.dt_to_cells = static_cast<float>(dt_to_cells);
    p.cell2 = 2.f / static_cast<float>(resolution);
    p.Gf = static_cast<float>(resolution);
    p.C = static_cast<int>(cascades);
    p.G = static_cast<int>(resolution);
    p.G3 = static_cast<uint64_t>(resolution) * resolution * resolution;
    return p;
}

void check_float(const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.is_cuda() && t.is_contiguous() && t.scalar_type() == at::kFloat, "raymarch: ", name,
                " must be a contiguous float32 CUDA tensor");
}

void check_bitfield(const at::Tensor& bits, const MarchParams& p) {
    TORCH_CHECK(bits.is_cuda() && bits.is_contiguous() && bits.scalar_type() == at::kByte &&
                    static_cast<uint64_t>(bits.numel()) * 8 == p.G3 * p.C,
                "raymarch: bitfield must be a contiguous uint8 CUDA tensor of C * G^3 / 8 bytes");
}

}  // namespace

// ------------------------------------------------------------------ host entry points
std::tuple<at::Tensor, at::Tensor> near_far_from_aabb(const at::Tensor& rays_o, const at::Tensor& rays_d,
                                                      const at::Tensor& aabb, double min_near) {
    check_float(rays_o, "rays_o");
    check_float(rays_d, "rays_d");
    check_float(aabb, "aabb");
    TORCH_CHECK(aabb.numel() == 6, "near_far_from_aabb: aabb must hold 6 values");
    c10::DeviceGuard guard(rays_o.device());
    const int64_t R = rays_o.size(0);
    auto nears = at::empty({R}, rays_o.options());
    auto fars = at::empty({R}, rays_o.options());
    if (R > 0) {
        near_far_kernel<<<num_blocks(R), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
            R, ptr<float>(rays_o), ptr<float>(rays_d), ptr<float>(aabb), static_cast<float>(min_near),
            ptr<float>(nears), ptr<float>(fars));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    return {nears, fars};
}

at::Tensor morton3d(const at::Tensor& coords) {
    NH_CHECK_INPUT(coords);
    TORCH_CHECK(coords.scalar_type() == at::kInt && coords.dim() == 2 && coords.size(1) == 3,
                "morton3d: coords must be int32 [M, 3]");
    c10::DeviceGuard guard(coords.device());
    const int64_t M = coords.size(0);
    auto out = at::empty({M}, coords.options());
    if (M > 0) {
        morton_kernel<<<num_blocks(M), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(M, ptr<int>(coords),
                                                                                         ptr<int>(out));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    return out;
}

at::Tensor morton3d_invert(const at::Tensor& indices) {
    NH_CHECK_INPUT(indices);
    TORCH_CHECK(indices.scalar_type() == at::kInt && indices.dim() == 1, "morton3d_invert: indices must be int32 [M]");
    c10::DeviceGuard guard(indices.device());
    const int64_t M = indices.size(0);
    auto out = at::empty({M, 3}, indices.options());
    if (M > 0) {
        morton_invert_kernel<<<num_blocks(M), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
            M, ptr<int>(indices), ptr<int>(out));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    return out;
}

at::Tensor packbits(const at::Tensor& density_grid, double threshold) {
    check_float(density_grid, "density_grid");
    TORCH_CHECK(density_grid.numel() % 8 == 0, "packbits: number of cells must be a multiple of 8");
    c10::DeviceGuard guard(density_grid.device());
    const int64_t B = density_grid.numel() / 8;
    auto out = at::empty({B}, density_grid.options().dtype(at::kByte));
    if (B > 0) {
        packbits_kernel<<<num_blocks(B), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
            B, ptr<float>(density_grid), static_cast<float>(threshold), ptr<uint8_t>(out));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    return out;
}

std::vector<at::Tensor> march_rays_train(const at::Tensor& rays_o, const at::Tensor& rays_d,
                                         const at::Tensor& nears, const at::Tensor& fars,
                                         const at::Tensor& noise, const at::Tensor& bitfield, double bound,
                                         double inv_bound, double dt_gamma, double dt_min, double dt_max,
                                         double dt_to_cells, int64_t cascades, int64_t resolution,
                                         int64_t max_steps) {
    for (auto* t : {&rays_o, &rays_d, &nears, &fars, &noise}) check_float(*t, "ray inputs");
    const MarchParams p = make_params(bound, inv_bound, dt_gamma, dt_min, dt_max, dt_to_cells, cascades, resolution);
    check_bitfield(bitfield, p);
    c10::DeviceGuard guard(rays_o.device());
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    const int64_t R = rays_o.size(0);
    const int steps = static_cast<int>(max_steps);
    auto counts = at::zeros({R}, rays_o.options().dtype(at::kInt));
    if (R > 0) {
        march_train_kernel<<<num_blocks(R), kThreads, 0, stream>>>(
            R, ptr<float>(rays_o), ptr<float>(rays_d), ptr<float>(nears), ptr<float>(fars), ptr<float>(noise),
            ptr<uint8_t>(bitfield), p, steps, nullptr, ptr<int>(counts), nullptr, nullptr, nullptr, nullptr,
            nullptr, nullptr);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    auto ends = at::cumsum(counts, 0, at::kLong);
    const int64_t S = R > 0 ? ends[R - 1].item<int64_t>() : 0;
    auto offsets = ends - counts;
    auto f = rays_o.options();
    auto positions = at::empty({S, 3}, f), dirs = at::empty({S, 3}, f);
    auto deltas = at::empty({S}, f), t_starts = at::empty({S}, f), t_ends = at::empty({S}, f);
    auto ray_indices = at::empty({S}, f.dtype(at::kLong));
    if (S > 0) {
        march_train_kernel<<<num_blocks(R), kThreads, 0, stream>>>(
            R, ptr<float>(rays_o), ptr<float>(rays_d), ptr<float>(nears), ptr<float>(fars), ptr<float>(noise),
            ptr<uint8_t>(bitfield), p, steps, ptr<int64_t>(offsets), ptr<int>(counts), ptr<float>(positions),
            ptr<float>(dirs), ptr<float>(deltas), ptr<float>(t_starts), ptr<float>(t_ends),
            ptr<int64_t>(ray_indices));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    auto packed_info = at::stack({offsets.to(at::kInt), counts}, 1);
    return {positions, dirs, deltas, t_starts, t_ends, ray_indices, packed_info};
}

std::vector<at::Tensor> composite_rays_train_forward(const at::Tensor& sigmas, const at::Tensor& rgbs,
                                                     const at::Tensor& deltas, const at::Tensor& ts,
                                                     const at::Tensor& packed_info, double T_thresh) {
    for (auto* t : {&sigmas, &rgbs, &deltas, &ts}) check_float(*t, "composite inputs");
    NH_CHECK_INPUT(packed_info);
    TORCH_CHECK(packed_info.scalar_type() == at::kInt, "composite: packed_info must be int32 [R, 2]");
    c10::DeviceGuard guard(sigmas.device());
    const int64_t R = packed_info.size(0), S = sigmas.size(0);
    const int C = static_cast<int>(rgbs.size(1));
    auto weights = at::zeros({S}, sigmas.options());
    auto weights_sum = at::zeros({R}, sigmas.options());
    auto depth = at::zeros({R}, sigmas.options());
    auto image = at::zeros({R, C}, sigmas.options());
    if (R > 0) {
        composite_train_fwd_kernel<<<num_blocks(R), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
            R, C, ptr<float>(sigmas), ptr<float>(rgbs), ptr<float>(deltas), ptr<float>(ts), ptr<int>(packed_info),
            static_cast<float>(T_thresh), ptr<float>(weights), ptr<float>(weights_sum), ptr<float>(depth),
            ptr<float>(image));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    return {weights, weights_sum, depth, image};
}

std::vector<at::Tensor> composite_rays_train_backward(const at::Tensor& grad_weights,
                                                      const at::Tensor& grad_weights_sum,
                                                      const at::Tensor& grad_depth, const at::Tensor& grad_image,
                                                      const at::Tensor& sigmas, const at::Tensor& rgbs,
                                                      const at::Tensor& deltas, const at::Tensor& ts,
                                                      const at::Tensor& packed_info, double T_thresh) {
    for (auto* t : {&grad_weights, &grad_weights_sum, &grad_depth, &grad_image, &sigmas, &rgbs, &deltas, &ts})
        check_float(*t, "composite backward inputs");
    NH_CHECK_INPUT(packed_info);
    c10::DeviceGuard guard(sigmas.device());
    const int64_t R = packed_info.size(0);
    const int C = static_cast<int>(rgbs.size(1));
    auto g_sigmas = at::zeros_like(sigmas);
    auto g_rgbs = at::zeros_like(rgbs);
    if (R > 0) {
        composite_train_bwd_kernel<<<num_blocks(R), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
            R, C, ptr<float>(grad_weights), ptr<float>(grad_weights_sum), ptr<float>(grad_depth),
            ptr<float>(grad_image), ptr<float>(sigmas), ptr<float>(rgbs), ptr<float>(deltas), ptr<float>(ts),
            ptr<int>(packed_info), static_cast<float>(T_thresh), ptr<float>(g_sigmas), ptr<float>(g_rgbs));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    return {g_sigmas, g_rgbs};
}

std::vector<at::Tensor> march_rays(const at::Tensor& alive, const at::Tensor& rays_t, const at::Tensor& counts,
                                   const at::Tensor& rays_o, const at::Tensor& rays_d, const at::Tensor& fars,
                                   const at::Tensor& bitfield, double bound, double inv_bound, double dt_gamma,
                                   double dt_min, double dt_max, double dt_to_cells, int64_t cascades,
                                   int64_t resolution, int64_t k, int64_t max_steps) {
    for (auto* t : {&rays_t, &rays_o, &rays_d, &fars}) check_float(*t, "march_rays inputs");
    NH_CHECK_INPUT(alive);
    NH_CHECK_INPUT(counts);
    TORCH_CHECK(alive.scalar_type() == at::kLong && counts.scalar_type() == at::kInt,
                "march_rays: alive must be int64 and counts int32");
    const MarchParams p = make_params(bound, inv_bound, dt_gamma, dt_min, dt_max, dt_to_cells, cascades, resolution);
    check_bitfield(bitfield, p);
    c10::DeviceGuard guard(rays_o.device());
    const int64_t n = alive.size(0);
    auto f = rays_o.options();
    auto positions = at::zeros({n, k, 3}, f), deltas = at::zeros({n, k}, f), ts = at::zeros({n, k}, f);
    if (n > 0) {
        march_infer_kernel<<<num_blocks(n), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
            n, static_cast<int>(k), ptr<int64_t>(alive), ptr<float>(rays_t), ptr<int>(counts), ptr<float>(rays_o),
            ptr<float>(rays_d), ptr<float>(fars), ptr<uint8_t>(bitfield), p, static_cast<int>(max_steps),
            ptr<float>(positions), ptr<float>(deltas), ptr<float>(ts));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    return {positions, deltas, ts};
}

at::Tensor composite_rays(const at::Tensor& alive, const at::Tensor& T, const at::Tensor& sigmas,
                          const at::Tensor& rgbs, const at::Tensor& deltas, const at::Tensor& ts, double T_thresh,
                          const at::Tensor& weights_sum, const at::Tensor& depth, const at::Tensor& image) {
    for (auto* t : {&T, &sigmas, &rgbs, &deltas, &ts, &weights_sum, &depth, &image})
        check_float(*t, "composite_rays inputs");
    NH_CHECK_INPUT(alive);
    TORCH_CHECK(alive.scalar_type() == at::kLong, "composite_rays: alive must be int64");
    TORCH_CHECK(sigmas.dim() == 2 && rgbs.dim() == 3 && image.dim() == 2 && rgbs.size(2) == image.size(1),
                "composite_rays: need sigmas [n, k], rgbs [n, k, C], image [R, C]");
    c10::DeviceGuard guard(sigmas.device());
    const int64_t n = alive.size(0);
    auto dead = at::zeros({n}, sigmas.options().dtype(at::kBool));
    if (n > 0) {
        composite_infer_kernel<<<num_blocks(n), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
            n, static_cast<int>(sigmas.size(1)), static_cast<int>(image.size(1)), ptr<int64_t>(alive), ptr<float>(T),
            ptr<float>(sigmas), ptr<float>(rgbs), ptr<float>(deltas), ptr<float>(ts), static_cast<float>(T_thresh),
            ptr<float>(weights_sum), ptr<float>(depth), ptr<float>(image), ptr<bool>(dead));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    return dead;
}

}  // namespace nerfhead
