// The masked softmax launchers and kernels for float (see softmax_kernels.cuh).
#include "softmax_kernels.cuh"

namespace maskext {
MASKEXT_SOFTMAX_INSTANTIATE(float)
}  // namespace maskext
