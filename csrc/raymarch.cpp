// Host entry points of the ray-marching family: argument checks, output allocation, and the
// dispatch of the bodies in raymarch_kernels.h to the CPU or CUDA launcher by device.
#include "entry.h"  // first: defines TORCH_ASSERT_ONLY_METHOD_OPERATORS

#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <cmath>

#include "nerfhead.h"
#include "raymarch_kernels.h"

namespace nerfhead {
namespace {

using namespace raymarch;

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

MarchParams make_params(double bound, double inv_bound, double dt_gamma, double dt_min, double dt_max,
                        double dt_to_cells, int64_t cascades, int64_t resolution) {
    TORCH_CHECK(cascades >= 1 && resolution >= 2 && resolution <= 1024 && (resolution & (resolution - 1)) == 0,
                "raymarch: need cascades >= 1 and a power-of-two resolution <= 1024");
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
    return p;
}

void check_float(const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.is_contiguous() && t.scalar_type() == at::kFloat, "raymarch: ", name,
                " must be a contiguous float32 tensor");
}

void check_bitfield(const at::Tensor& bits, const MarchParams& p) {
    TORCH_CHECK(bits.is_contiguous() && bits.scalar_type() == at::kByte &&
                    static_cast<uint64_t>(bits.numel()) * 8 == p.G3 * p.C,
                "raymarch: bitfield must be a contiguous uint8 tensor of C * G^3 / 8 bytes");
}

template <typename T> T* mut(const at::Tensor& t) { return t.mutable_data_ptr<T>(); }
template <typename T> const T* in(const at::Tensor& t) { return t.const_data_ptr<T>(); }

}  // namespace

std::tuple<at::Tensor, at::Tensor> near_far_from_aabb(const at::Tensor& rays_o, const at::Tensor& rays_d,
                                                      const at::Tensor& aabb, double min_near) {
    check_float(rays_o, "rays_o");
    check_float(rays_d, "rays_d");
    check_float(aabb, "aabb");
    TORCH_CHECK(aabb.numel() == 6, "near_far_from_aabb: aabb must hold 6 values");
    const int64_t R = rays_o.size(0);
    auto nears = at::empty({R}, rays_o.options());
    auto fars = at::empty({R}, rays_o.options());
    const NearFar op{in<float>(rays_o), in<float>(rays_d), in<float>(aabb), static_cast<float>(min_near),
                     mut<float>(nears), mut<float>(fars)};
    launch("near_far_from_aabb", op, R, rays_o.device());
    return {nears, fars};
}

at::Tensor morton3d(const at::Tensor& coords) {
    TORCH_CHECK(coords.is_contiguous() && coords.scalar_type() == at::kInt && coords.dim() == 2 &&
                    coords.size(1) == 3,
                "morton3d: coords must be a contiguous int32 [M, 3]");
    const int64_t M = coords.size(0);
    auto out = at::empty({M}, coords.options());
    launch("morton3d", Morton{in<int>(coords), mut<int>(out)}, M, coords.device());
    return out;
}

at::Tensor morton3d_invert(const at::Tensor& indices) {
    TORCH_CHECK(indices.is_contiguous() && indices.scalar_type() == at::kInt && indices.dim() == 1,
                "morton3d_invert: indices must be a contiguous int32 [M]");
    const int64_t M = indices.size(0);
    auto out = at::empty({M, 3}, indices.options());
    launch("morton3d_invert", MortonInvert{in<int>(indices), mut<int>(out)}, M, indices.device());
    return out;
}

at::Tensor packbits(const at::Tensor& density_grid, double threshold) {
    check_float(density_grid, "density_grid");
    TORCH_CHECK(density_grid.numel() % 8 == 0, "packbits: number of cells must be a multiple of 8");
    const int64_t B = density_grid.numel() / 8;
    auto out = at::empty({B}, density_grid.options().dtype(at::kByte));
    launch("packbits", Packbits{in<float>(density_grid), static_cast<float>(threshold), mut<uint8_t>(out)}, B,
           density_grid.device());
    return out;
}

