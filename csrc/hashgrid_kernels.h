// Multi-resolution hash-grid encoding (tiny-cuda-nn's HashGrid, Linear interpolation):
// the per-item kernel bodies, shared by the CUDA launcher (hashgrid_cuda.cu) and the CPU
// launcher (hashgrid_cpu.cpp), and the launchers' declarations. No torch headers.
//
// The math and layout are documented in nerfhead/ops/hashgrid.py; the forward computes the
// same function as hashgrid_encode_reference, bit for bit: pos = x * scale + 0.5 with
// mul_rn/add_rn (never an FMA), corner weights multiplied in axis order, corners summed in
// the reference's order, all in float32. Half tables are read as float32 and the result is
// rounded once to half (round-to-nearest-even, like torch's cast).
//
// Items: forward and table gradient run one item per (level, point), item = level * N + n
// (consecutive items are consecutive points of one level: coalesced reads of x on the GPU,
// one level's table in cache on the CPU); the input gradient runs one item per point.
//
// Table gradient: w * dL/dout is added into a float32 buffer (half tables: cast to half at
// the end; accumulating many small contributions in half would lose them). On the GPU with
// atomicAdd (summation order, hence the last bits, vary from run to run); on the CPU the
// launcher runs levels in parallel and the points of a level in order, so every row is
// written by one thread in a fixed order: deterministic, whatever the thread count.
#pragma once

#include <type_traits>

#include "common.h"

namespace nerfhead {
namespace hashgrid {

constexpr int kMaxLevels = 32;  // matches MAX_LEVELS in nerfhead/ops/hashgrid.py

// Per-level constants, passed by value (kernel parameter space on the GPU).
struct LevelParams {
    float scale[kMaxLevels];
    uint32_t resolution[kMaxLevels];
    uint32_t offset[kMaxLevels + 1];  // first row of each level, then the total
    uint32_t dense_mask;              // bit l set: level l indexes densely
    uint32_t num_levels;
};

// Storage type <-> float32. The launchers specialise Scalar for their half type
// (__half in the .cu, c10::Half in the .cpp); both convert with round-to-nearest-even.
template <typename T> struct Scalar;
template <> struct Scalar<float> {
    NH_HD static NH_INLINE float load(float v) { return v; }
    NH_HD static NH_INLINE float store(float v) { return v; }
};

// Clamp to [0, 1] (NaN -> 0, as torch.nan_to_num(nan=0) then clamp), then grid cell and
// fractional position per axis. Returns a bit mask: bit d set when x[d] was inside [0, 1]
// (not clamped, not NaN), i.e. where autograd lets the gradient through the clamp.
template <int D>
NH_HD NH_INLINE uint32_t locate(const float* x, float scale, uint32_t grid[D], float frac[D]) {
    uint32_t inside = 0;
    NH_UNROLL
    for (int d = 0; d < D; ++d) {
        const float xd = x[d];
        if (xd >= 0.0f && xd <= 1.0f) inside |= 1u << d;
        const float xc = clampf(xd, 0.0f, 1.0f);  // fmaxf(NaN, 0) == 0
        const float pos = add_rn(mul_rn(xc, scale), 0.5f);
        const float cell = floorf(pos);
        grid[d] = static_cast<uint32_t>(static_cast<int>(cell));
        frac[d] = sub_rn(pos, cell);
    }
    return inside;
}

// tcnn's grid_index: dense row-major index or xor of prime products (uint32 wrap), mod rows.
// The modulo is the same function computed cheaper: an index below `rows` (every dense corner
// but the one past the last vertex) is its own remainder, and a power-of-two `rows` (every
// hashed level) takes a mask instead of a division.
template <int D>
NH_HD NH_INLINE uint32_t vertex_index(const uint32_t v[D], uint32_t resolution, uint32_t rows, bool dense) {
    const uint32_t primes[3] = {1u, 2654435761u, 805459861u};
    uint32_t index = 0;
    if (dense) {
        uint32_t stride = 1;
        NH_UNROLL
        for (int d = 0; d < D; ++d) {
            index += v[d] * stride;
            stride *= resolution;
        }
    } else {
        NH_UNROLL
        for (int d = 0; d < D; ++d) index ^= v[d] * primes[d];
    }
    if (index < rows) return index;
    return (rows & (rows - 1)) == 0 ? index & (rows - 1) : index % rows;
}

// Corner c: vertex grid + bits(c) and weight prod_d (bit ? frac : 1 - frac) in axis order.
template <int D>
NH_HD NH_INLINE float corner(uint32_t c, const uint32_t grid[D], const float frac[D], uint32_t v[D]) {
    float w = 1.0f;
    NH_UNROLL
    for (int d = 0; d < D; ++d) {
        const bool hi = (c >> d) & 1u;
        v[d] = grid[d] + (hi ? 1u : 0u);
        w = mul_rn(w, hi ? frac[d] : sub_rn(1.0f, frac[d]));
    }
    return w;
}

// Accumulate into the table gradient: atomic on the GPU; a plain add on the CPU, where the
// launcher gives each level (hence each row) to one thread.
NH_HD NH_INLINE void accumulate(float* address, float value) {
#ifdef __CUDA_ARCH__
    atomicAdd(address, value);
#else
    *address += value;
#endif
}

// ---------------------------------------------------------------- per-item bodies
template <int D, int F, typename T>
struct Forward {
    const float* x;  // [N, D]
    const T* table;  // [rows, F]
    T* out;          // [N, L * F]
    int64_t n_points;
    LevelParams p;

