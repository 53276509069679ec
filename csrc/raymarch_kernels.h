// Ray marching family: near/far from a box, Morton codes, occupancy bitfield, training
// march (count pass + fill pass), training composite (forward and backward), the two
// inference steps (march a few samples per alive ray, composite them) and their
// fixed-shape variants (march all rays into a compacted sample list, composite it). The per-item bodies
// are shared by the CUDA launcher (raymarch_cuda.cu) and the CPU launcher
// (raymarch_cpu.cpp); the launchers are declared at the end. No torch headers.
//
// PyTorch references: nerfhead/ops/occupancy.py, raymarch.py, raymarch_inference.py.
// The march performs the same float32 operations in the same order as
// `march_segment_reference` (mul_rn/add_rn: never contracted into FMAs; rcp_rn: correctly
// rounded reciprocal), so both emit bit-identical samples. The composites use expf and
// plain float arithmetic (the device may fuse multiply-adds): they match the references to
// a named tolerance, not bit for bit.
//
// Memory safety: the entry points (raymarch.cpp) check every shape, dtype and device, and on
// the CPU also the contents that index memory (packed ranges, ray ids), raising a clear
// error. On the GPU those contents are not checked (that would synchronise with the host);
// the bodies skip an item whose range or id is out of bounds instead of touching memory
// outside the tensors (its outputs keep their initial zeros; an inference ray dies).
#pragma once

#include <cstring>

#include "common.h"

