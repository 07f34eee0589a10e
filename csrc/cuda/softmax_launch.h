// The CUDA masked softmax launchers, one per dtype and LOG, defined in
// softmax_kernels.cuh and instantiated in the softmax_*.cu files.
#pragma once

#include <cuda_runtime.h>

#include "maskext/checks.h"

namespace maskext {

// Writes the masked (log-)softmax of the rows that `a` describes, on `stream`.
template <typename T, bool LOG>
void launch_softmax_forward(const SoftmaxArgs& a, cudaStream_t stream);

// Writes the gradient of the scores from the output and its gradient.
template <typename T, bool LOG>
void launch_softmax_backward(const SoftmaxArgs& a, cudaStream_t stream);

}  // namespace maskext
