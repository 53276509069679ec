// Bindings of nerfhead._C, and only bindings: the host entry points (nerfhead.h, defined in
// hashgrid.cpp and raymarch.cpp) become the operators torch.ops.nerfhead.*, which run on
// CPU and CUDA tensors alike (the entry points dispatch on the tensors' device).
//
// Registered with TORCH_LIBRARY rather than pybind11: torch/library.h compiles in seconds
// where torch/extension.h takes most of a minute, and the operators get schemas (in-place
// arguments marked `!`). Importing the module (after `import torch`) registers them.
#include <Python.h>
#include <torch/library.h>

#include "nerfhead.h"

// Bump when an operator's schema changes: the Python loader refuses a stale build.
#define NERFHEAD_OPS_VERSION 3

TORCH_LIBRARY(nerfhead, m) {
    // ---- hash grid (BEGIN hashgrid) ----
    m.def("hashgrid_forward(Tensor x, Tensor table, float[] level_scales, int[] level_resolutions, "
          "int[] level_offsets) -> Tensor");
    m.def("hashgrid_backward_table(Tensor grad_out, Tensor x, Tensor table, float[] level_scales, "
          "int[] level_resolutions, int[] level_offsets) -> Tensor");
    m.def("hashgrid_backward_input(Tensor grad_out, Tensor x, Tensor table, float[] level_scales, "
          "int[] level_resolutions, int[] level_offsets) -> Tensor");
    // ---- (END hashgrid) ----

    // ---- ray marching (BEGIN raymarch) ----
    m.def("near_far_from_aabb(Tensor rays_o, Tensor rays_d, Tensor aabb, float min_near) -> (Tensor, Tensor)");
    m.def("morton3d(Tensor coords) -> Tensor");
    m.def("morton3d_invert(Tensor indices) -> Tensor");
    m.def("packbits(Tensor density_grid, float threshold) -> Tensor");
    m.def("march_rays_train_count(Tensor rays_o, Tensor rays_d, Tensor nears, Tensor fars, Tensor noise, "
          "Tensor bitfield, float bound, float inv_bound, float dt_gamma, float dt_min, float dt_max, "
          "float dt_to_cells, int cascades, int resolution, int max_steps) -> Tensor");
    m.def("march_rays_train_fill(Tensor rays_o, Tensor rays_d, Tensor nears, Tensor fars, Tensor noise, "
          "Tensor bitfield, float bound, float inv_bound, float dt_gamma, float dt_min, float dt_max, "
          "float dt_to_cells, int cascades, int resolution, int max_steps, Tensor offsets, Tensor counts, "
          "Tensor(a!) positions, Tensor(b!) dirs, Tensor(c!) deltas, Tensor(d!) t_starts, Tensor(e!) t_ends, "
          "Tensor(f!) ray_indices) -> ()");
    m.def("composite_rays_train_forward(Tensor sigmas, Tensor rgbs, Tensor deltas, Tensor ts, "
          "Tensor packed_info, float T_thresh) -> Tensor[]");
    m.def("composite_rays_train_backward(Tensor grad_weights, Tensor grad_weights_sum, Tensor grad_depth, "
          "Tensor grad_image, Tensor sigmas, Tensor rgbs, Tensor deltas, Tensor ts, Tensor packed_info, "
          "float T_thresh) -> Tensor[]");
    m.def("march_rays(Tensor alive, Tensor(a!) rays_t, Tensor(b!) counts, Tensor rays_o, Tensor rays_d, "
          "Tensor fars, Tensor bitfield, float bound, float inv_bound, float dt_gamma, float dt_min, "
          "float dt_max, float dt_to_cells, int cascades, int resolution, int k, int max_steps) -> Tensor[]");
    m.def("composite_rays(Tensor alive, Tensor(a!) T, Tensor sigmas, Tensor rgbs, Tensor deltas, Tensor ts, "
          "float T_thresh, Tensor(b!) weights_sum, Tensor(c!) depth, Tensor(d!) image) -> Tensor");
    m.def("march_compact_count(Tensor alive, Tensor rays_t, Tensor counts, Tensor rays_o, Tensor rays_d, "
          "Tensor fars, Tensor bitfield, float bound, float inv_bound, float dt_gamma, float dt_min, "
          "float dt_max, float dt_to_cells, int cascades, int resolution, int k, int max_steps, "
          "Tensor(a!) n_out) -> ()");
    m.def("march_compact_fill(Tensor alive, Tensor(a!) rays_t, Tensor(b!) counts, Tensor rays_o, "
          "Tensor rays_d, Tensor fars, Tensor bitfield, float bound, float inv_bound, float dt_gamma, "
          "float dt_min, float dt_max, float dt_to_cells, int cascades, int resolution, int k, int max_steps, "
          "Tensor ends, Tensor n, Tensor(c!) positions, Tensor(d!) deltas, Tensor(e!) ts, "
          "Tensor(f!) ray_ids) -> ()");
    m.def("composite_compact(Tensor(a!) alive, Tensor(b!) T, Tensor sigmas, Tensor rgbs, Tensor deltas, "
          "Tensor ts, Tensor ends, Tensor n, int capacity, int k, float T_thresh, Tensor(c!) weights_sum, "
          "Tensor(d!) depth, Tensor(e!) image) -> ()");
    // ---- (END raymarch) ----
}