namespace nerfhead {
namespace raymarch {

constexpr int kMaxCascades = 16;

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
    float mip_bound[kMaxCascades];   // scalbnf(bound, c): half-size of cascade c
    float mip_rbound[kMaxCascades];  // scalbnf(inv_bound, -c)
};

NH_HD NH_INLINE uint32_t float_bits(float v) {
#ifdef __CUDA_ARCH__
    return __float_as_uint(v);
#else
    uint32_t b;
    memcpy(&b, &v, sizeof b);
    return b;
#endif
}

// The exponent frexpf(v, &e) gives for finite v >= 0, where only max(e, 0) matters (the
// cascade of a position or step): exact for normal v; zero and subnormal v, whose true
// exponent is 0 or <= -126, give -126. Integer work instead of a libm call on the host.
NH_HD NH_INLINE int frexp_exponent(float v) { return static_cast<int>((float_bits(v) >> 23) & 0xffu) - 126; }

NH_HD NH_INLINE float step_size(float t, const MarchParams& p) {
    return clampf(mul_rn(t, p.dt_gamma), p.dt_min, p.dt_max);
}

NH_HD NH_INLINE uint32_t expand_bits(uint32_t v) {
    v = (v * 0x00010001u) & 0xFF0000FFu;
    v = (v * 0x00000101u) & 0x0F00F00Fu;
    v = (v * 0x00000011u) & 0xC30C30C3u;
    v = (v * 0x00000005u) & 0x49249249u;
    return v;
}

NH_HD NH_INLINE uint32_t compact_bits(uint32_t v) {
    v &= 0x49249249u;
    v = (v | (v >> 2)) & 0xC30C30C3u;
    v = (v | (v >> 4)) & 0x0F00F00Fu;
    v = (v | (v >> 8)) & 0xFF0000FFu;
    v = (v | (v >> 16)) & 0x0000FFFFu;
    return v;
}

NH_HD NH_INLINE uint32_t morton(uint32_t x, uint32_t y, uint32_t z) {
    return expand_bits(x) | (expand_bits(y) << 1) | (expand_bits(z) << 2);
}

NH_HD NH_INLINE int cell_coord(float x, float rb, const MarchParams& p) {
    // ((x / mip_bound + 1) / 2) * G, clamped to [0, G-1], truncated
    const float u = mul_rn(mul_rn(add_rn(mul_rn(x, rb), 1.f), 0.5f), p.Gf);
    return static_cast<int>(clampf(u, 0.f, p.Gf - 1.f));
}

NH_HD NH_INLINE float exit_distance(int cell, bool forward, float mb, float x, float rd, const MarchParams& p) {
    const float edge = static_cast<float>(cell + (forward ? 1 : 0));
    const float face = mul_rn(add_rn(mul_rn(edge, p.cell2), -1.f), mb);
    return mul_rn(sub_rn(face, x), rd);
}

// March one ray from t until far, `max_samples` new samples, or `count` reaching
// `max_steps`; emit(t, dt, x, y, z) for every sample in an occupied cell. In an empty cell
// the ray jumps to the cell's exit and on to the next multiple of its step (torch-ngp).
// Every ray finishes: a ray that can never leave its empty cell (zero or NaN direction:
// the exit distance is inf or NaN), whose far end lies inside it, or whose t stops growing
// in float32 (t + dt == t: a tiny direction takes t to ~1e7 steps) ends there (t = far). Positions clamp with C
// fminf/fmaxf semantics, so a NaN coordinate becomes -outer, never a NaN cell index.
template <typename Emit>
NH_HD void march_segment(float ox, float oy, float oz, float dx, float dy, float dz, float far, float& t,
                         int& count, int max_samples, int max_steps, const uint8_t* bits, const MarchParams& p,
                         Emit&& emit) {
    const float rdx = rcp_rn(dx), rdy = rcp_rn(dy), rdz = rcp_rn(dz);
    // copysign(1, d) > 0: the cell's upper face is the exit (torch.signbit in the reference)
    const bool fx = copysignf(1.f, dx) > 0.f, fy = copysignf(1.f, dy) > 0.f, fz = copysignf(1.f, dz) > 0.f;
    int emitted = 0;
    while (t < far && emitted < max_samples && count < max_steps) {
        const float x = clampf(add_rn(ox, mul_rn(t, dx)), -p.outer, p.outer);
        const float y = clampf(add_rn(oy, mul_rn(t, dy)), -p.outer, p.outer);
        const float z = clampf(add_rn(oz, mul_rn(t, dz)), -p.outer, p.outer);
        const float dt = step_size(t, p);
        const int e_pos = frexp_exponent(mul_rn(fmaxf(fmaxf(fabsf(x), fabsf(y)), fabsf(z)), p.inv_bound));
        const int e_dt = frexp_exponent(mul_rn(dt, p.dt_to_cells));
        const int level = imin(p.C - 1, imax(0, imax(e_pos, e_dt)));
        const float mb = p.mip_bound[level];
        const float rb = p.mip_rbound[level];
        const int nx = cell_coord(x, rb, p), ny = cell_coord(y, rb, p), nz = cell_coord(z, rb, p);
        const uint64_t index = static_cast<uint64_t>(level) * p.G3 + morton(nx, ny, nz);
        if ((bits[index >> 3] >> (index & 7)) & 1) {
            emit(t, dt, x, y, z);
            t = add_rn(t, dt);
            ++emitted;
            ++count;
        } else {
            const float tx = exit_distance(nx, fx, mb, x, rdx, p);
            const float ty = exit_distance(ny, fy, mb, y, rdy, p);
            const float tz = exit_distance(nz, fz, mb, z, rdz, p);
            const float gap = fminf(tx, fminf(ty, tz));
            const float target = add_rn(t, fmaxf(gap, 0.f));
            // gap inf or NaN: the ray never leaves this empty cell; target >= far: it ends in it
            if (!(gap <= FLT_MAX) || !(target < far)) {
                t = far;
                continue;
            }
            do {
                const float next = add_rn(t, step_size(t, p));
                if (!(next > t)) {  // no progress in float32: the ray ends here
                    t = far;
                    break;
                }
                t = next;
            } while (t < target);
        }
    }
}

// ---------------------------------------------------------------- per-item bodies
struct NearFar {  // one ray: slab test against aabb (xmin, ymin, zmin, xmax, ymax, zmax)
    const float *o, *d, *aabb;
    float min_near;
    float *nears, *fars;

