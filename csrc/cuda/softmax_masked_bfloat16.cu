// The mask/bias register tiers of the masked softmax forward for at::BFloat16, in a
// translation unit of their own so that they compile in parallel with the
// rest of the dtype's kernels (see the end of softmax_kernels.cuh).
#include "softmax_kernels.cuh"

namespace maskext {
MASKEXT_SOFTMAX_MASKED_INSTANTIATE(at::BFloat16)
}  // namespace maskext
