// Host entry points of the hash-grid family: argument checks, output allocation, and the
// dispatch of the bodies in hashgrid_kernels.h to the CPU or CUDA launcher by device.
#include "entry.h"  // first: defines TORCH_ASSERT_ONLY_METHOD_OPERATORS

#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include "hashgrid_kernels.h"
#include "nerfhead.h"

namespace nerfhead {
namespace {

using hashgrid::Args;
using hashgrid::kMaxLevels;
using hashgrid::LevelParams;

LevelParams make_level_params(int64_t dim, c10::ArrayRef<double> scales, c10::ArrayRef<int64_t> resolutions,
                              c10::ArrayRef<int64_t> offsets) {
    const size_t L = scales.size();
    NERFHEAD_CHECK(L >= 1 && L <= kMaxLevels, "hashgrid: 1..", kMaxLevels, " levels supported, got ", L);
    NERFHEAD_CHECK(resolutions.size() == L && offsets.size() == L + 1,
                "hashgrid: need one resolution per level and num_levels + 1 offsets");
    NERFHEAD_CHECK(offsets[0] == 0 && offsets[L] < (int64_t(1) << 32), "hashgrid: bad level offsets");
    LevelParams p{};
    p.num_levels = static_cast<uint32_t>(L);
    for (size_t l = 0; l <= L; ++l) p.offset[l] = static_cast<uint32_t>(offsets[l]);
    for (size_t l = 0; l < L; ++l) {
        const int64_t rows = offsets[l + 1] - offsets[l];
        NERFHEAD_CHECK(rows > 0 && resolutions[l] >= 2 && resolutions[l] < (int64_t(1) << 31),
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

void check_common(const at::Tensor& x, const at::Tensor& table, c10::ArrayRef<int64_t> level_offsets) {
    first_device("hashgrid", "x", x);
    NERFHEAD_CHECK(x.is_contiguous() && table.is_contiguous(), "hashgrid: x and table must be contiguous");
    NERFHEAD_CHECK(x.scalar_type() == at::kFloat, "hashgrid: x must be float32, got ", x.scalar_type());
    NERFHEAD_CHECK(x.dim() == 2 && (x.size(1) == 2 || x.size(1) == 3), "hashgrid: x must be [N, 2|3], got ",
                x.sizes());
    NERFHEAD_CHECK(table.dim() == 2, "hashgrid: table must be [rows, F], got ", table.sizes());
    const int64_t F = table.size(1);
    NERFHEAD_CHECK(F == 1 || F == 2 || F == 4 || F == 8, "hashgrid: features per level must be 1, 2, 4 or 8, got ", F);
    NERFHEAD_CHECK(table.scalar_type() == at::kFloat || table.scalar_type() == at::kHalf,
                "hashgrid: table must be float32 or float16, got ", table.scalar_type());
    NERFHEAD_CHECK(x.device() == table.device(), "hashgrid: x on ", x.device(), " but table on ", table.device());
    NERFHEAD_CHECK(!level_offsets.empty() && table.size(0) == level_offsets.back(), "hashgrid: table has ",
                table.size(0), " rows, the config needs ", level_offsets.empty() ? 0 : level_offsets.back());
}

void check_grad_out(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& table, const LevelParams& p) {
    NERFHEAD_CHECK(grad_out.is_contiguous() && grad_out.device() == x.device(),
                "hashgrid: grad_out must be contiguous and on ", x.device());
    NERFHEAD_CHECK(grad_out.scalar_type() == table.scalar_type() && grad_out.dim() == 2 &&
                    grad_out.size(0) == x.size(0) &&
                    grad_out.size(1) == static_cast<int64_t>(p.num_levels) * table.size(1),
                "hashgrid: grad_out must be [N, L*F] in the table's dtype, got ", grad_out.sizes(), " ",
                grad_out.scalar_type());
}

Args make_args(const at::Tensor& x, const at::Tensor& table, const LevelParams& p) {
    Args a{};
    a.dim = static_cast<int>(x.size(1));
    a.features = static_cast<int>(table.size(1));
    a.half = table.scalar_type() == at::kHalf;
    a.n_points = x.size(0);
    a.p = p;
    a.x = x.const_data_ptr<float>();
    a.table = table.const_data_ptr();
    return a;
}

template <class Cpu, class Cuda>
void run(const char* op, const Args& a, const at::Device& device, Cpu cpu, Cuda cuda) {
    on_device(
        op, device, [&] { NERFHEAD_CHECK(cpu(a), "hashgrid: unsupported dim/features"); },
        [&](void* stream) { return cuda(a, stream); });
}

// The CUDA launchers exist only in a build with the CUDA part; on_device never calls them
// otherwise (it raises first), so a CPU-only build links without them.
#ifdef NERFHEAD_WITH_CUDA
#define NH_CUDA(fn) hashgrid::fn
#else
#define NH_CUDA(fn) [](const Args&, void*) -> const char* { return "no CUDA part"; }
#endif

}  // namespace

at::Tensor hashgrid_forward(const at::Tensor& x, const at::Tensor& table, c10::ArrayRef<double> level_scales,
                            c10::ArrayRef<int64_t> level_resolutions, c10::ArrayRef<int64_t> level_offsets) {
    check_common(x, table, level_offsets);
    const LevelParams p = make_level_params(x.size(1), level_scales, level_resolutions, level_offsets);
    at::Tensor out = at::empty({x.size(0), static_cast<int64_t>(p.num_levels) * table.size(1)}, table.options());
    if (x.size(0) == 0) return out;
    Args a = make_args(x, table, p);
    a.out = out.mutable_data_ptr();
    run("hashgrid_forward", a, x.device(), hashgrid::forward_cpu, NH_CUDA(forward_cuda));
    return out;
}

at::Tensor hashgrid_backward_table(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& table,
                                   c10::ArrayRef<double> level_scales, c10::ArrayRef<int64_t> level_resolutions,
                                   c10::ArrayRef<int64_t> level_offsets) {
    check_common(x, table, level_offsets);
    const LevelParams p = make_level_params(x.size(1), level_scales, level_resolutions, level_offsets);
    check_grad_out(grad_out, x, table, p);
    // float32 accumulation buffer: the CPU launcher zeroes it level by level in parallel
    const auto f32 = table.options().dtype(at::kFloat);
    at::Tensor grad = x.device().is_cpu() && x.size(0) > 0 ? at::empty(table.sizes(), f32) : at::zeros(table.sizes(), f32);
    if (x.size(0) > 0) {
        Args a = make_args(x, table, p);
        a.grad_out = grad_out.const_data_ptr();
        a.out = grad.mutable_data_ptr();
        run("hashgrid_backward_table", a, x.device(), hashgrid::backward_table_cpu, NH_CUDA(backward_table_cuda));
    }
    return table.scalar_type() == at::kFloat ? grad : grad.to(table.scalar_type());
}

at::Tensor hashgrid_backward_input(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& table,
                                   c10::ArrayRef<double> level_scales, c10::ArrayRef<int64_t> level_resolutions,
                                   c10::ArrayRef<int64_t> level_offsets) {
    check_common(x, table, level_offsets);
    const LevelParams p = make_level_params(x.size(1), level_scales, level_resolutions, level_offsets);
    check_grad_out(grad_out, x, table, p);
    at::Tensor grad_x = at::empty(x.sizes(), x.options());
    if (x.size(0) == 0) return grad_x;
    Args a = make_args(x, table, p);
    a.grad_out = grad_out.const_data_ptr();
    a.out = grad_x.mutable_data_ptr();
    run("hashgrid_backward_input", a, x.device(), hashgrid::backward_input_cpu, NH_CUDA(backward_input_cuda));
    return grad_x;
}

}  // namespace nerfhead
