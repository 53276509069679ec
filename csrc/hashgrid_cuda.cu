// CUDA launcher of the hash-grid kernels: the bodies of hashgrid_kernels.h, one thread per
// item. No torch headers (compiles in seconds); hashgrid.cpp passes raw pointers and the
// current stream.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "hashgrid_kernels.h"

namespace nerfhead {
namespace hashgrid {

template <> struct Scalar<__half> {
    NH_HD static NH_INLINE float load(__half v) { return __half2float(v); }
    NH_HD static NH_INLINE __half store(float v) { return __float2half_rn(v); }  // round to nearest even
};

namespace {

constexpr int kThreads = 256;

template <class Op> __global__ void each_kernel(int64_t n, Op op) {
    const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (i < n) op(i);
}

template <class Op> void each(const Op& op, int64_t n, void* stream) {
    if (n == 0) return;
    const auto blocks = static_cast<unsigned>((n + kThreads - 1) / kThreads);
    each_kernel<<<blocks, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(n, op);
}

const char* last_error(bool dispatched) {
    if (!dispatched) return "unsupported (dim, features) combination";
    const cudaError_t err = cudaGetLastError();
    return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace

const char* forward_cuda(const Args& a, void* stream) {
    const bool ok = dispatch<__half>(a.dim, a.features, a.half, [&](auto d, auto f, auto tag) {
        using T = typename decltype(tag)::type;
        const Forward<decltype(d)::value, decltype(f)::value, T> op{
            a.x, static_cast<const T*>(a.table), static_cast<T*>(a.out), a.n_points, a.p};
        each(op, a.n_points * a.p.num_levels, stream);
    });
    return last_error(ok);
}

const char* backward_table_cuda(const Args& a, void* stream) {
    const bool ok = dispatch<__half>(a.dim, a.features, a.half, [&](auto d, auto f, auto tag) {
        using T = typename decltype(tag)::type;
        const BackwardTable<decltype(d)::value, decltype(f)::value, T> op{
            static_cast<const T*>(a.grad_out), a.x, static_cast<float*>(a.out), a.n_points, a.p};
        each(op, a.n_points * a.p.num_levels, stream);
    });
    return last_error(ok);
}

const char* backward_input_cuda(const Args& a, void* stream) {
    const bool ok = dispatch<__half>(a.dim, a.features, a.half, [&](auto d, auto f, auto tag) {
        using T = typename decltype(tag)::type;
        const BackwardInput<decltype(d)::value, decltype(f)::value, T> op{
            static_cast<const T*>(a.grad_out), a.x, static_cast<const T*>(a.table), static_cast<float*>(a.out), a.p};
        each(op, a.n_points, stream);
    });
    return last_error(ok);
}

}  // namespace hashgrid
}  // namespace nerfhead
