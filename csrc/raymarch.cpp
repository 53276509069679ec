// Host entry points of the ray-marching family: argument checks, output allocation, and the
// dispatch of the bodies in raymarch_kernels.h to the CPU or CUDA launcher by device.
//
// Every entry point checks each tensor's dtype, shape (sizes agreeing with the argument
// that fixes them), contiguity and device (all on the device of the first tensor), and on
// the CPU also the contents that index memory (packed ranges, ray ids); see the memory
// safety note in raymarch_kernels.h for the GPU.
#include "entry.h"  // first: defines TORCH_ASSERT_ONLY_METHOD_OPERATORS

#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <climits>
#include <cmath>

#include "nerfhead.h"
#include "raymarch_kernels.h"

namespace nerfhead {
namespace {

using namespace raymarch;
using at::kBool;
using at::kByte;
using at::kFloat;
using at::kInt;
using at::kLong;

// Run `op` over n items on `device`.
template <class Op> void launch(const char* name, const Op& op, int64_t n, const at::Device& device) {
    if (n == 0) return;
    on_device(
        name, device, [&] { launch_cpu(op, n); },
        [&](void* stream) -> const char* {
#ifdef NERFHEAD_WITH_CUDA
            return launch_cuda(op, n, stream);
#else
            (void)stream;
            return "no CUDA part";
#endif
        });
}

MarchParams make_params(const char* op, double bound, double inv_bound, double dt_gamma, double dt_min,
                        double dt_max, double dt_to_cells, int64_t cascades, int64_t resolution,
                        int64_t max_steps) {
    NERFHEAD_CHECK(cascades >= 1 && cascades <= kMaxCascades && resolution >= 2 && resolution <= 1024 &&
                    (resolution & (resolution - 1)) == 0,
                "nerfhead::", op, ": need 1..", kMaxCascades, " cascades and a power-of-two resolution in [2, 1024], got ",
                cascades, " and ", resolution);
    NERFHEAD_CHECK(max_steps >= 1 && max_steps <= INT_MAX, "nerfhead::", op, ": max_steps must be in [1, 2^31), got ",
                max_steps);
    // Any step constants march, as in the reference: the step is clamp(t * dt_gamma, dt_min,
    // dt_max) with dt_max winning over a larger dt_min (torch.clamp, fminf(fmaxf())), and even a
    // zero step finishes (at most max_steps samples; an empty cell ends the ray). Only the box
    // is checked.
    NERFHEAD_CHECK(bound > 0 && std::isfinite(bound), "nerfhead::", op, ": need a finite bound > 0, got ", bound);
    MarchParams p;
    p.bound = static_cast<float>(bound);
    p.inv_bound = static_cast<float>(inv_bound);
    p.outer = std::scalbn(p.bound, static_cast<int>(cascades - 1));
    p.dt_gamma = static_cast<float>(dt_gamma);
    p.dt_min = static_cast<float>(dt_min);
    p.dt_max = static_cast<float>(dt_max);
    p.dt_to_cells = static_cast<float>(dt_to_cells);
    p.cell2 = 2.f / static_cast<float>(resolution);
    p.Gf = static_cast<float>(resolution);
    p.C = static_cast<int>(cascades);
    p.G = static_cast<int>(resolution);
    p.G3 = static_cast<uint64_t>(resolution) * resolution * resolution;
    for (int c = 0; c < kMaxCascades; ++c) {
        p.mip_bound[c] = std::scalbn(p.bound, c);
        p.mip_rbound[c] = std::scalbn(p.inv_bound, -c);
    }
    return p;
}

void check_bitfield(const char* op, const at::Tensor& bits, const MarchParams& p, const at::Device& dev) {
    check_tensor(op, "bitfield", bits, kByte, {static_cast<int64_t>(p.G3 * p.C / 8)}, dev,
                 "C * G^3 / 8 bytes, from cascades and resolution");
}

// CPU only (free there; on the GPU it would synchronise): each ray's packed range
// [offset, offset + count) lies within the `total` samples.
template <typename Offset>
void check_ranges_cpu(const char* op, const char* what, const Offset* offsets, int64_t offset_stride,
                      const int* counts, int64_t count_stride, int64_t R, int64_t total) {
    for (int64_t n = 0; n < R; ++n) {
        const int64_t off = offsets[n * offset_stride], cnt = counts[n * count_stride];
        NERFHEAD_CHECK(off >= 0 && cnt >= 0 && off + cnt <= total, "nerfhead::", op, ": ", what, " of ray ", n,
                    " (offset ", off, ", count ", cnt, ") is not within the ", total, " samples");
    }
}

// CPU only: every id in alive indexes one of the R rays.
void check_ids_cpu(const char* op, const at::Tensor& alive, int64_t R) {
    const int64_t* ids = alive.const_data_ptr<int64_t>();
    for (int64_t i = 0; i < alive.numel(); ++i)
        NERFHEAD_CHECK(ids[i] >= 0 && ids[i] < R, "nerfhead::", op, ": alive[", i, "] = ", ids[i], " is not a ray id in [0, ",
                    R, ")");
}

template <typename T> T* mut(const at::Tensor& t) { return t.mutable_data_ptr<T>(); }
template <typename T> const T* in(const at::Tensor& t) { return t.const_data_ptr<T>(); }

}  // namespace

std::tuple<at::Tensor, at::Tensor> near_far_from_aabb(const at::Tensor& rays_o, const at::Tensor& rays_d,
                                                      const at::Tensor& aabb, double min_near) {
    const char* op = "near_far_from_aabb";
    const at::Device dev = first_device(op, "rays_o", rays_o);
    check_tensor(op, "rays_o", rays_o, kFloat, {-1, 3}, dev);
    const int64_t R = rays_o.size(0);
    check_tensor(op, "rays_d", rays_d, kFloat, {R, 3}, dev, "R from rays_o");
    check_tensor(op, "aabb", aabb, kFloat, {6}, dev);
    auto nears = at::empty({R}, rays_o.options());
    auto fars = at::empty({R}, rays_o.options());
    const NearFar body{in<float>(rays_o), in<float>(rays_d), in<float>(aabb), static_cast<float>(min_near),
                       mut<float>(nears), mut<float>(fars)};
    launch(op, body, R, dev);
    return {nears, fars};
}

at::Tensor morton3d(const at::Tensor& coords) {
    const char* op = "morton3d";
    const at::Device dev = first_device(op, "coords", coords);
    check_tensor(op, "coords", coords, kInt, {-1, 3}, dev);
    const int64_t M = coords.size(0);
    auto out = at::empty({M}, coords.options());
    launch(op, Morton{in<int>(coords), mut<int>(out)}, M, dev);
    return out;
}

at::Tensor morton3d_invert(const at::Tensor& indices) {
    const char* op = "morton3d_invert";
    const at::Device dev = first_device(op, "indices", indices);
    check_tensor(op, "indices", indices, kInt, {-1}, dev);
    const int64_t M = indices.size(0);
    auto out = at::empty({M, 3}, indices.options());
    launch(op, MortonInvert{in<int>(indices), mut<int>(out)}, M, dev);
    return out;
}

at::Tensor packbits(const at::Tensor& density_grid, double threshold) {
    const char* op = "packbits";
    const at::Device dev = first_device(op, "density_grid", density_grid);
    check_tensor(op, "density_grid", density_grid, kFloat, {-1}, dev);
    NERFHEAD_CHECK(density_grid.numel() % 8 == 0, "nerfhead::packbits: the number of cells (", density_grid.numel(),
                ") must be a multiple of 8");
    const int64_t B = density_grid.numel() / 8;
    auto out = at::empty({B}, density_grid.options().dtype(kByte));
    launch(op, Packbits{in<float>(density_grid), static_cast<float>(threshold), mut<uint8_t>(out)}, B, dev);
    return out;
}

namespace {
// Checks and the body of a training march (both passes).
MarchTrain march_train_body(const char* op, const at::Device& dev, const at::Tensor& rays_o,
                            const at::Tensor& rays_d, const at::Tensor& nears, const at::Tensor& fars,
                            const at::Tensor& noise, const at::Tensor& bitfield, const MarchParams& p,
                            int64_t max_steps) {
    check_tensor(op, "rays_o", rays_o, kFloat, {-1, 3}, dev);
    const int64_t R = rays_o.size(0);
    check_tensor(op, "rays_d", rays_d, kFloat, {R, 3}, dev, "R from rays_o");
    check_tensor(op, "nears", nears, kFloat, {R}, dev, "R from rays_o");
    check_tensor(op, "fars", fars, kFloat, {R}, dev, "R from rays_o");
    check_tensor(op, "noise", noise, kFloat, {R}, dev, "R from rays_o");
    check_bitfield(op, bitfield, p, dev);
    MarchTrain body{};
    body.o = in<float>(rays_o);
    body.d = in<float>(rays_d);
    body.nears = in<float>(nears);
    body.fars = in<float>(fars);
    body.noise = in<float>(noise);
    body.bits = in<uint8_t>(bitfield);
    body.p = p;
    body.max_steps = static_cast<int>(max_steps);
    return body;
}
}  // namespace

at::Tensor march_rays_train_count(const at::Tensor& rays_o, const at::Tensor& rays_d, const at::Tensor& nears,
                                  const at::Tensor& fars, const at::Tensor& noise, const at::Tensor& bitfield,
                                  double bound, double inv_bound, double dt_gamma, double dt_min, double dt_max,
                                  double dt_to_cells, int64_t cascades, int64_t resolution, int64_t max_steps) {
    const char* op = "march_rays_train_count";
    const at::Device dev = first_device(op, "rays_o", rays_o);
    const MarchParams p =
        make_params(op, bound, inv_bound, dt_gamma, dt_min, dt_max, dt_to_cells, cascades, resolution, max_steps);
    MarchTrain body = march_train_body(op, dev, rays_o, rays_d, nears, fars, noise, bitfield, p, max_steps);
    const int64_t R = rays_o.size(0);
    auto counts = at::zeros({R}, rays_o.options().dtype(kInt));
    body.count_out = mut<int>(counts);
    launch(op, body, R, dev);
    return counts;
}

void march_rays_train_fill(const at::Tensor& rays_o, const at::Tensor& rays_d, const at::Tensor& nears,
                           const at::Tensor& fars, const at::Tensor& noise, const at::Tensor& bitfield, double bound,
                           double inv_bound, double dt_gamma, double dt_min, double dt_max, double dt_to_cells,
                           int64_t cascades, int64_t resolution, int64_t max_steps, const at::Tensor& offsets,
                           const at::Tensor& counts, const at::Tensor& positions, const at::Tensor& dirs,
                           const at::Tensor& deltas, const at::Tensor& t_starts, const at::Tensor& t_ends,
                           const at::Tensor& ray_indices) {
    const char* op = "march_rays_train_fill";
    const at::Device dev = first_device(op, "rays_o", rays_o);
    const MarchParams p =
        make_params(op, bound, inv_bound, dt_gamma, dt_min, dt_max, dt_to_cells, cascades, resolution, max_steps);
    MarchTrain body = march_train_body(op, dev, rays_o, rays_d, nears, fars, noise, bitfield, p, max_steps);
    const int64_t R = rays_o.size(0);
    check_tensor(op, "offsets", offsets, kLong, {R}, dev, "R from rays_o");
    check_tensor(op, "counts", counts, kInt, {R}, dev, "R from rays_o");
    check_tensor(op, "positions", positions, kFloat, {-1, 3}, dev);
    const int64_t S = positions.size(0);
    check_tensor(op, "dirs", dirs, kFloat, {S, 3}, dev, "S from positions");
    check_tensor(op, "deltas", deltas, kFloat, {S}, dev, "S from positions");
    check_tensor(op, "t_starts", t_starts, kFloat, {S}, dev, "S from positions");
    check_tensor(op, "t_ends", t_ends, kFloat, {S}, dev, "S from positions");
    check_tensor(op, "ray_indices", ray_indices, kLong, {S}, dev, "S from positions");
    if (dev.is_cpu()) check_ranges_cpu(op, "offsets/counts", in<int64_t>(offsets), 1, in<int>(counts), 1, R, S);
    body.offsets = in<int64_t>(offsets);
    body.counts = in<int>(counts);
    body.pos = mut<float>(positions);
    body.dirs = mut<float>(dirs);
    body.deltas = mut<float>(deltas);
    body.t_starts = mut<float>(t_starts);
    body.t_ends = mut<float>(t_ends);
    body.ray_indices = mut<int64_t>(ray_indices);
    body.n_slots = S;
    launch(op, body, R, dev);
}

namespace {
// Checks of the composite's sample inputs; returns (S, R, C).
std::tuple<int64_t, int64_t, int64_t> check_composite_inputs(const char* op, const at::Device& dev,
                                                             const at::Tensor& sigmas, const at::Tensor& rgbs,
                                                             const at::Tensor& deltas, const at::Tensor& ts,
                                                             const at::Tensor& packed_info) {
    check_tensor(op, "sigmas", sigmas, kFloat, {-1}, dev);
    const int64_t S = sigmas.size(0);
    check_tensor(op, "rgbs", rgbs, kFloat, {S, -1}, dev, "S from sigmas");
    check_tensor(op, "deltas", deltas, kFloat, {S}, dev, "S from sigmas");
    check_tensor(op, "ts", ts, kFloat, {S}, dev, "S from sigmas");
    check_tensor(op, "packed_info", packed_info, kInt, {-1, 2}, dev);
    const int64_t R = packed_info.size(0);
    if (dev.is_cpu()) {
        const int* info = in<int>(packed_info);
        check_ranges_cpu(op, "packed_info", info, 2, info + 1, 2, R, S);
    }
    return {S, R, rgbs.size(1)};
}
}  // namespace

std::vector<at::Tensor> composite_rays_train_forward(const at::Tensor& sigmas, const at::Tensor& rgbs,
                                                     const at::Tensor& deltas, const at::Tensor& ts,
                                                     const at::Tensor& packed_info, double T_thresh) {
    const char* op = "composite_rays_train_forward";
    const at::Device dev = first_device(op, "sigmas", sigmas);
    const auto [S, R, C] = check_composite_inputs(op, dev, sigmas, rgbs, deltas, ts, packed_info);
    auto weights = at::zeros({S}, sigmas.options());
    auto weights_sum = at::zeros({R}, sigmas.options());
    auto depth = at::zeros({R}, sigmas.options());
    auto image = at::zeros({R, C}, sigmas.options());
    const CompositeTrainForward body{static_cast<int>(C), in<float>(sigmas),  in<float>(rgbs),
                                     in<float>(deltas),   in<float>(ts),      in<int>(packed_info),
                                     S,                   static_cast<float>(T_thresh),
                                     mut<float>(weights), mut<float>(weights_sum),
                                     mut<float>(depth),   mut<float>(image)};
    launch(op, body, R, dev);
    return {weights, weights_sum, depth, image};
}

std::vector<at::Tensor> composite_rays_train_backward(const at::Tensor& grad_weights,
                                                      const at::Tensor& grad_weights_sum,
                                                      const at::Tensor& grad_depth, const at::Tensor& grad_image,
                                                      const at::Tensor& sigmas, const at::Tensor& rgbs,
                                                      const at::Tensor& deltas, const at::Tensor& ts,
                                                      const at::Tensor& packed_info, double T_thresh) {
    const char* op = "composite_rays_train_backward";
    const at::Device dev = first_device(op, "sigmas", sigmas);
    const auto [S, R, C] = check_composite_inputs(op, dev, sigmas, rgbs, deltas, ts, packed_info);
    check_tensor(op, "grad_weights", grad_weights, kFloat, {S}, dev, "S from sigmas");
    check_tensor(op, "grad_weights_sum", grad_weights_sum, kFloat, {R}, dev, "R from packed_info");
    check_tensor(op, "grad_depth", grad_depth, kFloat, {R}, dev, "R from packed_info");
    check_tensor(op, "grad_image", grad_image, kFloat, {R, C}, dev, "R from packed_info, C from rgbs");
    auto g_sigmas = at::zeros(sigmas.sizes(), sigmas.options());
    auto g_rgbs = at::zeros(rgbs.sizes(), rgbs.options());
    const CompositeTrainBackward body{static_cast<int>(C),
                                      in<float>(grad_weights),
                                      in<float>(grad_weights_sum),
                                      in<float>(grad_depth),
                                      in<float>(grad_image),
                                      in<float>(sigmas),
                                      in<float>(rgbs),
                                      in<float>(deltas),
                                      in<float>(ts),
                                      in<int>(packed_info),
                                      S,
                                      static_cast<float>(T_thresh),
                                      mut<float>(g_sigmas),
                                      mut<float>(g_rgbs)};
    launch(op, body, R, dev);
    return {g_sigmas, g_rgbs};
}

std::vector<at::Tensor> march_rays(const at::Tensor& alive, const at::Tensor& rays_t, const at::Tensor& counts,
                                   const at::Tensor& rays_o, const at::Tensor& rays_d, const at::Tensor& fars,
                                   const at::Tensor& bitfield, double bound, double inv_bound, double dt_gamma,
                                   double dt_min, double dt_max, double dt_to_cells, int64_t cascades,
                                   int64_t resolution, int64_t k, int64_t max_steps) {
    const char* op = "march_rays";
    const at::Device dev = first_device(op, "alive", alive);
    const MarchParams p =
        make_params(op, bound, inv_bound, dt_gamma, dt_min, dt_max, dt_to_cells, cascades, resolution, max_steps);
    NERFHEAD_CHECK(k >= 1 && k <= INT_MAX, "nerfhead::march_rays: k (samples per ray and step) must be >= 1, got ", k);
    check_tensor(op, "alive", alive, kLong, {-1}, dev);
    const int64_t n = alive.size(0);
    check_tensor(op, "rays_t", rays_t, kFloat, {n}, dev, "n from alive");
    check_tensor(op, "counts", counts, kInt, {n}, dev, "n from alive");
    check_tensor(op, "rays_o", rays_o, kFloat, {-1, 3}, dev);
    const int64_t R = rays_o.size(0);
    check_tensor(op, "rays_d", rays_d, kFloat, {R, 3}, dev, "R from rays_o");
    check_tensor(op, "fars", fars, kFloat, {R}, dev, "R from rays_o");
    check_bitfield(op, bitfield, p, dev);
    if (dev.is_cpu()) check_ids_cpu(op, alive, R);
    auto f = rays_o.options();
    auto positions = at::zeros({n, k, 3}, f), deltas = at::zeros({n, k}, f), ts = at::zeros({n, k}, f);
    MarchInference body{};
    body.k = static_cast<int>(k);
    body.alive = in<int64_t>(alive);
    body.rays_t = mut<float>(rays_t);
    body.counts = mut<int>(counts);
    body.o = in<float>(rays_o);
    body.d = in<float>(rays_d);
    body.fars = in<float>(fars);
    body.n_rays = R;
    body.bits = in<uint8_t>(bitfield);
    body.p = p;
    body.max_steps = static_cast<int>(max_steps);
    body.pos = mut<float>(positions);
    body.deltas = mut<float>(deltas);
    body.ts = mut<float>(ts);
    launch(op, body, n, dev);
    return {positions, deltas, ts};
}

at::Tensor composite_rays(const at::Tensor& alive, const at::Tensor& T, const at::Tensor& sigmas,
                          const at::Tensor& rgbs, const at::Tensor& deltas, const at::Tensor& ts, double T_thresh,
                          const at::Tensor& weights_sum, const at::Tensor& depth, const at::Tensor& image) {
    const char* op = "composite_rays";
    const at::Device dev = first_device(op, "alive", alive);
    check_tensor(op, "alive", alive, kLong, {-1}, dev);
    const int64_t n = alive.size(0);
    check_tensor(op, "T", T, kFloat, {n}, dev, "n from alive");
    check_tensor(op, "sigmas", sigmas, kFloat, {n, -1}, dev, "n from alive");
    const int64_t k = sigmas.size(1);
    check_tensor(op, "rgbs", rgbs, kFloat, {n, k, -1}, dev, "n from alive, k from sigmas");
    const int64_t C = rgbs.size(2);
    check_tensor(op, "deltas", deltas, kFloat, {n, k}, dev, "n from alive, k from sigmas");
    check_tensor(op, "ts", ts, kFloat, {n, k}, dev, "n from alive, k from sigmas");
    check_tensor(op, "weights_sum", weights_sum, kFloat, {-1}, dev);
    const int64_t R = weights_sum.size(0);
    check_tensor(op, "depth", depth, kFloat, {R}, dev, "R from weights_sum");
    check_tensor(op, "image", image, kFloat, {R, C}, dev, "R from weights_sum, C from rgbs");
    if (dev.is_cpu()) check_ids_cpu(op, alive, R);
    auto dead = at::zeros({n}, sigmas.options().dtype(kBool));
    const CompositeInference body{static_cast<int>(k),
                                  static_cast<int>(C),
                                  in<int64_t>(alive),
                                  mut<float>(T),
                                  in<float>(sigmas),
                                  in<float>(rgbs),
                                  in<float>(deltas),
                                  in<float>(ts),
                                  static_cast<float>(T_thresh),
                                  R,
                                  mut<float>(weights_sum),
                                  mut<float>(depth),
                                  mut<float>(image),
                                  mut<bool>(dead)};
    launch(op, body, n, dev);
    return dead;
}

namespace {
// Checks shared by the fixed-shape march passes (count and fill), and the body with the
// fields they share; R (rays, from alive) in *R_out.
MarchCompact compact_march(const char* op, const at::Device& dev, const at::Tensor& alive,
                           const at::Tensor& rays_t, const at::Tensor& counts, const at::Tensor& rays_o,
                           const at::Tensor& rays_d, const at::Tensor& fars, const at::Tensor& bitfield,
                           const MarchParams& p, int64_t k, int64_t max_steps, int64_t* R_out) {
    NERFHEAD_CHECK(k >= 1 && k <= INT_MAX, "nerfhead::", op, ": k (samples per ray and step) must be >= 1, got ", k);
    check_tensor(op, "alive", alive, kBool, {-1}, dev);
    const int64_t R = alive.size(0);
    check_tensor(op, "rays_t", rays_t, kFloat, {R}, dev, "R from alive");
    check_tensor(op, "counts", counts, kInt, {R}, dev, "R from alive");
    check_tensor(op, "rays_o", rays_o, kFloat, {R, 3}, dev, "R from alive");
    check_tensor(op, "rays_d", rays_d, kFloat, {R, 3}, dev, "R from alive");
    check_tensor(op, "fars", fars, kFloat, {R}, dev, "R from alive");
    check_bitfield(op, bitfield, p, dev);
    *R_out = R;
    MarchCompact body{};
    body.k = static_cast<int>(k);
    body.alive = in<bool>(alive);
    body.rays_t = mut<float>(rays_t);
    body.counts = mut<int>(counts);
    body.o = in<float>(rays_o);
    body.d = in<float>(rays_d);
    body.fars = in<float>(fars);
    body.bits = in<uint8_t>(bitfield);
    body.p = p;
    body.max_steps = static_cast<int>(max_steps);
    return body;
}

// CPU only: every alive ray whose range ends within `capacity` has a range
// [end - n, end) with n >= 0 that also ends within `n_samples`.
void check_compact_ranges_cpu(const char* op, const at::Tensor& alive, const at::Tensor& ends,
                              const at::Tensor& n, int64_t capacity, int64_t n_samples) {
    const bool* a = in<bool>(alive);
    const int64_t* e = in<int64_t>(ends);
    const int* c = in<int>(n);
    for (int64_t r = 0; r < alive.numel(); ++r) {
        if (!a[r] || e[r] > capacity) continue;
        NERFHEAD_CHECK(c[r] >= 0 && e[r] - c[r] >= 0 && e[r] <= n_samples, "nerfhead::", op, ": ray ", r,
                       " has the sample range [", e[r] - c[r], ", ", e[r], ") (ends[r] - n[r], ends[r]), not within the ",
                       n_samples, " samples");
    }
}
}  // namespace

void march_compact_count(const at::Tensor& alive, const at::Tensor& rays_t, const at::Tensor& counts,
                         const at::Tensor& rays_o, const at::Tensor& rays_d, const at::Tensor& fars,
                         const at::Tensor& bitfield, double bound, double inv_bound, double dt_gamma, double dt_min,
                         double dt_max, double dt_to_cells, int64_t cascades, int64_t resolution, int64_t k,
                         int64_t max_steps, const at::Tensor& n_out) {
    const char* op = "march_compact_count";
    const at::Device dev = first_device(op, "alive", alive);
    const MarchParams p =
        make_params(op, bound, inv_bound, dt_gamma, dt_min, dt_max, dt_to_cells, cascades, resolution, max_steps);
    int64_t R = 0;
    MarchCompact body =
        compact_march(op, dev, alive, rays_t, counts, rays_o, rays_d, fars, bitfield, p, k, max_steps, &R);
    check_tensor(op, "n_out", n_out, kInt, {R}, dev, "R from alive");
    body.n_out = mut<int>(n_out);
    launch(op, body, R, dev);
}

void march_compact_fill(const at::Tensor& alive, const at::Tensor& rays_t, const at::Tensor& counts,
                        const at::Tensor& rays_o, const at::Tensor& rays_d, const at::Tensor& fars,
                        const at::Tensor& bitfield, double bound, double inv_bound, double dt_gamma, double dt_min,
                        double dt_max, double dt_to_cells, int64_t cascades, int64_t resolution, int64_t k,
                        int64_t max_steps, const at::Tensor& ends, const at::Tensor& n, const at::Tensor& positions,
                        const at::Tensor& deltas, const at::Tensor& ts, const at::Tensor& ray_ids) {
    const char* op = "march_compact_fill";
    const at::Device dev = first_device(op, "alive", alive);
    const MarchParams p =
        make_params(op, bound, inv_bound, dt_gamma, dt_min, dt_max, dt_to_cells, cascades, resolution, max_steps);
    int64_t R = 0;
    MarchCompact body =
        compact_march(op, dev, alive, rays_t, counts, rays_o, rays_d, fars, bitfield, p, k, max_steps, &R);
    check_tensor(op, "ends", ends, kLong, {R}, dev, "R from alive");
    check_tensor(op, "n", n, kInt, {R}, dev, "R from alive");
    check_tensor(op, "positions", positions, kFloat, {-1, 3}, dev);
    const int64_t S = positions.size(0);
    check_tensor(op, "deltas", deltas, kFloat, {S}, dev, "capacity from positions");
    check_tensor(op, "ts", ts, kFloat, {S}, dev, "capacity from positions");
    check_tensor(op, "ray_ids", ray_ids, kLong, {S}, dev, "capacity from positions");
    if (dev.is_cpu()) check_compact_ranges_cpu(op, alive, ends, n, S, S);
    body.ends = in<int64_t>(ends);
    body.n_in = in<int>(n);
    body.capacity = S;
    body.pos = mut<float>(positions);
    body.deltas = mut<float>(deltas);
    body.ts = mut<float>(ts);
    body.ray_ids = mut<int64_t>(ray_ids);
    launch(op, body, R, dev);
}

void composite_compact(const at::Tensor& alive, const at::Tensor& T, const at::Tensor& sigmas,
                       const at::Tensor& rgbs, const at::Tensor& deltas, const at::Tensor& ts,
                       const at::Tensor& ends, const at::Tensor& n, int64_t capacity, int64_t k, double T_thresh,
                       const at::Tensor& weights_sum, const at::Tensor& depth, const at::Tensor& image) {
    const char* op = "composite_compact";
    const at::Device dev = first_device(op, "alive", alive);
    NERFHEAD_CHECK(k >= 1 && k <= INT_MAX, "nerfhead::", op, ": k (samples per ray and step) must be >= 1, got ", k);
    check_tensor(op, "alive", alive, kBool, {-1}, dev);
    const int64_t R = alive.size(0);
    check_tensor(op, "T", T, kFloat, {R}, dev, "R from alive");
    check_tensor(op, "sigmas", sigmas, kFloat, {-1}, dev);
    const int64_t S = sigmas.size(0);
    NERFHEAD_CHECK(S <= capacity, "nerfhead::", op, ": ", S, " samples exceed the capacity ", capacity);
    check_tensor(op, "rgbs", rgbs, kFloat, {S, -1}, dev, "S from sigmas");
    const int64_t C = rgbs.size(1);
    check_tensor(op, "deltas", deltas, kFloat, {-1}, dev);
    NERFHEAD_CHECK(deltas.size(0) >= S && deltas.size(0) == capacity, "nerfhead::", op, ": deltas must have the ",
                   capacity, " slots of the capacity, got ", deltas.size(0));
    check_tensor(op, "ts", ts, kFloat, {capacity}, dev, "the capacity");
    check_tensor(op, "ends", ends, kLong, {R}, dev, "R from alive");
    check_tensor(op, "n", n, kInt, {R}, dev, "R from alive");
    check_tensor(op, "weights_sum", weights_sum, kFloat, {R}, dev, "R from alive");
    check_tensor(op, "depth", depth, kFloat, {R}, dev, "R from alive");
    check_tensor(op, "image", image, kFloat, {R, C}, dev, "R from alive, C from rgbs");
    if (dev.is_cpu()) check_compact_ranges_cpu(op, alive, ends, n, capacity, S);
    const CompositeCompact body{static_cast<int>(k),   static_cast<int>(C), mut<bool>(alive),
                                mut<float>(T),         in<float>(sigmas),   in<float>(rgbs),
                                in<float>(deltas),     in<float>(ts),       in<int64_t>(ends),
                                in<int>(n),            capacity,            S,
                                static_cast<float>(T_thresh), mut<float>(weights_sum), mut<float>(depth),
                                mut<float>(image)};
    launch(op, body, R, dev);
}

}  // namespace nerfhead
