// CPU launcher of the ray-marching kernels: the bodies of raymarch_kernels.h over
// at::parallel_for (torch's intra-op thread pool, torch.set_num_threads).
#include <ATen/Parallel.h>

#include "raymarch_kernels.h"

namespace nerfhead {
namespace raymarch {
namespace {

template <class Op> void each(const Op& op, int64_t n, int64_t grain) {
    at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) op(i);
    });
}

}  // namespace

// grain: items per task, about 50 us of work, so small calls run inline on one thread
void launch_cpu(const NearFar& op, int64_t n) { each(op, n, 4096); }
void launch_cpu(const Morton& op, int64_t n) { each(op, n, 8192); }
void launch_cpu(const MortonInvert& op, int64_t n) { each(op, n, 8192); }
void launch_cpu(const Packbits& op, int64_t n) { each(op, n, 4096); }
void launch_cpu(const MarchTrain& op, int64_t n) { each(op, n, 32); }
void launch_cpu(const CompositeTrainForward& op, int64_t n) { each(op, n, 128); }
void launch_cpu(const CompositeTrainBackward& op, int64_t n) { each(op, n, 64); }
void launch_cpu(const MarchInference& op, int64_t n) { each(op, n, 64); }
void launch_cpu(const CompositeInference& op, int64_t n) { each(op, n, 256); }
void launch_cpu(const MarchCompact& op, int64_t n) { each(op, n, 64); }
void launch_cpu(const CompositeCompact& op, int64_t n) { each(op, n, 256); }

}  // namespace raymarch
}  // namespace nerfhead