namespace {
MarchTrain make_march_train(const at::Tensor& rays_o, const at::Tensor& rays_d, const at::Tensor& nears,
                            const at::Tensor& fars, const at::Tensor& noise, const at::Tensor& bitfield,
                            const MarchParams& p, int64_t max_steps) {
    for (auto* t : {&rays_o, &rays_d, &nears, &fars, &noise}) check_float(*t, "ray inputs");
    check_bitfield(bitfield, p);
    MarchTrain op{};
    op.o = in<float>(rays_o);
    op.d = in<float>(rays_d);
    op.nears = in<float>(nears);
    op.fars = in<float>(fars);
    op.noise = in<float>(noise);
    op.bits = in<uint8_t>(bitfield);
    op.p = p;
    op.max_steps = static_cast<int>(max_steps);
    return op;
}
}  // namespace

at::Tensor march_rays_train_count(const at::Tensor& rays_o, const at::Tensor& rays_d, const at::Tensor& nears,
                                  const at::Tensor& fars, const at::Tensor& noise, const at::Tensor& bitfield,
                                  double bound, double inv_bound, double dt_gamma, double dt_min, double dt_max,
                                  double dt_to_cells, int64_t cascades, int64_t resolution, int64_t max_steps) {
    const MarchParams p = make_params(bound, inv_bound, dt_gamma, dt_min, dt_max, dt_to_cells, cascades, resolution);
    MarchTrain op = make_march_train(rays_o, rays_d, nears, fars, noise, bitfield, p, max_steps);
    const int64_t R = rays_o.size(0);
    auto counts = at::zeros({R}, rays_o.options().dtype(at::kInt));
    op.counts = mut<int>(counts);
    launch("march_rays_train_count", op, R, rays_o.device());
    return counts;
}

void march_rays_train_fill(const at::Tensor& rays_o, const at::Tensor& rays_d, const at::Tensor& nears,
                           const at::Tensor& fars, const at::Tensor& noise, const at::Tensor& bitfield, double bound,
                           double inv_bound, double dt_gamma, double dt_min, double dt_max, double dt_to_cells,
                           int64_t cascades, int64_t resolution, int64_t max_steps, const at::Tensor& offsets,
                           const at::Tensor& counts, const at::Tensor& positions, const at::Tensor& dirs,
                           const at::Tensor& deltas, const at::Tensor& t_starts, const at::Tensor& t_ends,
                           const at::Tensor& ray_indices) {
    const MarchParams p = make_params(bound, inv_bound, dt_gamma, dt_min, dt_max, dt_to_cells, cascades, resolution);
    MarchTrain op = make_march_train(rays_o, rays_d, nears, fars, noise, bitfield, p, max_steps);
    for (auto* t : {&positions, &dirs, &deltas, &t_starts, &t_ends}) check_float(*t, "march outputs");
    op.offsets = in<int64_t>(offsets);
    op.counts = const_cast<int*>(in<int>(counts));
    op.pos = mut<float>(positions);
    op.dirs = mut<float>(dirs);
    op.deltas = mut<float>(deltas);
    op.t_starts = mut<float>(t_starts);
    op.t_ends = mut<float>(t_ends);
    op.ray_indices = mut<int64_t>(ray_indices);
    launch("march_rays_train_fill", op, rays_o.size(0), rays_o.device());
}

std::vector<at::Tensor> composite_rays_train_forward(const at::Tensor& sigmas, const at::Tensor& rgbs,
                                                     const at::Tensor& deltas, const at::Tensor& ts,
                                                     const at::Tensor& packed_info, double T_thresh) {
    for (auto* t : {&sigmas, &rgbs, &deltas, &ts}) check_float(*t, "composite inputs");
    TORCH_CHECK(packed_info.is_contiguous() && packed_info.scalar_type() == at::kInt,
                "composite: packed_info must be int32 [R, 2]");
    const int64_t R = packed_info.size(0), S = sigmas.size(0);
    const int C = static_cast<int>(rgbs.size(1));
    auto weights = at::zeros({S}, sigmas.options());
    auto weights_sum = at::zeros({R}, sigmas.options());
    auto depth = at::zeros({R}, sigmas.options());
    auto image = at::zeros({R, C}, sigmas.options());
    const CompositeTrainForward op{C, in<float>(sigmas), in<float>(rgbs), in<float>(deltas), in<float>(ts),
                                   in<int>(packed_info), static_cast<float>(T_thresh), mut<float>(weights),
                                   mut<float>(weights_sum), mut<float>(depth), mut<float>(image)};
    launch("composite_rays_train_forward", op, R, sigmas.device());
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
    TORCH_CHECK(packed_info.is_contiguous() && packed_info.scalar_type() == at::kInt,
                "composite: packed_info must be int32 [R, 2]");
    const int64_t R = packed_info.size(0);
    const int C = static_cast<int>(rgbs.size(1));
    auto g_sigmas = at::zeros(sigmas.sizes(), sigmas.options());
    auto g_rgbs = at::zeros(rgbs.sizes(), rgbs.options());
    const CompositeTrainBackward op{C,
                                    in<float>(grad_weights),
                                    in<float>(grad_weights_sum),
                                    in<float>(grad_depth),
                                    in<float>(grad_image),
                                    in<float>(sigmas),
                                    in<float>(rgbs),
                                    in<float>(deltas),
                                    in<float>(ts),
                                    in<int>(packed_info),
                                    static_cast<float>(T_thresh),
                                    mut<float>(g_sigmas),
                                    mut<float>(g_rgbs)};
    launch("composite_rays_train_backward", op, R, sigmas.device());
    return {g_sigmas, g_rgbs};
}