    NH_HD void operator()(int64_t n) const {
        float near = -FLT_MAX, far = FLT_MAX;
        for (int a = 0; a < 3; ++a) {
            const float rd = rcp_rn(d[3 * n + a]);
            const float t1 = mul_rn(sub_rn(aabb[a], o[3 * n + a]), rd);
            const float t2 = mul_rn(sub_rn(aabb[3 + a], o[3 * n + a]), rd);
            const float lo = fminf(t1, t2), hi = fmaxf(t1, t2);
            near = a == 0 ? lo : fmaxf(near, lo);
            far = a == 0 ? hi : fminf(far, hi);
        }
        const bool miss = near > far || far < min_near;
        nears[n] = miss ? FLT_MAX : fmaxf(near, min_near);
        fars[n] = miss ? FLT_MAX : far;
    }
};

struct Morton {  // one cell: int32 (x, y, z) -> Morton code
    const int* coords;
    int* out;
    NH_HD void operator()(int64_t i) const {
        out[i] = static_cast<int>(morton(coords[3 * i], coords[3 * i + 1], coords[3 * i + 2]));
    }
};

struct MortonInvert {  // one code -> (x, y, z)
    const int* codes;
    int* out;
    NH_HD void operator()(int64_t i) const {
        const uint32_t c = static_cast<uint32_t>(codes[i]);
        out[3 * i] = static_cast<int>(compact_bits(c));
        out[3 * i + 1] = static_cast<int>(compact_bits(c >> 1));
        out[3 * i + 2] = static_cast<int>(compact_bits(c >> 2));
    }
};

struct Packbits {  // one byte: cells 8b .. 8b+7, bit k set when density > threshold
    const float* grid;
    float threshold;
    uint8_t* out;
    NH_HD void operator()(int64_t b) const {
        uint32_t bits = 0;
        for (int k = 0; k < 8; ++k) bits |= (grid[8 * b + k] > threshold ? 1u : 0u) << k;
        out[b] = static_cast<uint8_t>(bits);
    }
};

// Training march of one ray. Count pass (offsets == nullptr): writes count_out[n]. Fill
// pass: writes the ray's first counts[n] samples from offsets[n] on and stops there, so it
// never writes past the slots its count pass (or any caller) gave the ray.
struct MarchTrain {
    const float *o, *d, *nears, *fars, *noise;
    const uint8_t* bits;
    MarchParams p;
    int max_steps;
    int* count_out;        // count pass
    const int64_t* offsets;  // fill pass: first slot of each ray
    const int* counts;       // fill pass: slots of each ray
    float *pos, *dirs, *deltas, *t_starts, *t_ends;
    int64_t* ray_indices;
    int64_t n_slots;  // fill pass: S, the length of the sample outputs

    NH_HD void operator()(int64_t n) const {
        if (offsets != nullptr && (offsets[n] < 0 || counts[n] < 0 || offsets[n] + counts[n] > n_slots)) return;
        const float ox = o[3 * n], oy = o[3 * n + 1], oz = o[3 * n + 2];
        const float dx = d[3 * n], dy = d[3 * n + 1], dz = d[3 * n + 2];
        const float near = nears[n];
        float t = add_rn(near, mul_rn(step_size(near, p), noise[n]));
        int count = 0;
        if (offsets == nullptr) {
            march_segment(ox, oy, oz, dx, dy, dz, fars[n], t, count, max_steps, max_steps, bits, p,
                          [](float, float, float, float, float) {});
            count_out[n] = count;
            return;
        }
        int64_t s = offsets[n];
        march_segment(ox, oy, oz, dx, dy, dz, fars[n], t, count, counts[n], max_steps, bits, p,
                      [&](float ts, float dt, float x, float y, float z) {
                          pos[3 * s] = x, pos[3 * s + 1] = y, pos[3 * s + 2] = z;
                          dirs[3 * s] = dx, dirs[3 * s + 1] = dy, dirs[3 * s + 2] = dz;
                          deltas[s] = dt;
                          t_starts[s] = ts;
                          t_ends[s] = add_rn(ts, dt);
                          ray_indices[s] = n;
                          ++s;
                      });
    }
};

// One sample composited front to back into a ray's running sums (weights_sum ws, depth
// dep, image img[C]) at transmittance T, which it updates; returns the sample's weight.
// The per-sample body of the training forward and of both inference composites: one
// arithmetic, so their images agree bit for bit.
NH_HD NH_INLINE float composite_sample(float sigma, float delta, float t, const float* rgb, int C,
                                       float& T, float& ws, float& dep, float* img) {
    const float alpha = 1.f - expf(-sigma * delta);
    const float w = alpha * T;
    ws += w;
    dep += w * t;
    for (int c = 0; c < C; ++c) img[c] += w * rgb[c];
    T *= 1.f - alpha;
    return w;
}

// Composite of one ray's packed samples [off, off + cnt).
struct CompositeTrainForward {
    int C;
    const float *sigmas, *rgbs, *deltas, *ts;
    const int* info;  // [R, 2] (offset, count)
    int64_t n_samples;
    float T_thresh;
    float *weights, *weights_sum, *depth, *image;

