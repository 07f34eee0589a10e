// The masked softmax launchers and kernels for at::Half (see softmax_kernels.cuh).
#include "softmax_kernels.cuh"

namespace maskext {
MASKEXT_SOFTMAX_INSTANTIATE(at::Half)
}  // namespace maskext
