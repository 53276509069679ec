// Helpers of the torch-facing host entry points (hashgrid.cpp, raymarch.cpp): argument
// checks and the device dispatch to the CPU or CUDA launcher. Included by those two files
// only (light ATen headers; c10/cuda only in a build with the CUDA part).
#pragma once

#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/core/Tensor.h>
#include <c10/core/DeviceGuard.h>
#ifdef NERFHEAD_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#endif

namespace nerfhead {

#ifdef NERFHEAD_WITH_CUDA
constexpr bool kWithCuda = true;
#else
constexpr bool kWithCuda = false;
#endif

// The current CUDA stream of `device` as a void* (cudaStream_t), for the .cu launchers.
inline void* cuda_stream(const at::Device& device) {
#ifdef NERFHEAD_WITH_CUDA
    return c10::cuda::getCurrentCUDAStream(device.index()).stream();
#else
    (void)device;
    return nullptr;
#endif
}

// Run `cpu()` or `cuda(stream)` (which returns nullptr or a CUDA error message) for tensors
// on `device`.
template <class Cpu, class Cuda>
void on_device(const char* op, const at::Device& device, Cpu&& cpu, Cuda&& cuda) {
    if (device.is_cpu()) {
        cpu();
        return;
    }
    TORCH_CHECK(device.is_cuda(), "nerfhead::", op, ": tensors on ", device, " are not supported (CPU or CUDA)");
    TORCH_CHECK(kWithCuda, "nerfhead::", op, ": nerfhead._C was built without its CUDA part (CPU-only torch, "
                "BUILD_NO_CUDA=1 or no nvcc at build time); rebuild it on a CUDA machine");
    c10::DeviceGuard guard(device);
    const char* err = cuda(cuda_stream(device));
    TORCH_CHECK(err == nullptr, "nerfhead::", op, ": CUDA kernel launch failed: ", err);
}

}  // namespace nerfhead