    NH_HD void operator()(int64_t item) const {  // item = level * N + n
        const uint32_t level = static_cast<uint32_t>(item / n_points);
        run(level, item - static_cast<int64_t>(level) * n_points);
    }

    NH_HD void run(uint32_t level, int64_t n) const {
        uint32_t grid[D];
        float frac[D];
        locate<D>(x + n * D, p.scale[level], grid, frac);
        const uint32_t rows = p.offset[level + 1] - p.offset[level];
        const bool dense = (p.dense_mask >> level) & 1u;
        const T* level_table = table + static_cast<int64_t>(p.offset[level]) * F;
        // all corners' rows and weights first, then the loads: 2^D independent reads in
        // flight at once (the rows of a fine level are scattered over megabytes)
        uint32_t index[1u << D];
        float weight[1u << D];
        NH_UNROLL
        for (uint32_t c = 0; c < (1u << D); ++c) {
            uint32_t v[D];
            weight[c] = corner<D>(c, grid, frac, v);
            index[c] = vertex_index<D>(v, p.resolution[level], rows, dense);
        }
        float acc[F];
        NH_UNROLL
        for (int f = 0; f < F; ++f) acc[f] = 0.0f;
        NH_UNROLL
        for (uint32_t c = 0; c < (1u << D); ++c) {
            const T* row = level_table + static_cast<int64_t>(index[c]) * F;
            NH_UNROLL
            for (int f = 0; f < F; ++f) acc[f] = add_rn(acc[f], mul_rn(weight[c], Scalar<T>::load(row[f])));
        }
        T* o = out + n * (static_cast<int64_t>(p.num_levels) * F) + level * F;
        NH_UNROLL
        for (int f = 0; f < F; ++f) o[f] = Scalar<T>::store(acc[f]);
    }
};

template <int D, int F, typename T>
struct BackwardTable {
    const T* grad_out;  // [N, L * F]
    const float* x;     // [N, D]
    float* grad_table;  // [rows, F] float32 accumulation buffer
    int64_t n_points;
    LevelParams p;

    NH_HD void operator()(int64_t item) const {  // item = level * N + n
        const uint32_t level = static_cast<uint32_t>(item / n_points);
        run(level, item - static_cast<int64_t>(level) * n_points);
    }

    NH_HD void run(uint32_t level, int64_t n) const {
        uint32_t grid[D];
        float frac[D];
        locate<D>(x + n * D, p.scale[level], grid, frac);
        const uint32_t rows = p.offset[level + 1] - p.offset[level];
        const bool dense = (p.dense_mask >> level) & 1u;
        float g[F];
        const T* go = grad_out + n * (static_cast<int64_t>(p.num_levels) * F) + level * F;
        NH_UNROLL
        for (int f = 0; f < F; ++f) g[f] = Scalar<T>::load(go[f]);
        float* level_grad = grad_table + static_cast<int64_t>(p.offset[level]) * F;
        NH_UNROLL
        for (uint32_t c = 0; c < (1u << D); ++c) {
            uint32_t v[D];
            const float w = corner<D>(c, grid, frac, v);
            float* row = level_grad + static_cast<int64_t>(vertex_index<D>(v, p.resolution[level], rows, dense)) * F;
            NH_UNROLL
            for (int f = 0; f < F; ++f) accumulate(row + f, mul_rn(w, g[f]));
        }
    }
};

// d out / d x_d = scale * sum_c (+-prod_{e != d} factor_e(c)) * value_c, summed over levels,
// and zero on each axis d where x_d was clamped (outside [0, 1] or NaN): the clamp passes no
// gradient on that axis, the other axes of the point keep theirs (autograd of the reference).
template <int D, int F, typename T>
struct BackwardInput {
    const T* grad_out;  // [N, L * F]
    const float* x;     // [N, D]
    const T* table;     // [rows, F]
    float* grad_x;      // [N, D]
    LevelParams p;

