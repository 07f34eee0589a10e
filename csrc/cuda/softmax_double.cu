// The masked softmax launchers and kernels for double (see softmax_kernels.cuh).
#include "softmax_kernels.cuh"

namespace maskext {
MASKEXT_SOFTMAX_INSTANTIATE(double)
}  // namespace maskext