    NH_HD void operator()(int64_t n) const {
        const int64_t off = info[2 * n];
        const int cnt = info[2 * n + 1];
        if (off < 0 || cnt < 0 || off + cnt > n_samples) return;
        float T = 1.f, ws = 0.f, dep = 0.f;
        float* img = image + n * C;
        for (int i = 0; i < cnt; ++i) {
            const int64_t s = off + i;
            weights[s] = composite_sample(sigmas[s], deltas[s], ts[s], rgbs + s * C, C, T, ws, dep, img);
            if (T < T_thresh) break;
        }
        weights_sum[n] = ws;
        depth[n] = dep;
    }
};

// Every output is O = sum_i w_i v_i (v = rgb channel, t for depth, 1 for weights_sum, and
// the one-hot of i for weights). With q_i = sum_O dL/dO * v_i:
//   dL/dsigma_j = delta_j * (T_{j+1} q_j - sum_{i>j} w_i q_i),   dL/drgb_jc = dL/dimage_c * w_j.
// Pass 1 sums w_i q_i over the composited samples; pass 2 walks them again.
struct CompositeTrainBackward {
    int C;
    const float *g_weights, *g_ws, *g_depth, *g_image;
    const float *sigmas, *rgbs, *deltas, *ts;
    const int* info;
    int64_t n_samples;
    float T_thresh;
    float *g_sigmas, *g_rgbs;

    NH_HD float q_of(int64_t n, int64_t s) const {
        float q = g_weights[s] + g_ws[n] + g_depth[n] * ts[s];
        for (int c = 0; c < C; ++c) q += g_image[n * C + c] * rgbs[s * C + c];
        return q;
    }

    NH_HD void operator()(int64_t n) const {
        const int64_t off = info[2 * n];
        const int cnt = info[2 * n + 1];
        if (off < 0 || cnt < 0 || off + cnt > n_samples) return;
        float T = 1.f, total = 0.f;
        for (int i = 0; i < cnt; ++i) {
            const int64_t s = off + i;
            const float alpha = 1.f - expf(-sigmas[s] * deltas[s]);
            total += alpha * T * q_of(n, s);
            T *= 1.f - alpha;
            if (T < T_thresh) break;
        }
        T = 1.f;
        float prefix = 0.f;
        for (int i = 0; i < cnt; ++i) {
            const int64_t s = off + i;
            const float alpha = 1.f - expf(-sigmas[s] * deltas[s]);
            const float w = alpha * T;
            const float q = q_of(n, s);
            prefix += w * q;
            T *= 1.f - alpha;
            g_sigmas[s] = deltas[s] * (T * q - (total - prefix));
            for (int c = 0; c < C; ++c) g_rgbs[s * C + c] = g_image[n * C + c] * w;
            if (T < T_thresh) break;
        }
    }
};

// Inference step 1: up to k samples for alive ray i (ray id alive[i]) from its state
// (rays_t[i], counts[i]), which is updated in place. Unused slots keep delta 0.
struct MarchInference {
    int k;
    const int64_t* alive;
    float* rays_t;
    int* counts;
    const float *o, *d, *fars;
    int64_t n_rays;
    const uint8_t* bits;
    MarchParams p;
    int max_steps;
    float *pos, *deltas, *ts;  // [n, k, 3], [n, k], [n, k], zero-initialised

