// Python bindings of nerfhead._C. Bindings only: the ops are defined in the .cu files.
#include <torch/extension.h>

#include "nerfhead.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    // ---- hashgrid (BEGIN hashgrid) ----
    m.def("hashgrid_forward", &nerfhead::hashgrid_forward, "hash-grid encoding forward -> [N, L*F]");
    m.def("hashgrid_backward_table", &nerfhead::hashgrid_backward_table, "hash-grid grad wrt table -> [rows, F]");
    m.def("hashgrid_backward_input", &nerfhead::hashgrid_backward_input, "hash-grid grad wrt x -> [N, D]");
    // ---- (END hashgrid) ----

    // ---- raymarch (BEGIN raymarch) ----
    m.def("near_far_from_aabb", &nerfhead::near_far_from_aabb, "ray/box slab test -> (nears, fars)");
    m.def("morton3d", &nerfhead::morton3d, "Morton code of int32 [M, 3] cells");
    m.def("morton3d_invert", &nerfhead::morton3d_invert, "cells [M, 3] of int32 Morton codes");
    m.def("packbits", &nerfhead::packbits, "occupancy bitfield of a density grid");
    m.def("march_rays_train", &nerfhead::march_rays_train, "packed training samples (count + fill)");
    m.def("composite_rays_train_forward", &nerfhead::composite_rays_train_forward, "composite packed samples");
    m.def("composite_rays_train_backward", &nerfhead::composite_rays_train_backward, "grads of the composite");
    m.def("march_rays", &nerfhead::march_rays, "inference: k samples per alive ray");
    m.def("composite_rays", &nerfhead::composite_rays, "inference: composite k slots per alive ray");
    // ---- (END raymarch) ----
}