std::vector<at::Tensor> march_rays(const at::Tensor& alive, const at::Tensor& rays_t, const at::Tensor& counts,
                                   const at::Tensor& rays_o, const at::Tensor& rays_d, const at::Tensor& fars,
                                   const at::Tensor& bitfield, double bound, double inv_bound, double dt_gamma,
                                   double dt_min, double dt_max, double dt_to_cells, int64_t cascades,
                                   int64_t resolution, int64_t k, int64_t max_steps) {
    for (auto* t : {&rays_t, &rays_o, &rays_d, &fars}) check_float(*t, "march_rays inputs");
    TORCH_CHECK(alive.is_contiguous() && counts.is_contiguous() && alive.scalar_type() == at::kLong &&
                    counts.scalar_type() == at::kInt,
                "march_rays: alive must be int64 and counts int32");
    const MarchParams p = make_params(bound, inv_bound, dt_gamma, dt_min, dt_max, dt_to_cells, cascades, resolution);
    check_bitfield(bitfield, p);
    const int64_t n = alive.size(0);
    auto f = rays_o.options();
    auto positions = at::zeros({n, k, 3}, f), deltas = at::zeros({n, k}, f), ts = at::zeros({n, k}, f);
    MarchInference op{};
    op.k = static_cast<int>(k);
    op.alive = in<int64_t>(alive);
    op.rays_t = mut<float>(rays_t);
    op.counts = mut<int>(counts);
    op.o = in<float>(rays_o);
    op.d = in<float>(rays_d);
    op.fars = in<float>(fars);
    op.bits = in<uint8_t>(bitfield);
    op.p = p;
    op.max_steps = static_cast<int>(max_steps);
    op.pos = mut<float>(positions);
    op.deltas = mut<float>(deltas);
    op.ts = mut<float>(ts);
    launch("march_rays", op, n, rays_o.device());
    return {positions, deltas, ts};
}

at::Tensor composite_rays(const at::Tensor& alive, const at::Tensor& T, const at::Tensor& sigmas,
                          const at::Tensor& rgbs, const at::Tensor& deltas, const at::Tensor& ts, double T_thresh,
                          const at::Tensor& weights_sum, const at::Tensor& depth, const at::Tensor& image) {
    for (auto* t : {&T, &sigmas, &rgbs, &deltas, &ts, &weights_sum, &depth, &image})
        check_float(*t, "composite_rays inputs");
    TORCH_CHECK(alive.is_contiguous() && alive.scalar_type() == at::kLong, "composite_rays: alive must be int64");
    TORCH_CHECK(sigmas.dim() == 2 && rgbs.dim() == 3 && image.dim() == 2 && rgbs.size(2) == image.size(1),
                "composite_rays: need sigmas [n, k], rgbs [n, k, C], image [R, C]");
    const int64_t n = alive.size(0);
    auto dead = at::zeros({n}, sigmas.options().dtype(at::kBool));
    const CompositeInference op{static_cast<int>(sigmas.size(1)),
                                static_cast<int>(image.size(1)),
                                in<int64_t>(alive),
                                mut<float>(T),
                                in<float>(sigmas),
                                in<float>(rgbs),
                                in<float>(deltas),
                                in<float>(ts),
                                static_cast<float>(T_thresh),
                                mut<float>(weights_sum),
                                mut<float>(depth),
                                mut<float>(image),
                                mut<bool>(dead)};
    launch("composite_rays", op, n, sigmas.device());
    return dead;
}

}  // namespace nerfhead
