// CPU launcher of the hash-grid kernels: the bodies of hashgrid_kernels.h over
// at::parallel_for (torch's intra-op thread pool, torch.set_num_threads).
#include <ATen/Parallel.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <vector>

#include "hashgrid_kernels.h"

namespace nerfhead {
namespace hashgrid {

template <> struct Scalar<c10::Half> {
    static inline float load(c10::Half v) { return static_cast<float>(v); }
    static inline c10::Half store(float v) { return c10::Half(v); }  // round to nearest even
};

namespace {

template <class Op> void each(const Op& op, int64_t n, int64_t grain) {
    at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) op(i);
    });
}

}  // namespace

bool forward_cpu(const Args& a) {
    return dispatch<c10::Half>(a.dim, a.features, a.half, [&](auto d, auto f, auto tag) {
        using T = typename decltype(tag)::type;
        const Forward<decltype(d)::value, decltype(f)::value, T> op{
            a.x, static_cast<const T*>(a.table), static_cast<T*>(a.out), a.n_points, a.p};
        // level-major (one level's table in cache at a time), the (level, n) split done here
        const int64_t N = a.n_points;
        at::parallel_for(0, N * a.p.num_levels, 512, [&](int64_t begin, int64_t end) {
            for (int64_t item = begin; item < end;) {
                const auto level = static_cast<uint32_t>(item / N);
                const int64_t stop = std::min(end, (level + 1) * N);
                for (int64_t n = item - level * N; item < stop; ++item, ++n) op.run(level, n);
            }
        });
    });
}

bool backward_table_cpu(const Args& a) {
    return dispatch<c10::Half>(a.dim, a.features, a.half, [&](auto d, auto f, auto tag) {
        using T = typename decltype(tag)::type;
        const BackwardTable<decltype(d)::value, decltype(f)::value, T> op{
            static_cast<const T*>(a.grad_out), a.x, static_cast<float*>(a.out), a.n_points, a.p};
        // Deterministic: levels in parallel (their rows are disjoint), the points of a level
        // in order. Levels are handed out coarse/fine alternately (0, L-1, 1, L-2, ...) so
        // that contiguous chunks mix small cached tables with large hashed ones.
        const int64_t L = a.p.num_levels, N = a.n_points;
        std::vector<int64_t> order;
        for (int64_t lo = 0, hi = L - 1; lo <= hi; ++lo, --hi) {
            order.push_back(lo);
            if (hi != lo) order.push_back(hi);
        }
        // The buffer comes uninitialised: each level's thread zeroes its own rows first (the
        // first touch of a fresh multi-megabyte buffer costs page faults: in parallel here).
        float* grad = static_cast<float*>(a.out);
        at::parallel_for(0, L, 1, [&](int64_t begin, int64_t end) {
            for (int64_t j = begin; j < end; ++j) {
                const auto level = static_cast<uint32_t>(order[j]);
                std::fill(grad + int64_t(a.p.offset[level]) * a.features,
                          grad + int64_t(a.p.offset[level + 1]) * a.features, 0.0f);
                for (int64_t n = 0; n < N; ++n) op.run(level, n);
            }
        });
    });
}

bool backward_input_cpu(const Args& a) {
    return dispatch<c10::Half>(a.dim, a.features, a.half, [&](auto d, auto f, auto tag) {
        using T = typename decltype(tag)::type;
        const BackwardInput<decltype(d)::value, decltype(f)::value, T> op{
            static_cast<const T*>(a.grad_out), a.x, static_cast<const T*>(a.table), static_cast<float*>(a.out), a.p};
        each(op, a.n_points, 64);
    });
}

}  // namespace hashgrid
}  // namespace nerfhead
