// The masked softmax forward for float (see softmax_kernels.cuh).
#include "softmax_kernels.cuh"

namespace maskext {
MASKEXT_SOFTMAX_FORWARD_INSTANTIATE(float, false)
}  // namespace maskext
