// Helpers of the torch-facing host entry points (hashgrid.cpp, raymarch.cpp): argument
// checks and the device dispatch to the CPU or CUDA launcher. Included by those two files
// only (light ATen headers; c10/cuda only in a build with the CUDA part).
#pragma once

#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/core/Tensor.h>
#include <c10/core/DeviceGuard.h>

#include <cstdio>
#include <initializer_list>
#include <string>
#include <type_traits>
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

// torch's Python name of a dtype, for error messages ("float32" rather than "Float").
inline const char* dtype_name(at::ScalarType t) {
    switch (t) {
        case at::kFloat: return "float32";
        case at::kHalf: return "float16";
        case at::kDouble: return "float64";
        case at::kInt: return "int32";
        case at::kLong: return "int64";
        case at::kByte: return "uint8";
        case at::kBool: return "bool";
        default: return c10::toString(t);
    }
}

// Error messages are built with std::to_string and string concatenation, never with
// iostreams. On the H200 machine of 2026-11-27 (torch 2.11 + /opt/gcc) parts of libstdc++
// ended up inside this .so, and streaming an integer into an ostringstream there (what
// c10::str does for TORCH_CHECK's arguments) segfaulted: a bad argument crashed the process
// instead of raising. TORCH_CHECK with one std::string message does not touch a stream.
inline std::string to_text(const char* s) { return s; }
inline std::string to_text(const std::string& s) { return s; }
template <class T, std::enable_if_t<std::is_integral_v<T>, int> = 0>
std::string to_text(T v) { return std::to_string(v); }
template <class T, std::enable_if_t<std::is_floating_point_v<T>, int> = 0>
std::string to_text(T v) {
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%g", static_cast<double>(v));
    return buf;
}
inline std::string to_text(const at::Device& d) { return d.str(); }
inline std::string to_text(at::ScalarType t) { return dtype_name(t); }
inline std::string to_text(at::IntArrayRef sizes) {
    std::string s = "[";
    for (size_t i = 0; i < sizes.size(); ++i) s += (i ? ", " : "") + std::to_string(sizes[i]);
    return s + "]";
}
template <class... Args> std::string text(const Args&... args) {
    std::string s;
    ((s += to_text(args)), ...);
    return s;
}

// TORCH_CHECK with the message made by text() (evaluated only when the check fails).
#define NERFHEAD_CHECK(cond, ...) TORCH_CHECK(cond, ::nerfhead::text(__VA_ARGS__))

// The device of an operator's first tensor argument, which every other tensor must share;
// raises unless it is a CPU or CUDA device.
inline at::Device first_device(const char* op, const char* name, const at::Tensor& t) {
    NERFHEAD_CHECK(t.defined(), "nerfhead::", op, ": ", name, " is undefined");
    NERFHEAD_CHECK(t.device().is_cpu() || t.device().is_cuda(), "nerfhead::", op, ": ", name, " is on ", t.device(),
                "; the kernels run on CPU or CUDA tensors");
    return t.device();
}

// Check that `t` is a contiguous `dtype` tensor of `shape` (-1: any size) on `device`;
// otherwise raise naming the operator, the argument, what was expected (`sizes_from` says
// which argument fixed the sizes) and what came.
inline void check_tensor(const char* op, const char* name, const at::Tensor& t, at::ScalarType dtype,
                         std::initializer_list<int64_t> shape, const at::Device& device,
                         const char* sizes_from = "") {
    bool ok = t.defined() && t.scalar_type() == dtype && t.dim() == static_cast<int64_t>(shape.size()) &&
              t.device() == device && t.is_contiguous();
    int64_t d = 0;
    for (const int64_t want : shape) {
        if (!ok) break;
        ok = want < 0 || t.size(d) == want;
        ++d;
    }
    if (ok) return;
    std::string expected = "[";
    d = 0;
    for (const int64_t want : shape) {
        if (d++) expected += ", ";
        expected += want < 0 ? std::string("*") : std::to_string(want);
    }
    expected += "]";
    NERFHEAD_CHECK(t.defined(), "nerfhead::", op, ": ", name, " is undefined");
    NERFHEAD_CHECK(false, "nerfhead::", op, ": ", name, " must be a contiguous ", dtype_name(dtype),
                   " tensor of shape ", expected, *sizes_from ? " (" : "", sizes_from, *sizes_from ? ")" : "",
                   " on ", device, " (one device for all inputs); got ", dtype_name(t.scalar_type()), " ",
                   t.sizes(), " on ", t.device(), t.is_contiguous() ? "" : ", non-contiguous");
}

// Run `cpu()` or `cuda(stream)` (which returns nullptr or a CUDA error message) for tensors
// on `device`.
template <class Cpu, class Cuda>
void on_device(const char* op, const at::Device& device, Cpu&& cpu, Cuda&& cuda) {
    if (device.is_cpu()) {
        cpu();
        return;
    }
    NERFHEAD_CHECK(device.is_cuda(), "nerfhead::", op, ": tensors on ", device, " are not supported (CPU or CUDA)");
    NERFHEAD_CHECK(kWithCuda, "nerfhead::", op, ": nerfhead._C was built without its CUDA part (CPU-only torch, "
                "BUILD_NO_CUDA=1 or no nvcc at build time); rebuild it on a CUDA machine");
    c10::DeviceGuard guard(device);
    const char* err = cuda(cuda_stream(device));
    NERFHEAD_CHECK(err == nullptr, "nerfhead::", op, ": CUDA kernel launch failed: ", err);
}

}  // namespace nerfhead
