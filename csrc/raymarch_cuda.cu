// CUDA launcher of the ray-marching kernels: the bodies of raymarch_kernels.h, one thread
// per item. No torch headers (compiles in seconds); raymarch.cpp passes raw pointers and
// the current stream.
#include <cuda_runtime.h>

#include "raymarch_kernels.h"

namespace nerfhead {
namespace raymarch {
namespace {

constexpr int kThreads = 256;

template <class Op> __global__ void each_kernel(int64_t n, Op op) {
    const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (i < n) op(i);
}

template <class Op> const char* each(const Op& op, int64_t n, void* stream) {
    if (n == 0) return nullptr;
    const auto blocks = static_cast<unsigned>((n + kThreads - 1) / kThreads);
    each_kernel<<<blocks, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(n, op);
    const cudaError_t err = cudaGetLastError();
    return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace

#define NH_LAUNCH_CUDA(Op) \
    const char* launch_cuda(const Op& op, int64_t n, void* stream) { return each(op, n, stream); }
NH_LAUNCH_CUDA(NearFar)
NH_LAUNCH_CUDA(Morton)
NH_LAUNCH_CUDA(MortonInvert)
NH_LAUNCH_CUDA(Packbits)
NH_LAUNCH_CUDA(MarchTrain)
NH_LAUNCH_CUDA(CompositeTrainForward)
NH_LAUNCH_CUDA(CompositeTrainBackward)
NH_LAUNCH_CUDA(MarchInference)
NH_LAUNCH_CUDA(CompositeInference)
NH_LAUNCH_CUDA(MarchCompact)
NH_LAUNCH_CUDA(CompositeCompact)
#undef NH_LAUNCH_CUDA

}  // namespace raymarch
}  // namespace nerfhead