    NH_HD void operator()(int64_t i) const {
        const int64_t r = alive[i];
        if (r < 0 || r >= n_rays) return;
        float t = rays_t[i];
        int count = counts[i];
        int64_t s = i * k;
        march_segment(o[3 * r], o[3 * r + 1], o[3 * r + 2], d[3 * r], d[3 * r + 1], d[3 * r + 2], fars[r], t,
                      count, k, max_steps, bits, p, [&](float t0, float dt, float x, float y, float z) {
                          pos[3 * s] = x, pos[3 * s + 1] = y, pos[3 * s + 2] = z;
                          deltas[s] = dt;
                          ts[s] = mul_rn(add_rn(t0, add_rn(t0, dt)), 0.5f);
                          ++s;
                      });
        rays_t[i] = t;
        counts[i] = count;
    }
};

// Inference step 2: composite the k slots of alive ray i into its running outputs.
struct CompositeInference {
    int k, C;
    const int64_t* alive;
    float* T_state;
    const float *sigmas, *rgbs, *deltas, *ts;
    float T_thresh;
    int64_t n_rays;
    float *weights_sum, *depth, *image;
    bool* dead;

    NH_HD void operator()(int64_t i) const {
        const int64_t r = alive[i];
        if (r < 0 || r >= n_rays) {
            dead[i] = true;
            return;
        }
        float T = T_state[i], ws = weights_sum[r], dep = depth[r];
        float* img = image + r * C;
        bool is_dead = false;
        for (int j = 0; j < k; ++j) {
            const int64_t s = i * k + j;
            if (deltas[s] == 0.f) {  // the march ended (far or max_steps) before this slot
                is_dead = true;
                break;
            }
            composite_sample(sigmas[s], deltas[s], ts[s], rgbs + s * C, C, T, ws, dep, img);
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
};

// Fixed-shape inference (all R rays every step; a compacted sample list of fixed
// capacity). Step 1 runs twice over the rays, like the training march. Count pass
// (n_out != nullptr): n_out[r] = samples that ray r emits in its next k (0 when not
// alive); its state is left alone. Fill pass: a ray that is alive and whose range
// [ends[r] - n[r], ends[r]) lies within `capacity` marches again, writes its samples
// there (ends: inclusive prefix sum of n) and commits its state (rays_t, counts); a ray
// whose range does not fit keeps its state and marches again at the next step.
struct MarchCompact {
    int k;
    const bool* alive;
    float* rays_t;
    int* counts;
    const float *o, *d, *fars;
    const uint8_t* bits;
    MarchParams p;
    int max_steps;
    int* n_out;            // count pass
    const int64_t* ends;   // fill pass
    const int* n_in;       // fill pass
    int64_t capacity;      // fill pass: slots of the sample outputs
    float *pos, *deltas, *ts;
    int64_t* ray_ids;

    NH_HD void operator()(int64_t r) const {
        if (!alive[r]) {
            if (n_out != nullptr) n_out[r] = 0;
            return;
        }
        float t = rays_t[r];
        int count = counts[r];
        const float ox = o[3 * r], oy = o[3 * r + 1], oz = o[3 * r + 2];
        const float dx = d[3 * r], dy = d[3 * r + 1], dz = d[3 * r + 2];
        if (n_out != nullptr) {
            const int before = count;
            march_segment(ox, oy, oz, dx, dy, dz, fars[r], t, count, k, max_steps, bits, p,
                          [](float, float, float, float, float) {});
            n_out[r] = count - before;
            return;
        }
        const int64_t end = ends[r];
        const int n = n_in[r];
        if (end > capacity || n < 0 || end - n < 0) return;
        int64_t s = end - n;
        march_segment(ox, oy, oz, dx, dy, dz, fars[r], t, count, k, max_steps, bits, p,
                      [&](float t0, float dt, float x, float y, float z) {
                          if (s >= end) return;  // never past the range the count pass gave
                          pos[3 * s] = x, pos[3 * s + 1] = y, pos[3 * s + 2] = z;
                          deltas[s] = dt;
                          ts[s] = mul_rn(add_rn(t0, add_rn(t0, dt)), 0.5f);
                          ray_ids[s] = r;
                          ++s;
                      });
        rays_t[r] = t;
        counts[r] = count;
    }
};

// Fixed-shape inference, step 2: ray r composites its compacted samples
// [ends[r] - n[r], ends[r]) into its running outputs and is marked finished in place
// (alive[r] = false) when its march ended (fewer than k samples) or T fell below T_thresh.
// Rays not alive, or deferred (range beyond `capacity`), are left alone. The arithmetic
// is CompositeInference's, sample for sample (composite_sample).
struct CompositeCompact {
    int k, C;
    bool* alive;
    float* T_state;
    const float *sigmas, *rgbs, *deltas, *ts;
    const int64_t* ends;
    const int* n_in;
    int64_t capacity;   // deferral bound (slots of the march outputs)
    int64_t n_samples;  // rows of sigmas / rgbs (<= capacity)
    float T_thresh;
    float *weights_sum, *depth, *image;

    NH_HD void operator()(int64_t r) const {
        if (!alive[r]) return;
        const int64_t end = ends[r];
        const int n = n_in[r];
        if (end > capacity) return;  // deferred
        if (n < 0 || end - n < 0 || end > n_samples) {  // inconsistent inputs: end the ray
            alive[r] = false;
            return;
        }
        float T = T_state[r], ws = weights_sum[r], dep = depth[r];
        float* img = image + r * C;
        bool is_dead = n < k;  // the march ended (far or max_steps) within this step
        for (int64_t s = end - n; s < end; ++s) {
            composite_sample(sigmas[s], deltas[s], ts[s], rgbs + s * C, C, T, ws, dep, img);
            if (T < T_thresh) {
                is_dead = true;
                break;
            }
        }
        T_state[r] = T;
        weights_sum[r] = ws;
        depth[r] = dep;
        alive[r] = !is_dead;
    }
};

// ---------------------------------------------------------------- launchers
// Run op(i) for i in [0, n). CPU: raymarch_cpu.cpp (at::parallel_for). CUDA:
// raymarch_cuda.cu, on `stream` (a cudaStream_t); returns nullptr or an error message.
#define NH_RAYMARCH_LAUNCHERS(Op)            \
    void launch_cpu(const Op& op, int64_t n); \
    const char* launch_cuda(const Op& op, int64_t n, void* stream);
NH_RAYMARCH_LAUNCHERS(NearFar)
NH_RAYMARCH_LAUNCHERS(Morton)
NH_RAYMARCH_LAUNCHERS(MortonInvert)
NH_RAYMARCH_LAUNCHERS(Packbits)
NH_RAYMARCH_LAUNCHERS(MarchTrain)
NH_RAYMARCH_LAUNCHERS(CompositeTrainForward)
NH_RAYMARCH_LAUNCHERS(CompositeTrainBackward)
NH_RAYMARCH_LAUNCHERS(MarchInference)
NH_RAYMARCH_LAUNCHERS(CompositeInference)
NH_RAYMARCH_LAUNCHERS(MarchCompact)
NH_RAYMARCH_LAUNCHERS(CompositeCompact)
#undef NH_RAYMARCH_LAUNCHERS

}  // namespace raymarch
}  // namespace nerfhead