    NH_HD void operator()(int64_t n) const {
        float total[D];
        NH_UNROLL
        for (int d = 0; d < D; ++d) total[d] = 0.0f;
        uint32_t inside = 0;  // the same for every level: it depends on x only
        for (uint32_t level = 0; level < p.num_levels; ++level) {
            uint32_t grid[D];
            float frac[D];
            inside = locate<D>(x + n * D, p.scale[level], grid, frac);
            const uint32_t rows = p.offset[level + 1] - p.offset[level];
            const bool dense = (p.dense_mask >> level) & 1u;
            const T* level_table = table + static_cast<int64_t>(p.offset[level]) * F;
            const T* go = grad_out + n * (static_cast<int64_t>(p.num_levels) * F) + level * F;
            float dfrac[D];
            NH_UNROLL
            for (int d = 0; d < D; ++d) dfrac[d] = 0.0f;
            NH_UNROLL
            for (uint32_t c = 0; c < (1u << D); ++c) {
                uint32_t v[D];
                corner<D>(c, grid, frac, v);
                const T* row = level_table + static_cast<int64_t>(vertex_index<D>(v, p.resolution[level], rows, dense)) * F;
                float dot = 0.0f;  // dL/dout . value_c
                NH_UNROLL
                for (int f = 0; f < F; ++f) dot += Scalar<T>::load(go[f]) * Scalar<T>::load(row[f]);
                NH_UNROLL
                for (int d = 0; d < D; ++d) {
                    float dw = ((c >> d) & 1u) ? 1.0f : -1.0f;  // d weight_c / d frac_d
                    NH_UNROLL
                    for (int e = 0; e < D; ++e) {
                        if (e != d) dw *= ((c >> e) & 1u) ? frac[e] : 1.0f - frac[e];
                    }
                    dfrac[d] += dw * dot;
                }
            }
            NH_UNROLL
            for (int d = 0; d < D; ++d) total[d] += p.scale[level] * dfrac[d];
        }
        NH_UNROLL
        for (int d = 0; d < D; ++d) grad_x[n * D + d] = ((inside >> d) & 1u) ? total[d] : 0.0f;
    }
};

// ---------------------------------------------------------------- compile-time dispatch
template <typename T> struct Tag { using type = T; };

// Calls fn(integral_constant<D>, integral_constant<F>, Tag<T>) for the runtime (dim,
// features, half?) with T = float or Half. Returns false for an unsupported combination.
template <typename Half, typename Fn>
bool dispatch(int dim, int features, bool half, Fn&& fn) {
    auto by_features = [&](auto d, auto tag) {
        switch (features) {
            case 1: fn(d, std::integral_constant<int, 1>{}, tag); return true;
            case 2: fn(d, std::integral_constant<int, 2>{}, tag); return true;
            case 4: fn(d, std::integral_constant<int, 4>{}, tag); return true;
            case 8: fn(d, std::integral_constant<int, 8>{}, tag); return true;
            default: return false;
        }
    };
    auto by_dim = [&](auto tag) {
        if (dim == 2) return by_features(std::integral_constant<int, 2>{}, tag);
        if (dim == 3) return by_features(std::integral_constant<int, 3>{}, tag);
        return false;
    };
    return half ? by_dim(Tag<Half>{}) : by_dim(Tag<float>{});
}

// ---------------------------------------------------------------- launchers
// Raw pointers (table / grad_out / out: float or half storage, by `half`); sizes as above.
struct Args {
    int dim, features;
    bool half;
    int64_t n_points;
    LevelParams p;
    const float* x;
    const void* table;
    const void* grad_out;
    void* out;  // forward: [N, L*F] table dtype; backward_table: float32 [rows, F]; input: float32 [N, D]
};

// CPU (hashgrid_cpu.cpp, at::parallel_for). Return false for an unsupported (dim, features).
// backward_table_cpu zeroes `out` itself (it may come uninitialised); the CUDA launcher
// adds into a zeroed buffer.
bool forward_cpu(const Args& a);
bool backward_table_cpu(const Args& a);
bool backward_input_cpu(const Args& a);
// CUDA (hashgrid_cuda.cu), on `stream` (a cudaStream_t). Return nullptr or an error message.
const char* forward_cuda(const Args& a, void* stream);
const char* backward_table_cuda(const Args& a, void* stream);
const char* backward_input_cuda(const Args& a, void* stream);

}  // namespace hashgrid
}  // namespace nerfhead
