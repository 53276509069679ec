// Declarations of the host entry points that ext.cpp registers as torch.ops.nerfhead.*.
// Each takes CPU or CUDA tensors (all on one device) and runs the same per-item kernel
// bodies there: hashgrid.cpp (hashgrid_kernels.h), raymarch.cpp (raymarch_kernels.h).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <tuple>
#include <vector>

namespace nerfhead {

// ---- hash grid (BEGIN hashgrid) ----
// x: [N, D] float32 (D = 2|3), table: [rows, F] float32|float16 (F = 1|2|4|8), contiguous.
// level_scales: L float32 values; level_resolutions: L; level_offsets: L + 1 rows (last = rows).
// Forward -> [N, L*F] in table dtype; backward_table -> [rows, F] table dtype;
// backward_input -> [N, D] float32 (zero on the axes where x was clamped).
at::Tensor hashgrid_forward(const at::Tensor& x, const at::Tensor& table, c10::ArrayRef<double> level_scales,
                            c10::ArrayRef<int64_t> level_resolutions, c10::ArrayRef<int64_t> level_offsets);
at::Tensor hashgrid_backward_table(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& table,
                                   c10::ArrayRef<double> level_scales, c10::ArrayRef<int64_t> level_resolutions,
                                   c10::ArrayRef<int64_t> level_offsets);
at::Tensor hashgrid_backward_input(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& table,
                                   c10::ArrayRef<double> level_scales, c10::ArrayRef<int64_t> level_resolutions,
                                   c10::ArrayRef<int64_t> level_offsets);
// ---- (END hashgrid) ----

// ---- ray marching (BEGIN raymarch) ----
// Python faces and PyTorch references: nerfhead/ops/occupancy.py, raymarch.py,
// raymarch_inference.py. March scalars come from occupancy.march_params (float32 values).
// near_far_from_aabb: rays [R, 3], aabb [6] -> (nears [R], fars [R]); misses get FLT_MAX.
std::tuple<at::Tensor, at::Tensor> near_far_from_aabb(const at::Tensor& rays_o, const at::Tensor& rays_d,
                                                      const at::Tensor& aabb, double min_near);
at::Tensor morton3d(const at::Tensor& coords);          // int32 [M, 3] -> int32 [M]
at::Tensor morton3d_invert(const at::Tensor& indices);  // int32 [M] -> int32 [M, 3]
at::Tensor packbits(const at::Tensor& density_grid, double threshold);  // [N] -> uint8 [N / 8]
// Training march, count pass -> counts int32 [R].
at::Tensor march_rays_train_count(const at::Tensor& rays_o, const at::Tensor& rays_d, const at::Tensor& nears,
                                  const at::Tensor& fars, const at::Tensor& noise, const at::Tensor& bitfield,
                                  double bound, double inv_bound, double dt_gamma, double dt_min, double dt_max,
                                  double dt_to_cells, int64_t cascades, int64_t resolution, int64_t max_steps);
// Training march, fill pass: writes ray n's first counts[n] samples from offsets[n] (int64)
// into positions [S,3], dirs [S,3], deltas [S], t_starts [S], t_ends [S], ray_indices int64 [S].
void march_rays_train_fill(const at::Tensor& rays_o, const at::Tensor& rays_d, const at::Tensor& nears,
                           const at::Tensor& fars, const at::Tensor& noise, const at::Tensor& bitfield, double bound,
                           double inv_bound, double dt_gamma, double dt_min, double dt_max, double dt_to_cells,
                           int64_t cascades, int64_t resolution, int64_t max_steps, const at::Tensor& offsets,
                           const at::Tensor& counts, const at::Tensor& positions, const at::Tensor& dirs,
                           const at::Tensor& deltas, const at::Tensor& t_starts, const at::Tensor& t_ends,
                           const at::Tensor& ray_indices);
// -> weights [S], weights_sum [R], depth [R], image [R, C]
std::vector<at::Tensor> composite_rays_train_forward(const at::Tensor& sigmas, const at::Tensor& rgbs,
                                                     const at::Tensor& deltas, const at::Tensor& ts,
                                                     const at::Tensor& packed_info, double T_thresh);
// -> grad_sigmas [S], grad_rgbs [S, C]
std::vector<at::Tensor> composite_rays_train_backward(const at::Tensor& grad_weights,
                                                      const at::Tensor& grad_weights_sum,
                                                      const at::Tensor& grad_depth, const at::Tensor& grad_image,
                                                      const at::Tensor& sigmas, const at::Tensor& rgbs,
                                                      const at::Tensor& deltas, const at::Tensor& ts,
                                                      const at::Tensor& packed_info, double T_thresh);
// Inference step: alive int64 [n]; rays_t [n] float and counts [n] int32 updated in place.
// -> positions [n, k, 3], deltas [n, k] (0 = no sample), ts [n, k] (sample midpoints)
std::vector<at::Tensor> march_rays(const at::Tensor& alive, const at::Tensor& rays_t, const at::Tensor& counts,
                                   const at::Tensor& rays_o, const at::Tensor& rays_d, const at::Tensor& fars,
                                   const at::Tensor& bitfield, double bound, double inv_bound, double dt_gamma,
                                   double dt_min, double dt_max, double dt_to_cells, int64_t cascades,
                                   int64_t resolution, int64_t k, int64_t max_steps);
// Inference step: composites into T [n], weights_sum [R], depth [R], image [R, C] in place
// -> dead bool [n]
at::Tensor composite_rays(const at::Tensor& alive, const at::Tensor& T, const at::Tensor& sigmas,
                          const at::Tensor& rgbs, const at::Tensor& deltas, const at::Tensor& ts, double T_thresh,
                          const at::Tensor& weights_sum, const at::Tensor& depth, const at::Tensor& image);
// Fixed-shape inference, count pass: n_out int32 [R] = samples each alive ray (alive bool
// [R]) emits in its next k; the state (rays_t [R], counts [R]) is not changed.
void march_compact_count(const at::Tensor& alive, const at::Tensor& rays_t, const at::Tensor& counts,
                         const at::Tensor& rays_o, const at::Tensor& rays_d, const at::Tensor& fars,
                         const at::Tensor& bitfield, double bound, double inv_bound, double dt_gamma, double dt_min,
                         double dt_max, double dt_to_cells, int64_t cascades, int64_t resolution, int64_t k,
                         int64_t max_steps, const at::Tensor& n_out);
// Fixed-shape inference, fill pass: ray r writes its n[r] samples at [ends[r] - n[r], ends[r])
// of positions [S,3], deltas [S], ts [S], ray_ids int64 [S] when ends[r] <= S, and commits
// its state (rays_t, counts) in place.
void march_compact_fill(const at::Tensor& alive, const at::Tensor& rays_t, const at::Tensor& counts,
                        const at::Tensor& rays_o, const at::Tensor& rays_d, const at::Tensor& fars,
                        const at::Tensor& bitfield, double bound, double inv_bound, double dt_gamma, double dt_min,
                        double dt_max, double dt_to_cells, int64_t cascades, int64_t resolution, int64_t k,
                        int64_t max_steps, const at::Tensor& ends, const at::Tensor& n, const at::Tensor& positions,
                        const at::Tensor& deltas, const at::Tensor& ts, const at::Tensor& ray_ids);
// Fixed-shape inference, composite: ray r composites sigmas/rgbs [ends[r] - n[r], ends[r])
// into T, weights_sum, depth, image [R, C] and clears alive[r] when it finished (in place).
void composite_compact(const at::Tensor& alive, const at::Tensor& T, const at::Tensor& sigmas,
                       const at::Tensor& rgbs, const at::Tensor& deltas, const at::Tensor& ts,
                       const at::Tensor& ends, const at::Tensor& n, int64_t capacity, int64_t k, double T_thresh,
                       const at::Tensor& weights_sum, const at::Tensor& depth, const at::Tensor& image);
// ---- (END raymarch) ----

}  // namespace nerfhead
