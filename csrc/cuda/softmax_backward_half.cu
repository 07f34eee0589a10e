// The masked softmax and log-softmax backward for at::Half (see softmax_kernels.cuh).
#include "softmax_kernels.cuh"

namespace maskext {
MASKEXT_SOFTMAX_BACKWARD_INSTANTIATE(at::Half)
}  // namespace maskext
