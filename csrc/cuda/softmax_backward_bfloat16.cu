// The masked softmax and log-softmax backward for at::BFloat16 (see softmax_kernels.cuh).
#include "softmax_kernels.cuh"

namespace maskext {
MASKEXT_SOFTMAX_BACKWARD_INSTANTIATE(at::BFloat16)
}  // namespace maskext
