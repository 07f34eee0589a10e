// The masked softmax launchers and kernels for double, forward and backward
// (see softmax_kernels.cuh): the general kernels only, one file.
#include "softmax_kernels.cuh"

namespace maskext {
MASKEXT_SOFTMAX_FORWARD_INSTANTIATE(double, false)
MASKEXT_SOFTMAX_FORWARD_INSTANTIATE(double, true)
MASKEXT_SOFTMAX_BACKWARD_INSTANTIATE(double)
}  // namespace maskext