// One kernel per operator for every device (the entry points dispatch on the device).
TORCH_LIBRARY_IMPL(nerfhead, CompositeExplicitAutograd, m) {
    // ---- hash grid (BEGIN hashgrid) ----
    m.impl("hashgrid_forward", TORCH_FN(nerfhead::hashgrid_forward));
    m.impl("hashgrid_backward_table", TORCH_FN(nerfhead::hashgrid_backward_table));
    m.impl("hashgrid_backward_input", TORCH_FN(nerfhead::hashgrid_backward_input));
    // ---- (END hashgrid) ----

    // ---- ray marching (BEGIN raymarch) ----
    m.impl("near_far_from_aabb", TORCH_FN(nerfhead::near_far_from_aabb));
    m.impl("morton3d", TORCH_FN(nerfhead::morton3d));
    m.impl("morton3d_invert", TORCH_FN(nerfhead::morton3d_invert));
    m.impl("packbits", TORCH_FN(nerfhead::packbits));
    m.impl("march_rays_train_count", TORCH_FN(nerfhead::march_rays_train_count));
    m.impl("march_rays_train_fill", TORCH_FN(nerfhead::march_rays_train_fill));
    m.impl("composite_rays_train_forward", TORCH_FN(nerfhead::composite_rays_train_forward));
    m.impl("composite_rays_train_backward", TORCH_FN(nerfhead::composite_rays_train_backward));
    m.impl("march_rays", TORCH_FN(nerfhead::march_rays));
    m.impl("composite_rays", TORCH_FN(nerfhead::composite_rays));
    m.impl("march_compact_count", TORCH_FN(nerfhead::march_compact_count));
    m.impl("march_compact_fill", TORCH_FN(nerfhead::march_compact_fill));
    m.impl("composite_compact", TORCH_FN(nerfhead::composite_compact));
    // ---- (END raymarch) ----
}

// The Python module itself only carries build facts; the operators live in torch.ops.nerfhead.
PyMODINIT_FUNC PyInit__C(void) {
    static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C",
                                 "nerfhead kernels: importing this module registers torch.ops.nerfhead.*",
                                 -1, nullptr};
    PyObject* m = PyModule_Create(&module);
    if (m == nullptr) return nullptr;
#ifdef NERFHEAD_WITH_CUDA
    const long with_cuda = 1;
#else
    const long with_cuda = 0;
#endif
    if (PyModule_AddIntConstant(m, "OPS_VERSION", NERFHEAD_OPS_VERSION) < 0 ||
        PyModule_AddIntConstant(m, "WITH_CUDA", with_cuda) < 0) {
        Py_DECREF(m);
        return nullptr;
    }
    return m;
}
