// The masked softmax launchers and kernels for at::BFloat16 (see softmax_kernels.cuh).
#include "softmax_kernels.cuh"

namespace maskext {
MASKEXT_SOFTMAX_INSTANTIATE(at::BFloat16)
}  // namespace maskext
