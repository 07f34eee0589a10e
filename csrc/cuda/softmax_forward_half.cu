// The masked softmax forward for at::Half (see softmax_kernels.cuh).
#include "softmax_kernels.cuh"

namespace maskext {
MASKEXT_SOFTMAX_FORWARD_INSTANTIATE(at::Half, false)
}  // namespace maskext
