// The masked softmax forward for at::BFloat16 (see softmax_kernels.cuh).
#include "softmax_kernels.cuh"

namespace maskext {
MASKEXT_SOFTMAX_FORWARD_INSTANTIATE(at::BFloat16, false)
}  // namespace maskext
