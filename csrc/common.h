// Helpers shared by the per-item kernel bodies (hashgrid_kernels.h, raymarch_kernels.h).
//
// No torch and no CUDA runtime headers here: these headers are compiled by nvcc for the
// device (the .cu launchers) and by the host C++ compiler for the CPU (the *_cpu.cpp
// launchers), and the .cu files must compile in seconds.
//
// Float arithmetic: where a body is designed to be bit-exact against its PyTorch reference
// (hash-grid forward, ray march), it uses mul_rn/add_rn/sub_rn/rcp_rn: IEEE float32
// round-to-nearest, never fused into an FMA. On the device these are the __f*_rn
// intrinsics, which nvcc never contracts; on the host they are plain operators and the CPU
// launchers are compiled with -ffp-contract=off (setup.py), so the host compiler does not
// fuse them either. No body relies on --use_fast_math intrinsics (__expf, ...): the CUDA
// part is built without --use_fast_math, so expf is the accurate expf on both sides.
#pragma once

#include <cfloat>
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define NH_HD __host__ __device__
#define NH_INLINE __forceinline__
#define NH_UNROLL _Pragma("unroll")
#else
#define NH_HD
#define NH_INLINE inline
#if defined(__clang__)
#define NH_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define NH_UNROLL _Pragma("GCC unroll 16")
#else
#define NH_UNROLL
#endif
#endif

namespace nerfhead {

NH_HD NH_INLINE float mul_rn(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fmul_rn(a, b);
#else
    return a * b;
#endif
}

NH_HD NH_INLINE float add_rn(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fadd_rn(a, b);
#else
    return a + b;
#endif
}

NH_HD NH_INLINE float sub_rn(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fsub_rn(a, b);
#else
    return a - b;
#endif
}

// Correctly rounded 1 / x (what torch computes for `1.0 / d` in float32).
NH_HD NH_INLINE float rcp_rn(float x) {
#ifdef __CUDA_ARCH__
    return __frcp_rn(x);
#else
    return 1.0f / x;
#endif
}

// C fminf/fmaxf semantics on both sides: a NaN operand is ignored, so clampf(NaN) == lo.
NH_HD NH_INLINE float clampf(float x, float lo, float hi) { return fminf(fmaxf(x, lo), hi); }

NH_HD NH_INLINE int imin(int a, int b) { return a < b ? a : b; }
NH_HD NH_INLINE int imax(int a, int b) { return a > b ? a : b; }

}  // namespace nerfhead
