// CUDA masked softmax and log-softmax, forward and backward: the entry points
// registered for the CUDA dispatch key. The kernels, and the one place that
// picks a kernel for a row, are in softmax_kernels.cuh.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "maskext/checks.h"
#include "softmax_launch.h"

namespace maskext {
namespace {

template <bool LOG>
at::Tensor forward_cuda(const at::Tensor& x, const std::optional<at::Tensor>& mask,
                        const std::optional<at::Tensor>& bias,
                        const std::optional<at::Tensor>& lengths,
                        const std::optional<at::Tensor>& q_lengths, bool causal,
                        int64_t window_left, int64_t window_right, double scale,
                        const std::optional<at::Tensor>& q_offset,
                        std::optional<int64_t> q_offset_value,
                        const std::optional<at::Tensor>& segment_ids, int64_t chunk,
                        const std::optional<at::Tensor>& prefix_lengths, int64_t prefix_value,
                        double softcap, const std::optional<at::Tensor>& sinks) {
  auto p = prepare_softmax_forward(LOG ? "masked_log_softmax" : "masked_softmax", x, mask, bias,
                                   mask_desc(lengths, q_lengths, causal, window_left,
                                             window_right, q_offset, q_offset_value, segment_ids,
                                             chunk, prefix_lengths, prefix_value),
                                   scale, softcap, sinks);
  if (p.out.numel() == 0) return p.out;
  const c10::cuda::CUDAGuard guard(x.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "masked_softmax",
                                  [&] { launch_softmax_forward<scalar_t, LOG>(p.args, stream); });
  return p.out;
}

template <bool LOG>
at::Tensor backward_cuda(const at::Tensor& grad_out, const at::Tensor& out,
                         const std::optional<at::Tensor>& lengths,
                         const std::optional<at::Tensor>& q_lengths, bool causal,
                         int64_t window_left, int64_t window_right, double scale,
                        const std::optional<at::Tensor>& q_offset,
                        std::optional<int64_t> q_offset_value,
                        const std::optional<at::Tensor>& segment_ids, int64_t chunk,
                        const std::optional<at::Tensor>& prefix_lengths, int64_t prefix_value) {
  auto p = prepare_softmax_backward(LOG ? "masked_log_softmax_backward" : "masked_softmax_backward",
                                    grad_out, out,
                                    mask_desc(lengths, q_lengths, causal, window_left,
                                              window_right, q_offset, q_offset_value, segment_ids,
                                              chunk, prefix_lengths, prefix_value),
                                    scale);
  if (p.out.numel() == 0) return p.out;
  const c10::cuda::CUDAGuard guard(out.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(),
                                  "masked_softmax_backward",
                                  [&] { launch_softmax_backward<scalar_t, LOG>(p.args, stream); });
  return p.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(maskext, CUDA, m) {
  m.impl("masked_softmax", &forward_cuda<false>);
  m.impl("masked_softmax_backward", &backward_cuda<false>);
  m.impl("masked_log_softmax", &forward_cuda<true>);
  m.impl("masked_log_softmax_backward", &backward_cuda<true>);
}

}  // namespace maskext
